//! LLM providers behind one trait. A provider turns one prompt into raw text
//! (plus token counts); it never parses answers (that is `answer.rs`) and
//! never retries (that is the runner's single retry policy).
//!
//! - [`simulated`]: the embedded default, seeded and deterministic, no key.
//! - [`openai`]: OpenAI-compatible Chat Completions (OpenAI, Gemini, Qianfan,
//!   Spark, DeepSeek, Ollama, vLLM, llama.cpp), base URL by provider preset.
//! - [`anthropic`]: Anthropic Messages.
//!
//! [`http`] holds what the HTTP providers share: API keys (read from an
//! environment variable or a file, never printed), the client, and the
//! classification of failures into transient (with the server's retry hint)
//! and permanent.

pub mod anthropic;
pub mod http;
pub mod openai;
pub mod simulated;

use std::time::Duration;

use futures::future::BoxFuture;

/// One request to a respondent: one item (the paper's protocol), or under
/// `ADMINISTRATION_ALL_ITEMS` a numbered list of items (`batch`), in which
/// case the single-item fields describe the first of them.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The task's deterministic id (also the simulated respondent's seed).
    pub task_id: uuid::Uuid,
    /// Instrument id.
    pub instrument_id: &'a str,
    /// `interest` or `competence`.
    pub construct: &'a str,
    /// Item id.
    pub item_id: &'a str,
    /// Index of the item's RIASEC area (R=0 .. C=5).
    pub scale_index: usize,
    /// Language tag.
    pub language: &'a str,
    /// The rendered prompt.
    pub prompt: &'a str,
    /// The option labels in this language, rating `i + 1` at index `i`.
    pub options: &'a [String; 5],
    /// The option labels in another language of the instrument, if it has
    /// one (LLMs sometimes answer with a label in the other language; the
    /// simulated respondent does too, so the parser meets it).
    pub foreign_options: Option<&'a [String; 5]>,
    /// The system prompt (the respondent's, with its condition's persona);
    /// `None` sends none.
    pub system: Option<&'a str>,
    /// Under all-items administration, the items of the request in the
    /// order they are numbered in the prompt (item `i` is number `i + 1`);
    /// empty for a one-item request.
    pub batch: &'a [BatchItem<'a>],
}

/// One item of an all-items request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchItem<'a> {
    /// The item's task id.
    pub task_id: uuid::Uuid,
    /// Item id.
    pub item_id: &'a str,
    /// Index of the item's RIASEC area (R=0 .. C=5).
    pub scale_index: usize,
}

/// What a provider returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    /// Raw text of the answer.
    pub text: String,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Completion tokens billed.
    pub output_tokens: u64,
    /// Probabilities of the ratings at the answer's rating token, when the
    /// provider was asked for log-probabilities (empty otherwise).
    pub option_probabilities: Vec<careers_proto::v1::OptionProbability>,
    /// The API itself marked the reply a refusal (OpenAI's `message.refusal`
    /// without content, Anthropic's `stop_reason: "refusal"`), whatever its
    /// wording.
    pub refused: bool,
}

/// A provider failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying (rate limit, server error, timeout, malformed reply).
    #[error("transient provider error: {message}")]
    Transient {
        /// What went wrong.
        message: String,
        /// How long the server asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Not worth retrying (bad request, auth, quota).
    #[error("provider error: {0}")]
    Permanent(String),
}

impl ProviderError {
    /// A transient error without a retry hint.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A respondent's API.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Asks one item.
    fn ask<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Result<Reply, ProviderError>>;
}

/// Providers a study file may name, and whether this build can run them.
pub const KNOWN_PROVIDERS: &[(&str, bool)] = &[
    ("simulated", true),
    ("openai", true),
    ("anthropic", true),
    ("gemini", true),
    ("qianfan", true),
    ("spark", true),
    ("deepseek", true),
    ("ollama", true),
    ("vllm", true),
    ("llamacpp", true),
];

/// What differs between the HTTP APIs a study can name: where they live and
/// which request parameters they take. Validation turns a setting a provider
/// refuses into an error naming the field, before any request is paid for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// Provider name as a study file writes it.
    pub name: &'static str,
    /// Default base URL (`base_url` overrides it).
    pub base_url: &'static str,
    /// A local server that usually runs without an API key.
    pub key_optional: bool,
    /// The request field that carries `max_tokens`.
    pub max_tokens_field: &'static str,
    /// Accepted temperatures: `(low, high, low_is_open)`; `low_is_open`
    /// means the low end itself is refused (ERNIE and Spark refuse 0).
    pub temperature: (f64, f64, bool),
    /// Whether `top_p` is accepted.
    pub top_p: bool,
    /// Whether a sampling `seed` is accepted.
    pub seed: bool,
    /// Whether log-probabilities can be asked for.
    pub logprobs: bool,
}

/// The presets of every HTTP provider.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "openai",
        base_url: "https://api.openai.com/v1",
        key_optional: false,
        // max_tokens is deprecated there and refused by o-series and newer models.
        max_tokens_field: "max_completion_tokens",
        temperature: (0.0, 2.0, false),
        top_p: true,
        seed: true,
        logprobs: true,
    },
    Preset {
        name: "gemini",
        base_url: "https://generativelanguage.googleapis.com/v1beta/openai",
        key_optional: false,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 2.0, false),
        top_p: true,
        seed: true,
        logprobs: true,
    },
    Preset {
        // Baidu Qianfan v2 (ERNIE): OpenAI-compatible, bearer API key;
        // ERNIE takes temperatures in (0, 1].
        name: "qianfan",
        base_url: "https://qianfan.baidubce.com/v2",
        key_optional: false,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 1.0, true),
        top_p: true,
        seed: true,
        logprobs: false,
    },
    Preset {
        // iFlytek Spark's HTTP API: the key is the APIPassword (or
        // "APIKey:APISecret"); temperature in (0, 1], no top_p, seed or
        // log-probabilities; errors may come in a 200 reply with a code.
        name: "spark",
        base_url: "https://spark-api-open.xf-yun.com/v1",
        key_optional: false,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 1.0, true),
        top_p: false,
        seed: false,
        logprobs: false,
    },
    Preset {
        name: "deepseek",
        base_url: "https://api.deepseek.com/v1",
        key_optional: false,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 2.0, false),
        top_p: true,
        seed: false,
        logprobs: true,
    },
    Preset {
        name: "ollama",
        base_url: "http://127.0.0.1:11434/v1",
        key_optional: true,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 5.0, false),
        top_p: true,
        seed: true,
        logprobs: true,
    },
    Preset {
        name: "vllm",
        base_url: "http://127.0.0.1:8000/v1",
        key_optional: true,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 5.0, false),
        top_p: true,
        seed: true,
        logprobs: true,
    },
    Preset {
        name: "llamacpp",
        base_url: "http://127.0.0.1:8080/v1",
        key_optional: true,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 5.0, false),
        top_p: true,
        seed: true,
        logprobs: true,
    },
    Preset {
        // Anthropic Messages: max_tokens is required (256 when unset).
        name: "anthropic",
        base_url: "https://api.anthropic.com",
        key_optional: false,
        max_tokens_field: "max_tokens",
        temperature: (0.0, 1.0, false),
        top_p: true,
        seed: false,
        logprobs: false,
    },
];

/// The preset of an HTTP provider; `None` for unknown names and `simulated`.
pub fn preset(provider: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == provider)
}

/// The default base URL of an HTTP provider, `None` for unknown names and
/// `simulated`.
pub fn default_base_url(provider: &str) -> Option<&'static str> {
    preset(provider).map(|p| p.base_url)
}

/// Local servers that usually run without an API key.
pub fn key_optional(provider: &str) -> bool {
    preset(provider).is_some_and(|p| p.key_optional)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_http_provider_has_one_preset() {
        for (name, _) in KNOWN_PROVIDERS.iter().filter(|(n, _)| *n != "simulated") {
            assert_eq!(
                PRESETS.iter().filter(|p| p.name == *name).count(),
                1,
                "{name}"
            );
        }
        assert_eq!(PRESETS.len(), KNOWN_PROVIDERS.len() - 1);
        assert_eq!(preset("simulated"), None);
        assert_eq!(
            default_base_url("qianfan"),
            Some("https://qianfan.baidubce.com/v2")
        );
        assert!(key_optional("ollama") && !key_optional("openai"));
        assert_eq!(
            preset("openai").map(|p| p.max_tokens_field),
            Some("max_completion_tokens")
        );
    }
}
