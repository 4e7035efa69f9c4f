//! OpenAI-compatible Chat Completions: `POST {base_url}/chat/completions`
//! with `Authorization: Bearer KEY`. Serves openai, gemini, qianfan, spark,
//! deepseek, ollama, vllm and llamacpp (base URLs in
//! [`super::default_base_url`]).
//!
//! With [`HttpConfig::logprobs`] it asks for `logprobs: true, top_logprobs: 5`
//! and reports, at the first answer token that is a rating 1..5, the
//! probability of each rating among the top alternatives, token variants
//! ("4", " 4", "４") merged. Probabilities are `exp(logprob)` summed over the
//! variants, then normalised to sum to 1 over the ratings seen (so the
//! runner can choose the most probable or the expected rating).

use std::fmt;

use careers_proto::v1::OptionProbability;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, HttpConfig, reported_tokens};
use super::{Ask, Provider, ProviderError, Reply};

/// An OpenAI-compatible chat respondent.
pub struct OpenAi {
    config: HttpConfig,
    url: String,
    client: reqwest::Client,
}

impl fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAi")
            .field("config", &self.config)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    logprobs: Option<ChoiceLogprobs>,
}

#[derive(Debug, Deserialize)]
struct ChoiceLogprobs {
    #[serde(default)]
    content: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Deserialize)]
struct TokenLogprob {
    token: String,
    #[serde(default)]
    logprob: f64,
    #[serde(default)]
    top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Deserialize)]
struct TopLogprob {
    token: String,
    logprob: f64,
}

/// The rating a token stands for: one digit 1..5 (ASCII or full-width),
/// surrounding whitespace allowed.
fn token_rating(token: &str) -> Option<u32> {
    let mut chars = token.trim().chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    let digit = match c {
        '1'..='5' => c as u32 - '0' as u32,
        '１'..='５' => c as u32 - '０' as u32,
        _ => return None,
    };
    Some(digit)
}

/// Rating probabilities at the first rating token, variants merged and
/// normalised to sum to 1.
fn option_probabilities(tokens: &[TokenLogprob]) -> Vec<OptionProbability> {
    let Some(at) = tokens.iter().find(|t| token_rating(&t.token).is_some()) else {
        return Vec::new();
    };
    let mut sums = [0.0f64; 5];
    let mut seen = [false; 5];
    let alternatives: Vec<(&str, f64)> = if at.top_logprobs.is_empty() {
        vec![(at.token.as_str(), at.logprob)]
    } else {
        at.top_logprobs
            .iter()
            .map(|t| (t.token.as_str(), t.logprob))
            .collect()
    };
    for (token, logprob) in alternatives {
        if let Some(r) = token_rating(token)
            && logprob.is_finite()
        {
            let i = r as usize - 1;
            sums[i] += logprob.exp();
            seen[i] = true;
        }
    }
    let total: f64 = sums.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return Vec::new();
    }
    (0..5)
        .filter(|i| seen[*i])
        .map(|i| OptionProbability {
            rating: i as u32 + 1,
            probability: (sums[i] / total).clamp(0.0, 1.0),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl OpenAi {
    /// A respondent with this configuration.
    pub fn new(config: HttpConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            url: config.endpoint("chat/completions"),
            client: config.client()?,
            config,
        })
    }

    fn body(&self, prompt: &str, system: Option<&str>) -> Value {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
        });
        // Unset sampling settings are left out, so the provider's defaults apply.
        if let Some(t) = self.config.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = self.config.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(seed) = self.config.seed {
            body["seed"] = json!(seed);
        }
        if self.config.max_tokens > 0 {
            body[self.config.max_tokens_field] = json!(self.config.max_tokens);
        }
        if self.config.logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(5);
        }
        body
    }

    /// Parses a 2xx body.
    fn reply(&self, body: &str) -> Result<Reply, ProviderError> {
        if let Some(e) = http::error_in_body(&self.config, body) {
            return Err(e);
        }
        let parsed: ChatResponse = serde_json::from_str(body).map_err(|e| {
            self.config
                .malformed(&format!("malformed JSON in the reply: {e}"))
        })?;
        let choice = parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| self.config.malformed("the reply has no choices"))?;
        let message = choice
            .message
            .ok_or_else(|| self.config.malformed("the first choice has no message"))?;
        let text = match message.content {
            Some(Value::String(s)) => s,
            // Some servers send content parts.
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        // A refusal comes in its own field, with no content.
        let refusal = message.refusal.filter(|r| !r.trim().is_empty());
        let (text, refused) = match refusal {
            Some(r) if text.trim().is_empty() => (r, true),
            _ => (text, false),
        };
        let probabilities = match (self.config.logprobs, choice.logprobs) {
            (true, Some(ChoiceLogprobs { content: Some(t) })) => option_probabilities(&t),
            _ => Vec::new(),
        };
        let usage = parsed.usage.unwrap_or_default();
        Ok(Reply {
            text,
            input_tokens: reported_tokens(usage.prompt_tokens),
            output_tokens: reported_tokens(usage.completion_tokens),
            option_probabilities: probabilities,
            refused,
        })
    }
}

impl Provider for OpenAi {
    fn ask<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Result<Reply, ProviderError>> {
        Box::pin(async move {
            let mut request = self
                .client
                .post(&self.url)
                .json(&self.body(ask.prompt, ask.system));
            if let Some(key) = &self.config.key {
                request = request.bearer_auth(key.expose());
            }
            let body = http::send(&self.config, request).await?;
            self.reply(&body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(token: &str, p: f64) -> TopLogprob {
        TopLogprob {
            token: token.into(),
            logprob: p.ln(),
        }
    }

    #[test]
    fn rating_tokens_and_variants_merge() {
        assert_eq!(token_rating(" 4"), Some(4));
        assert_eq!(token_rating("４"), Some(4));
        assert_eq!(token_rating("6"), None);
        assert_eq!(token_rating("45"), None);
        assert_eq!(token_rating("Like"), None);
        let tokens = vec![
            TokenLogprob {
                token: "I".into(),
                logprob: 0.0,
                top_logprobs: vec![top("I", 0.9), top("4", 0.1)],
            },
            TokenLogprob {
                token: " 4".into(),
                logprob: 0.7f64.ln(),
                top_logprobs: vec![
                    top(" 4", 0.7),
                    top("4", 0.1),
                    top(" 3", 0.15),
                    top("Like", 0.04),
                    top("５", 0.01),
                ],
            },
        ];
        let got = option_probabilities(&tokens);
        let pairs: Vec<(u32, f64)> = got.iter().map(|o| (o.rating, o.probability)).collect();
        assert_eq!(pairs.len(), 3, "{pairs:?}");
        // 0.15, 0.8 and 0.01 merged, normalised by their sum 0.96.
        assert_eq!(pairs[0].0, 3);
        assert!((pairs[0].1 - 0.15 / 0.96).abs() < 1e-9);
        assert_eq!(pairs[1].0, 4);
        assert!((pairs[1].1 - 0.8 / 0.96).abs() < 1e-9);
        assert_eq!(pairs[2].0, 5);
        assert!((pairs[2].1 - 0.01 / 0.96).abs() < 1e-9);
        let total: f64 = got.iter().map(|o| o.probability).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(option_probabilities(&[]).is_empty());
    }

    #[test]
    fn a_refusal_field_is_a_refusal_whatever_its_words() {
        let p = OpenAi::new(http::test_config("openai")).expect("provider");
        let body = r#"{"choices":[{"message":{"role":"assistant","content":null,"refusal":"I'm sorry, I can't help with that."}}],"usage":{"prompt_tokens":9,"completion_tokens":8}}"#;
        let r = p.reply(body).expect("a reply");
        assert!(r.refused);
        assert_eq!(r.text, "I'm sorry, I can't help with that.");
        assert_eq!((r.input_tokens, r.output_tokens), (9, 8));
        // Content wins over an empty refusal field.
        let body = r#"{"choices":[{"message":{"content":"4","refusal":null}}]}"#;
        let r = p.reply(body).expect("a reply");
        assert!(!r.refused);
        assert_eq!(r.text, "4");
    }
}
