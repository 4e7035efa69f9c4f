//! Turning an LLM's raw text into a rating, or into the reason there is none.
//!
//! Rules, in order:
//! 1. Full-width digits are folded to ASCII; phrases that describe the scale
//!    itself ("1-5", "1 to 5", "out of 5", "1到5") are removed.
//! 2. If the text contains standalone numbers, they decide: exactly one
//!    distinct value in 1..=5 is the rating; two different values are
//!    `MULTIPLE_RATINGS`; only values outside 1..=5 are `OUT_OF_RANGE`.
//!    ("4 (Like)" is one rating: a label agreeing with the digit is fine.)
//! 3. Otherwise option labels decide, in any of the instrument's languages,
//!    longest first so "Strongly Like" is not also read as "Like", and
//!    case-insensitively on word boundaries for Latin script.
//! 4. Otherwise the text is a refusal if it says so ("As an AI ..."), else
//!    `NO_RATING`; empty text is `EMPTY`.

use careers_proto::v1::InvalidReason;

/// A parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A rating in 1..=5.
    Rating(u32),
    /// No usable rating.
    Invalid {
        /// Category.
        reason: InvalidReason,
        /// Detail for humans.
        detail: String,
    },
}

fn invalid(reason: InvalidReason, detail: impl Into<String>) -> Parsed {
    Parsed::Invalid {
        reason,
        detail: detail.into(),
    }
}

const REFUSALS: &[&str] = &[
    "as an ai",
    "as a language model",
    "as an artificial intelligence",
    "i don't have personal",
    "i do not have personal",
    "i don't have preferences",
    "i cannot express",
    "i can't express",
    "i'm unable to",
    "i am unable to",
    "作为一个人工智能",
    "作为人工智能",
    "作为一个ai",
    "作为ai",
    "作为一个语言模型",
    "我没有个人",
    "我无法",
];

const SCALE_PHRASES: &[&str] = &[
    "1-5",
    "1 - 5",
    "1–5",
    "1 to 5",
    "1 through 5",
    "from 1 to 5",
    "out of 5",
    "/5",
    "1到5",
    "1至5",
    "1~5",
    "1～5",
];

fn normalise(text: &str) -> String {
    let folded: String = text
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_u32(c as u32 - '０' as u32 + '0' as u32).unwrap_or(c),
            '／' => '/',
            _ => c,
        })
        .collect();
    folded.to_lowercase()
}

/// Parses `text` against the instrument's option labels (`(label, rating)` in
/// every language).
pub fn parse(text: &str, labels: &[(String, u32)]) -> Parsed {
    if text.trim().is_empty() {
        return invalid(InvalidReason::Empty, "the answer is empty");
    }
    let mut t = normalise(text);
    // "x/5" and "x out of 5" name a rating; keep x and drop the scale part.
    for phrase in SCALE_PHRASES {
        t = t.replace(phrase, " ");
    }

    let numbers = standalone_numbers(&t);
    if !numbers.is_empty() {
        let mut in_range: Vec<u64> = numbers
            .iter()
            .copied()
            .filter(|n| (1..=5).contains(n))
            .collect();
        in_range.sort_unstable();
        in_range.dedup();
        return match in_range.as_slice() {
            [r] => Parsed::Rating(*r as u32),
            [] => invalid(
                InvalidReason::OutOfRange,
                format!("found {} but the scale is 1..5", join(&numbers)),
            ),
            many => invalid(
                InvalidReason::MultipleRatings,
                format!("found ratings {}", join(many)),
            ),
        };
    }

    let mut by_len: Vec<(String, u32)> =
        labels.iter().map(|(l, r)| (l.to_lowercase(), *r)).collect();
    by_len.sort_by(|a, b| {
        b.0.chars()
            .count()
            .cmp(&a.0.chars().count())
            .then(a.1.cmp(&b.1))
    });
    let mut found: Vec<u32> = Vec::new();
    let mut masked = t.clone();
    for (label, rating) in &by_len {
        if label.is_empty() {
            continue;
        }
        while let Some(pos) = find_label(&masked, label) {
            found.push(*rating);
            let mask: String = " ".repeat(label.len());
            masked.replace_range(pos..pos + label.len(), &mask);
        }
    }
    found.sort_unstable();
    found.dedup();
    match found.as_slice() {
        [r] => return Parsed::Rating(*r),
        [] => {}
        many => {
            let many: Vec<u64> = many.iter().map(|&r| u64::from(r)).collect();
            return invalid(
                InvalidReason::MultipleRatings,
                format!("found options {}", join(&many)),
            );
        }
    }

    if REFUSALS.iter().any(|p| t.contains(p)) {
        return invalid(InvalidReason::Refusal, "the respondent declined to answer");
    }
    invalid(InvalidReason::NoRating, "no rating or option label found")
}

fn join(ns: &[u64]) -> String {
    ns.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Maximal digit runs not touching letters, '.', or ',' followed by digits
/// (so "3.5" and "1,000" are not read as ratings 3 and 5).
fn standalone_numbers(t: &str) -> Vec<u64> {
    let chars: Vec<char> = t.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let before = start.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i).copied();
        let after2 = chars.get(i + 1).copied();
        let glued_before = before.is_some_and(|c| c.is_ascii_alphabetic() || c == '.' || c == ',');
        let decimal_after =
            matches!(after, Some('.') | Some(',')) && after2.is_some_and(|c| c.is_ascii_digit());
        let glued_after = after.is_some_and(|c| c.is_ascii_alphabetic());
        if glued_before || decimal_after || glued_after {
            // Part of a word, a decimal or an identifier ("gpt4", "3.5"): not a rating.
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == ',')
            {
                if chars[i] == '.' && !chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
                    break;
                }
                i += 1;
            }
            continue;
        }
        let digits: String = chars[start..i].iter().collect();
        out.push(digits.parse().unwrap_or(u64::MAX));
    }
    out
}

/// Byte position of `label` in `text`; Latin labels must sit on word boundaries.
fn find_label(text: &str, label: &str) -> Option<usize> {
    let latin = label.chars().any(|c| c.is_ascii_alphabetic());
    let mut from = 0;
    while let Some(rel) = text[from..].find(label) {
        let pos = from + rel;
        let end = pos + label.len();
        let before_ok = !latin
            || !text[..pos]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric);
        let after_ok = !latin
            || !text[end..]
                .chars()
                .next()
                .is_some_and(char::is_alphanumeric);
        if before_ok && after_ok {
            return Some(pos);
        }
        from = pos + label.chars().next().map_or(1, char::len_utf8);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels() -> Vec<(String, u32)> {
        let en = [
            "Strongly Dislike",
            "Dislike",
            "Unsure",
            "Like",
            "Strongly Like",
        ];
        let zh = ["非常不喜欢", "不喜欢", "不确定", "喜欢", "非常喜欢"];
        en.iter()
            .chain(zh.iter())
            .enumerate()
            .map(|(i, l)| (l.to_string(), (i % 5) as u32 + 1))
            .collect()
    }

    fn rating(text: &str) -> Parsed {
        parse(text, &labels())
    }

    fn reason(text: &str) -> InvalidReason {
        match rating(text) {
            Parsed::Invalid { reason, .. } => reason,
            Parsed::Rating(r) => panic!("{text:?} parsed as {r}"),
        }
    }

    #[test]
    fn digits_in_every_form() {
        assert_eq!(rating("4"), Parsed::Rating(4));
        assert_eq!(rating(" 2.\n"), Parsed::Rating(2));
        assert_eq!(rating("４"), Parsed::Rating(4));
        assert_eq!(rating("我的答案是：５"), Parsed::Rating(5));
        assert_eq!(rating("I would rate this 3 (Unsure)."), Parsed::Rating(3));
        assert_eq!(rating("4 - Like"), Parsed::Rating(4));
        assert_eq!(
            rating("On a scale of 1 to 5, I'd say 4."),
            Parsed::Rating(4)
        );
        assert_eq!(rating("Rating: 2/5"), Parsed::Rating(2));
        assert_eq!(rating("As GPT-3.5, I pick 5"), Parsed::Rating(5));
    }

    #[test]
    fn labels_in_both_languages() {
        assert_eq!(rating("Strongly Like"), Parsed::Rating(5));
        assert_eq!(rating("strongly dislike"), Parsed::Rating(1));
        assert_eq!(rating("Dislike."), Parsed::Rating(2));
        assert_eq!(rating("My answer: Like"), Parsed::Rating(4));
        assert_eq!(rating("非常喜欢"), Parsed::Rating(5));
        assert_eq!(rating("非常不喜欢"), Parsed::Rating(1));
        assert_eq!(rating("我的选择是：不喜欢。"), Parsed::Rating(2));
        assert_eq!(rating("不确定"), Parsed::Rating(3));
    }

    #[test]
    fn invalid_answers_have_reasons() {
        assert_eq!(reason(""), InvalidReason::Empty);
        assert_eq!(reason("   "), InvalidReason::Empty);
        assert_eq!(reason("3 or 4"), InvalidReason::MultipleRatings);
        assert_eq!(reason("Like or Dislike"), InvalidReason::MultipleRatings);
        assert_eq!(reason("7"), InvalidReason::OutOfRange);
        assert_eq!(reason("0"), InvalidReason::OutOfRange);
        assert_eq!(
            reason("As an AI, I don't have personal preferences."),
            InvalidReason::Refusal
        );
        assert_eq!(
            reason("作为一个人工智能，我没有个人喜好。"),
            InvalidReason::Refusal
        );
        assert_eq!(reason("Interesting question!"), InvalidReason::NoRating);
        assert_eq!(reason("likely"), InvalidReason::NoRating);
    }

    fn render(rating: u32, style: usize) -> String {
        let en = [
            "Strongly Dislike",
            "Dislike",
            "Unsure",
            "Like",
            "Strongly Like",
        ];
        let zh = ["非常不喜欢", "不喜欢", "不确定", "喜欢", "非常喜欢"];
        let i = rating as usize - 1;
        match style % 8 {
            0 => rating.to_string(),
            1 => char::from_u32('０' as u32 + rating)
                .map(String::from)
                .unwrap_or_default(),
            2 => en[i].to_string(),
            3 => zh[i].to_string(),
            4 => format!("I would choose {rating} ({}).", en[i]),
            5 => format!("我的答案是：{rating}（{}）", zh[i]),
            6 => format!("Answer: {}", en[i].to_uppercase()),
            _ => format!("{rating}/5"),
        }
    }

    proptest! {
        #[test]
        fn every_rendered_rating_parses_back(rating in 1u32..=5, style in 0usize..8, pad in "[ \n\t]{0,3}") {
            let text = format!("{pad}{}{pad}", render(rating, style));
            prop_assert_eq!(parse(&text, &labels()), Parsed::Rating(rating));
        }

        #[test]
        fn two_different_digits_are_never_a_rating(a in 1u32..=5, b in 1u32..=5, sep in "( or | and |, | / )") {
            prop_assume!(a != b);
            let text = format!("{a}{sep}{b}");
            let parsed = parse(&text, &labels());
            prop_assert!(
                matches!(parsed, Parsed::Invalid { reason: InvalidReason::MultipleRatings, .. }),
                "{:?} -> {:?}", text, parsed
            );
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text, &labels());
        }

        #[test]
        fn text_without_digits_or_labels_is_invalid(text in "[a-km-tv-z ,.!?]{0,80}") {
            // No 'l' or 'u' means no "like"/"unsure" labels; no digits either.
            let parsed = parse(&text, &labels());
            prop_assert!(matches!(parsed, Parsed::Invalid { .. }), "{:?} -> {:?}", text, parsed);
        }
    }
}
