//! Descriptive cell statistics: count, sum and sum of squares of the ratings
//! per (study, instrument, respondent, language, scale), and invalid-answer
//! counts per reason. Pure data: no I/O. One response updates one cell in
//! O(log cells); a summary costs O(cells), independent of the number of rows.

use std::collections::BTreeMap;

use careers_proto::scale::{self, RIASEC};
use careers_proto::v1::{InvalidReason, Scale};

/// The group a profile describes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProfileKey {
    /// Study id.
    pub study_id: String,
    /// Instrument id.
    pub instrument_id: String,
    /// Respondent name.
    pub respondent: String,
    /// Language tag.
    pub language: String,
}

/// Exact moments of small integer ratings (f64 sums of integers are exact far
/// beyond any study size, so no compensated summation is needed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    /// Number of ratings.
    pub n: u64,
    /// Sum of ratings.
    pub sum: f64,
    /// Sum of squared ratings.
    pub sum_sq: f64,
}

impl Moments {
    /// Adds one rating.
    pub fn add(&mut self, y: f64) {
        self.n += 1;
        self.sum += y;
        self.sum_sq += y * y;
    }

    /// Mean, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// Sample standard deviation (n - 1 denominator), 0 when n < 2.
    pub fn sd(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let var = (self.sum_sq - self.sum * self.sum / n) / (n - 1.0);
        var.max(0.0).sqrt()
    }
}

/// One profile: moments per RIASEC area and invalid counts per reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Moments in R, I, A, S, E, C order.
    pub scales: [Moments; 6],
    /// Invalid answers by reason (the reason's proto number).
    pub invalid: BTreeMap<i32, u64>,
}

impl Profile {
    /// Mean per area in RIASEC order.
    pub fn means(&self) -> [f64; 6] {
        std::array::from_fn(|i| self.scales[i].mean())
    }

    /// Total valid ratings.
    pub fn n(&self) -> u64 {
        self.scales.iter().map(|m| m.n).sum()
    }

    /// Total invalid answers.
    pub fn invalid_total(&self) -> u64 {
        self.invalid.values().sum()
    }

    /// Holland code of the means.
    pub fn holland_code(&self) -> String {
        scale::holland_code(&self.means())
    }
}

/// What one stored response contributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A valid rating on a scale.
    Rating(Scale, u32),
    /// An invalid answer with its reason.
    Invalid(Scale, InvalidReason),
}

/// All profiles, keyed and sorted.
#[derive(Debug, Clone, Default)]
pub struct DescriptiveStats {
    profiles: BTreeMap<ProfileKey, Profile>,
    responses: u64,
    invalid: u64,
}

impl DescriptiveStats {
    /// Adds one stored response. Responses with an unspecified scale are
    /// rejected before they get here; they would be ignored.
    pub fn add(&mut self, key: &ProfileKey, outcome: Outcome) {
        let profile = match self.profiles.get_mut(key) {
            Some(p) => p,
            None => self.profiles.entry(key.clone()).or_default(),
        };
        self.responses += 1;
        match outcome {
            Outcome::Rating(s, rating) => {
                if let Some(i) = scale::index(s) {
                    profile.scales[i].add(f64::from(rating));
                }
            }
            Outcome::Invalid(_, reason) => {
                self.invalid += 1;
                *profile.invalid.entry(reason as i32).or_default() += 1;
            }
        }
    }

    /// Every profile, optionally restricted to one study.
    pub fn profiles<'a>(
        &'a self,
        study_id: &'a str,
    ) -> impl Iterator<Item = (&'a ProfileKey, &'a Profile)> + 'a {
        self.profiles
            .iter()
            .filter(move |(k, _)| study_id.is_empty() || k.study_id == study_id)
    }

    /// Stored responses (valid and invalid) over all studies.
    pub fn responses(&self) -> u64 {
        self.responses
    }

    /// Stored invalid responses over all studies.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }
}

/// Letters of the RIASEC areas, for table headers.
pub fn riasec_letters() -> [char; 6] {
    RIASEC.map(scale::letter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str) -> ProfileKey {
        ProfileKey {
            study_id: "s".into(),
            instrument_id: "i".into(),
            respondent: r.into(),
            language: "en".into(),
        }
    }

    #[test]
    fn moments_match_two_pass_formulas() {
        let ys = [1.0, 2.0, 2.0, 5.0, 4.0, 3.0];
        let mut m = Moments::default();
        ys.iter().for_each(|&y| m.add(y));
        let mean = ys.iter().sum::<f64>() / 6.0;
        let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / 5.0;
        assert_eq!(m.n, 6);
        assert!((m.mean() - mean).abs() < 1e-15);
        assert!((m.sd() - var.sqrt()).abs() < 1e-14);
        assert_eq!(Moments::default().sd(), 0.0);
    }

    #[test]
    fn profiles_count_ratings_and_invalid_answers() {
        let mut d = DescriptiveStats::default();
        d.add(&key("a"), Outcome::Rating(Scale::Social, 5));
        d.add(&key("a"), Outcome::Rating(Scale::Social, 4));
        d.add(&key("a"), Outcome::Rating(Scale::Realistic, 1));
        d.add(
            &key("a"),
            Outcome::Invalid(Scale::Artistic, InvalidReason::Refusal),
        );
        d.add(&key("b"), Outcome::Rating(Scale::Conventional, 3));
        assert_eq!(d.responses(), 5);
        assert_eq!(d.invalid(), 1);
        let (_, a) = d.profiles("s").next().expect("profile a");
        assert_eq!(a.n(), 3);
        assert_eq!(a.invalid_total(), 1);
        assert_eq!(a.means()[3], 4.5);
        assert_eq!(&a.holland_code()[..1], "S");
        assert_eq!(d.profiles("other").count(), 0);
        assert_eq!(d.profiles("").count(), 2);
    }
}
