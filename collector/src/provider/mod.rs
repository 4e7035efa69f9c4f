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

/// The default base URL of an HTTP provider, `None` for unknown names and
/// `simulated`.
pub fn default_base_url(provider: &str) -> Option<&'static str> {
    Some(match provider {
        "openai" => "https://api.openai.com/v1",
        "gemini" => "https://generativelanguage.googleapis.com/v1beta/openai",
        "qianfan" => "https://qianfan.baidubce.com/v2",
        "spark" => "https://spark-api-open.xf-yun.com/v1",
        "deepseek" => "https://api.deepseek.com/v1",
        "ollama" => "http://127.0.0.1:11434/v1",
        "vllm" => "http://127.0.0.1:8000/v1",
        "llamacpp" => "http://127.0.0.1:8080/v1",
        "anthropic" => "https://api.anthropic.com",
        _ => return None,
    })
}

/// Local servers that usually run without an API key.
pub fn key_optional(provider: &str) -> bool {
    matches!(provider, "ollama" | "vllm" | "llamacpp")
}
