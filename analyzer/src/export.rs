//! `careers-analyzer export`: the stored responses as one CSV table, a row
//! per response and a column per design factor, ready for
//! `careers-analyzer fit` or R (`read.csv` + `lmer`).
//!
//! Columns: `study, respondent, provider, model, version_label, family,
//! language, instrument, item, scale` (the RIASEC letter), `replication`,
//! then one column per design factor (`ItemResponse.conditions`, sorted by
//! name; empty for a response without that factor), then `rating` (`NA` for
//! an invalid answer, so R and `fit` drop the row), `invalid_reason`,
//! `expected_rating` (`NA` without probabilities), `attempt`,
//! `administration`, `input_tokens`, `output_tokens`, `cost`,
//! `cost_currency`, `latency_ms`, `answered_at` (RFC 3339) and
//! `response_id`.

use std::collections::BTreeSet;
use std::io::Write;

use careers_proto::scale;
use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{Administration, InvalidReason, ItemResponse, Scale};

/// The fixed columns before the factor columns.
pub const LEADING_COLUMNS: &[&str] = &[
    "study",
    "respondent",
    "provider",
    "model",
    "version_label",
    "family",
    "language",
    "instrument",
    "item",
    "scale",
    "replication",
];

/// The fixed columns after the factor columns.
pub const TRAILING_COLUMNS: &[&str] = &[
    "rating",
    "invalid_reason",
    "expected_rating",
    "attempt",
    "administration",
    "input_tokens",
    "output_tokens",
    "cost",
    "cost_currency",
    "latency_ms",
    "answered_at",
    "response_id",
];

/// The header: the fixed columns around the factor columns.
pub fn header(factors: &BTreeSet<String>) -> Vec<String> {
    LEADING_COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(factors.iter().cloned())
        .chain(TRAILING_COLUMNS.iter().map(|c| c.to_string()))
        .collect()
}

/// One response as a row under [`header`]`(factors)`.
pub fn row(r: &ItemResponse, factors: &BTreeSet<String>) -> Vec<String> {
    let who = r.respondent.clone().unwrap_or_default();
    let scale = Scale::try_from(r.scale)
        .ok()
        .and_then(|s| scale::index(s).map(|_| scale::letter(s).to_string()))
        .unwrap_or_default();
    let (rating, invalid_reason) = match &r.answer {
        Some(Answer::Rating(v)) => (v.to_string(), String::new()),
        Some(Answer::Invalid(inv)) => (
            "NA".to_string(),
            InvalidReason::try_from(inv.reason)
                .map(|reason| {
                    reason
                        .as_str_name()
                        .trim_start_matches("INVALID_REASON_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default(),
        ),
        None => ("NA".to_string(), String::new()),
    };
    let tokens = r.tokens.unwrap_or_default();
    let administration = match Administration::try_from(r.administration) {
        Ok(Administration::AllItems) => "all_items",
        _ => "one_item",
    };
    let answered_at = r.answered_at.map(|t| t.to_string()).unwrap_or_default();
    let mut out = vec![
        r.study_id.clone(),
        who.name,
        who.provider,
        who.model,
        who.version_label,
        who.family,
        r.language.clone(),
        r.instrument_id.clone(),
        r.item_id.clone(),
        scale,
        r.replication.to_string(),
    ];
    out.extend(
        factors
            .iter()
            .map(|f| r.conditions.get(f).cloned().unwrap_or_default()),
    );
    out.extend([
        rating,
        invalid_reason,
        if r.option_probabilities.is_empty() {
            "NA".to_string()
        } else {
            r.expected_rating.to_string()
        },
        r.attempt.to_string(),
        administration.to_string(),
        tokens.input_tokens.to_string(),
        tokens.output_tokens.to_string(),
        r.cost.to_string(),
        r.cost_currency.clone(),
        r.latency_ms.to_string(),
        answered_at,
        r.response_id.clone(),
    ]);
    out
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database file does not exist.
    #[error("{0}: no such database file")]
    Missing(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Writing the CSV failed.
    #[error("cannot write the CSV: {0}")]
    Write(#[from] csv::Error),
}

/// Rows read from the store per query.
const PAGE: u32 = 5_000;

/// Exports the responses stored in the database at `path` (of one study, or
/// all with an empty `study_id`) as CSV to `out`, in insertion order, and
/// returns the number of rows. Two passes over the store (the first finds the
/// factor columns), a page at a time, so memory does not grow with rows.
pub async fn export_database<W: Write>(
    path: &std::path::Path,
    study_id: &str,
    out: W,
) -> Result<u64, ExportError> {
    if !path.is_file() {
        return Err(ExportError::Missing(path.display().to_string()));
    }
    let store = crate::store::Store::open(path).await?;
    let mut factors = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = store.page(study_id, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in &page {
            factors.extend(stored.response.conditions.keys().cloned());
        }
    }
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(header(&factors))?;
    let (mut after, mut rows) = (0, 0);
    loop {
        let page = store.page(study_id, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in &page {
            writer.write_record(row(&stored.response, &factors))?;
            rows += 1;
        }
    }
    writer.flush().map_err(csv::Error::from)?;
    Ok(rows)
}

/// Writes `responses` as CSV with a column per factor any of them has.
pub fn write_csv<W: Write>(out: W, responses: &[ItemResponse]) -> Result<(), csv::Error> {
    let factors: BTreeSet<String> = responses
        .iter()
        .flat_map(|r| r.conditions.keys().cloned())
        .collect();
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(header(&factors))?;
    for r in responses {
        writer.write_record(row(r, &factors))?;
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use careers_proto::v1::{InvalidAnswer, Respondent, TokenUsage};

    fn response(item: &str, answer: Answer, persona: Option<&str>) -> ItemResponse {
        let mut r = ItemResponse {
            response_id: format!("id-{item}"),
            study_id: "s".into(),
            instrument_id: "onet-ip-sf".into(),
            item_id: item.into(),
            scale: Scale::Social as i32,
            respondent: Some(Respondent {
                name: "sim".into(),
                provider: "simulated".into(),
                model: "m, with comma".into(),
                ..Default::default()
            }),
            language: "zh".into(),
            replication: 2,
            answer: Some(answer),
            tokens: Some(TokenUsage {
                input_tokens: 10,
                output_tokens: 2,
            }),
            attempt: 1,
            ..Default::default()
        };
        if let Some(p) = persona {
            r.conditions.insert("persona".into(), p.into());
        }
        r
    }

    #[test]
    fn writes_a_column_per_factor_and_na_for_invalid_answers() {
        let rows = vec![
            response("S01", Answer::Rating(4), Some("teacher")),
            response(
                "S02",
                Answer::Invalid(InvalidAnswer {
                    reason: InvalidReason::Refusal as i32,
                    detail: "x".into(),
                }),
                None,
            ),
        ];
        let mut out = Vec::new();
        write_csv(&mut out, &rows).expect("csv");
        let text = String::from_utf8(out).expect("utf-8");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let head: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(String::from)
            .collect();
        let col = |name: &str| head.iter().position(|h| h == name).expect(name);
        assert_eq!(head[LEADING_COLUMNS.len()], "persona");
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(&records[0][col("persona")], "teacher");
        assert_eq!(&records[0][col("rating")], "4");
        assert_eq!(&records[0][col("scale")], "S");
        assert_eq!(&records[0][col("model")], "m, with comma");
        assert_eq!(&records[0][col("expected_rating")], "NA");
        assert_eq!(&records[1][col("persona")], "");
        assert_eq!(&records[1][col("rating")], "NA");
        assert_eq!(&records[1][col("invalid_reason")], "refusal");
        assert_eq!(&records[1][col("administration")], "one_item");
    }
}
