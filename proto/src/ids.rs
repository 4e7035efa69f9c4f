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
    Uuid::new_v5(
        &RESPONSE_NAMESPACE,
        &task_name(study, respondent, language, instrument, item, replication),
    )
}

/// The UUID name of a task key: each text length-prefixed, then the
/// replication.
fn task_name(
    study: &str,
    respondent: &str,
    language: &str,
    instrument: &str,
    item: &str,
    replication: u32,
) -> Vec<u8> {
    let mut name = Vec::with_capacity(128);
    for part in [study, respondent, language, instrument, item] {
        push_part(&mut name, part);
    }
    name.extend_from_slice(&replication.to_le_bytes());
    name
}

fn push_part(name: &mut Vec<u8>, part: &str) {
    name.extend_from_slice(&(part.len() as u64).to_le_bytes());
    name.extend_from_slice(part.as_bytes());
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
    let mut name = task_name(study, respondent, language, instrument, item, replication);
    for (factor, level) in conditions {
        push_part(&mut name, factor);
        push_part(&mut name, level);
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
    fn ids_never_change() {
        // Journals and stores key rows by these: any change to how the name
        // is built would make a resumed study ask everything again.
        let conditions = [("persona".to_string(), "teacher".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            response_id("paper", "gpt", "zh", "onet-ip-sf", "R01", 7).to_string(),
            "a9c3f3e0-b57c-513b-8f81-5116b5dfcdb8"
        );
        assert_eq!(
            response_id_with_conditions("paper", "gpt", "zh", "onet-ip-sf", "R01", 7, &conditions)
                .to_string(),
            "52e7f046-4fd8-50f0-bd9f-6625947ce106"
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
