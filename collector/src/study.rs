//! Study designs: the TOML study file, its conversion to the wire `StudySpec`,
//! validation (shared by the CLI and `CreateStudy`), and the task list.
//!
//! A task is one (respondent, language, instrument, item, replication); its
//! response id is `careers_proto::ids::response_id` of that key, so it is the
//! same in every run and every process.

use std::collections::{BTreeMap, BTreeSet};

use careers_proto::ids::response_id_with_conditions;
use careers_proto::scale::{self, RIASEC};
use careers_proto::v1::{
    self, Administration, ApiSettings, DesignFactor, FactorLevel, RatingSource, RespondentSpec,
    SimulatedProfile, StudySpec, respondent_spec,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::instrument::Catalog;
use crate::provider::simulated::stable_hash;
use crate::provider::{KNOWN_PROVIDERS, http, simulated};

/// A problem in a study, named by field path (`respondents[1].simulated.interest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct StudyError {
    /// The field path.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> StudyError {
    StudyError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Most tasks one study may have.
pub const MAX_TASKS: u64 = 50_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulatedFile {
    interest: BTreeMap<String, f64>,
    competence: BTreeMap<String, f64>,
    #[serde(default)]
    language_shift: f64,
    #[serde(default = "default_item_sd")]
    item_sd: f64,
    #[serde(default = "default_noise_sd")]
    noise_sd: f64,
    #[serde(default)]
    invalid_rate: f64,
    #[serde(default)]
    refusal_rate: f64,
}

fn default_item_sd() -> f64 {
    0.5
}
fn default_noise_sd() -> f64 {
    0.6
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RespondentFile {
    name: String,
    provider: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    version_label: String,
    #[serde(default)]
    family: String,
    #[serde(default)]
    simulated: Option<SimulatedFile>,
    #[serde(default)]
    base_url: String,
    #[serde(default)]
    api_key_env: String,
    #[serde(default)]
    api_key_file: String,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    system_prompt: Option<SystemPromptFile>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    timeout_secs: Option<u32>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    rating_source: Option<String>,
    #[serde(default)]
    requests_per_minute: Option<f64>,
    #[serde(default)]
    tokens_per_minute: Option<f64>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    max_retry_wait_secs: Option<u32>,
    #[serde(default)]
    input_price_per_million: Option<f64>,
    #[serde(default)]
    output_price_per_million: Option<f64>,
    #[serde(default)]
    currency: Option<String>,
}

/// A respondent's system prompt: one text for every language, or a table of
/// texts by language tag.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SystemPromptFile {
    Text(String),
    ByLanguage(BTreeMap<String, String>),
}

impl RespondentFile {
    /// The first HTTP-only key set on this respondent, if any.
    fn api_only_key(&self) -> Option<&'static str> {
        [
            ("base_url", !self.base_url.is_empty()),
            ("api_key_env", !self.api_key_env.is_empty()),
            ("api_key_file", !self.api_key_file.is_empty()),
            ("temperature", self.temperature.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
            ("system_prompt", self.system_prompt.is_some()),
            ("top_p", self.top_p.is_some()),
            ("seed", self.seed.is_some()),
            ("timeout_secs", self.timeout_secs.is_some()),
            ("logprobs", self.logprobs.is_some()),
            ("rating_source", self.rating_source.is_some()),
            ("requests_per_minute", self.requests_per_minute.is_some()),
            ("tokens_per_minute", self.tokens_per_minute.is_some()),
            ("max_concurrency", self.max_concurrency.is_some()),
            ("max_retry_wait_secs", self.max_retry_wait_secs.is_some()),
            (
                "input_price_per_million",
                self.input_price_per_million.is_some(),
            ),
            (
                "output_price_per_million",
                self.output_price_per_million.is_some(),
            ),
            ("currency", self.currency.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(key, _)| key)
    }
}

/// The rating source named in a study file: `sampled`, `most_probable` or
/// `expected`.
pub fn rating_source_from_name(name: &str) -> Option<RatingSource> {
    Some(match name {
        "sampled" => RatingSource::Sampled,
        "most_probable" => RatingSource::MostProbable,
        "expected" => RatingSource::Expected,
        _ => return None,
    })
}

/// Longest system prompt a respondent may have, in characters.
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 100_000;

/// Longest per-request timeout, in seconds.
pub const MAX_TIMEOUT_SECS: u32 = 3_600;

/// Longest retry wait a study may allow, in seconds.
pub const MAX_RETRY_WAIT_SECS: u32 = 86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    name: String,
    #[serde(default)]
    seed: u64,
    replications: u32,
    languages: Vec<String>,
    instruments: Vec<String>,
    #[serde(default = "default_concurrency")]
    concurrency: u32,
    #[serde(default)]
    reask_invalid: u32,
    #[serde(default)]
    administration: Option<String>,
    #[serde(default)]
    factors: Vec<FactorFile>,
    respondents: Vec<RespondentFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FactorFile {
    name: String,
    levels: Vec<LevelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelFile {
    name: String,
    #[serde(default)]
    system_prompt: BTreeMap<String, String>,
    #[serde(default)]
    instructions: BTreeMap<String, String>,
    #[serde(default)]
    preamble: BTreeMap<String, String>,
}

/// The administration named in a study file: `one_item` or `all_items`.
pub fn administration_from_name(name: &str) -> Option<Administration> {
    Some(match name {
        "one_item" => Administration::OneItem,
        "all_items" => Administration::AllItems,
        _ => return None,
    })
}

/// Most design factors a study may have.
pub const MAX_FACTORS: usize = 8;

/// Most levels one factor may have.
pub const MAX_LEVELS: usize = 64;

/// Names of `ItemResponse` fields that are not export columns themselves
/// but would read as one; a factor may not take them either.
const RESERVED_FIELD_NAMES: &[&str] = &["study_id", "instrument_id", "construct", "item_id"];

/// Whether a factor may not take `name` (lower case): every fixed column of
/// the analyzer's export, which a factor column stands beside, and the field
/// names above.
pub fn is_reserved_column(name: &str) -> bool {
    use careers_analyzer::export::{LEADING_COLUMNS, TRAILING_COLUMNS};
    LEADING_COLUMNS
        .iter()
        .chain(TRAILING_COLUMNS)
        .chain(RESERVED_FIELD_NAMES)
        .any(|c| *c == name)
}

fn default_concurrency() -> u32 {
    32
}

fn riasec_values(field: &str, map: &BTreeMap<String, f64>) -> Result<Vec<f64>, StudyError> {
    for key in map.keys() {
        let mut chars = key.chars();
        if !matches!(
            (chars.next().and_then(scale::from_letter), chars.next()),
            (Some(_), None)
        ) {
            return Err(bad(field, format!("{key:?} is not one of R I A S E C")));
        }
    }
    RIASEC
        .iter()
        .map(|s| {
            let letter = scale::letter(*s).to_string();
            map.get(&letter)
                .or_else(|| map.get(&letter.to_lowercase()))
                .copied()
                .ok_or_else(|| bad(field, format!("missing area {letter}")))
        })
        .collect()
}

/// Parses a study file's text into a spec (not yet validated against the
/// catalog: call [`validate`]).
pub fn parse_file(text: &str) -> Result<StudySpec, StudyError> {
    let file: StudyFile = toml::from_str(text).map_err(|e| {
        bad(
            crate::instrument::toml_location(text, &e),
            e.message().to_string(),
        )
    })?;
    let mut respondents = Vec::with_capacity(file.respondents.len());
    for (i, r) in file.respondents.into_iter().enumerate() {
        let prefix = format!("respondents[{i}]");
        if r.provider == "simulated"
            && let Some(key) = r.api_only_key()
        {
            return Err(bad(
                format!("{prefix}.{key}"),
                "only HTTP providers take this setting",
            ));
        }
        let rating_source = match r.rating_source.as_deref() {
            None => RatingSource::Unspecified,
            Some(name) => rating_source_from_name(name).ok_or_else(|| {
                bad(
                    format!("{prefix}.rating_source"),
                    format!("{name:?} is not one of sampled, most_probable, expected"),
                )
            })?,
        };
        let settings = match (r.provider.as_str(), r.simulated) {
            ("simulated", Some(sim)) => {
                Some(respondent_spec::Settings::Simulated(SimulatedProfile {
                    interest: riasec_values(
                        &format!("{prefix}.simulated.interest"),
                        &sim.interest,
                    )?,
                    competence: riasec_values(
                        &format!("{prefix}.simulated.competence"),
                        &sim.competence,
                    )?,
                    language_shift: sim.language_shift,
                    item_sd: sim.item_sd,
                    noise_sd: sim.noise_sd,
                    invalid_rate: sim.invalid_rate,
                    refusal_rate: sim.refusal_rate,
                }))
            }
            ("simulated", None) => {
                return Err(bad(
                    format!("{prefix}.simulated"),
                    "a simulated respondent needs a [respondents.simulated] profile",
                ));
            }
            (_, Some(_)) => {
                return Err(bad(
                    format!("{prefix}.simulated"),
                    "only provider \"simulated\" takes a simulated profile",
                ));
            }
            (_, None) => Some(respondent_spec::Settings::Api(ApiSettings {
                base_url: r.base_url,
                api_key_env: r.api_key_env,
                api_key_file: r.api_key_file,
                temperature: r.temperature,
                top_p: r.top_p,
                seed: r.seed,
                max_tokens: r.max_tokens.unwrap_or(0),
                system_prompt: match &r.system_prompt {
                    Some(SystemPromptFile::Text(t)) => t.clone(),
                    _ => String::new(),
                },
                system_prompts: match r.system_prompt {
                    Some(SystemPromptFile::ByLanguage(m)) => m.into_iter().collect(),
                    _ => Default::default(),
                },
                timeout_secs: r.timeout_secs.unwrap_or(0),
                logprobs: r.logprobs.unwrap_or(false),
                rating_source: rating_source as i32,
                requests_per_minute: r.requests_per_minute.unwrap_or(0.0),
                tokens_per_minute: r.tokens_per_minute.unwrap_or(0.0),
                max_concurrency: r.max_concurrency.unwrap_or(0),
                max_retry_wait_secs: r.max_retry_wait_secs.unwrap_or(0),
                input_price_per_million: r.input_price_per_million.unwrap_or(0.0),
                output_price_per_million: r.output_price_per_million.unwrap_or(0.0),
                currency: r.currency.unwrap_or_default(),
            })),
        };
        let model = if r.model.is_empty() {
            r.name.clone()
        } else {
            r.model
        };
        respondents.push(RespondentSpec {
            respondent: Some(v1::Respondent {
                name: r.name,
                provider: r.provider,
                model,
                version_label: r.version_label,
                family: r.family,
            }),
            settings,
        });
    }
    let administration = match file.administration.as_deref() {
        None => Administration::Unspecified,
        Some(name) => administration_from_name(name).ok_or_else(|| {
            bad(
                "administration",
                format!("{name:?} is not one of one_item, all_items"),
            )
        })?,
    };
    let factors = file
        .factors
        .into_iter()
        .map(|f| DesignFactor {
            name: f.name,
            levels: f
                .levels
                .into_iter()
                .map(|l| FactorLevel {
                    name: l.name,
                    system_prompt: l.system_prompt.into_iter().collect(),
                    instructions: l.instructions.into_iter().collect(),
                    preamble: l.preamble.into_iter().collect(),
                })
                .collect(),
        })
        .collect();
    Ok(StudySpec {
        administration: administration as i32,
        factors,
        name: file.name,
        respondents,
        languages: file.languages,
        instruments: file.instruments,
        replications: file.replications,
        concurrency: file.concurrency,
        reask_invalid: file.reask_invalid,
        seed: file.seed,
    })
}

fn check_name(field: &str, value: &str) -> Result<(), StudyError> {
    if value.is_empty() || value.len() > 128 {
        return Err(bad(field, "must be 1 to 128 characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(
            field,
            format!("{value:?} may hold only letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

/// Validates a spec against the instruments and providers this collector has,
/// reading API keys from this process's environment (or their files).
pub fn validate(spec: &StudySpec, catalog: &Catalog) -> Result<(), StudyError> {
    validate_with_env(spec, catalog, &|name| std::env::var(name).ok())
}

/// [`validate`] with environment variables looked up through `env`.
pub fn validate_with_env(
    spec: &StudySpec,
    catalog: &Catalog,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), StudyError> {
    check_name("name", &spec.name)?;
    if spec.replications == 0 {
        return Err(bad("replications", "must be at least 1"));
    }
    if spec.reask_invalid > 5 {
        return Err(bad(
            "reask_invalid",
            format!("{} is above 5", spec.reask_invalid),
        ));
    }
    if spec.concurrency == 0 || spec.concurrency > 4096 {
        return Err(bad(
            "concurrency",
            format!("{} is outside 1..4096", spec.concurrency),
        ));
    }
    if spec.languages.is_empty() {
        return Err(bad("languages", "must list at least one language"));
    }
    if spec.instruments.is_empty() {
        return Err(bad("instruments", "must list at least one instrument"));
    }
    if spec.respondents.is_empty() {
        return Err(bad("respondents", "must list at least one respondent"));
    }
    for (field, list) in [
        ("languages", &spec.languages),
        ("instruments", &spec.instruments),
    ] {
        let unique: BTreeSet<_> = list.iter().collect();
        if unique.len() != list.len() {
            return Err(bad(field, "lists a value twice"));
        }
    }
    if Administration::try_from(spec.administration).is_err() {
        return Err(bad(
            "administration",
            format!("{} is not a known administration", spec.administration),
        ));
    }
    validate_factors(spec)?;
    let mut items_per_language = 0u64;
    for (i, id) in spec.instruments.iter().enumerate() {
        let instrument = catalog.get(id).ok_or_else(|| {
            bad(
                format!("instruments[{i}]"),
                format!("unknown instrument {id:?}"),
            )
        })?;
        for (j, lang) in spec.languages.iter().enumerate() {
            if !instrument.languages.contains(lang) {
                return Err(bad(
                    format!("languages[{j}]"),
                    format!(
                        "instrument {id:?} has no {lang:?} version (it has {})",
                        instrument.languages.join(", ")
                    ),
                ));
            }
        }
        items_per_language += instrument.items.len() as u64;
    }
    let mut names = BTreeSet::new();
    for (i, r) in spec.respondents.iter().enumerate() {
        let prefix = format!("respondents[{i}]");
        let respondent = r
            .respondent
            .as_ref()
            .ok_or_else(|| bad(format!("{prefix}.respondent"), "must be set"))?;
        check_name(&format!("{prefix}.name"), &respondent.name)?;
        if !names.insert(respondent.name.as_str()) {
            return Err(bad(
                format!("{prefix}.name"),
                format!("{:?} is used twice", respondent.name),
            ));
        }
        match KNOWN_PROVIDERS
            .iter()
            .find(|(p, _)| *p == respondent.provider)
        {
            None => {
                let known: Vec<&str> = KNOWN_PROVIDERS.iter().map(|(p, _)| *p).collect();
                return Err(bad(
                    format!("{prefix}.provider"),
                    format!(
                        "unknown provider {:?} (known: {})",
                        respondent.provider,
                        known.join(", ")
                    ),
                ));
            }
            Some((p, false)) => {
                return Err(bad(
                    format!("{prefix}.provider"),
                    format!("provider {p:?} is not available yet in this build; use \"simulated\""),
                ));
            }
            Some(_) => {}
        }
        match &r.settings {
            Some(respondent_spec::Settings::Simulated(profile)) => simulated::validate(profile)
                .map_err(|e| bad(format!("{prefix}.simulated.{}", e.field), e.reason))?,
            _ if respondent.provider == "simulated" => {
                return Err(bad(
                    format!("{prefix}.simulated"),
                    "a simulated respondent needs a profile",
                ));
            }
            Some(respondent_spec::Settings::Api(api)) => {
                let url = &api.base_url;
                // The base URL is echoed in Study messages and logs: it must not
                // carry a secret, and it is not quoted in these errors in case it
                // does.
                if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad(
                        format!("{prefix}.base_url"),
                        "not an http:// or https:// URL",
                    ));
                }
                if !url.is_empty() {
                    match reqwest::Url::parse(url) {
                        Err(e) => {
                            return Err(bad(
                                format!("{prefix}.base_url"),
                                format!("not a valid URL: {e}"),
                            ));
                        }
                        Ok(u)
                            if !u.username().is_empty()
                                || u.password().is_some()
                                || u.query().is_some() =>
                        {
                            return Err(bad(
                                format!("{prefix}.base_url"),
                                "must not hold credentials or a query string; put the key in \
                                 api_key_env or api_key_file",
                            ));
                        }
                        Ok(_) => {}
                    }
                }
                if respondent.model.is_empty() {
                    return Err(bad(
                        format!("{prefix}.model"),
                        "an HTTP provider needs a model",
                    ));
                }
                validate_api(api, &prefix)?;
                validate_for_provider(api, &respondent.provider, &spec.languages, &prefix)?;
                if spec.administration == Administration::AllItems as i32
                    && matches!(
                        RatingSource::try_from(api.rating_source),
                        Ok(RatingSource::MostProbable | RatingSource::Expected)
                    )
                {
                    return Err(bad(
                        format!("{prefix}.rating_source"),
                        "ratings from option probabilities need one-item administration (log-probabilities describe one rating token)",
                    ));
                }
                http::resolve_key(&respondent.provider, api, &prefix, env)?;
            }
            None => {
                return Err(bad(
                    format!("{prefix}.api"),
                    format!("provider {:?} needs API settings", respondent.provider),
                ));
            }
        }
    }
    let conditions: u64 = spec.factors.iter().map(|f| f.levels.len() as u64).product();
    let total = spec.respondents.len() as u64
        * spec.languages.len() as u64
        * items_per_language
        * conditions
        * u64::from(spec.replications);
    if total > MAX_TASKS {
        return Err(bad(
            "replications",
            format!("the study would have {total} tasks, at most {MAX_TASKS} allowed"),
        ));
    }
    Ok(())
}

/// Checks the design factors: names usable as columns, levels named and
/// unique, texts only for the study's languages.
fn validate_factors(spec: &StudySpec) -> Result<(), StudyError> {
    if spec.factors.len() > MAX_FACTORS {
        return Err(bad(
            "factors",
            format!("{} factors, at most {MAX_FACTORS}", spec.factors.len()),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, factor) in spec.factors.iter().enumerate() {
        let field = format!("factors[{i}]");
        let name = &factor.name;
        let mut chars = name.chars();
        let identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= 64;
        if !identifier {
            return Err(bad(
                format!("{field}.name"),
                format!(
                    "{name:?} must be a letter, then letters, digits or '_' (at most 64): it becomes a column name"
                ),
            ));
        }
        if is_reserved_column(&name.to_ascii_lowercase()) {
            return Err(bad(
                format!("{field}.name"),
                format!("{name:?} is a built-in column"),
            ));
        }
        if !names.insert(name.to_ascii_lowercase()) {
            return Err(bad(
                format!("{field}.name"),
                format!("{name:?} is used twice"),
            ));
        }
        if factor.levels.is_empty() || factor.levels.len() > MAX_LEVELS {
            return Err(bad(
                format!("{field}.levels"),
                format!("{} levels, must be 1 to {MAX_LEVELS}", factor.levels.len()),
            ));
        }
        let mut levels = BTreeSet::new();
        for (j, level) in factor.levels.iter().enumerate() {
            let field = format!("{field}.levels[{j}]");
            check_name(&format!("{field}.name"), &level.name)?;
            if !levels.insert(level.name.as_str()) {
                return Err(bad(
                    format!("{field}.name"),
                    format!("{:?} is used twice", level.name),
                ));
            }
            for (part, texts) in [
                ("system_prompt", &level.system_prompt),
                ("instructions", &level.instructions),
                ("preamble", &level.preamble),
            ] {
                check_language_texts(&format!("{field}.{part}"), texts, &spec.languages)?;
            }
        }
    }
    Ok(())
}

/// Checks texts given per language (`field.<language>`): each for one of the
/// study's languages, none longer than a system prompt may be.
fn check_language_texts(
    field: &str,
    texts: &BTreeMap<String, String>,
    languages: &[String],
) -> Result<(), StudyError> {
    for (language, text) in texts {
        if !languages.contains(language) {
            return Err(bad(
                format!("{field}.{language}"),
                format!("the study has no language {language:?}"),
            ));
        }
        if text.chars().count() > MAX_SYSTEM_PROMPT_CHARS {
            return Err(bad(
                format!("{field}.{language}"),
                format!("longer than {MAX_SYSTEM_PROMPT_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// Checks an HTTP respondent's settings against what its provider accepts
/// (see [`crate::provider::Preset`]): the temperature range, and whether
/// `top_p`, `seed` and log-probabilities exist there; and that per-language
/// system prompts are for the study's languages.
pub fn validate_for_provider(
    api: &ApiSettings,
    provider: &str,
    languages: &[String],
    prefix: &str,
) -> Result<(), StudyError> {
    check_language_texts(
        &format!("{prefix}.system_prompt"),
        &api.system_prompts,
        languages,
    )?;
    let Some(preset) = crate::provider::preset(provider) else {
        return Ok(());
    };
    if let Some(t) = api.temperature {
        let (low, high, open) = preset.temperature;
        if t > high || t < low || (open && t <= low) {
            let range = if open {
                format!("({low}, {high}]")
            } else {
                format!("[{low}, {high}]")
            };
            return Err(bad(
                format!("{prefix}.temperature"),
                format!("{t} is outside {range}, the range {provider} accepts"),
            ));
        }
    }
    for (field, set, accepted) in [
        ("top_p", api.top_p.is_some(), preset.top_p),
        ("seed", api.seed.is_some(), preset.seed),
        ("logprobs", api.logprobs, preset.logprobs),
    ] {
        if set && !accepted {
            return Err(bad(
                format!("{prefix}.{field}"),
                format!("{provider}'s API does not take {field}"),
            ));
        }
    }
    Ok(())
}

/// Checks the numeric and enum settings of an HTTP respondent; `prefix` is
/// its field path (`respondents[1]`).
pub fn validate_api(api: &ApiSettings, prefix: &str) -> Result<(), StudyError> {
    if let Some(t) = api.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(bad(
            format!("{prefix}.temperature"),
            format!("{t} is not a non-negative number"),
        ));
    }
    if let Some(p) = api.top_p
        && !(p.is_finite() && p > 0.0 && p <= 1.0)
    {
        return Err(bad(
            format!("{prefix}.top_p"),
            format!("{p} is outside (0, 1]"),
        ));
    }
    for (key, value) in [
        ("requests_per_minute", api.requests_per_minute),
        ("tokens_per_minute", api.tokens_per_minute),
    ] {
        if !value.is_finite() {
            return Err(bad(
                format!("{prefix}.{key}"),
                format!("{value} is not a finite number"),
            ));
        }
        if value < 0.0 {
            return Err(bad(
                format!("{prefix}.{key}"),
                format!("{value} is negative"),
            ));
        }
    }
    for (key, value) in [
        ("input_price_per_million", api.input_price_per_million),
        ("output_price_per_million", api.output_price_per_million),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(bad(
                format!("{prefix}.{key}"),
                format!("{value} is not a non-negative number"),
            ));
        }
    }
    if !(api.currency.is_empty()
        || (api.currency.len() == 3 && api.currency.chars().all(|c| c.is_ascii_uppercase())))
    {
        return Err(bad(
            format!("{prefix}.currency"),
            format!(
                "{:?} is not an ISO 4217 code (three capital letters)",
                api.currency
            ),
        ));
    }
    if api.system_prompt.chars().count() > MAX_SYSTEM_PROMPT_CHARS {
        return Err(bad(
            format!("{prefix}.system_prompt"),
            format!("longer than {MAX_SYSTEM_PROMPT_CHARS} characters"),
        ));
    }
    if api.timeout_secs > MAX_TIMEOUT_SECS {
        return Err(bad(
            format!("{prefix}.timeout_secs"),
            format!("{} is more than {MAX_TIMEOUT_SECS}", api.timeout_secs),
        ));
    }
    if api.max_retry_wait_secs > MAX_RETRY_WAIT_SECS {
        return Err(bad(
            format!("{prefix}.max_retry_wait_secs"),
            format!(
                "{} is more than {MAX_RETRY_WAIT_SECS}",
                api.max_retry_wait_secs
            ),
        ));
    }
    if api.max_concurrency > 4096 {
        return Err(bad(
            format!("{prefix}.max_concurrency"),
            format!("{} is outside 0..4096", api.max_concurrency),
        ));
    }
    match RatingSource::try_from(api.rating_source) {
        Err(_) => {
            return Err(bad(
                format!("{prefix}.rating_source"),
                format!("{} is not a known rating source", api.rating_source),
            ));
        }
        Ok(RatingSource::MostProbable | RatingSource::Expected) if !api.logprobs => {
            return Err(bad(
                format!("{prefix}.rating_source"),
                "choosing the rating from option probabilities needs logprobs = true",
            ));
        }
        Ok(_) => {}
    }
    Ok(())
}

/// One task of a study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Deterministic response id.
    pub task_id: uuid::Uuid,
    /// Respondent name.
    pub respondent: String,
    /// Language tag.
    pub language: String,
    /// Instrument id.
    pub instrument_id: String,
    /// Item id.
    pub item_id: String,
    /// Replication, from 1.
    pub replication: u32,
    /// The level of each design factor, by factor name (empty without factors).
    pub conditions: BTreeMap<String, String>,
    /// The index of each factor's level, in the order of `StudySpec.factors`.
    pub levels: Vec<usize>,
    /// Administration order within the study.
    pub order: u64,
}

impl Task {
    /// Whether `other` belongs to the same form: the same respondent,
    /// language, instrument, replication and conditions (the items asked
    /// together under `ADMINISTRATION_ALL_ITEMS`).
    pub fn same_form(&self, other: &Task) -> bool {
        self.respondent == other.respondent
            && self.language == other.language
            && self.instrument_id == other.instrument_id
            && self.replication == other.replication
            && self.levels == other.levels
    }
}

/// Every combination of the factors' level indices, the last factor varying
/// fastest; one empty combination without factors.
pub fn level_combinations(factors: &[DesignFactor]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for factor in factors {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..factor.levels.len()).map(move |level| {
                    let mut next = prefix.clone();
                    next.push(level);
                    next
                })
            })
            .collect();
    }
    out
}

/// Every task of a (validated) spec, in administration order: replication by
/// replication, so a partial run is balanced across respondents, conditions
/// and languages, with the items of each form in a seeded random order.
pub fn tasks(spec: &StudySpec, catalog: &Catalog) -> Vec<Task> {
    let combinations = level_combinations(&spec.factors);
    let mut out = Vec::new();
    let mut order = 0;
    for replication in 1..=spec.replications {
        for r in spec
            .respondents
            .iter()
            .filter_map(|r| r.respondent.as_ref())
        {
            for levels in &combinations {
                let conditions: BTreeMap<String, String> = spec
                    .factors
                    .iter()
                    .zip(levels)
                    .map(|(f, &l)| (f.name.clone(), f.levels[l].name.clone()))
                    .collect();
                // Appended to the shuffle seed only when there are factors, so
                // a study without them keeps its order.
                let condition_key: String = conditions
                    .iter()
                    .map(|(f, l)| format!("{f}={l};"))
                    .collect();
                for language in &spec.languages {
                    for instrument in spec.instruments.iter().filter_map(|id| catalog.get(id)) {
                        // Item order is shuffled per replication (and
                        // respondent, condition, language, instrument) with
                        // the study's seed: the same study always has the
                        // same order.
                        let mut items: Vec<_> = instrument.items.iter().collect();
                        let seed = spec.seed.to_le_bytes();
                        let rep = replication.to_le_bytes();
                        let mut parts: Vec<&[u8]> = vec![
                            &seed,
                            &rep,
                            r.name.as_bytes(),
                            language.as_bytes(),
                            instrument.id.as_bytes(),
                        ];
                        if !condition_key.is_empty() {
                            parts.push(condition_key.as_bytes());
                        }
                        let mut rng = ChaCha8Rng::seed_from_u64(stable_hash(&parts));
                        items.shuffle(&mut rng);
                        for item in items {
                            out.push(Task {
                                task_id: response_id_with_conditions(
                                    &spec.name,
                                    &r.name,
                                    language,
                                    &instrument.id,
                                    &item.id,
                                    replication,
                                    &conditions,
                                ),
                                respondent: r.name.clone(),
                                language: language.clone(),
                                instrument_id: instrument.id.clone(),
                                item_id: item.id.clone(),
                                replication,
                                conditions: conditions.clone(),
                                levels: levels.clone(),
                                order,
                            });
                            order += 1;
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULATED: &str = include_str!("../studies/paper-simulated.toml");
    const LIVE: &str = include_str!("../studies/paper-live.toml");

    #[test]
    fn the_paper_design_has_19200_tasks() {
        let catalog = Catalog::built_in().expect("catalog");
        let spec = parse_file(SIMULATED).expect("parses");
        validate(&spec, &catalog).expect("valid");
        let tasks = tasks(&spec, &catalog);
        assert_eq!(tasks.len(), 19_200);
        let ids: BTreeSet<_> = tasks.iter().map(|t| t.task_id).collect();
        assert_eq!(ids.len(), 19_200);
    }

    #[test]
    fn item_order_is_shuffled_per_replication_and_reproducible() {
        let catalog = Catalog::built_in().expect("catalog");
        let spec = parse_file(SIMULATED).expect("parses");
        let order = |tasks: &[Task], replication: u32| -> Vec<String> {
            tasks
                .iter()
                .filter(|t| t.replication == replication && t.respondent == "simulated-social")
                .filter(|t| t.language == "en" && t.instrument_id == "onet-ip-sf")
                .map(|t| t.item_id.clone())
                .collect()
        };
        let a = tasks(&spec, &catalog);
        let (first, second) = (order(&a, 1), order(&a, 2));
        assert_eq!(first.len(), 60);
        assert_ne!(first, second, "each replication has its own order");
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted.len(), sorted.iter().collect::<BTreeSet<_>>().len());
        assert_eq!(
            order(&tasks(&spec, &catalog), 1),
            first,
            "the same seed gives the same order"
        );
        let mut reseeded = spec.clone();
        reseeded.seed += 1;
        assert_ne!(order(&tasks(&reseeded, &catalog), 1), first);
        // Orders are positions in the administration sequence.
        assert!(a.windows(2).all(|w| w[0].order < w[1].order));
    }

    #[test]
    fn live_study_names_the_missing_key() {
        let catalog = Catalog::built_in().expect("catalog");
        let spec = parse_file(LIVE).expect("parses");
        let e = validate_with_env(&spec, &catalog, &|_| None).expect_err("no keys");
        assert_eq!(
            e.to_string(),
            "respondents[0].api_key_env: environment variable OPENAI_API_KEY is not set"
        );
        let e = validate_with_env(&spec, &catalog, &|name| {
            (name != "QIANFAN_API_KEY").then(|| "k".to_string())
        })
        .expect_err("one key missing");
        assert_eq!(e.field, "respondents[2].api_key_env");
        validate_with_env(&spec, &catalog, &|_| Some("k".into())).expect("all keys set");
        let mut bad_url = spec.clone();
        if let Some(respondent_spec::Settings::Api(api)) = &mut bad_url.respondents[1].settings {
            api.base_url = "ftp://x".into();
        }
        assert_eq!(
            validate_with_env(&bad_url, &catalog, &|_| Some("k".into()))
                .expect_err("bad url")
                .field,
            "respondents[1].base_url"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let catalog = Catalog::built_in().expect("catalog");
        let mut spec = parse_file(SIMULATED).expect("parses");
        spec.instruments.push("nope".into());
        assert_eq!(
            validate(&spec, &catalog).expect_err("unknown").field,
            "instruments[2]"
        );
        let mut spec = parse_file(SIMULATED).expect("parses");
        spec.languages.push("fr".into());
        assert_eq!(
            validate(&spec, &catalog).expect_err("no fr").field,
            "languages[2]"
        );
        let mut spec = parse_file(SIMULATED).expect("parses");
        spec.replications = 0;
        assert_eq!(
            validate(&spec, &catalog).expect_err("zero").field,
            "replications"
        );
        let bad_area = SIMULATED.replacen("R = ", "Q = ", 1);
        assert_eq!(
            parse_file(&bad_area).expect_err("area").field,
            "respondents[0].simulated.interest"
        );
        assert!(parse_file("name = 3").is_err());
    }

    const API_STUDY: &str = r#"
name = "api-settings"
replications = 1
languages = ["en"]
instruments = ["onet-ip-sf"]

[[respondents]]
name = "sim"
provider = "simulated"
[respondents.simulated]
interest = { R = 3, I = 3, A = 3, S = 3, E = 3, C = 3 }
competence = { R = 3, I = 3, A = 3, S = 3, E = 3, C = 3 }

[[respondents]]
name = "local"
provider = "vllm"
model = "m"
system_prompt = "You are a survey respondent."
timeout_secs = 30
logprobs = true
rating_source = "expected"
requests_per_minute = 60
tokens_per_minute = 90000.5
max_concurrency = 2
max_retry_wait_secs = 20
"#;

    fn api(spec: &mut StudySpec, i: usize) -> &mut ApiSettings {
        match &mut spec.respondents[i].settings {
            Some(respondent_spec::Settings::Api(api)) => api,
            other => panic!("not API settings: {other:?}"),
        }
    }

    /// The validation error of study `text` after `edit` of respondent 1's
    /// API settings.
    fn api_error(text: &str, edit: &dyn Fn(&mut ApiSettings)) -> String {
        let catalog = Catalog::built_in().expect("catalog");
        let mut spec = parse_file(text).expect("parses");
        edit(api(&mut spec, 1));
        validate_with_env(&spec, &catalog, &|_| None)
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn api_settings_come_from_the_study_file() {
        let catalog = Catalog::built_in().expect("catalog");
        let mut spec = parse_file(API_STUDY).expect("parses");
        validate_with_env(&spec, &catalog, &|_| None).expect("valid");
        let a = api(&mut spec, 1).clone();
        assert_eq!(a.system_prompt, "You are a survey respondent.");
        assert_eq!(a.timeout_secs, 30);
        assert!(a.logprobs);
        assert_eq!(a.rating_source, RatingSource::Expected as i32);
        assert_eq!(a.requests_per_minute, 60.0);
        assert_eq!(a.tokens_per_minute, 90000.5);
        assert_eq!(a.max_concurrency, 2);
        assert_eq!(a.max_retry_wait_secs, 20);
        let most = API_STUDY.replace("\"expected\"", "\"most_probable\"");
        let mut spec = parse_file(&most).expect("parses");
        assert_eq!(
            api(&mut spec, 1).rating_source,
            RatingSource::MostProbable as i32
        );
        // Defaults: everything 0 / off.
        let plain = parse_file(LIVE).expect("parses");
        let mut plain = plain;
        assert_eq!(api(&mut plain, 0).rating_source, 0);
        assert_eq!(api(&mut plain, 0).requests_per_minute, 0.0);
    }

    #[test]
    fn api_settings_errors_name_the_field() {
        let catalog = Catalog::built_in().expect("catalog");
        let invalid = |edit: &dyn Fn(&mut ApiSettings)| api_error(API_STUDY, edit);
        assert_eq!(
            invalid(&|a| a.requests_per_minute = -3.0),
            "respondents[1].requests_per_minute: -3 is negative"
        );
        assert_eq!(
            invalid(&|a| a.tokens_per_minute = f64::NAN),
            "respondents[1].tokens_per_minute: NaN is not a finite number"
        );
        assert_eq!(
            invalid(&|a| a.timeout_secs = 3601),
            "respondents[1].timeout_secs: 3601 is more than 3600"
        );
        assert_eq!(
            invalid(&|a| a.max_retry_wait_secs = 86_401),
            "respondents[1].max_retry_wait_secs: 86401 is more than 86400"
        );
        assert_eq!(
            invalid(&|a| a.max_concurrency = 5000),
            "respondents[1].max_concurrency: 5000 is outside 0..4096"
        );
        assert_eq!(
            invalid(&|a| a.rating_source = 9),
            "respondents[1].rating_source: 9 is not a known rating source"
        );
        assert_eq!(
            invalid(&|a| a.logprobs = false),
            "respondents[1].rating_source: choosing the rating from option probabilities needs logprobs = true"
        );
        assert_eq!(
            invalid(&|a| a.temperature = Some(-0.5)),
            "respondents[1].temperature: -0.5 is not a non-negative number"
        );
        assert_eq!(
            invalid(&|a| a.top_p = Some(1.5)),
            "respondents[1].top_p: 1.5 is outside (0, 1]"
        );
        assert_eq!(
            invalid(&|a| a
                .system_prompts
                .insert("fr".into(), "Bonjour".into())
                .map_or((), drop)),
            "respondents[1].system_prompt.fr: the study has no language \"fr\""
        );
        // In the file: an unknown rating source, a setting on a simulated respondent.
        let e = parse_file(&API_STUDY.replace("\"expected\"", "\"mean\"")).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "respondents[1].rating_source: \"mean\" is not one of sampled, most_probable, expected"
        );
        let e = parse_file(&API_STUDY.replacen(
            "provider = \"simulated\"",
            "provider = \"simulated\"\nrequests_per_minute = 10",
            1,
        ))
        .expect_err("simulated");
        assert_eq!(
            e.to_string(),
            "respondents[0].requests_per_minute: only HTTP providers take this setting"
        );
        let e =
            parse_file(&API_STUDY.replace("requests_per_minute = 60", "requests_per_minute = -3"))
                .expect("parses");
        assert_eq!(
            validate_with_env(&e, &catalog, &|_| None)
                .expect_err("negative")
                .to_string(),
            "respondents[1].requests_per_minute: -3 is negative"
        );
    }

    #[test]
    fn settings_a_provider_refuses_are_named_before_anything_is_paid_for() {
        let catalog = Catalog::built_in().expect("catalog");
        let check = |provider: &str, edit: &dyn Fn(&mut ApiSettings)| {
            let mut spec = parse_file(API_STUDY).expect("parses");
            if let Some(r) = spec.respondents[1].respondent.as_mut() {
                r.provider = provider.into();
            }
            let a = api(&mut spec, 1);
            a.logprobs = false;
            a.rating_source = RatingSource::Unspecified as i32;
            a.api_key_env = "KEY".into();
            edit(a);
            validate_with_env(&spec, &catalog, &|_| Some("k".into())).map_err(|e| e.to_string())
        };
        assert_eq!(check("spark", &|a| a.temperature = Some(1.0)), Ok(()));
        assert_eq!(
            check("spark", &|a| a.temperature = Some(0.0)),
            Err("respondents[1].temperature: 0 is outside (0, 1], the range spark accepts".into())
        );
        assert_eq!(
            check("qianfan", &|a| a.temperature = Some(1.5)),
            Err(
                "respondents[1].temperature: 1.5 is outside (0, 1], the range qianfan accepts"
                    .into()
            )
        );
        assert_eq!(check("openai", &|a| a.temperature = Some(1.5)), Ok(()));
        assert_eq!(
            check("anthropic", &|a| a.temperature = Some(1.5)),
            Err(
                "respondents[1].temperature: 1.5 is outside [0, 1], the range anthropic accepts"
                    .into()
            )
        );
        assert_eq!(
            check("spark", &|a| a.top_p = Some(0.9)),
            Err("respondents[1].top_p: spark's API does not take top_p".into())
        );
        assert_eq!(
            check("anthropic", &|a| a.seed = Some(7)),
            Err("respondents[1].seed: anthropic's API does not take seed".into())
        );
        assert_eq!(
            check("anthropic", &|a| a.logprobs = true),
            Err("respondents[1].logprobs: anthropic's API does not take logprobs".into())
        );
        assert_eq!(
            check("openai", &|a| {
                a.seed = Some(7);
                a.top_p = Some(0.5);
                a.logprobs = true;
            }),
            Ok(())
        );
    }

    #[test]
    fn a_base_url_never_carries_a_key() {
        let catalog = Catalog::built_in().expect("catalog");
        for url in [
            "https://user:sk-secret@api.example.com/v1",
            "https://api.example.com/v1?key=sk-secret",
            "api.example.com/v1?key=sk-secret",
            "https://[::1/v1?key=sk-secret",
        ] {
            let mut spec = parse_file(API_STUDY).expect("parses");
            api(&mut spec, 1).base_url = url.into();
            let e = validate_with_env(&spec, &catalog, &|_| None).expect_err(url);
            assert_eq!(e.field, "respondents[1].base_url");
            assert!(!e.to_string().contains("sk-secret"), "{e}");
        }
        let mut spec = parse_file(API_STUDY).expect("parses");
        api(&mut spec, 1).base_url = "http://10.0.0.7:8000/v1".into();
        validate_with_env(&spec, &catalog, &|_| None).expect("a plain URL is fine");
    }

    #[test]
    fn a_system_prompt_may_be_given_per_language() {
        let text = API_STUDY
            .replace("languages = [\"en\"]", "languages = [\"en\", \"zh\"]")
            .replace(
                "system_prompt = \"You are a survey respondent.\"",
                "system_prompt = { en = \"You are a respondent.\", zh = \"你是一名受访者。\" }\ntop_p = 0.9\nseed = 42",
            );
        let mut spec = parse_file(&text).expect("parses");
        let catalog = Catalog::built_in().expect("catalog");
        validate_with_env(&spec, &catalog, &|_| None).expect("valid");
        let a = api(&mut spec, 1).clone();
        assert_eq!(a.system_prompt, "");
        assert_eq!(
            a.system_prompts.get("zh").map(String::as_str),
            Some("你是一名受访者。")
        );
        assert_eq!(a.system_prompts.len(), 2);
        assert_eq!(
            (a.top_p, a.seed, a.temperature),
            (Some(0.9), Some(42), None)
        );
    }

    const FACTORS: &str = r#"
name = "factors"
replications = 2
languages = ["en", "zh"]
instruments = ["onet-ip-sf"]
administration = "all_items"

[[factors]]
name = "persona"
[[factors.levels]]
name = "none"
[[factors.levels]]
name = "teacher"
system_prompt = { en = "You are a teacher.", zh = "你是一名教师。" }

[[factors]]
name = "prompt"
[[factors.levels]]
name = "standard"
[[factors.levels]]
name = "short"
instructions = { en = "Rate each activity." }
preamble = { zh = "请认真作答。" }
[[factors.levels]]
name = "long"

[[respondents]]
name = "sim"
provider = "simulated"
[respondents.simulated]
interest = { R = 3, I = 3, A = 3, S = 3, E = 3, C = 3 }
competence = { R = 3, I = 3, A = 3, S = 3, E = 3, C = 3 }
"#;

    #[test]
    fn factors_cross_the_design_and_give_each_condition_its_ids() {
        let catalog = Catalog::built_in().expect("catalog");
        let spec = parse_file(FACTORS).expect("parses");
        validate_with_env(&spec, &catalog, &|_| None).expect("valid");
        assert_eq!(spec.administration, Administration::AllItems as i32);
        assert_eq!(spec.factors.len(), 2);
        assert_eq!(
            spec.factors[0].levels[1]
                .system_prompt
                .get("zh")
                .map(String::as_str),
            Some("你是一名教师。")
        );
        assert_eq!(level_combinations(&spec.factors).len(), 6);
        let all = tasks(&spec, &catalog);
        // 1 respondent x 6 conditions x 2 languages x 60 items x 2 replications.
        assert_eq!(all.len(), 1440);
        let ids: BTreeSet<_> = all.iter().map(|t| t.task_id).collect();
        assert_eq!(ids.len(), 1440, "every condition has its own ids");
        let teacher_short = all
            .iter()
            .filter(|t| {
                t.conditions.get("persona").map(String::as_str) == Some("teacher")
                    && t.conditions.get("prompt").map(String::as_str) == Some("short")
            })
            .count();
        assert_eq!(teacher_short, 240);
        // Forms are contiguous: 60 tasks of one form, then the next.
        for form in all.chunks(60) {
            assert!(form.iter().all(|t| t.same_form(&form[0])));
        }
        assert!(!all[0].same_form(&all[60]));
        // Without factors, the ids are the paper's.
        let plain = parse_file(SIMULATED).expect("parses");
        let first = &tasks(&plain, &catalog)[0];
        assert!(first.conditions.is_empty());
        assert_eq!(
            first.task_id,
            careers_proto::ids::response_id(
                &plain.name,
                &first.respondent,
                &first.language,
                &first.instrument_id,
                &first.item_id,
                first.replication
            )
        );
    }

    #[test]
    fn factor_errors_name_the_field() {
        let catalog = Catalog::built_in().expect("catalog");
        let invalid = |edit: &dyn Fn(&mut StudySpec)| {
            let mut spec = parse_file(FACTORS).expect("parses");
            edit(&mut spec);
            validate_with_env(&spec, &catalog, &|_| None)
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(
            invalid(&|s| s.factors[0].name = "item".into()),
            "factors[0].name: \"item\" is a built-in column"
        );
        // Every fixed column of the export, the ones after the factor columns
        // too: a factor named "cost" would stand beside the cost column.
        for column in ["cost", "latency_ms", "Input_Tokens", "item_id"] {
            assert_eq!(
                invalid(&|s| s.factors[0].name = column.into()),
                format!("factors[0].name: {column:?} is a built-in column")
            );
        }
        assert!(invalid(&|s| s.factors[1].name = "2nd".into()).starts_with("factors[1].name: "));
        assert_eq!(
            invalid(&|s| s.factors[1].name = "Persona".into()),
            "factors[1].name: \"Persona\" is used twice"
        );
        assert_eq!(
            invalid(&|s| s.factors[1].levels[2].name = "short".into()),
            "factors[1].levels[2].name: \"short\" is used twice"
        );
        assert_eq!(
            invalid(&|s| s.factors[0].levels.clear()),
            "factors[0].levels: 0 levels, must be 1 to 64"
        );
        assert_eq!(
            invalid(&|s| {
                s.factors[0].levels[1]
                    .preamble
                    .insert("fr".into(), "x".into());
            }),
            "factors[0].levels[1].preamble.fr: the study has no language \"fr\""
        );
        assert_eq!(
            invalid(&|s| s.administration = 7),
            "administration: 7 is not a known administration"
        );
        let e = parse_file(&FACTORS.replace("\"all_items\"", "\"batch\"")).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "administration: \"batch\" is not one of one_item, all_items"
        );
    }

    #[test]
    fn prices_are_checked() {
        let catalog = Catalog::built_in().expect("catalog");
        let priced = API_STUDY.replace(
            "max_retry_wait_secs = 20",
            "max_retry_wait_secs = 20\ninput_price_per_million = 0.5\noutput_price_per_million = 1.5\ncurrency = \"CNY\"",
        );
        let mut spec = parse_file(&priced).expect("parses");
        validate_with_env(&spec, &catalog, &|_| None).expect("valid");
        let a = api(&mut spec, 1).clone();
        assert_eq!(
            (
                a.input_price_per_million,
                a.output_price_per_million,
                a.currency.as_str()
            ),
            (0.5, 1.5, "CNY")
        );
        let invalid = |edit: &dyn Fn(&mut ApiSettings)| api_error(&priced, edit);
        assert_eq!(
            invalid(&|a| a.output_price_per_million = -1.0),
            "respondents[1].output_price_per_million: -1 is not a non-negative number"
        );
        assert_eq!(
            invalid(&|a| a.currency = "usd".into()),
            "respondents[1].currency: \"usd\" is not an ISO 4217 code (three capital letters)"
        );
        // Probability-based ratings need one item per request.
        let batch = API_STUDY.replace(
            "instruments = [\"onet-ip-sf\"]",
            "instruments = [\"onet-ip-sf\"]\nadministration = \"all_items\"",
        );
        let spec = parse_file(&batch).expect("parses");
        assert_eq!(
            validate_with_env(&spec, &catalog, &|_| None)
                .expect_err("expected rating in a batch")
                .field,
            "respondents[1].rating_source"
        );
    }
}
