//! Descriptive cell statistics: count, sum and sum of squares of the ratings
//! per (study, instrument, respondent, language, scale), invalid-answer
//! counts per reason, and per (study, respondent) usage (requests, tokens,
//! latency percentiles). Pure data: no I/O. One response updates one cell in
//! O(log cells); a summary costs O(cells), independent of the number of rows.

use std::collections::BTreeMap;

use careers_proto::scale::{self, RIASEC};
use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{Administration, InvalidReason, ItemResponse, Scale};

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
    /// Design-factor levels (`ItemResponse.conditions`), empty without factors.
    pub conditions: BTreeMap<String, String>,
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

/// Latencies in a log-linear histogram: exact below 64 ms, then 16 buckets
/// per doubling (at most 1/16 = 6.25% wide, reported at the bucket's upper
/// edge, so a percentile is never under-reported and at most ~4% high on
/// average). Fixed size, so usage never grows with rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    max: u32,
}

const EXACT: u32 = 64;
const SUB: u32 = 16;

impl Default for LatencyHistogram {
    fn default() -> Self {
        // 64 exact buckets + 16 per doubling from 2^6 to 2^32.
        Self {
            counts: vec![0; (EXACT + SUB * 26) as usize],
            max: 0,
        }
    }
}

impl LatencyHistogram {
    fn bucket(ms: u32) -> usize {
        if ms < EXACT {
            return ms as usize;
        }
        let exp = 31 - ms.leading_zeros(); // >= 6
        let mantissa = (ms >> (exp - 4)) & (SUB - 1);
        (EXACT + (exp - 6) * SUB + mantissa) as usize
    }

    fn upper_edge(bucket: usize) -> u32 {
        let b = bucket as u32;
        if b < EXACT {
            return b;
        }
        let exp = (b - EXACT) / SUB + 6;
        let mantissa = (b - EXACT) % SUB;
        let width = 1u64 << (exp - 4);
        let lower = (1u64 << exp) + u64::from(mantissa) * width;
        u32::try_from(lower + width - 1).unwrap_or(u32::MAX)
    }

    /// Records one latency.
    pub fn add(&mut self, ms: u32) {
        if let Some(c) = self.counts.get_mut(Self::bucket(ms)) {
            *c += 1;
        }
        self.max = self.max.max(ms);
    }

    /// The `q` quantile (0..=1), 0 when empty; never above the maximum.
    pub fn quantile(&self, q: f64) -> u32 {
        let n: u64 = self.counts.iter().sum();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper_edge(i).min(self.max);
            }
        }
        self.max
    }

    /// Largest latency recorded.
    pub fn max(&self) -> u32 {
        self.max
    }
}

/// What one respondent used in one study.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Stored responses.
    pub responses: u64,
    /// Requests (sum of `ItemResponse.requests`; see [`requests_of`]).
    pub requests: u64,
    /// Of them, repeats after a transient error.
    pub retries: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Latency of the successful requests.
    pub latency: LatencyHistogram,
    /// Cost at the collector's prices (sum of `ItemResponse.cost`).
    pub cost: f64,
    /// Currency of the cost (the last non-empty `cost_currency` seen).
    pub currency: String,
}

/// All profiles, keyed and sorted.
#[derive(Debug, Clone, Default)]
pub struct DescriptiveStats {
    profiles: BTreeMap<ProfileKey, Profile>,
    usage: BTreeMap<(String, String), Usage>,
    responses: u64,
    invalid: u64,
}

/// The profile a response belongs to.
pub fn profile_key(r: &ItemResponse) -> ProfileKey {
    ProfileKey {
        study_id: r.study_id.clone(),
        instrument_id: r.instrument_id.clone(),
        respondent: r
            .respondent
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        language: r.language.clone(),
        conditions: r.conditions.clone(),
    }
}

/// The provider requests charged to a response: `ItemResponse.requests`,
/// or for a one-item answer from a client that does not count them, its
/// attempt number (at least 1). Under all-items administration a form's
/// requests are charged to one of its items, so 0 is a real count there.
pub fn requests_of(r: &ItemResponse) -> u64 {
    if r.requests > 0 || r.administration == Administration::AllItems as i32 {
        u64::from(r.requests)
    } else {
        u64::from(r.attempt.max(1))
    }
}

/// What a (validated) response contributes to its profile.
pub fn outcome(r: &ItemResponse) -> Option<Outcome> {
    let scale = Scale::try_from(r.scale).ok()?;
    match &r.answer {
        Some(Answer::Rating(v)) => Some(Outcome::Rating(scale, *v)),
        Some(Answer::Invalid(inv)) => Some(Outcome::Invalid(
            scale,
            InvalidReason::try_from(inv.reason).unwrap_or(InvalidReason::Unspecified),
        )),
        None => None,
    }
}

impl DescriptiveStats {
    /// Adds one stored response: its profile cell and its respondent's usage.
    pub fn add_response(&mut self, r: &ItemResponse) {
        let key = profile_key(r);
        if let Some(o) = outcome(r) {
            self.add(&key, o);
        }
        let usage = self
            .usage
            .entry((key.study_id, key.respondent))
            .or_default();
        usage.responses += 1;
        usage.requests += requests_of(r);
        usage.retries += u64::from(r.retries);
        if let Some(t) = &r.tokens {
            usage.input_tokens += t.input_tokens;
            usage.output_tokens += t.output_tokens;
        }
        usage.latency.add(r.latency_ms);
        if r.cost.is_finite() {
            usage.cost += r.cost;
        }
        if !r.cost_currency.is_empty() && usage.currency != r.cost_currency {
            usage.currency.clone_from(&r.cost_currency);
        }
    }

    /// Usage per (study, respondent), optionally restricted to one study.
    pub fn usage<'a>(
        &'a self,
        study_id: &'a str,
    ) -> impl Iterator<Item = (&'a (String, String), &'a Usage)> + 'a {
        self.usage
            .iter()
            .filter(move |(k, _)| study_id.is_empty() || k.0 == study_id)
    }

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
            conditions: BTreeMap::new(),
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
    fn latency_quantiles_are_close_and_never_low() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), 0);
        let values: Vec<u32> = (1..=1000).map(|i| i * 7).collect();
        values.iter().for_each(|&v| h.add(v));
        for q in [0.5, 0.9, 0.99] {
            let exact = values[((q * 1000.0) as usize).saturating_sub(1)];
            let got = h.quantile(q);
            assert!(
                got >= exact && f64::from(got) <= f64::from(exact) * 1.0625 + 1.0,
                "q {q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 7000);
        assert_eq!(h.max(), 7000);
        let mut small = LatencyHistogram::default();
        [3, 5, 5, 9].iter().for_each(|&v| small.add(v));
        assert_eq!((small.quantile(0.5), small.quantile(0.99)), (5, 9));
        small.add(u32::MAX);
        assert_eq!(small.max(), u32::MAX);
    }

    #[test]
    fn usage_sums_requests_tokens_and_latency() {
        use careers_proto::v1::{Respondent, TokenUsage};
        let mut d = DescriptiveStats::default();
        for (attempt, latency) in [(1, 100), (3, 300), (1, 200)] {
            d.add_response(&ItemResponse {
                study_id: "s".into(),
                respondent: Some(Respondent {
                    name: "r".into(),
                    ..Default::default()
                }),
                scale: Scale::Social as i32,
                answer: Some(Answer::Rating(4)),
                attempt,
                latency_ms: latency,
                tokens: Some(TokenUsage {
                    input_tokens: 10,
                    output_tokens: 2,
                }),
                ..Default::default()
            });
        }
        let (_, u) = d.usage("s").next().expect("usage");
        assert_eq!(
            (u.responses, u.requests, u.input_tokens, u.output_tokens),
            (3, 5, 30, 6)
        );
        assert_eq!(u.latency.max(), 300);
        assert!((200..=212).contains(&u.latency.quantile(0.5)));
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
