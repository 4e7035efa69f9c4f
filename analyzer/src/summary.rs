//! Statistics -> `Summary` messages.

use std::time::SystemTime;

use careers_proto::scale::RIASEC;
use careers_proto::v1::{InvalidCount, ProfileSummary, RespondentUsage, ScaleStatistics, Summary};

use crate::descriptive::DescriptiveStats;

/// Builds the summary of `stats` restricted to `study_id` (empty: all).
pub fn build(stats: &DescriptiveStats, study_id: &str, revision: u64) -> Summary {
    let mut summary = Summary {
        revision,
        study_id: study_id.to_string(),
        computed_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        ..Default::default()
    };
    for (key, profile) in stats.profiles(study_id) {
        let n = profile.n();
        let invalid = profile.invalid_total();
        summary.valid += n;
        summary.invalid += invalid;
        summary.profiles.push(ProfileSummary {
            study_id: key.study_id.clone(),
            instrument_id: key.instrument_id.clone(),
            respondent: key.respondent.clone(),
            language: key.language.clone(),
            conditions: key.conditions.clone(),
            scales: RIASEC
                .iter()
                .zip(&profile.scales)
                .map(|(s, m)| ScaleStatistics {
                    scale: *s as i32,
                    n: m.n,
                    mean: m.mean(),
                    sd: m.sd(),
                })
                .collect(),
            holland_code: profile.holland_code(),
            n,
            invalid,
            invalid_by_reason: profile
                .invalid
                .iter()
                .map(|(reason, count)| InvalidCount {
                    reason: *reason,
                    count: *count,
                })
                .collect(),
        });
    }
    summary.responses = summary.valid + summary.invalid;
    summary.usage = stats
        .usage(study_id)
        .map(|((study, respondent), u)| RespondentUsage {
            study_id: study.clone(),
            respondent: respondent.clone(),
            responses: u.responses,
            requests: u.requests,
            retries: u.retries,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            latency_p50_ms: u.latency.quantile(0.5),
            latency_p90_ms: u.latency.quantile(0.9),
            latency_p99_ms: u.latency.quantile(0.99),
            latency_max_ms: u.latency.max(),
            cost: u.cost,
            cost_currency: u.currency.clone(),
        })
        .collect();
    summary
}
