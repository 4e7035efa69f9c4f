//! Study designs: the TOML study file, its conversion to the wire `StudySpec`,
//! validation (shared by the CLI and `CreateStudy`), and the task list.
//!
//! A task is one (respondent, language, instrument, item, replication); its
//! response id is `careers_proto::ids::response_id` of that key, so it is the
//! same in every run and every process.

use std::collections::{BTreeMap, BTreeSet};

use careers_proto::ids::response_id;
use careers_proto::scale::{self, RIASEC};
use careers_proto::v1::{
    self, ApiSettings, RespondentSpec, SimulatedProfile, StudySpec, respondent_spec,
};
use serde::Deserialize;

use crate::instrument::Catalog;
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
}

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
    respondents: Vec<RespondentFile>,
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
                temperature: r.temperature.unwrap_or(0.0),
                max_tokens: r.max_tokens.unwrap_or(0),
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
    Ok(StudySpec {
        name: file.name,
        respondents,
        languages: file.languages,
        instruments: file.instruments,
        replications: file.replications,
        concurrency: file.concurrency,
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
                if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad(
                        format!("{prefix}.base_url"),
                        format!("{:?} is not an http:// or https:// URL", api.base_url),
                    ));
                }
                if respondent.model.is_empty() {
                    return Err(bad(
                        format!("{prefix}.model"),
                        "an HTTP provider needs a model",
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
    let total = spec.respondents.len() as u64
        * spec.languages.len() as u64
        * items_per_language
        * u64::from(spec.replications);
    if total > MAX_TASKS {
        return Err(bad(
            "replications",
            format!("the study would have {total} tasks, at most {MAX_TASKS} allowed"),
        ));
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
    /// Administration order within the study.
    pub order: u64,
}

/// Every task of a (validated) spec, in administration order: replication by
/// replication, so a partial run is balanced across respondents and languages.
pub fn tasks(spec: &StudySpec, catalog: &Catalog) -> Vec<Task> {
    let mut out = Vec::new();
    let mut order = 0;
    for replication in 1..=spec.replications {
        for r in spec
            .respondents
            .iter()
            .filter_map(|r| r.respondent.as_ref())
        {
            for language in &spec.languages {
                for instrument in spec.instruments.iter().filter_map(|id| catalog.get(id)) {
                    for item in &instrument.items {
                        out.push(Task {
                            task_id: response_id(
                                &spec.name,
                                &r.name,
                                language,
                                &instrument.id,
                                &item.id,
                                replication,
                            ),
                            respondent: r.name.clone(),
                            language: language.clone(),
                            instrument_id: instrument.id.clone(),
                            item_id: item.id.clone(),
                            replication,
                            order,
                        });
                        order += 1;
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
}
