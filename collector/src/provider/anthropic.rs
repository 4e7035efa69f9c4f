//! Anthropic Messages: `POST {base_url}/v1/messages` with `x-api-key` and
//! `anthropic-version: 2023-06-01`; `max_tokens` is required (default
//! [`DEFAULT_MAX_TOKENS`]) and the system prompt is a top-level field.

use std::fmt;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, HttpConfig, reported_tokens};
use super::{Ask, Provider, ProviderError, Reply};

/// The API version sent with every request.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the study does not set one.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// An Anthropic Messages respondent.
pub struct Anthropic {
    config: HttpConfig,
    url: String,
    client: reqwest::Client,
}

impl fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anthropic")
            .field("config", &self.config)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct MessagesResponse {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

impl Anthropic {
    /// A respondent with this configuration.
    pub fn new(config: HttpConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            url: config.endpoint("v1/messages"),
            client: config.client()?,
            config,
        })
    }

    fn body(&self, prompt: &str, system: Option<&str>) -> Value {
        let max_tokens = if self.config.max_tokens > 0 {
            self.config.max_tokens
        } else {
            DEFAULT_MAX_TOKENS
        };
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        });
        if let Some(t) = self.config.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = self.config.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(system) = system {
            body["system"] = json!(system);
        }
        body
    }

    /// Parses a 2xx body.
    fn reply(&self, body: &str) -> Result<Reply, ProviderError> {
        if let Some(e) = http::error_in_body(&self.config, body) {
            return Err(e);
        }
        let parsed: MessagesResponse = serde_json::from_str(body).map_err(|e| {
            self.config
                .malformed(&format!("malformed JSON in the reply: {e}"))
        })?;
        let texts: Vec<&str> = parsed
            .content
            .iter()
            .filter(|b| b.kind == "text" || b.kind.is_empty())
            .filter_map(|b| b.text.as_deref())
            .collect();
        // The classifiers' refusal: possibly no text at all, never worth a retry.
        let refused = parsed.stop_reason.as_deref() == Some("refusal");
        if texts.is_empty() && !refused {
            return Err(self.config.malformed("the reply has no text content"));
        }
        let usage = parsed.usage.unwrap_or_default();
        Ok(Reply {
            text: texts.join(""),
            input_tokens: reported_tokens(usage.input_tokens),
            output_tokens: reported_tokens(usage.output_tokens),
            option_probabilities: Vec::new(),
            refused,
        })
    }
}

impl Provider for Anthropic {
    fn ask<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Result<Reply, ProviderError>> {
        Box::pin(async move {
            let mut request = self
                .client
                .post(&self.url)
                .header("anthropic-version", API_VERSION)
                .json(&self.body(ask.prompt, ask.system));
            if let Some(key) = &self.config.key {
                let mut value =
                    reqwest::header::HeaderValue::from_str(key.expose()).map_err(|_| {
                        ProviderError::Permanent(format!(
                            "{}: the API key holds characters not allowed in an HTTP header",
                            self.config.provider
                        ))
                    })?;
                value.set_sensitive(true);
                request = request.header("x-api-key", value);
            }
            let body = http::send(&self.config, request).await?;
            self.reply(&body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_stop_reason_is_a_refusal_even_without_text() {
        let p = Anthropic::new(http::test_config("anthropic")).expect("provider");
        let body = r#"{"content":[],"stop_reason":"refusal","usage":{"input_tokens":12,"output_tokens":0}}"#;
        let r = p.reply(body).expect("a reply, not a retry");
        assert!(r.refused);
        assert_eq!(r.input_tokens, 12);
        // Without the stop reason, an empty reply is malformed (retried).
        let body = r#"{"content":[],"stop_reason":"end_turn"}"#;
        assert!(matches!(
            p.reply(body),
            Err(ProviderError::Transient { .. })
        ));
        let body = r#"{"content":[{"type":"text","text":"4"}],"stop_reason":"end_turn"}"#;
        assert!(!p.reply(body).expect("reply").refused);
    }
}
