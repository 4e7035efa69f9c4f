//! Deterministic response ids: part of the contract, so that any client that
//! resends an answer resends it under the same id.

use uuid::Uuid;

/// Namespace of careers response ids (a fixed, random UUID).
pub const RESPONSE_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_2c4e_8b7a_4f0e_9a53_1c2d_7e8f_4b61);

/// The response id of a task: UUID v5 over its key fields, each
/// length-prefixed so that no two different keys share a name.
pub fn response_id(
    study: &str,
    respondent: &str,
    language: &str,
    instrument: &str,
    item: &str,
    replication: u32,
) -> Uuid {
    let mut name = Vec::with_capacity(64);
    for part in [study, respondent, language, instrument, item] {
        name.extend_from_slice(&(part.len() as u64).to_le_bytes());
        name.extend_from_slice(part.as_bytes());
    }
    name.extend_from_slice(&replication.to_le_bytes());
    Uuid::new_v5(&RESPONSE_NAMESPACE, &name)
}

/// The response id of a task given under design-factor levels (`factor ->
/// level`, see `StudySpec.factors`). Without conditions it is
/// [`response_id`]; with them, the sorted pairs are appended to the name, so
/// each condition of an item has its own id.
pub fn response_id_with_conditions(
    study: &str,
    respondent: &str,
    language: &str,
    instrument: &str,
    item: &str,
    replication: u32,
    conditions: &std::collections::BTreeMap<String, String>,
) -> Uuid {
    if conditions.is_empty() {
        return response_id(study, respondent, language, instrument, item, replication);
    }
    let mut name = Vec::with_capacity(128);
    for part in [study, respondent, language, instrument, item] {
        name.extend_from_slice(&(part.len() as u64).to_le_bytes());
        name.extend_from_slice(part.as_bytes());
    }
    name.extend_from_slice(&replication.to_le_bytes());
    for (factor, level) in conditions {
        for part in [factor, level] {
            name.extend_from_slice(&(part.len() as u64).to_le_bytes());
            name.extend_from_slice(part.as_bytes());
        }
    }
    Uuid::new_v5(&RESPONSE_NAMESPACE, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = response_id("s", "r", "en", "i", "R01", 1);
        assert_eq!(a, response_id("s", "r", "en", "i", "R01", 1));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, response_id("s", "r", "en", "i", "R01", 2));
        assert_ne!(
            response_id("ab", "c", "", "", "", 1),
            response_id("a", "bc", "", "", "", 1)
        );
    }

    #[test]
    fn conditions_give_their_own_ids() {
        use std::collections::BTreeMap;
        let none = BTreeMap::new();
        let plain = response_id("s", "r", "en", "i", "R01", 1);
        assert_eq!(
            response_id_with_conditions("s", "r", "en", "i", "R01", 1, &none),
            plain
        );
        let level = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(f, l)| (f.to_string(), l.to_string()))
                .collect()
        };
        let teacher = response_id_with_conditions(
            "s",
            "r",
            "en",
            "i",
            "R01",
            1,
            &level(&[("persona", "teacher")]),
        );
        assert_ne!(teacher, plain);
        assert_ne!(
            teacher,
            response_id_with_conditions(
                "s",
                "r",
                "en",
                "i",
                "R01",
                1,
                &level(&[("persona", "nurse")])
            )
        );
        assert_ne!(
            response_id_with_conditions("s", "r", "en", "i", "R01", 1, &level(&[("ab", "c")])),
            response_id_with_conditions("s", "r", "en", "i", "R01", 1, &level(&[("a", "bc")]))
        );
    }
}
