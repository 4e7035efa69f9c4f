//! RIASEC areas: letters, order and conversions, shared by both services.

use crate::v1::Scale;

/// The six areas in Holland's R, I, A, S, E, C order.
pub const RIASEC: [Scale; 6] = [
    Scale::Realistic,
    Scale::Investigative,
    Scale::Artistic,
    Scale::Social,
    Scale::Enterprising,
    Scale::Conventional,
];

/// The one-letter code of an area (`'?'` for `Unspecified`).
pub fn letter(scale: Scale) -> char {
    match scale {
        Scale::Realistic => 'R',
        Scale::Investigative => 'I',
        Scale::Artistic => 'A',
        Scale::Social => 'S',
        Scale::Enterprising => 'E',
        Scale::Conventional => 'C',
        Scale::Unspecified => '?',
    }
}

/// The area for a one-letter code (case-insensitive).
pub fn from_letter(c: char) -> Option<Scale> {
    RIASEC
        .into_iter()
        .find(|s| letter(*s) == c.to_ascii_uppercase())
}

/// Position of an area in [`RIASEC`] (`None` for `Unspecified`).
pub fn index(scale: Scale) -> Option<usize> {
    RIASEC.iter().position(|s| *s == scale)
}

/// The Holland code: letters of the three highest means, highest first.
/// Ties keep RIASEC order, so the result is deterministic.
pub fn holland_code(means: &[f64; 6]) -> String {
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by(|&a, &b| means[b].total_cmp(&means[a]).then(a.cmp(&b)));
    order.iter().take(3).map(|&i| letter(RIASEC[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip() {
        for s in RIASEC {
            assert_eq!(from_letter(letter(s)), Some(s));
            assert_eq!(from_letter(letter(s).to_ascii_lowercase()), Some(s));
        }
        assert_eq!(from_letter('x'), None);
    }

    #[test]
    fn holland_code_orders_by_mean_then_riasec() {
        assert_eq!(holland_code(&[1.0, 2.0, 4.5, 4.7, 3.0, 2.0]), "SAE");
        assert_eq!(holland_code(&[3.0, 3.0, 3.0, 3.0, 3.0, 3.0]), "RIA");
    }
}
