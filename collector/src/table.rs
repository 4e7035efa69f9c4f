//! The final RIASEC table printed by `careers-collector run`.

use std::fmt::Write;

use careers_proto::scale::{self, RIASEC};
use careers_proto::v1::Summary;

/// One block per instrument; one row per respondent x language with the mean
/// rating per area, the Holland code, valid n and invalid count.
pub fn riasec_table(summary: &Summary) -> String {
    let mut out = String::new();
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
        for s in RIASEC {
            let _ = write!(out, "  {:>5}", scale::letter(s));
        }
        let _ = writeln!(out, "  {:<7}  {:>6}  {:>7}", "holland", "n", "invalid");
        for p in summary
            .profiles
            .iter()
            .filter(|p| p.instrument_id == instrument)
        {
            let _ = write!(out, "{:<name_width$}  {:<4}", p.respondent, p.language);
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
            let _ = writeln!(out, "  {:<7}  {:>6}  {:>7}", p.holland_code, p.n, p.invalid);
        }
    }
    if !summary.usage.is_empty() {
        let _ = writeln!(out, "\nusage per respondent");
        let _ = writeln!(
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
        for u in &summary.usage {
            let _ = writeln!(
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
        }
    }
    let _ = writeln!(
        out,
        "\n{} responses: {} valid, {} invalid (analyzer revision {})",
        summary.responses, summary.valid, summary.invalid, summary.revision
    );
    out
}
