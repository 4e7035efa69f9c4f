//! LLM providers behind one trait. A provider turns one prompt into raw text
//! (plus token counts); it never parses answers (that is `answer.rs`) and
//! never retries (that is the runner's single retry policy).
//!
//! - [`simulated`]: the embedded default, seeded and deterministic, no key.
//! - HTTP APIs (OpenAI-compatible chat, Anthropic Messages) are configured in
//!   study files but not implemented yet: they fail at study validation with
//!   "provider not available yet".

pub mod simulated;

use futures::future::BoxFuture;

/// One request to a respondent.
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
}

/// A provider failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying (rate limit, server error, timeout).
    #[error("transient provider error: {0}")]
    Transient(String),
    /// Not worth retrying (bad request, auth, quota).
    #[error("provider error: {0}")]
    Permanent(String),
}

/// A respondent's API.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Asks one item.
    fn ask<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Result<Reply, ProviderError>>;
}

/// Providers a study file may name, and whether this build can run them.
pub const KNOWN_PROVIDERS: &[(&str, bool)] = &[
    ("simulated", true),
    ("openai", false),
    ("anthropic", false),
    ("gemini", false),
    ("qianfan", false),
    ("spark", false),
    ("deepseek", false),
    ("ollama", false),
    ("vllm", false),
    ("llamacpp", false),
];
