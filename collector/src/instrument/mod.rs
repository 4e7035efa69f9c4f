//! Instruments as data: items, translations, answer options and prompt
//! templates, loaded from TOML and validated at start-up.
//!
//! Each language has two templates: `prompt` asks one item (the paper's
//! protocol, one item per request), `batch_prompt` asks a whole list of items
//! in one request and wants one `<activity number>: <option number>` line per
//! item back, which [`crate::answer::parse_numbered`] reads.
//!
//! The built-in instruments live in `collector/instruments/*.toml` and are
//! compiled into the binary; more can be loaded from a directory. A broken
//! file is an [`InstrumentError`] that names the file, the item and the field.
//! An instrument may take its items from another (`items_from`), so the
//! competence form shares the interest form's activities instead of
//! repeating them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use careers_proto::scale;
use careers_proto::v1::{self, Scale};
use serde::Deserialize;

/// Built-in instrument files: (file name, contents).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "onet-ip-sf.toml",
        include_str!("../../instruments/onet-ip-sf.toml"),
    ),
    (
        "onet-ip-sf-competence.toml",
        include_str!("../../instruments/onet-ip-sf-competence.toml"),
    ),
];

/// Number of answer options every instrument has (a 1..5 scale).
pub const OPTIONS: usize = 5;

/// A problem in an instrument file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {location}{field}: {reason}")]
pub struct InstrumentError {
    /// The file.
    pub file: String,
    /// `item R03, ` or empty.
    pub location: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// `line L, column C` of a TOML error, for messages that must fit one line.
pub(crate) fn toml_location(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        }
        None => "file".to_string(),
    }
}

fn err(file: &str, item: Option<&str>, field: &str, reason: impl Into<String>) -> InstrumentError {
    InstrumentError {
        file: file.to_string(),
        location: item.map(|i| format!("item {i}, ")).unwrap_or_default(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

// No deny_unknown_fields here: it does not combine with `flatten`, and every
// other key of an item is a language's text (checked in validation).
#[derive(Debug, Deserialize)]
struct FileItem {
    id: String,
    scale: String,
    #[serde(flatten)]
    texts: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    id: String,
    title: String,
    construct: String,
    languages: Vec<String>,
    attribution: String,
    #[serde(default)]
    items_from: Option<String>,
    options: BTreeMap<String, Vec<String>>,
    instructions: BTreeMap<String, String>,
    prompt: BTreeMap<String, String>,
    // Defaulted so a missing table is reported per language by validation
    // (`batch_prompt.en: missing or empty`), not as a bare TOML error.
    #[serde(default)]
    batch_prompt: BTreeMap<String, String>,
    #[serde(default)]
    items: Vec<FileItem>,
}

/// One item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Id, e.g. `R01`.
    pub id: String,
    /// RIASEC area.
    pub scale: Scale,
    /// Text per language.
    pub texts: BTreeMap<String, String>,
}

/// A validated instrument.
#[derive(Debug, Clone, PartialEq)]
pub struct Instrument {
    /// Id, e.g. `onet-ip-sf`.
    pub id: String,
    /// Title.
    pub title: String,
    /// `interest` or `competence`.
    pub construct: String,
    /// Languages, each with options, instructions, prompt and every item text.
    pub languages: Vec<String>,
    /// Source and licence note.
    pub attribution: String,
    /// Option labels per language; label `i` means rating `i + 1`.
    pub options: BTreeMap<String, [String; OPTIONS]>,
    /// Instructions per language.
    pub instructions: BTreeMap<String, String>,
    /// Prompt template per language with `{instructions}`, `{item}`, `{options}`.
    pub prompt: BTreeMap<String, String>,
    /// Template per language for asking many items in one request, with
    /// `{instructions}`, `{items}`, `{options}` and `{count}`.
    pub batch_prompt: BTreeMap<String, String>,
    /// Items in administration order.
    pub items: Vec<Item>,
}

impl Instrument {
    /// The prompt for one item in one language; `None` if the language or
    /// item text is missing (validation rules that out for loaded instruments).
    /// `instructions`, when given, replace the instrument's (a study
    /// condition that words them differently).
    pub fn render_prompt(
        &self,
        item: &Item,
        language: &str,
        instructions: Option<&str>,
    ) -> Option<String> {
        Some(fill(
            self.prompt.get(language)?,
            &[
                (
                    "{instructions}",
                    self.instructions_in(language, instructions)?,
                ),
                ("{item}", item.texts.get(language)?),
                ("{options}", &self.listed_options(language)?),
            ],
        ))
    }

    /// The prompt asking all of `items` at once in one language, numbered
    /// `1.` to `items.len()` in the given order (the numbers the answer must
    /// use, see [`crate::answer::parse_numbered`]); `None` if `items` is empty
    /// or the language or an item text is missing. `instructions` as for
    /// [`Self::render_prompt`].
    pub fn render_batch_prompt(
        &self,
        items: &[&Item],
        language: &str,
        instructions: Option<&str>,
    ) -> Option<String> {
        if items.is_empty() {
            return None;
        }
        let mut listed = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            // One item per line, whatever the file says, so the numbering the
            // answer refers to stays unambiguous.
            let text = item.texts.get(language)?.split_whitespace();
            listed.push(format!("{}. {}", i + 1, text.collect::<Vec<_>>().join(" ")));
        }
        Some(fill(
            self.batch_prompt.get(language)?,
            &[
                (
                    "{instructions}",
                    self.instructions_in(language, instructions)?,
                ),
                ("{items}", &listed.join("\n")),
                ("{options}", &self.listed_options(language)?),
                ("{count}", &items.len().to_string()),
            ],
        ))
    }

    /// `replacement` if given, else the instrument's instructions in `language`.
    fn instructions_in<'a>(
        &'a self,
        language: &str,
        replacement: Option<&'a str>,
    ) -> Option<&'a str> {
        replacement.or_else(|| self.instructions.get(language).map(String::as_str))
    }

    /// `1 = Strongly Dislike` lines, as both templates show the options.
    fn listed_options(&self, language: &str) -> Option<String> {
        let listed: Vec<String> = self
            .options
            .get(language)?
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{} = {l}", i + 1))
            .collect();
        Some(listed.join("\n"))
    }

    /// Every option label in every language with its rating, for the parser.
    pub fn labels(&self) -> Vec<(String, u32)> {
        self.options
            .values()
            .flat_map(|labels| {
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), i as u32 + 1))
            })
            .collect()
    }

    /// The item with `id`.
    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.id == id)
    }

    /// The wire description.
    pub fn to_proto(&self) -> v1::Instrument {
        v1::Instrument {
            instrument_id: self.id.clone(),
            title: self.title.clone(),
            construct: self.construct.clone(),
            languages: self.languages.clone(),
            attribution: self.attribution.clone(),
            items: self
                .items
                .iter()
                .map(|i| v1::InstrumentItem {
                    item_id: i.id.clone(),
                    scale: i.scale as i32,
                    texts: i
                        .texts
                        .iter()
                        .map(|(l, t)| v1::ItemText {
                            language: l.clone(),
                            text: t.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// `template` with each placeholder replaced in one pass, so text that is
/// substituted in (an item that happens to contain `{options}`) is never
/// substituted again.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        match values.iter().find(|(p, _)| rest.starts_with(p)) {
            Some((p, v)) => {
                out.push_str(v);
                rest = &rest[p.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The instruments a collector knows, by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    instruments: BTreeMap<String, Instrument>,
}

impl Catalog {
    /// The built-in instruments.
    pub fn built_in() -> Result<Self, InstrumentError> {
        Self::from_sources(
            BUILT_IN
                .iter()
                .map(|(f, c)| (f.to_string(), c.to_string()))
                .collect(),
        )
    }

    /// The built-in instruments plus every `*.toml` in `dir`.
    pub fn with_dir(dir: &Path) -> Result<Self, InstrumentError> {
        let mut sources: Vec<(String, String)> = BUILT_IN
            .iter()
            .map(|(f, c)| (f.to_string(), c.to_string()))
            .collect();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| err(&dir.display().to_string(), None, "directory", e.to_string()))?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(&name, None, "file", e.to_string()))?;
            sources.push((name, text));
        }
        Self::from_sources(sources)
    }

    /// Parses and validates `(file name, contents)` pairs.
    pub fn from_sources(sources: Vec<(String, String)>) -> Result<Self, InstrumentError> {
        let mut parsed = Vec::new();
        for (name, text) in &sources {
            let file: File = toml::from_str(text).map_err(|e| {
                err(
                    name,
                    None,
                    &toml_location(text, &e),
                    e.message().to_string(),
                )
            })?;
            parsed.push((name.clone(), file));
        }
        let mut catalog = Catalog::default();
        // Instruments that own their items first, then those that borrow them.
        parsed.sort_by_key(|(_, f)| f.items_from.is_some());
        for (name, file) in parsed {
            let instrument = catalog.validate(&name, file)?;
            if catalog.instruments.contains_key(&instrument.id) {
                return Err(err(
                    &name,
                    None,
                    "id",
                    format!("instrument {:?} is defined twice", instrument.id),
                ));
            }
            catalog
                .instruments
                .insert(instrument.id.clone(), instrument);
        }
        Ok(catalog)
    }

    fn validate(&self, name: &str, file: File) -> Result<Instrument, InstrumentError> {
        if file.id.is_empty()
            || !file
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                name,
                None,
                "id",
                "must be non-empty letters, digits, '-' or '_'",
            ));
        }
        if !matches!(file.construct.as_str(), "interest" | "competence") {
            return Err(err(
                name,
                None,
                "construct",
                format!("{:?} is not \"interest\" or \"competence\"", file.construct),
            ));
        }
        if file.languages.is_empty() {
            return Err(err(
                name,
                None,
                "languages",
                "must list at least one language",
            ));
        }
        let items: Vec<Item> = match &file.items_from {
            Some(source) => {
                if !file.items.is_empty() {
                    return Err(err(
                        name,
                        None,
                        "items",
                        "must be empty when items_from is set",
                    ));
                }
                self.instruments
                    .get(source)
                    .ok_or_else(|| {
                        err(
                            name,
                            None,
                            "items_from",
                            format!("no instrument {source:?} is loaded"),
                        )
                    })?
                    .items
                    .clone()
            }
            None => {
                let mut items = Vec::with_capacity(file.items.len());
                let mut seen = BTreeSet::new();
                for (i, it) in file.items.into_iter().enumerate() {
                    let label = if it.id.is_empty() {
                        format!("#{}", i + 1)
                    } else {
                        it.id.clone()
                    };
                    if it.id.is_empty() {
                        return Err(err(name, Some(&label), "id", "must not be empty"));
                    }
                    if !seen.insert(it.id.clone()) {
                        return Err(err(name, Some(&label), "id", "appears twice"));
                    }
                    let mut chars = it.scale.chars();
                    let scale = match (chars.next().and_then(scale::from_letter), chars.next()) {
                        (Some(s), None) => s,
                        _ => {
                            return Err(err(
                                name,
                                Some(&label),
                                "scale",
                                format!("{:?} is not one of R I A S E C", it.scale),
                            ));
                        }
                    };
                    items.push(Item {
                        id: it.id,
                        scale,
                        texts: it.texts,
                    });
                }
                items
            }
        };
        if items.is_empty() {
            return Err(err(name, None, "items", "the instrument has no items"));
        }
        let mut options = BTreeMap::new();
        for lang in &file.languages {
            let labels = file
                .options
                .get(lang)
                .ok_or_else(|| err(name, None, &format!("options.{lang}"), "missing"))?;
            let labels: [String; OPTIONS] =
                labels.clone().try_into().map_err(|v: Vec<String>| {
                    err(
                        name,
                        None,
                        &format!("options.{lang}"),
                        format!("has {} labels, {OPTIONS} required", v.len()),
                    )
                })?;
            if labels.iter().any(|l| l.trim().is_empty()) {
                return Err(err(
                    name,
                    None,
                    &format!("options.{lang}"),
                    "a label is empty",
                ));
            }
            options.insert(lang.clone(), labels);
            for (field, map) in [
                ("instructions", &file.instructions),
                ("prompt", &file.prompt),
                ("batch_prompt", &file.batch_prompt),
            ] {
                if map.get(lang).is_none_or(|t| t.trim().is_empty()) {
                    return Err(err(
                        name,
                        None,
                        &format!("{field}.{lang}"),
                        "missing or empty",
                    ));
                }
            }
            if file.prompt.get(lang).is_some_and(|p| !p.contains("{item}")) {
                return Err(err(
                    name,
                    None,
                    &format!("prompt.{lang}"),
                    "does not contain {item}",
                ));
            }
            if let Some(batch) = file.batch_prompt.get(lang) {
                if !batch.contains("{items}") {
                    return Err(err(
                        name,
                        None,
                        &format!("batch_prompt.{lang}"),
                        "does not contain {items}",
                    ));
                }
                // `{item}` is the single prompt's placeholder; here it would
                // reach the respondent verbatim.
                if batch.contains("{item}") {
                    return Err(err(
                        name,
                        None,
                        &format!("batch_prompt.{lang}"),
                        "contains {item}; a batch prompt lists the items with {items}",
                    ));
                }
            }
            for item in &items {
                if item.texts.get(lang).is_none_or(|t| t.trim().is_empty()) {
                    return Err(err(name, Some(&item.id), lang, "text missing or empty"));
                }
            }
        }
        Ok(Instrument {
            id: file.id,
            title: file.title,
            construct: file.construct,
            languages: file.languages,
            attribution: file.attribution,
            options,
            instructions: file.instructions,
            prompt: file.prompt,
            batch_prompt: file.batch_prompt,
            items,
        })
    }

    /// The instrument with `id`.
    pub fn get(&self, id: &str) -> Option<&Instrument> {
        self.instruments.get(id)
    }

    /// All instruments, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = &Instrument> {
        self.instruments.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_instruments_follow_the_official_form() {
        let catalog = Catalog::built_in().expect("built-in instruments are valid");
        let ip = catalog.get("onet-ip-sf").expect("interest form");
        assert_eq!(ip.items.len(), 60);
        for s in scale::RIASEC {
            assert_eq!(ip.items.iter().filter(|i| i.scale == s).count(), 10);
        }
        // The official order cycles R R I I A A S S E E C C, five times.
        let letters: String = ip.items.iter().map(|i| scale::letter(i.scale)).collect();
        assert_eq!(letters, "RRIIAASSEECC".repeat(5));
        assert_eq!(ip.items[0].texts["en"], "Build kitchen cabinets");
        assert_eq!(
            ip.items[59].texts["en"],
            "Stamp, sort, and distribute mail for an organization"
        );
        let comp = catalog
            .get("onet-ip-sf-competence")
            .expect("competence form");
        assert_eq!(comp.items, ip.items);
        assert_eq!(comp.options["en"][4], "Very well");
        let prompt = ip
            .render_prompt(&ip.items[2], "zh", None)
            .expect("zh prompt");
        assert!(prompt.contains("研发新药") && prompt.contains("5 = 非常喜欢"));
    }

    fn broken(text: &str) -> InstrumentError {
        Catalog::from_sources(vec![("bad.toml".into(), text.into())]).expect_err("must fail")
    }

    const HEADER: &str = r#"
id = "t"
title = "T"
construct = "interest"
languages = ["en"]
attribution = "x"
[options]
en = ["a", "b", "c", "d", "e"]
[instructions]
en = "i"
[prompt]
en = "{item}"
[batch_prompt]
en = "{items}"
"#;

    const ITEM: &str = "[[items]]\nid = \"X1\"\nscale = \"R\"\nen = \"t\"\n";

    #[test]
    fn errors_name_file_item_and_field() {
        let e = broken(&format!(
            "{HEADER}[[items]]\nid = \"X1\"\nscale = \"Q\"\nen = \"t\"\n"
        ));
        assert_eq!(
            e.to_string(),
            "bad.toml: item X1, scale: \"Q\" is not one of R I A S E C"
        );
        let e = broken(&format!(
            "{HEADER}[[items]]\nid = \"X1\"\nscale = \"R\"\nfr = \"t\"\n"
        ));
        assert_eq!((e.location.as_str(), e.field.as_str()), ("item X1, ", "en"));
        let e = broken(&format!(
            "{}[[items]]\nid = \"X1\"\nscale = \"R\"\nen = \"t\"\n",
            HEADER.replace("\"e\"]", "]")
        ));
        assert_eq!(e.field, "options.en");
        let e = broken("id = ");
        assert_eq!(e.file, "bad.toml");
        let e = broken(HEADER);
        assert_eq!(e.field, "items");
    }

    #[test]
    fn batch_prompt_numbers_items_in_the_given_order() {
        let catalog = Catalog::built_in().expect("built-in instruments are valid");
        let ip = catalog.get("onet-ip-sf").expect("interest form");
        let items = [&ip.items[2], &ip.items[0], &ip.items[59]];
        let prompt = ip
            .render_batch_prompt(&items, "en", None)
            .expect("en batch prompt");
        assert!(prompt.starts_with(&ip.instructions["en"]), "{prompt}");
        assert!(
            prompt.contains(
                "1. Develop a new medicine\n2. Build kitchen cabinets\n\
                 3. Stamp, sort, and distribute mail for an organization\n"
            ),
            "{prompt}"
        );
        assert!(
            prompt.contains("1 = Strongly Dislike\n2 = Dislike\n"),
            "{prompt}"
        );
        assert!(prompt.contains("each of these 3 activities"), "{prompt}");
        assert!(
            prompt.contains("<activity number>: <option number>"),
            "{prompt}"
        );
        assert!(!prompt.contains('{'), "a placeholder is left: {prompt}");

        let all: Vec<&Item> = ip.items.iter().collect();
        let zh = ip
            .render_batch_prompt(&all, "zh", None)
            .expect("zh batch prompt");
        assert!(zh.contains("1. 制作厨房橱柜\n2. 砌砖或铺瓷砖\n"), "{zh}");
        assert!(zh.contains("60. ") && zh.contains("共60行"), "{zh}");
        assert!(zh.contains("5 = 非常喜欢"), "{zh}");
        assert!(!zh.contains('{'), "a placeholder is left: {zh}");

        let comp = catalog
            .get("onet-ip-sf-competence")
            .expect("competence form");
        let comp_prompt = comp.render_batch_prompt(&all, "en", None).expect("en");
        assert!(comp_prompt.contains("5 = Very well") && comp_prompt.contains("60. "));
        let comp_zh = comp.render_batch_prompt(&all, "zh", None).expect("zh");
        assert!(comp_zh.contains("5 = 非常好") && comp_zh.contains("共60行"));

        let framed = ip
            .render_batch_prompt(&items, "en", Some("Imagine you are sixteen."))
            .expect("en batch prompt");
        assert!(framed.starts_with("Imagine you are sixteen.\n"), "{framed}");
        assert!(!framed.contains(&ip.instructions["en"]), "{framed}");
        let one = ip
            .render_prompt(&ip.items[0], "zh", Some("想象你十六岁。"))
            .expect("zh prompt");
        assert!(one.starts_with("想象你十六岁。\n") && one.contains("制作厨房橱柜"));

        assert_eq!(ip.render_batch_prompt(&[], "en", None), None);
        assert_eq!(ip.render_batch_prompt(&items, "fr", None), None);
    }

    #[test]
    fn substituted_text_is_never_substituted_again() {
        let mut catalog = Catalog::from_sources(vec![(
            "t.toml".into(),
            format!("{HEADER}{ITEM}").replace(
                "[batch_prompt]\nen = \"{items}\"",
                "[batch_prompt]\nen = \"{count}: {items} {unknown}\"",
            ),
        )])
        .expect("valid");
        let t = catalog.instruments.get_mut("t").expect("t");
        t.items[0]
            .texts
            .insert("en".into(), "a {options}\n  line".into());
        let item = t.items[0].clone();
        assert_eq!(
            t.render_batch_prompt(&[&item], "en", None).as_deref(),
            Some("1: 1. a {options} line {unknown}")
        );
        assert_eq!(
            t.render_prompt(&item, "en", None).as_deref(),
            Some("a {options}\n  line")
        );
    }

    #[test]
    fn a_missing_or_broken_batch_prompt_names_its_field() {
        let e = broken(&format!(
            "{}{ITEM}",
            HEADER.replace("[batch_prompt]\nen = \"{items}\"\n", "")
        ));
        assert_eq!(e.to_string(), "bad.toml: batch_prompt.en: missing or empty");
        let e = broken(&format!(
            "{}{ITEM}",
            HEADER.replace("en = \"{items}\"", "en = \"  \"")
        ));
        assert_eq!(e.field, "batch_prompt.en");
        let e = broken(&format!(
            "{}{ITEM}",
            HEADER.replace("en = \"{items}\"", "en = \"{options}\"")
        ));
        assert_eq!(
            e.to_string(),
            "bad.toml: batch_prompt.en: does not contain {items}"
        );
        let e = broken(&format!(
            "{}{ITEM}",
            HEADER.replace("en = \"{items}\"", "en = \"{item} {items}\"")
        ));
        assert_eq!(e.field, "batch_prompt.en");
        assert!(e.reason.contains("{item}"), "{e}");
    }
}
