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
//!
//! A reply to a batch prompt answers many activities, a line each
//! ([`parse_numbered`]):
//! 1. A line answers activity N when, after list and markdown marks ("- ",
//!    "**", "| ", "#", "(") and an optional word such as "Activity", "Item",
//!    "Q", "活动" or "第", it starts with N followed by a separator (":",
//!    ".", ")", "-", "|", "、", "→" or a full-width form) or by "项"/"题";
//!    after such a word the separator may be left out. The rest of the line is read by the
//!    rules above. "5 = Like" (the option list repeated) and "3.5" are not
//!    answer lines; a line holding several "N: answer" pairs ("1: 4, 2: 5")
//!    is split into one answer line each.
//! 2. Other lines (a preamble, code fences, a table header) answer nothing,
//!    except that a line directly below an answer line that has found
//!    nothing yet continues it ("**1. Build kitchen cabinets**" then
//!    "Rating: 4"); a blank line ends that.
//! 3. Activity numbers outside 1..=count are ignored. An activity answered
//!    twice with different ratings is `MULTIPLE_RATINGS`; an unusable repeat
//!    beside a rating is dropped. An activity never answered is `NO_RATING`
//!    ("activity N is missing from the answer").
//! 4. A reply with no answer line at all is `EMPTY` for every activity if it
//!    is empty, `REFUSAL` for every activity if it refuses, else every
//!    activity is missing.

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

/// A refusal the provider reported itself (not read from the text).
pub fn refusal(detail: impl Into<String>) -> Parsed {
    invalid(InvalidReason::Refusal, detail)
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

/// Parses a reply answering `count` activities at once (the batch prompt's
/// `<activity number>: <option number>` lines) into exactly `count` entries:
/// entry `i` is activity `i + 1`'s rating or reason, with the part of the
/// reply that answered it as written (its lines joined with `\n`; empty when
/// the activity is missing), so that each item's response keeps its own raw
/// text. A reply with no answer line gives every activity the reply's own
/// result (see the module rules) and, for a refusal, the whole reply.
pub fn parse_numbered(text: &str, count: usize, labels: &[(String, u32)]) -> Vec<(Parsed, String)> {
    if text.trim().is_empty() {
        return vec![
            (
                invalid(InvalidReason::Empty, "the answer is empty"),
                String::new()
            );
            count
        ];
    }
    let mut answers: Vec<Vec<NumberedLine>> = vec![Vec::new(); count];
    let mut found_any = false;
    // The activity a following line may continue: set while its answer has
    // found nothing yet and no blank line has intervened.
    let mut open: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("```") || line.starts_with("~~~") || is_rule(line) {
            open = None;
            continue;
        }
        for piece in answer_pieces(line) {
            let raw = piece.trim_end_matches(|c: char| c.is_whitespace() || ",;，；、".contains(c));
            match activity_number(piece) {
                Some((n, at)) => {
                    open = None;
                    let Some(slot) = n.checked_sub(1).and_then(|i| usize::try_from(i).ok()) else {
                        continue;
                    };
                    let Some(lines) = answers.get_mut(slot) else {
                        continue;
                    };
                    found_any = true;
                    lines.push(NumberedLine {
                        raw: raw.to_string(),
                        answer: piece[at..].to_string(),
                    });
                    open = Some(slot);
                }
                None => {
                    if let Some(last) = open.and_then(|i| answers[i].last_mut()) {
                        last.raw.push('\n');
                        last.raw.push_str(raw);
                        last.answer.push('\n');
                        last.answer.push_str(piece);
                    }
                }
            }
            if open
                .and_then(|i| answers[i].last())
                .is_some_and(|last| !found_nothing(&parse(&last.answer, labels)))
            {
                open = None;
            }
        }
    }

    if !found_any {
        let whole = parse(text, labels);
        if let Parsed::Invalid {
            reason: InvalidReason::Refusal,
            ..
        } = whole
        {
            return vec![(whole, text.trim().to_string()); count];
        }
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, lines)| merge(i + 1, &lines, labels))
        .collect()
}

/// One activity's answer line (with any lines continuing it).
#[derive(Debug, Clone)]
struct NumberedLine {
    /// As written, for the response's raw text.
    raw: String,
    /// What follows the activity number, for [`parse`].
    answer: String,
}

/// One activity's result from every line that answered it.
fn merge(number: usize, lines: &[NumberedLine], labels: &[(String, u32)]) -> (Parsed, String) {
    let raw = lines
        .iter()
        .map(|l| l.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let parsed: Vec<Parsed> = lines.iter().map(|l| parse(&l.answer, labels)).collect();
    let mut ratings: Vec<u64> = parsed
        .iter()
        .filter_map(|p| match p {
            Parsed::Rating(r) => Some(u64::from(*r)),
            Parsed::Invalid { .. } => None,
        })
        .collect();
    ratings.sort_unstable();
    ratings.dedup();
    let result = match ratings.as_slice() {
        [r] => Parsed::Rating(*r as u32),
        [] => match parsed.iter().find(|p| !found_nothing(p)).or(parsed.first()) {
            Some(p) => p.clone(),
            None => invalid(
                InvalidReason::NoRating,
                format!("activity {number} is missing from the answer"),
            ),
        },
        many => invalid(
            InvalidReason::MultipleRatings,
            format!(
                "activity {number} is answered more than once: {}",
                join(many)
            ),
        ),
    };
    (result, raw)
}

/// Whether an answer line has not decided anything yet (so the next line may
/// continue it, and a repeat of the activity may override it).
fn found_nothing(parsed: &Parsed) -> bool {
    matches!(
        parsed,
        Parsed::Invalid {
            reason: InvalidReason::Empty | InvalidReason::NoRating,
            ..
        }
    )
}

/// A table rule (`|---|:--|`), a horizontal rule or the like: no words.
fn is_rule(line: &str) -> bool {
    line.chars().all(|c| "|-:+=*_ \t—".contains(c))
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || ('０'..='９').contains(&c)
}

fn digit_value(c: char) -> u64 {
    match c {
        '０'..='９' => u64::from(c as u32 - '０' as u32),
        _ => u64::from(c as u32 - '0' as u32),
    }
}

/// Marks before an activity number: list bullets, markdown emphasis,
/// headings, table cells, brackets.
const LEAD_MARKS: &str = "-*+•·>|#`_([（【 \t";
/// Marks between the number and its separator ("**1**:").
const CLOSING_MARKS: &str = "*_` \t";
/// What separates an activity number from its answer. Not '=': "5 = Like"
/// is the option list repeated, not activity 5.
const SEPARATORS: &str = ":：.．。)）]】、-–—|｜→";
/// Words that may precede an activity number, longest first.
const ACTIVITY_WORDS: &[&str] = &[
    "activity", "question", "number", "item", "no.", "q", "活动", "项目", "题目", "问题", "第",
];
/// Counters that may follow the number ("第1项").
const COUNTERS: &str = "项题条个号";

/// The activity number a line starts with and the byte offset where its
/// answer begins (module rule 1); `None` if the line does not start with one.
/// A number too large for `u64` is `u64::MAX` (out of range, so ignored).
fn activity_number(line: &str) -> Option<(u64, usize)> {
    let mut at = skip(line, 0, LEAD_MARKS);
    let mut worded = false;
    if let Some(word) = ACTIVITY_WORDS.iter().find(|w| {
        line.get(at..at + w.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(w))
    }) {
        at = skip(line, at + word.len(), " \t#");
        worded = true;
    }
    let start = at;
    let mut number: u64 = 0;
    for c in line[start..].chars().take_while(|&c| is_digit(c)) {
        number = number.saturating_mul(10).saturating_add(digit_value(c));
        at += c.len_utf8();
    }
    if at == start {
        return None;
    }
    let mut rest = line[at..].chars();
    let decimal =
        matches!(rest.next(), Some('.' | ',' | '．')) && rest.next().is_some_and(is_digit);
    if decimal {
        return None;
    }
    let mut counted = false;
    if let Some(c) = line[at..].chars().next().filter(|&c| COUNTERS.contains(c)) {
        at += c.len_utf8();
        counted = true;
    }
    let before_separator = at;
    at = skip(line, at, CLOSING_MARKS);
    match line[at..].chars().next() {
        Some(c) if SEPARATORS.contains(c) => {
            at = skip(line, at + c.len_utf8(), CLOSING_MARKS);
            Some((number, at))
        }
        _ if worded || counted => Some((number, before_separator)),
        // A bare "4" or "4 (Like)" (an answer continuing the line above),
        // or "5 = Like" (the options repeated).
        _ => None,
    }
}

/// The byte offset after the characters of `set` starting at `at`.
fn skip(line: &str, at: usize, set: &str) -> usize {
    at + line[at..]
        .chars()
        .take_while(|&c| set.contains(c))
        .map(char::len_utf8)
        .sum::<usize>()
}

/// `line` split before each "N:" that follows another on the same line
/// ("1: 4, 2: 5, 3: 3"); a line with one such pair is returned whole.
fn answer_pieces(line: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut starts = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        let after_gap = i == 0 || {
            let before = chars[i - 1].1;
            before.is_whitespace() || ",;，；、|".contains(before)
        };
        if !is_digit(c) || !after_gap {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && is_digit(chars[j].1) {
            j += 1;
        }
        while j < chars.len() && chars[j].1.is_whitespace() {
            j += 1;
        }
        if chars.get(j).is_some_and(|&(_, c)| c == ':' || c == '：') {
            starts.push(pos);
        }
        i = j.max(i + 1);
    }
    if starts.len() < 2 {
        return vec![line];
    }
    let mut pieces = Vec::with_capacity(starts.len());
    let mut from = 0;
    for &s in &starts[1..] {
        pieces.push(&line[from..s]);
        from = s;
    }
    pieces.push(&line[from..]);
    pieces
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

    /// The interest form's option labels, rating `i + 1` at index `i`.
    const EN: [&str; 5] = [
        "Strongly Dislike",
        "Dislike",
        "Unsure",
        "Like",
        "Strongly Like",
    ];
    const ZH: [&str; 5] = ["非常不喜欢", "不喜欢", "不确定", "喜欢", "非常喜欢"];

    fn labels() -> Vec<(String, u32)> {
        EN.iter()
            .chain(ZH.iter())
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
        let i = rating as usize - 1;
        match style % 8 {
            0 => rating.to_string(),
            1 => char::from_u32('０' as u32 + rating)
                .map(String::from)
                .unwrap_or_default(),
            2 => EN[i].to_string(),
            3 => ZH[i].to_string(),
            4 => format!("I would choose {rating} ({}).", EN[i]),
            5 => format!("我的答案是：{rating}（{}）", ZH[i]),
            6 => format!("Answer: {}", EN[i].to_uppercase()),
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

    fn numbered(text: &str, count: usize) -> Vec<Parsed> {
        parse_numbered(text, count, &labels())
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    fn missing(n: usize) -> Parsed {
        invalid(
            InvalidReason::NoRating,
            format!("activity {n} is missing from the answer"),
        )
    }

    fn reasons(parsed: &[Parsed]) -> Vec<Option<InvalidReason>> {
        parsed
            .iter()
            .map(|p| match p {
                Parsed::Rating(_) => None,
                Parsed::Invalid { reason, .. } => Some(*reason),
            })
            .collect()
    }

    #[test]
    fn numbered_lines_in_every_form() {
        for (line, r) in [
            ("1: 4", 4),
            ("1. 4", 4),
            ("1) Like", 4),
            ("1 - Strongly Like", 5),
            ("Activity 1: 4 (Like)", 4),
            ("activity #1: 2", 2),
            ("活动1：4", 4),
            ("1：４", 4),
            ("１：２", 2),
            ("**1.** 4", 4),
            ("**1**: 3", 3),
            ("- 1: 4", 4),
            ("* 1. Dislike", 2),
            ("| 1 | 4 |", 4),
            ("| 1 | Build kitchen cabinets | 4 (Like) |", 4),
            ("### 1. 5", 5),
            ("(1) 1", 1),
            ("[1] Unsure", 3),
            ("第1项：非常喜欢", 5),
            ("第1题 2", 2),
            ("1、不喜欢", 2),
            ("1 → 4", 4),
            ("Q1: 4", 4),
            ("1. Build kitchen cabinets: 4", 4),
            ("1. Build kitchen cabinets - Strongly Dislike", 1),
            ("1: 4/5", 4),
            ("1:4", 4),
            ("1.4", 0),
        ] {
            let expected = if r == 0 {
                missing(1)
            } else {
                Parsed::Rating(r)
            };
            assert_eq!(numbered(line, 1), vec![expected], "{line:?}");
        }
    }

    #[test]
    fn a_chatty_reply_is_read_line_by_line() {
        let text = "Here are my answers for the 4 activities:\n\n\
                    ```\n1: 4\n\n2: 2\n3: Strongly Like\n4: 3\n```\n\n\
                    Let me know if you'd like me to explain any of these!";
        let got = parse_numbered(text, 4, &labels());
        let want = [
            (4, "1: 4"),
            (2, "2: 2"),
            (5, "3: Strongly Like"),
            (3, "4: 3"),
        ];
        for ((parsed, raw), (r, line)) in got.iter().zip(want) {
            assert_eq!((parsed, raw.as_str()), (&Parsed::Rating(r), line));
        }
        assert_eq!(got.len(), 4);

        let table = "| # | Activity | Rating |\n|---|:---|---:|\n\
                     | 1 | Build kitchen cabinets | 4 |\n| 2 | Lay brick or tile | 1 |";
        assert_eq!(
            numbered(table, 2),
            vec![Parsed::Rating(4), Parsed::Rating(1)]
        );

        let zh = "以下是我的回答：\n活动1：４\n活动2：非常不喜欢\n第3项：3（不确定）";
        assert_eq!(
            numbered(zh, 3),
            vec![Parsed::Rating(4), Parsed::Rating(1), Parsed::Rating(3)]
        );
    }

    #[test]
    fn an_answer_may_continue_on_the_line_below() {
        let text = "**1. Build kitchen cabinets**\nRating: 4 (Like)\n\n\
                    **2. Lay brick or tile**\n   - 2 (Dislike)\n\n\
                    3. Develop a new medicine\n\nI would rather not say, 5.";
        let got = parse_numbered(text, 3, &labels());
        assert_eq!(got[0].0, Parsed::Rating(4));
        assert_eq!(got[0].1, "**1. Build kitchen cabinets**\nRating: 4 (Like)");
        assert_eq!(got[1].0, Parsed::Rating(2));
        // A blank line ends an answer: the closing remark is nobody's rating.
        assert_eq!(
            reasons(&[got[2].0.clone()]),
            vec![Some(InvalidReason::NoRating)]
        );
        assert_eq!(got[2].1, "3. Develop a new medicine");
        // A line that already has a rating is not continued.
        assert_eq!(
            numbered("1: 4\nThough I might say 2 on a bad day.", 1),
            vec![Parsed::Rating(4)]
        );
    }

    #[test]
    fn several_pairs_on_one_line_are_split() {
        let got = parse_numbered("1: 4, 2: 5; 3：１ 4: Like", 4, &labels());
        let ratings: Vec<Parsed> = got.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            ratings,
            [4, 5, 1, 4].map(Parsed::Rating).to_vec(),
            "{got:?}"
        );
        assert_eq!(got[0].1, "1: 4");
        assert_eq!(got[2].1, "3：１");
        assert_eq!(
            numbered("Activity 1: 2, Activity 2: 3", 2),
            vec![Parsed::Rating(2), Parsed::Rating(3)]
        );
        // One pair with a time in it is one answer.
        assert_eq!(numbered("1: 4 (at 10:30)", 1), vec![Parsed::Rating(4)]);
    }

    #[test]
    fn numbered_answers_that_are_not_ratings() {
        // Out of range activity numbers are ignored, wherever they appear.
        assert_eq!(
            numbered("0: 3\n1: 4\n2: 5\n3: 1\n61: 2", 2),
            vec![Parsed::Rating(4), Parsed::Rating(5)]
        );
        // The option list repeated is not activity 5, nor a preamble's count.
        assert_eq!(
            numbered("60 activities follow.\n5 = Strongly Like\n1: 2", 5),
            vec![
                Parsed::Rating(2),
                missing(2),
                missing(3),
                missing(4),
                missing(5)
            ]
        );
        // The same activity twice: agreeing is fine, disagreeing is not.
        let got = parse_numbered("1: 4\n2: 3\n1: 4 (Like)\n2: 5", 2, &labels());
        assert_eq!(got[0], (Parsed::Rating(4), "1: 4\n1: 4 (Like)".into()));
        assert_eq!(
            got[1],
            (
                invalid(
                    InvalidReason::MultipleRatings,
                    "activity 2 is answered more than once: 3 and 5"
                ),
                "2: 3\n2: 5".into()
            )
        );
        // An unusable repeat beside a rating is dropped; alone it is the reason.
        assert_eq!(numbered("1:\n1: 2", 1), vec![Parsed::Rating(2)]);
        assert_eq!(
            reasons(&numbered("1: 3 or 4\n2: 9\n3: As an AI, I can't say", 4)),
            vec![
                Some(InvalidReason::MultipleRatings),
                Some(InvalidReason::OutOfRange),
                Some(InvalidReason::Refusal),
                Some(InvalidReason::NoRating),
            ]
        );
        assert_eq!(
            parse_numbered("1: 4", 2, &labels())[1],
            (missing(2), String::new())
        );
    }

    #[test]
    fn a_reply_without_numbered_lines_speaks_for_every_activity() {
        let empty = invalid(InvalidReason::Empty, "the answer is empty");
        assert_eq!(numbered(" \n\t", 3), vec![empty; 3]);
        let refusal = "As an AI, I don't have personal preferences.";
        let got = parse_numbered(&format!("\n{refusal}\n"), 2, &labels());
        assert_eq!(
            reasons(&got.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()),
            vec![Some(InvalidReason::Refusal); 2]
        );
        assert!(got.iter().all(|(_, raw)| raw == refusal));
        assert_eq!(
            numbered("I like all of them, 4 each.", 2),
            vec![missing(1), missing(2)]
        );
        // A refusal for one activity among answers is that activity's.
        assert_eq!(
            reasons(&numbered("1: 4\n2: 作为一个人工智能，我没有个人喜好。", 2)),
            vec![None, Some(InvalidReason::Refusal)]
        );
        assert!(numbered("1: 4", 0).is_empty());
    }

    #[test]
    fn echoing_every_built_in_activity_keeps_its_rating() {
        let catalog = crate::instrument::Catalog::built_in().expect("built-in instruments");
        for instrument in catalog.iter() {
            let labels = instrument.labels();
            for language in &instrument.languages {
                let options = &instrument.options[language];
                let lines: Vec<String> = instrument
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let r = i % 5;
                        format!("{}. {}: {}", i + 1, item.texts[language], options[r])
                    })
                    .collect();
                let got = parse_numbered(&lines.join("\n"), lines.len(), &labels);
                for (i, (parsed, raw)) in got.iter().enumerate() {
                    assert_eq!(parsed, &Parsed::Rating(i as u32 % 5 + 1), "{raw}");
                    assert_eq!(raw, &lines[i]);
                }
            }
        }
    }

    /// Activity `n` answered `rating` in one of the forms LLMs write.
    fn render_numbered(n: usize, rating: u32, style: usize) -> String {
        let full = |s: String| -> String {
            s.chars()
                .map(|c| match c.to_digit(10) {
                    Some(d) => char::from_u32('０' as u32 + d).unwrap_or(c),
                    None => c,
                })
                .collect()
        };
        let i = rating as usize - 1;
        match style % 14 {
            0 => format!("{n}: {rating}"),
            1 => format!("{n}. {rating}"),
            2 => format!("{n}) {}", EN[i]),
            3 => format!("{n} - {}", EN[i]),
            4 => format!("Activity {n}: {rating} ({})", EN[i]),
            5 => format!("活动{n}：{rating}"),
            6 => full(format!("{n}：{rating}")),
            7 => format!("**{n}.** {rating}"),
            8 => format!("- {n}: {rating}"),
            9 => format!("| {n} | {rating} |"),
            10 => format!("第{n}项：{}", ZH[i]),
            11 => format!("{n}. {rating}/5"),
            12 => format!("{n}、{}", ZH[i]),
            _ => format!("**{n}**: {rating} ({})", EN[i].to_uppercase()),
        }
    }

    /// A reply answering `ratings` (activity `i + 1` gets `ratings[i]`) in
    /// `order`, with the given styles, blank lines, preamble and fence.
    fn reply(
        ratings: &[u32],
        order: &[usize],
        styles: &[usize],
        blanks: &[bool],
        preamble: &str,
        fenced: bool,
    ) -> (String, Vec<String>) {
        let mut lines = vec![String::new(); ratings.len()];
        let mut text = format!("{preamble}\n");
        if fenced {
            text.push_str("```text\n");
        }
        for (k, &i) in order.iter().enumerate() {
            let line = render_numbered(i + 1, ratings[i], styles[k % styles.len()]);
            text.push_str(&line);
            text.push('\n');
            if blanks[k % blanks.len()] {
                text.push('\n');
            }
            lines[i] = line;
        }
        if fenced {
            text.push_str("```\n");
        }
        (text, lines)
    }

    fn ratings_and_order() -> impl Strategy<Value = (Vec<u32>, Vec<usize>)> {
        prop::collection::vec(1u32..=5, 1..70).prop_flat_map(|ratings| {
            let order: Vec<usize> = (0..ratings.len()).collect();
            (Just(ratings), Just(order).prop_shuffle())
        })
    }

    const PREAMBLES: &[&str] = &[
        "",
        "Here are my answers:",
        "以下是我的回答：",
        "Sure! I rated all 60 activities below.",
    ];

    proptest! {
        #[test]
        fn any_order_of_answer_lines_parses_back(
            (ratings, order) in ratings_and_order(),
            styles in prop::collection::vec(0usize..14, 1..8),
            blanks in prop::collection::vec(any::<bool>(), 1..5),
            preamble in 0usize..4,
            fenced in any::<bool>(),
        ) {
            let (text, lines) = reply(&ratings, &order, &styles, &blanks, PREAMBLES[preamble], fenced);
            let got = parse_numbered(&text, ratings.len(), &labels());
            prop_assert_eq!(got.len(), ratings.len());
            for (i, (parsed, raw)) in got.iter().enumerate() {
                prop_assert_eq!(parsed, &Parsed::Rating(ratings[i]), "activity {} in {:?}", i + 1, text);
                prop_assert_eq!(raw, &lines[i]);
            }
        }

        #[test]
        fn a_dropped_line_is_exactly_that_activity_missing(
            (ratings, order) in ratings_and_order(),
            style in 0usize..14,
            drop in any::<prop::sample::Index>(),
        ) {
            let dropped = drop.index(order.len());
            let kept: Vec<usize> = order.iter().copied().filter(|&i| i != dropped).collect();
            // The preamble keeps the reply non-empty when its only line is dropped.
            let (text, _) = reply(&ratings, &kept, &[style], &[false], PREAMBLES[1], false);
            let got = numbered(&text, ratings.len());
            for (i, parsed) in got.iter().enumerate() {
                if i == dropped {
                    prop_assert_eq!(parsed, &missing(i + 1));
                } else {
                    prop_assert_eq!(parsed, &Parsed::Rating(ratings[i]));
                }
            }
        }

        #[test]
        fn a_contradicting_repeat_is_multiple_ratings_for_that_activity_only(
            (ratings, order) in ratings_and_order(),
            style in 0usize..14,
            again in any::<prop::sample::Index>(),
            shift in 1u32..5,
        ) {
            let i = again.index(ratings.len());
            let (mut text, _) = reply(&ratings, &order, &[style], &[false], "", false);
            let other = (ratings[i] - 1 + shift) % 5 + 1;
            text.push_str(&render_numbered(i + 1, other, style + 1));
            let got = numbered(&text, ratings.len());
            for (j, parsed) in got.iter().enumerate() {
                if j == i {
                    prop_assert!(
                        matches!(parsed, Parsed::Invalid { reason: InvalidReason::MultipleRatings, detail }
                            if detail.starts_with(&format!("activity {} ", i + 1))),
                        "{:?}", parsed
                    );
                } else {
                    prop_assert_eq!(parsed, &Parsed::Rating(ratings[j]));
                }
            }
        }

        #[test]
        fn arbitrary_replies_never_panic(text in "\\PC{0,300}", count in 0usize..80) {
            prop_assert_eq!(parse_numbered(&text, count, &labels()).len(), count);
        }

        #[test]
        fn arbitrary_numbered_lines_never_panic(
            lines in prop::collection::vec("[0-9０-９]{1,3}[:：.)|、 ]{0,2}\\PC{0,20}", 0..20),
            count in 0usize..30,
        ) {
            let text = lines.join("\n");
            prop_assert_eq!(parse_numbered(&text, count, &labels()).len(), count);
        }
    }
}
