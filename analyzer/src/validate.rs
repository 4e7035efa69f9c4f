//! Validation of incoming responses. Every check names the offending field
//! with its position in the batch (`responses[3].scale`), so a client can fix
//! exactly what is wrong.

use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{InvalidReason, ItemResponse, Scale};

/// Longest id or label accepted (bytes).
pub const MAX_ID_LEN: usize = 256;
/// Most design factors one response may carry.
pub const MAX_CONDITIONS: usize = 8;
/// Longest raw answer text accepted (bytes).
pub const MAX_RAW_TEXT_LEN: usize = 64 * 1024;

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldViolation {
    /// Path of the field, e.g. `responses[3].scale`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldViolation {
    /// A violation of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn id(prefix: &str, name: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(
            format!("{prefix}.{name}"),
            "must not be empty",
        ));
    }
    if value.len() > MAX_ID_LEN {
        return Err(FieldViolation::new(
            format!("{prefix}.{name}"),
            format!("is {} bytes, at most {MAX_ID_LEN} allowed", value.len()),
        ));
    }
    Ok(())
}

/// Checks one response; `prefix` is its path, e.g. `responses[3]`.
pub fn response(prefix: &str, r: &ItemResponse) -> Result<(), FieldViolation> {
    id(prefix, "response_id", &r.response_id)?;
    id(prefix, "study_id", &r.study_id)?;
    id(prefix, "instrument_id", &r.instrument_id)?;
    id(prefix, "item_id", &r.item_id)?;
    match Scale::try_from(r.scale) {
        Ok(Scale::Unspecified) => {
            return Err(FieldViolation::new(
                format!("{prefix}.scale"),
                "must be set",
            ));
        }
        Err(_) => {
            return Err(FieldViolation::new(
                format!("{prefix}.scale"),
                format!("unknown scale {}", r.scale),
            ));
        }
        Ok(_) => {}
    }
    let Some(respondent) = &r.respondent else {
        return Err(FieldViolation::new(
            format!("{prefix}.respondent"),
            "must be set",
        ));
    };
    id(&format!("{prefix}.respondent"), "name", &respondent.name)?;
    id(prefix, "language", &r.language)?;
    if r.replication == 0 {
        return Err(FieldViolation::new(
            format!("{prefix}.replication"),
            "must be at least 1",
        ));
    }
    match &r.answer {
        None => {
            return Err(FieldViolation::new(
                format!("{prefix}.answer"),
                "must hold a rating or an invalid reason",
            ));
        }
        Some(Answer::Rating(v)) if !(1..=5).contains(v) => {
            return Err(FieldViolation::new(
                format!("{prefix}.rating"),
                format!("{v} is outside 1..5"),
            ));
        }
        Some(Answer::Invalid(inv)) => match InvalidReason::try_from(inv.reason) {
            Ok(InvalidReason::Unspecified) => {
                return Err(FieldViolation::new(
                    format!("{prefix}.invalid.reason"),
                    "must be set",
                ));
            }
            Err(_) => {
                return Err(FieldViolation::new(
                    format!("{prefix}.invalid.reason"),
                    format!("unknown reason {}", inv.reason),
                ));
            }
            Ok(_) => {}
        },
        Some(Answer::Rating(_)) => {}
    }
    if r.conditions.len() > MAX_CONDITIONS {
        return Err(FieldViolation::new(
            format!("{prefix}.conditions"),
            format!(
                "has {} factors, at most {MAX_CONDITIONS} allowed",
                r.conditions.len()
            ),
        ));
    }
    for (factor, level) in &r.conditions {
        let mut chars = factor.chars();
        let column = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && factor.len() <= 64;
        if !column {
            return Err(FieldViolation::new(
                format!("{prefix}.conditions"),
                format!(
                    "factor {factor:?} is not a column name (a letter, then letters, digits or '_', at most 64)"
                ),
            ));
        }
        id(&format!("{prefix}.conditions"), factor, level)?;
    }
    if !(r.cost.is_finite() && r.cost >= 0.0) {
        return Err(FieldViolation::new(
            format!("{prefix}.cost"),
            format!("{} is not a non-negative number", r.cost),
        ));
    }
    if r.raw_text.len() > MAX_RAW_TEXT_LEN {
        return Err(FieldViolation::new(
            format!("{prefix}.raw_text"),
            format!(
                "is {} bytes, at most {MAX_RAW_TEXT_LEN} allowed",
                r.raw_text.len()
            ),
        ));
    }
    for (i, p) in r.option_probabilities.iter().enumerate() {
        if !(1..=5).contains(&p.rating) {
            return Err(FieldViolation::new(
                format!("{prefix}.option_probabilities[{i}].rating"),
                format!("{} is outside 1..5", p.rating),
            ));
        }
        if !(0.0..=1.0).contains(&p.probability) {
            return Err(FieldViolation::new(
                format!("{prefix}.option_probabilities[{i}].probability"),
                format!("{} is outside [0, 1]", p.probability),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use careers_proto::v1::{InvalidAnswer, Respondent};

    fn good() -> ItemResponse {
        ItemResponse {
            response_id: "id".into(),
            study_id: "s".into(),
            instrument_id: "onet-ip-sf".into(),
            item_id: "R01".into(),
            scale: Scale::Realistic as i32,
            respondent: Some(Respondent {
                name: "sim".into(),
                ..Default::default()
            }),
            language: "en".into(),
            replication: 1,
            answer: Some(Answer::Rating(3)),
            ..Default::default()
        }
    }

    fn field(r: &ItemResponse) -> String {
        response("responses[2]", r).expect_err("invalid").field
    }

    #[test]
    fn accepts_a_valid_response() {
        assert_eq!(response("r", &good()), Ok(()));
        let mut r = good();
        r.answer = Some(Answer::Invalid(InvalidAnswer {
            reason: InvalidReason::Refusal as i32,
            detail: String::new(),
        }));
        assert_eq!(response("r", &r), Ok(()));
    }

    #[test]
    fn checks_conditions_and_cost() {
        let mut r = good();
        r.conditions.insert("persona".into(), "teacher".into());
        r.cost = 0.25;
        assert_eq!(response("r", &r), Ok(()));
        let mut bad = r.clone();
        bad.conditions.insert("2x".into(), "a".into());
        let e = response("responses[2]", &bad).expect_err("bad factor");
        assert_eq!(e.field, "responses[2].conditions");
        assert!(e.reason.contains("\"2x\""), "{}", e.reason);
        let mut bad = r.clone();
        bad.conditions.insert("prompt".into(), String::new());
        assert_eq!(field(&bad), "responses[2].conditions.prompt");
        let mut bad = r.clone();
        bad.cost = -1.0;
        assert_eq!(field(&bad), "responses[2].cost");
        let mut bad = r;
        for i in 0..9 {
            bad.conditions.insert(format!("f{i}"), "x".into());
        }
        assert_eq!(field(&bad), "responses[2].conditions");
    }

    #[test]
    fn names_each_bad_field() {
        let mut r = good();
        r.response_id.clear();
        assert_eq!(field(&r), "responses[2].response_id");
        let mut r = good();
        r.scale = 9;
        assert_eq!(field(&r), "responses[2].scale");
        let mut r = good();
        r.scale = 0;
        assert_eq!(field(&r), "responses[2].scale");
        let mut r = good();
        r.answer = Some(Answer::Rating(6));
        assert_eq!(field(&r), "responses[2].rating");
        let mut r = good();
        r.answer = None;
        assert_eq!(field(&r), "responses[2].answer");
        let mut r = good();
        r.respondent = None;
        assert_eq!(field(&r), "responses[2].respondent");
        let mut r = good();
        r.replication = 0;
        assert_eq!(field(&r), "responses[2].replication");
        let mut r = good();
        r.study_id = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(field(&r), "responses[2].study_id");
    }
}
