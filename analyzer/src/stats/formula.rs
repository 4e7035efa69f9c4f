//! Model formulas in lme4 syntax: parsing and R's term expansion.
//!
//! Owns the grammar `y ~ fixed + (lhs | group)` and nothing else: which variables are numeric,
//! which levels exist and how terms become columns is the job of `design`.

use super::StatsError;

/// A fixed-effect term: an ordered list of variable names (`["scale", "language"]` is
/// `scale:language`). Variables appear in the order of their first mention in the formula,
/// as R's `terms()` orders them.
pub type Term = Vec<String>;

/// One random-effects term `(lhs | group)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomTerm {
    /// Whether the term has a random intercept (`1 + ...`, the default unless `0 +`).
    pub intercept: bool,
    /// Variables with random slopes (numeric covariates or factors), in formula order.
    pub slopes: Vec<String>,
    /// The grouping factor: one variable, or several for an interaction `g:h`.
    pub group: Vec<String>,
}

impl RandomTerm {
    /// The grouping factor's name as lme4 prints it (`item:respondent`).
    pub fn group_name(&self) -> String {
        self.group.join(":")
    }
}

/// A parsed formula.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formula {
    /// The text the formula was parsed from, trimmed.
    pub text: String,
    /// Name of the response column.
    pub response: String,
    /// Whether the fixed part has an intercept.
    pub intercept: bool,
    /// Fixed-effect terms in R's order (by degree, then by first appearance).
    pub fixed: Vec<Term>,
    /// Random-effects terms in formula order.
    pub random: Vec<RandomTerm>,
}

impl Formula {
    /// Parses a formula such as `rating ~ scale * respondent + (1 | item) + (1 + language | item)`.
    pub fn parse(text: &str) -> Result<Formula, StatsError> {
        let err = |msg: String| StatsError::Formula(msg);
        let (lhs, rhs) = text
            .split_once('~')
            .ok_or_else(|| err(format!("no '~' in formula {text:?}")))?;
        let response = lhs.trim();
        if !is_ident(response) {
            return Err(err(format!(
                "the response must be a single column name, got {response:?}"
            )));
        }
        if rhs.contains('~') {
            return Err(err("more than one '~'".into()));
        }
        if let Some(name) = function_call(rhs) {
            return Err(err(format!(
                "function calls such as {name}(...) are not supported; compute the column in the data"
            )));
        }
        let tokens = tokenize(rhs)?;
        let mut p = Parser { tokens, pos: 0 };
        let parts = p.top_level()?;
        let mut intercept = true;
        let mut fixed_raw: Vec<Term> = Vec::new();
        let mut random = Vec::new();
        for part in parts {
            match part {
                Part::Intercept(keep) => intercept = keep,
                Part::Fixed(terms) => fixed_raw.extend(terms),
                Part::Random(r) => random.extend(r),
            }
        }
        // Canonical variable order inside each term, dedup, then R's ordering by
        // degree. As lme4 fits the fixed part alone (`nobars`), a variable's
        // rank is its first mention among the fixed terms, whatever random
        // terms come before them.
        let mut order: Vec<&String> = Vec::new();
        for v in fixed_raw.iter().flatten() {
            if !order.contains(&v) {
                order.push(v);
            }
        }
        let order: Vec<String> = order.into_iter().cloned().collect();
        let rank = |v: &String| order.iter().position(|o| o == v).unwrap_or(usize::MAX);
        let mut fixed: Vec<Term> = Vec::new();
        for mut t in fixed_raw {
            t.sort_by_key(rank);
            t.dedup();
            if !fixed.contains(&t) {
                fixed.push(t);
            }
        }
        fixed.sort_by_key(|t| t.len());
        if response_in_rhs(&fixed, &random, response) {
            return Err(err(format!(
                "the response {response:?} also appears on the right-hand side"
            )));
        }
        Ok(Formula {
            text: text.trim().to_string(),
            response: response.to_string(),
            intercept,
            fixed,
            random,
        })
    }

    /// Every column the formula reads, response excluded, in first-mention order.
    pub fn variables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |v: &String| {
            if !out.contains(v) {
                out.push(v.clone());
            }
        };
        for t in &self.fixed {
            t.iter().for_each(&mut push);
        }
        for r in &self.random {
            r.slopes.iter().for_each(&mut push);
            r.group.iter().for_each(&mut push);
        }
        out
    }

    /// The label R gives a fixed term (`scale:respondent`).
    pub fn term_label(term: &Term) -> String {
        term.join(":")
    }
}

fn response_in_rhs(fixed: &[Term], random: &[RandomTerm], response: &str) -> bool {
    fixed.iter().flatten().any(|v| v == response)
        || random
            .iter()
            .any(|r| r.slopes.iter().chain(&r.group).any(|v| v == response))
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '.' || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || c == '.' || c == '_')
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Plus,
    Minus,
    Star,
    Colon,
    Slash,
    Bar,
    DoubleBar,
    LParen,
    RParen,
}

/// The first `name(` in the text (a function call such as `poly(x, 2)`,
/// `I(x^2)`, `offset(x)`), outside backquotes.
fn function_call(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut quoted = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '`' {
            quoted = !quoted;
            i += 1;
            continue;
        }
        if !quoted && (c.is_alphabetic() || c == '.') {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if chars.get(j) == Some(&'(') {
                return Some(chars[start..i].iter().collect());
            }
            continue;
        }
        i += 1;
    }
    None
}

fn tokenize(s: &str) -> Result<Vec<Tok>, StatsError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '+' => {
                out.push(Tok::Plus);
                i += 1
            }
            '-' => {
                out.push(Tok::Minus);
                i += 1
            }
            '*' => {
                out.push(Tok::Star);
                i += 1
            }
            ':' => {
                out.push(Tok::Colon);
                i += 1
            }
            '/' => {
                out.push(Tok::Slash);
                i += 1
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '|' => {
                if chars.get(i + 1) == Some(&'|') {
                    out.push(Tok::DoubleBar);
                    i += 2
                } else {
                    out.push(Tok::Bar);
                    i += 1
                }
            }
            '`' => {
                let start = i + 1;
                let end = chars[start..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| StatsError::Formula("unterminated backquote".into()))?;
                out.push(Tok::Ident(chars[start..start + end].iter().collect()));
                i = start + end + 1;
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c if c.is_alphabetic() || c == '.' || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '.' || chars[i] == '_')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            '^' => {
                return Err(StatsError::Formula(
                    "powers such as x^2 or (a + b)^2 are not supported; write interactions out \
                     with '*' or ':', and compute polynomial columns in the data"
                        .into(),
                ));
            }
            other => {
                return Err(StatsError::Formula(format!(
                    "unsupported character {other:?} in formula"
                )));
            }
        }
    }
    Ok(out)
}

/// A token as the user wrote it, for error messages.
fn show(t: Option<&Tok>) -> String {
    match t {
        None => "end of formula (missing ')'?)".to_string(),
        Some(Tok::Ident(v)) => format!("{v:?}"),
        Some(Tok::Num(n)) => format!("'{n}'"),
        Some(Tok::Plus) => "'+'".into(),
        Some(Tok::Minus) => "'-'".into(),
        Some(Tok::Star) => "'*'".into(),
        Some(Tok::Colon) => "':'".into(),
        Some(Tok::Slash) => "'/'".into(),
        Some(Tok::Bar) => "'|'".into(),
        Some(Tok::DoubleBar) => "'||'".into(),
        Some(Tok::LParen) => "'('".into(),
        Some(Tok::RParen) => "')'".into(),
    }
}

enum Part {
    Intercept(bool),
    Fixed(Vec<Term>),
    Random(Vec<RandomTerm>),
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, StatsError> {
        Err(StatsError::Formula(msg.into()))
    }

    /// Whether the parenthesised group starting at `self.pos` (a `(`) contains a top-level `|`.
    fn paren_is_random(&self) -> bool {
        let mut depth = 0usize;
        for t in &self.tokens[self.pos..] {
            match t {
                Tok::LParen => depth += 1,
                Tok::RParen => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return false;
                    }
                }
                Tok::Bar | Tok::DoubleBar if depth == 1 => return true,
                _ => {}
            }
        }
        false
    }

    fn top_level(&mut self) -> Result<Vec<Part>, StatsError> {
        let mut parts = Vec::new();
        let mut sign_minus = false;
        loop {
            match self.peek() {
                None => return self.err("empty right-hand side"),
                Some(Tok::Minus) => {
                    self.pos += 1;
                    sign_minus = true;
                    continue;
                }
                Some(Tok::Plus) => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            let part = match self.peek() {
                Some(Tok::Num(n)) => {
                    let n = n.clone();
                    self.pos += 1;
                    match (n.as_str(), sign_minus) {
                        ("1", false) => Part::Intercept(true),
                        ("0", false) | ("1", true) => Part::Intercept(false),
                        _ => return self.err(format!("unsupported constant term {n:?}")),
                    }
                }
                Some(Tok::LParen) if self.paren_is_random() => {
                    if sign_minus {
                        return self
                            .err("removing a random-effects term with '-' is not supported");
                    }
                    Part::Random(self.random_term()?)
                }
                _ => {
                    if sign_minus {
                        return self.err(
                            "removing terms with '-' is not supported (only '- 1' removes the intercept)",
                        );
                    }
                    Part::Fixed(self.sum()?)
                }
            };
            parts.push(part);
            sign_minus = false;
            match self.next() {
                None => return Ok(parts),
                Some(Tok::Plus) => {}
                Some(Tok::Minus) => sign_minus = true,
                Some(t) => return self.err(format!("unexpected {} in formula", show(Some(&t)))),
            }
        }
    }

    /// sum := prod ('+' prod)*  (only used inside parentheses of the fixed part)
    fn sum(&mut self) -> Result<Vec<Term>, StatsError> {
        let mut terms = self.prod()?;
        while self.peek() == Some(&Tok::Plus) && self.in_paren_sum() {
            self.pos += 1;
            terms.extend(self.prod()?);
        }
        Ok(terms)
    }

    // At top level '+' separates parts, handled by top_level; inside parens sum() continues.
    fn in_paren_sum(&self) -> bool {
        let mut depth = 0i32;
        for t in &self.tokens[..self.pos] {
            match t {
                Tok::LParen => depth += 1,
                Tok::RParen => depth -= 1,
                _ => {}
            }
        }
        depth > 0
    }

    /// prod := colon ('*' colon)*
    fn prod(&mut self) -> Result<Vec<Term>, StatsError> {
        let mut acc = self.colon()?;
        while self.peek() == Some(&Tok::Star) {
            self.pos += 1;
            let rhs = self.colon()?;
            let inter = interact(&acc, &rhs);
            let mut all = acc;
            all.extend(rhs);
            all.extend(inter);
            acc = all;
        }
        Ok(acc)
    }

    /// colon := atom (':' atom)*
    fn colon(&mut self) -> Result<Vec<Term>, StatsError> {
        let mut acc = self.atom()?;
        while self.peek() == Some(&Tok::Colon) {
            self.pos += 1;
            let rhs = self.atom()?;
            acc = interact(&acc, &rhs);
        }
        Ok(acc)
    }

    fn atom(&mut self) -> Result<Vec<Term>, StatsError> {
        match self.next() {
            Some(Tok::Ident(v)) => {
                if self.peek() == Some(&Tok::LParen) {
                    return self.err(format!("function calls such as {v}(...) are not supported"));
                }
                if v == "." {
                    return self.err("'.' (every other column) is not supported; name the columns");
                }
                Ok(vec![vec![v]])
            }
            Some(Tok::LParen) => {
                let inner = self.sum()?;
                match self.next() {
                    Some(Tok::RParen) => Ok(inner),
                    _ => self.err("missing ')'"),
                }
            }
            Some(Tok::Slash) | Some(Tok::Bar) | Some(Tok::DoubleBar) => {
                self.err("'/' and '|' are only supported inside random-effects terms")
            }
            Some(t) => self.err(format!("unexpected {} in fixed effects", show(Some(&t)))),
            None => self.err("formula ends unexpectedly"),
        }
    }

    fn random_term(&mut self) -> Result<Vec<RandomTerm>, StatsError> {
        // consume '('
        self.pos += 1;
        let mut intercept = true;
        let mut slopes: Vec<String> = Vec::new();
        let mut minus = false;
        loop {
            match self.next() {
                Some(Tok::Num(n)) => match (n.as_str(), minus) {
                    ("1", false) => intercept = true,
                    ("0", false) | ("1", true) => intercept = false,
                    _ => return self.err(format!("unsupported constant {n:?} in random term")),
                },
                Some(Tok::Ident(v)) => {
                    if minus {
                        return self.err("'-' of a variable in a random term is not supported");
                    }
                    if matches!(self.peek(), Some(Tok::Colon) | Some(Tok::Star)) {
                        return self.err(format!(
                            "interactions on the left of '|' (after {v:?}) are not supported"
                        ));
                    }
                    if !slopes.contains(&v) {
                        slopes.push(v);
                    }
                }
                Some(Tok::DoubleBar) => {
                    return self.err("uncorrelated random effects '||' are not supported");
                }
                t => return self.err(format!("unexpected {} in random term", show(t.as_ref()))),
            }
            match self.next() {
                Some(Tok::Plus) => minus = false,
                Some(Tok::Minus) => minus = true,
                Some(Tok::Bar) => break,
                Some(Tok::DoubleBar) => {
                    return self.err("uncorrelated random effects '||' are not supported");
                }
                t => return self.err(format!("unexpected {} in random term", show(t.as_ref()))),
            }
        }
        let mut group = Vec::new();
        let mut nested = false;
        loop {
            match self.next() {
                Some(Tok::Ident(v)) => {
                    group.push(v);
                }
                t => {
                    return self.err(format!(
                        "expected a grouping factor, got {}",
                        show(t.as_ref())
                    ));
                }
            }
            match self.next() {
                Some(Tok::Colon) => {}
                Some(Tok::Slash) => nested = true,
                Some(Tok::RParen) => break,
                t => {
                    return self.err(format!(
                        "unexpected {} in grouping factor",
                        show(t.as_ref())
                    ));
                }
            }
        }
        if intercept && slopes.is_empty() && !nested {
            return Ok(vec![RandomTerm {
                intercept,
                slopes,
                group,
            }]);
        }
        if !intercept && slopes.is_empty() {
            return self.err("a random-effects term needs an intercept or a slope");
        }
        if nested {
            // As lme4 expands it: (lhs | a/b) is (lhs | a) + (lhs | b:a).
            let mut out = Vec::new();
            for k in 1..=group.len() {
                out.push(RandomTerm {
                    intercept,
                    slopes: slopes.clone(),
                    group: group[..k].iter().rev().cloned().collect(),
                });
            }
            return Ok(out);
        }
        Ok(vec![RandomTerm {
            intercept,
            slopes,
            group,
        }])
    }
}

fn interact(a: &[Term], b: &[Term]) -> Vec<Term> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let mut t = x.clone();
            for v in y {
                if !t.contains(v) {
                    t.push(v.clone());
                }
            }
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_three_way_product_in_r_order() {
        let f = Formula::parse(
            "rating ~ scale * respondent * language + (1 | item) + (1 | item:respondent)",
        )
        .expect("parses");
        let labels: Vec<String> = f.fixed.iter().map(Formula::term_label).collect();
        assert_eq!(
            labels,
            [
                "scale",
                "respondent",
                "language",
                "scale:respondent",
                "scale:language",
                "respondent:language",
                "scale:respondent:language"
            ]
        );
        assert!(f.intercept);
        assert_eq!(f.random.len(), 2);
        assert_eq!(f.random[1].group_name(), "item:respondent");
    }

    #[test]
    fn fixed_terms_are_named_by_the_fixed_part_alone() {
        // R (lme4's nobars) names the interaction by the fixed part's order,
        // even when a random term mentions b first.
        let f = Formula::parse("y ~ (1 + b | g) + a * b").expect("parses");
        let labels: Vec<String> = f.fixed.iter().map(Formula::term_label).collect();
        assert_eq!(labels, ["a", "b", "a:b"]);
        let g = Formula::parse("y ~ b:a + a + (1 | g)").expect("parses");
        let labels: Vec<String> = g.fixed.iter().map(Formula::term_label).collect();
        assert_eq!(labels, ["a", "b:a"]);
    }

    #[test]
    fn slopes_and_intercept_removal() {
        let f = Formula::parse("Reaction ~ 0 + Days + (Days | Subject)").expect("parses");
        assert!(!f.intercept);
        assert_eq!(f.random[0].slopes, ["Days"]);
        assert!(f.random[0].intercept);
        let g = Formula::parse("y ~ a - 1 + (0 + x | g)").expect("parses");
        assert!(!g.intercept);
        assert!(!g.random[0].intercept);
    }

    #[test]
    fn unsupported_parts_are_named() {
        for (f, needle) in [
            ("y ~ a + (1 || g)", "||"),
            ("y ~ log(a)", "log"),
            ("y ~ a + (a:b | g)", "interactions"),
            ("y a", "~"),
            ("y ~ x + (x | g", "missing ')'"),
            ("y ~ poly(Days, 2) + (1 | g)", "poly(...)"),
            ("y ~ I(x^2)", "I(...)"),
            ("y ~ x + offset(z)", "offset(...)"),
            ("y ~ x^2", "powers"),
            ("y ~ (a + b)^2", "powers"),
            ("y ~ .", "'.'"),
            ("y ~ a %in% b", "'%'"),
            ("y ~ a + (1 | g) + (1 | g) ~ z", "more than one '~'"),
        ] {
            let e = Formula::parse(f).expect_err(f).to_string();
            assert!(e.contains(needle), "{f}: {e}");
        }
    }
}
