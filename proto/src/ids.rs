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
}
