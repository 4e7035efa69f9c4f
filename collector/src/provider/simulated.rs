//! The simulated respondent: a seeded, deterministic stand-in for an LLM.
//!
//! Each respondent has a latent mean per RIASEC area for interest and for
//! competence, item effects (one shared by all respondents, one of its own),
//! a shift in languages other than English, and per-answer noise. The latent
//! value is rounded and clamped to 1..5 and then written out the way LLMs
//! answer: a bare digit, a full-width digit, the option label in the prompt's
//! language, or a sentence around the answer. At configurable rates it
//! refuses or gives an unparseable answer, so the real parser runs on every
//! answer. Everything is a pure function of (study seed, respondent, task id):
//! asking the same task twice gives the same text.

use careers_proto::v1::SimulatedProfile;
use futures::future::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{Ask, Provider, ProviderError, Reply};

/// A simulated respondent.
#[derive(Debug, Clone)]
pub struct Simulated {
    name: String,
    seed: u64,
    profile: SimulatedProfile,
}

/// Parameter problems, named by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ProfileError {
    /// The field, e.g. `interest`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Checks a profile's ranges.
pub fn validate(profile: &SimulatedProfile) -> Result<(), ProfileError> {
    for (field, means) in [
        ("interest", &profile.interest),
        ("competence", &profile.competence),
    ] {
        if means.len() != 6 {
            return Err(ProfileError {
                field,
                reason: format!("needs 6 values (R I A S E C), got {}", means.len()),
            });
        }
        if let Some(m) = means.iter().find(|m| !(1.0..=5.0).contains(*m)) {
            return Err(ProfileError {
                field,
                reason: format!("{m} is outside 1..5"),
            });
        }
    }
    for (field, v, max) in [
        ("item_sd", profile.item_sd, 5.0),
        ("noise_sd", profile.noise_sd, 5.0),
        ("invalid_rate", profile.invalid_rate, 1.0),
        ("refusal_rate", profile.refusal_rate, 1.0),
    ] {
        if !(0.0..=max).contains(&v) {
            return Err(ProfileError {
                field,
                reason: format!("{v} is outside 0..{max}"),
            });
        }
    }
    if profile.invalid_rate + profile.refusal_rate > 1.0 {
        return Err(ProfileError {
            field: "invalid_rate",
            reason: "invalid_rate + refusal_rate exceeds 1".into(),
        });
    }
    if !profile.language_shift.is_finite() || profile.language_shift.abs() > 4.0 {
        return Err(ProfileError {
            field: "language_shift",
            reason: format!("{} is outside -4..4", profile.language_shift),
        });
    }
    Ok(())
}

/// A stable 64-bit hash (FNV-1a) of labelled parts, for seeding.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn normal(rng: &mut ChaCha8Rng, sd: f64) -> f64 {
    Normal::new(0.0, sd.max(0.0))
        .map(|d| d.sample(rng))
        .unwrap_or(0.0)
}

impl Simulated {
    /// A respondent named `name` with `profile`, seeded by the study's seed.
    pub fn new(name: &str, seed: u64, profile: SimulatedProfile) -> Result<Self, ProfileError> {
        validate(&profile)?;
        Ok(Self {
            name: name.to_string(),
            seed,
            profile,
        })
    }

    /// The latent (unrounded) rating for a task: profile mean + item effects
    /// + language shift + noise.
    fn latent(&self, ask: &Ask<'_>, rng: &mut ChaCha8Rng) -> f64 {
        let means = if ask.construct == "competence" {
            &self.profile.competence
        } else {
            &self.profile.interest
        };
        let mean = means.get(ask.scale_index).copied().unwrap_or(3.0);
        let seed = self.seed.to_le_bytes();
        // The shared item effect is the same for every respondent and language.
        let mut shared = ChaCha8Rng::seed_from_u64(stable_hash(&[
            &seed,
            ask.instrument_id.as_bytes(),
            ask.item_id.as_bytes(),
        ]));
        let mut own = ChaCha8Rng::seed_from_u64(stable_hash(&[
            &seed,
            self.name.as_bytes(),
            ask.instrument_id.as_bytes(),
            ask.item_id.as_bytes(),
        ]));
        let item = normal(&mut shared, self.profile.item_sd * 0.7)
            + normal(&mut own, self.profile.item_sd * 0.7);
        let shift = if ask.language == "en" {
            0.0
        } else {
            self.profile.language_shift
        };
        mean + item + shift + normal(rng, self.profile.noise_sd)
    }

    /// The answer text for a task; pure in (seed, name, task).
    pub fn answer(&self, ask: &Ask<'_>) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(stable_hash(&[
            &self.seed.to_le_bytes(),
            self.name.as_bytes(),
            ask.task_id.as_bytes(),
        ]));
        let latent = self.latent(ask, &mut rng);
        let u: f64 = rng.random();
        let zh = ask.language.starts_with("zh");
        if u < self.profile.refusal_rate {
            return if zh {
                "作为一个人工智能，我没有个人喜好，无法回答这个问题。".into()
            } else {
                "As an AI language model, I don't have personal preferences or feelings about activities.".into()
            };
        }
        if u < self.profile.refusal_rate + self.profile.invalid_rate {
            let r = latent.round().clamp(1.0, 4.0) as u32;
            return match rng.random_range(0..3) {
                0 => format!("{r} or {}", r + 1),
                1 => {
                    if zh {
                        "这取决于具体情况。".into()
                    } else {
                        "It depends on the circumstances.".into()
                    }
                }
                _ => "??".into(),
            };
        }
        let rating = latent.round().clamp(1.0, 5.0) as u32;
        let label = &ask.options[rating as usize - 1];
        match rng.random_range(0..6) {
            0 => rating.to_string(),
            1 => char::from_u32('０' as u32 + rating)
                .map(String::from)
                .unwrap_or_else(|| rating.to_string()),
            // Now and then the label in the instrument's other language.
            2 => match ask.foreign_options {
                Some(foreign) if rng.random_bool(0.25) => foreign[rating as usize - 1].clone(),
                _ => label.clone(),
            },
            3 if zh => format!("我的答案是：{rating}（{label}）"),
            3 => format!("I would choose {rating} ({label})."),
            4 if zh => format!("我选择“{label}”。"),
            4 => format!("My answer: {label}."),
            _ => format!("{rating}"),
        }
    }
}

impl Simulated {
    /// The answer to an all-items request: one line per item, numbered as in
    /// the prompt, each answered as [`Simulated::answer`] answers it alone
    /// (so a line may be a refusal or unparseable), in a few list styles.
    pub fn answer_batch(&self, ask: &Ask<'_>) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(stable_hash(&[
            &self.seed.to_le_bytes(),
            self.name.as_bytes(),
            b"batch",
            ask.task_id.as_bytes(),
        ]));
        let style = rng.random_range(0..3);
        let mut out = String::new();
        if style == 2 {
            out.push_str(if ask.language.starts_with("zh") {
                "以下是我的回答：\n\n"
            } else {
                "Here are my answers:\n\n"
            });
        }
        for (i, item) in ask.batch.iter().enumerate() {
            let one = Ask {
                task_id: item.task_id,
                item_id: item.item_id,
                scale_index: item.scale_index,
                batch: &[],
                ..ask.clone()
            };
            let text = self.answer(&one);
            let n = i + 1;
            match style {
                0 => out.push_str(&format!("{n}: {text}\n")),
                1 => out.push_str(&format!("{n}. {text}\n")),
                _ => out.push_str(&format!("- {n}: {text}\n")),
            }
        }
        out
    }
}

impl Provider for Simulated {
    fn ask<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Result<Reply, ProviderError>> {
        Box::pin(async move {
            let text = if ask.batch.is_empty() {
                self.answer(&ask)
            } else {
                self.answer_batch(&ask)
            };
            Ok(Reply {
                input_tokens: (ask.prompt.chars().count() as u64).div_ceil(4),
                output_tokens: (text.chars().count() as u64).div_ceil(4),
                text,
                option_probabilities: Vec::new(),
                refused: false,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{Parsed, parse};

    fn profile() -> SimulatedProfile {
        SimulatedProfile {
            interest: vec![1.5, 2.5, 4.2, 4.6, 2.8, 2.0],
            competence: vec![3.0; 6],
            language_shift: 0.3,
            item_sd: 0.4,
            noise_sd: 0.5,
            invalid_rate: 0.05,
            refusal_rate: 0.02,
        }
    }

    /// The interest form's option labels in `language`, from the built-in
    /// instrument.
    fn options_in(language: &str) -> [String; 5] {
        let catalog = crate::instrument::Catalog::built_in().expect("catalog");
        let form = catalog.get("onet-ip-sf").expect("interest form");
        form.options[language].clone()
    }

    fn options() -> [String; 5] {
        options_in("en")
    }

    fn ask<'a>(id: u128, scale_index: usize, options: &'a [String; 5]) -> Ask<'a> {
        Ask {
            task_id: uuid::Uuid::from_u128(id),
            instrument_id: "onet-ip-sf",
            construct: "interest",
            item_id: "X",
            scale_index,
            language: "en",
            prompt: "p",
            options,
            foreign_options: None,
            system: None,
            batch: &[],
        }
    }

    #[test]
    fn answers_are_deterministic_and_follow_the_profile() {
        let sim = Simulated::new("sim", 7, profile()).expect("valid profile");
        let opts = options();
        let labels: Vec<(String, u32)> = opts
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i as u32 + 1))
            .collect();
        assert_eq!(sim.answer(&ask(1, 0, &opts)), sim.answer(&ask(1, 0, &opts)));
        let mean = |scale: usize| {
            let (mut sum, mut n, mut invalid) = (0.0, 0.0, 0);
            for id in 0..2000u128 {
                match parse(&sim.answer(&ask(id, scale, &opts)), &labels) {
                    Parsed::Rating(r) => {
                        sum += f64::from(r);
                        n += 1.0;
                    }
                    Parsed::Invalid { .. } => invalid += 1,
                }
            }
            (sum / n, invalid)
        };
        let (social, invalid) = mean(3);
        let (realistic, _) = mean(0);
        assert!(
            social > realistic + 2.0,
            "social {social} realistic {realistic}"
        );
        // 7% of answers are refusals or garbage (binomial sd about 11 of 2000).
        assert!((90..=190).contains(&invalid), "invalid {invalid}");
    }

    #[test]
    fn some_answers_use_the_other_languages_labels() {
        let sim = Simulated::new("sim", 7, profile()).expect("valid profile");
        let en = options();
        let zh = options_in("zh");
        let labels: Vec<(String, u32)> = en
            .iter()
            .chain(zh.iter())
            .enumerate()
            .map(|(i, l)| (l.clone(), i as u32 % 5 + 1))
            .collect();
        let mut foreign = 0;
        for id in 0..2000u128 {
            let alone = sim.answer(&ask(id, 2, &en));
            let mixed = sim.answer(&Ask {
                foreign_options: Some(&zh),
                ..ask(id, 2, &en)
            });
            if let Some(r) = zh.iter().position(|l| *l == mixed) {
                foreign += 1;
                // The same rating as the answer in the prompt's language.
                assert_eq!(alone, en[r], "task {id}");
                assert_eq!(parse(&mixed, &labels), Parsed::Rating(r as u32 + 1));
            }
        }
        // A bare label is 1 answer in 6, a foreign one a quarter of those.
        assert!((40..=140).contains(&foreign), "{foreign} foreign labels");
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let mut p = profile();
        p.interest.pop();
        assert_eq!(validate(&p).expect_err("5 values").field, "interest");
        let mut p = profile();
        p.noise_sd = -1.0;
        assert_eq!(validate(&p).expect_err("negative").field, "noise_sd");
        let mut p = profile();
        p.competence[2] = 6.0;
        assert_eq!(validate(&p).expect_err("out of range").field, "competence");
    }
}
