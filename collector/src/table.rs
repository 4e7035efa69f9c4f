//! The final RIASEC table printed by `careers-collector run`.

use std::fmt::Write;

use careers_proto::scale::{self, RIASEC};
use careers_proto::v1::{InvalidReason, Summary};

/// A profile's conditions as `factor=level` pairs joined by commas.
fn condition_label(p: &careers_proto::v1::ProfileSummary) -> String {
    p.conditions
        .iter()
        .map(|(f, l)| format!("{f}={l}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One block per instrument; one row per respondent x language (x condition,
/// when the study has design factors) with the mean rating per area, the
/// Holland code, valid n and invalid count; then usage per respondent, with
/// cost when prices are configured.
pub fn riasec_table(summary: &Summary) -> String {
    let mut out = String::new();
    let condition_width = summary
        .profiles
        .iter()
        .map(|p| condition_label(p).chars().count())
        .max()
        .unwrap_or(0);
    let condition_width = if condition_width > 0 {
        condition_width.max(9)
    } else {
        0
    };
    let mut instruments: Vec<&str> = summary
        .profiles
        .iter()
        .map(|p| p.instrument_id.as_str())
        .collect();
    instruments.dedup();
    let name_width = summary
        .profiles
        .iter()
        .map(|p| p.respondent.chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    for instrument in instruments {
        let _ = writeln!(out, "\n{instrument}: mean rating (1..5) per RIASEC area");
        let _ = write!(out, "{:<name_width$}  {:<4}", "respondent", "lang");
        if condition_width > 0 {
            let _ = write!(out, "  {:<condition_width$}", "condition");
        }
        for s in RIASEC {
            let _ = write!(out, "  {:>5}", scale::letter(s));
        }
        let _ = writeln!(
            out,
            "  {:<7}  {:>6}  {:>7}  {:>7}",
            "holland", "n", "invalid", "refused"
        );
        for p in summary
            .profiles
            .iter()
            .filter(|p| p.instrument_id == instrument)
        {
            let _ = write!(out, "{:<name_width$}  {:<4}", p.respondent, p.language);
            if condition_width > 0 {
                let _ = write!(out, "  {:<condition_width$}", condition_label(p));
            }
            for s in RIASEC {
                match p.scales.iter().find(|x| x.scale == s as i32) {
                    Some(x) if x.n > 0 => {
                        let _ = write!(out, "  {:>5.2}", x.mean);
                    }
                    _ => {
                        let _ = write!(out, "  {:>5}", "-");
                    }
                }
            }
            let refused: u64 = p
                .invalid_by_reason
                .iter()
                .filter(|c| c.reason == InvalidReason::Refusal as i32)
                .map(|c| c.count)
                .sum();
            let _ = writeln!(
                out,
                "  {:<7}  {:>6}  {:>7}  {:>7}",
                p.holland_code, p.n, p.invalid, refused
            );
        }
    }
    if !summary.usage.is_empty() {
        let _ = writeln!(out, "\nusage per respondent");
        let priced = summary.usage.iter().any(|u| !u.cost_currency.is_empty());
        let _ = write!(
            out,
            "{:<name_width$}  {:>9}  {:>7}  {:>11}  {:>11}  {:>22}  {:>8}",
            "respondent",
            "requests",
            "retries",
            "tokens in",
            "tokens out",
            "latency p50/p90/p99 ms",
            "max ms"
        );
        let _ = writeln!(out, "{}", if priced { "  cost" } else { "" });
        for u in &summary.usage {
            let _ = write!(
                out,
                "{:<name_width$}  {:>9}  {:>7}  {:>11}  {:>11}  {:>22}  {:>8}",
                u.respondent,
                u.requests,
                u.retries,
                u.input_tokens,
                u.output_tokens,
                format!(
                    "{}/{}/{}",
                    u.latency_p50_ms, u.latency_p90_ms, u.latency_p99_ms
                ),
                u.latency_max_ms
            );
            if u.cost_currency.is_empty() {
                let _ = writeln!(out);
            } else {
                let _ = writeln!(out, "  {:.4} {}", u.cost, u.cost_currency);
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} responses: {} valid, {} invalid (analyzer revision {})",
        summary.responses, summary.valid, summary.invalid, summary.revision
    );
    out
}
