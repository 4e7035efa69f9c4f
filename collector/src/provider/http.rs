//! What the HTTP providers share: API keys, the configuration, sending a
//! request, and classifying failures.
//!
//! Classification (the runner's retry policy acts on it):
//!
//! - transient: HTTP 408, 429, 5xx except 501, connection errors, timeouts,
//!   an unreadable body, malformed JSON, a reply without choices; carries the
//!   server's retry hint (`retry-after-ms`, `retry-after` in seconds or as an
//!   HTTP date, on 429 `x-ratelimit-reset-requests` / `-tokens` like `1s`,
//!   `250ms`, `6m0s`, and Google's `RetryInfo.retryDelay` in the body);
//! - permanent: every other 4xx (bad request, auth, unknown model) and quota
//!   exhaustion even when it comes as a 429 ([`is_quota_exhausted`]: an
//!   error code such as `insufficient_quota`, a spend limit, a daily quota).
//!   An ordinary rate limit stays transient even when its message points to
//!   the billing page, as OpenAI's do.
//!
//! Some APIs report errors inside a 200 reply (iFlytek Spark's non-zero
//! `code`, an `error` object); [`error_in_body`] classifies those the same way.
//!
//! An API key is never printed: [`ApiKey`]'s `Debug` is redacted, and every
//! error message passes through [`redact`] in case a server echoes the key.

use std::fmt;
use std::time::{Duration, SystemTime};

use careers_proto::v1::ApiSettings;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::{ProviderError, key_optional};
use crate::study::StudyError;

/// Per-request timeout when the study does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest part of an error body quoted in an error message.
const MAX_DETAIL_CHARS: usize = 300;

/// An API key. Its `Debug` never shows the value, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key (already trimmed).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key, for the one header that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// Replaces every occurrence of the key in `text`.
pub fn redact(text: &str, key: Option<&ApiKey>) -> String {
    match key {
        Some(k) if !k.0.is_empty() => text.replace(&k.0, "[redacted]"),
        _ => text.to_string(),
    }
}

/// Reads a respondent's API key as its settings say: the environment
/// variable `api_key_env` (looked up through `env`) or else the file
/// `api_key_file`, trimmed. `prefix` is the respondent's field path
/// (`respondents[0]`). Local servers (ollama, vllm, llamacpp) may go without.
/// Errors name the field and never hold the key.
pub fn resolve_key(
    provider: &str,
    settings: &ApiSettings,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ApiKey>, StudyError> {
    let (field, key) = if !settings.api_key_env.is_empty() {
        let field = format!("{prefix}.api_key_env");
        let name = &settings.api_key_env;
        let value = env(name).ok_or_else(|| StudyError {
            field: field.clone(),
            reason: format!("environment variable {name} is not set"),
        })?;
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(StudyError {
                field,
                reason: format!("environment variable {name} is empty"),
            });
        }
        (field, value)
    } else if !settings.api_key_file.is_empty() {
        let field = format!("{prefix}.api_key_file");
        let path = &settings.api_key_file;
        let value = std::fs::read_to_string(path).map_err(|e| StudyError {
            field: field.clone(),
            reason: format!("cannot read {path}: {}", e.kind()),
        })?;
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(StudyError {
                field,
                reason: format!("{path} is empty"),
            });
        }
        (field, value)
    } else if key_optional(provider) {
        return Ok(None);
    } else {
        return Err(StudyError {
            field: format!("{prefix}.api_key_env"),
            reason: format!(
                "provider {provider:?} needs an API key: set api_key_env or api_key_file"
            ),
        });
    };
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(StudyError {
            field,
            reason: "the key holds characters not allowed in an HTTP header".into(),
        });
    }
    Ok(Some(ApiKey(key)))
}

/// Everything an HTTP provider needs.
#[derive(Clone)]
pub struct HttpConfig {
    /// Provider name (`openai`, `anthropic`, ...), used in messages.
    pub provider: String,
    /// Model name sent with every request.
    pub model: String,
    /// Base URL without the trailing endpoint path.
    pub base_url: String,
    /// The API key, if the provider needs one.
    pub key: Option<ApiKey>,
    /// Sampling temperature; `None` sends none (the provider's default).
    pub temperature: Option<f64>,
    /// Nucleus sampling; `None` sends none.
    pub top_p: Option<f64>,
    /// Sampling seed; `None` sends none.
    pub seed: Option<i64>,
    /// Maximum output tokens; 0 means the provider's default.
    pub max_tokens: u32,
    /// The request field for `max_tokens` (the preset's, see
    /// [`super::Preset::max_tokens_field`]).
    pub max_tokens_field: &'static str,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Ask for log-probabilities (`logprobs: true, top_logprobs: 5`) and
    /// report the ratings' probabilities (OpenAI-compatible providers only).
    pub logprobs: bool,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .field("temperature", &self.temperature)
            .field("top_p", &self.top_p)
            .field("seed", &self.seed)
            .field("max_tokens", &self.max_tokens)
            .field("timeout", &self.timeout)
            .field("logprobs", &self.logprobs)
            .finish()
    }
}

impl HttpConfig {
    /// The base URL joined with an endpoint path.
    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}/{}", self.base_url.trim_end_matches('/'), path)
    }

    /// An HTTP client with this configuration's timeout.
    pub(crate) fn client(&self) -> Result<reqwest::Client, ProviderError> {
        reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            // A redirect to another host would carry headers such as
            // Anthropic's `x-api-key` along (reqwest strips only
            // `Authorization`); a key goes only where the study says.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Permanent(format!("cannot build the HTTP client: {e}")))
    }

    /// A transient error for a reply that cannot be used.
    pub(crate) fn malformed(&self, what: &str) -> ProviderError {
        ProviderError::transient(redact(
            &format!("{}: {what}", self.provider),
            self.key.as_ref(),
        ))
    }
}

/// A configuration for unit tests of the reply parsers (nothing is sent).
#[cfg(test)]
pub(crate) fn test_config(provider: &str) -> HttpConfig {
    HttpConfig {
        provider: provider.into(),
        model: "m".into(),
        base_url: "http://127.0.0.1:9/v1".into(),
        key: Some(ApiKey::new("sk-secret-123")),
        temperature: None,
        top_p: None,
        seed: None,
        max_tokens: 0,
        max_tokens_field: "max_tokens",
        timeout: DEFAULT_TIMEOUT,
        logprobs: false,
    }
}

/// Sends a request and returns the body of a 2xx reply, or the classified
/// failure.
pub(crate) async fn send(
    config: &HttpConfig,
    request: reqwest::RequestBuilder,
) -> Result<String, ProviderError> {
    let key = config.key.as_ref();
    let provider = &config.provider;
    let response = request.send().await.map_err(|e| {
        let message = redact(&format!("{provider}: {}", describe_transport(&e)), key);
        if e.is_builder() {
            ProviderError::Permanent(message)
        } else {
            ProviderError::transient(message)
        }
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|e| {
        ProviderError::transient(redact(
            &format!(
                "{provider}: HTTP {status}: reading the body failed: {}",
                describe_transport(&e)
            ),
            key,
        ))
    })?;
    if status.is_success() {
        return Ok(body);
    }
    Err(classify(provider, status, &headers, &body, key))
}

/// A transport error with its causes, without the URL's query.
fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the reply failed"
    } else {
        "request failed"
    };
    let mut out = kind.to_string();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Classifies a non-2xx reply.
pub fn classify(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    key: Option<&ApiKey>,
) -> ProviderError {
    // Redact before `error_detail` shortens the body: a key cut in two by
    // the shortening would no longer match and half of it would survive.
    let message = redact(
        &format!(
            "{provider}: HTTP {}: {}",
            status.as_u16(),
            error_detail(&redact(body, key))
        ),
        key,
    );
    let code = status.as_u16();
    if status.is_redirection() {
        let to = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| redact(l, key))
            .unwrap_or_else(|| "(no location)".into());
        return ProviderError::Permanent(format!(
            "{provider}: HTTP {code}: redirected to {to}; redirects are not followed \
             (the key would travel with them): set base_url to the final address"
        ));
    }
    // Quota exhaustion is final whatever status carries it (a 429, or an
    // error object inside a 200 reply classified here as a 500).
    let transient = !is_quota_exhausted(body)
        && match code {
            429 | 408 => true,
            500..=599 => code != 501,
            _ => false,
        };
    if transient {
        ProviderError::Transient {
            message,
            retry_after: retry_hint(headers, code == 429, SystemTime::now())
                .or_else(|| body_retry_hint(body)),
        }
    } else {
        ProviderError::Permanent(message)
    }
}

/// Error codes (OpenAI's `code` / `type`, Qianfan's and others' alike) that
/// mean the account cannot pay for more requests.
const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_not_active",
    "access_terminated",
    "insufficient_balance",
    "account_deactivated",
];

/// Phrases of error messages that mean the same, lower case.
const QUOTA_PHRASES: &[&str] = &[
    "exceeded your current quota",
    "insufficient_quota",
    "insufficient balance",
    "credit balance is too low",
    "spend limit",
    "spending limit",
    "余额不足",
    "欠费",
];

/// The error object of a JSON error body: `{"error": {...}}`, Google's
/// `[{"error": {...}}]`, or the body itself.
fn error_object(body: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let v = match v {
        serde_json::Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        v => v,
    };
    match v.get("error") {
        Some(e) if e.is_object() => Some(e.clone()),
        _ => Some(v),
    }
}

/// Whether an error body says the account's quota or money is used up (not
/// worth retrying), as opposed to an ordinary rate limit. Google's
/// `RESOURCE_EXHAUSTED` is a rate limit unless its quota is a daily one.
pub fn is_quota_exhausted(body: &str) -> bool {
    let lower = body.to_lowercase();
    if QUOTA_PHRASES.iter().any(|p| lower.contains(p)) {
        return true;
    }
    let Some(error) = error_object(body) else {
        return false;
    };
    let field = |name: &str| {
        error
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_ascii_lowercase)
    };
    if ["code", "type"]
        .iter()
        .filter_map(|f| field(f))
        .any(|c| QUOTA_CODES.contains(&c.as_str()))
    {
        return true;
    }
    // Google's QuotaFailure details: a per-day quota does not come back soon.
    error
        .get("details")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("violations").and_then(|v| v.as_array()))
        .flatten()
        .filter_map(|v| v.get("quotaId").and_then(|q| q.as_str()))
        .any(|q| q.contains("PerDay"))
}

/// Google's retry hint in an error body: `RetryInfo.retryDelay` ("7s").
pub fn body_retry_hint(body: &str) -> Option<Duration> {
    error_object(body)?
        .get("details")?
        .as_array()?
        .iter()
        .filter_map(|d| d.get("retryDelay").and_then(|r| r.as_str()))
        .find_map(parse_duration)
}

/// An error reported inside a 2xx reply, classified like a failed status:
/// iFlytek Spark's non-zero `code` (11200 authorisation and 11201 daily
/// limit are permanent; 10007, 11202 and 11203, rate and concurrency
/// limits, and any other code are transient), or a top-level `error` object
/// with no `choices` (treated as the status it names, else as a 500).
pub fn error_in_body(config: &HttpConfig, body: &str) -> Option<ProviderError> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if v.get("choices")
        .is_some_and(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        || v.get("content").is_some()
    {
        return None;
    }
    let message = |detail: String| {
        redact(
            &format!("{}: error in a 200 reply: {detail}", config.provider),
            config.key.as_ref(),
        )
    };
    if let Some(code) = v.get("code").and_then(|c| c.as_i64())
        && code != 0
    {
        let text = v
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("(no message)");
        let detail = message(format!("{text} (code {code})"));
        return Some(match code {
            11200 | 11201 => ProviderError::Permanent(detail),
            _ => ProviderError::transient(detail),
        });
    }
    let error = v.get("error").filter(|e| e.is_object())?;
    let status = error
        .get("code")
        .and_then(|c| c.as_u64())
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(
        match classify(
            &config.provider,
            status,
            &HeaderMap::new(),
            body,
            config.key.as_ref(),
        ) {
            ProviderError::Permanent(m) => ProviderError::Permanent(message(m)),
            ProviderError::Transient {
                message: m,
                retry_after,
            } => ProviderError::Transient {
                message: message(m),
                retry_after,
            },
        },
    )
}

/// The useful part of an error body: the JSON `error.message` (with its code
/// or type) when there is one, else the start of the text.
pub fn error_detail(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let error = v.get("error").unwrap_or(&v);
        let message = error
            .get("message")
            .and_then(|m| m.as_str())
            .or_else(|| error.as_str());
        let code = error
            .get("code")
            .and_then(|c| c.as_str())
            .or_else(|| error.get("type").and_then(|t| t.as_str()));
        match (message, code) {
            (Some(m), Some(c)) => return truncate(&format!("{m} ({c})")),
            (Some(m), None) => return truncate(m),
            (None, Some(c)) => return truncate(c),
            (None, None) => {}
        }
    }
    let text = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "(empty body)".into()
    } else {
        truncate(&text)
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_DETAIL_CHARS {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(MAX_DETAIL_CHARS).collect();
        out.push_str("...");
        out
    }
}

/// The server's retry hint: `retry-after-ms`, else `retry-after` (seconds or
/// an HTTP date, relative to `now`), else on a rate limit the longer of
/// `x-ratelimit-reset-requests` and `x-ratelimit-reset-tokens`.
pub fn retry_hint(headers: &HeaderMap, rate_limited: bool, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(hint_seconds(ms / 1000.0));
    }
    if let Some(v) = header("retry-after") {
        if let Ok(secs) = v.parse::<f64>()
            && secs.is_finite()
            && secs >= 0.0
        {
            return Some(hint_seconds(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    if rate_limited {
        return ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
            .iter()
            .filter_map(|h| header(h).and_then(parse_duration))
            .max();
    }
    None
}

/// A token count a server reported, capped at `u32::MAX` so sums over a study
/// cannot overflow whatever a broken server says.
pub(crate) fn reported_tokens(n: u64) -> u64 {
    n.min(u64::from(u32::MAX))
}

/// The longest wait a server's hint is taken at face value: a year. Anything
/// longer (`retry-after: 1e30`) means the same in practice, "not before a
/// rerun", and must not overflow `Duration`.
const MAX_HINT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// A finite, non-negative number of seconds from a server, capped.
fn hint_seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.clamp(0.0, MAX_HINT_SECS)).unwrap_or(Duration::ZERO)
}

/// Parses durations like `1s`, `250ms`, `6m0s`, `1.5s`, `2h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    if total.is_finite() && total >= 0.0 {
        Some(hint_seconds(total))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn durations_parse_like_the_rate_limit_headers() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h30m"), Some(Duration::from_secs(9000)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("3x"), None);
    }

    #[test]
    fn retry_hints_in_every_form() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_hint(&headers(&[("retry-after", "7")]), false, now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_hint(
                &headers(&[("retry-after-ms", "120"), ("retry-after", "1")]),
                true,
                now
            ),
            Some(Duration::from_millis(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_hint(&headers(&[("retry-after", &date)]), false, now),
            Some(Duration::from_secs(30))
        );
        let limits = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(
            retry_hint(&limits, true, now),
            Some(Duration::from_secs(360))
        );
        assert_eq!(retry_hint(&limits, false, now), None);
        assert_eq!(
            retry_hint(&headers(&[("retry-after", "x")]), true, now),
            None
        );
    }

    #[test]
    fn absurd_retry_hints_are_capped_not_a_panic() {
        let now = SystemTime::UNIX_EPOCH;
        let year = Duration::from_secs(365 * 24 * 3600);
        for (name, value) in [
            ("retry-after", "1e30"),
            ("retry-after-ms", "1e300"),
            ("x-ratelimit-reset-tokens", "99999999999999999999999s"),
        ] {
            assert_eq!(
                retry_hint(&headers(&[(name, value)]), true, now),
                Some(year),
                "{name}: {value}"
            );
        }
        let google = r#"{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"99999999999999999999999999999s"}]}}"#;
        assert_eq!(body_retry_hint(google), Some(year));
    }

    #[test]
    fn a_redirect_is_refused_without_following_it() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LOCATION,
            "https://elsewhere.example/v1?k=sk-secret-123"
                .parse()
                .expect("header"),
        );
        let key = ApiKey::new("sk-secret-123");
        match classify(
            "anthropic",
            StatusCode::MOVED_PERMANENTLY,
            &h,
            "",
            Some(&key),
        ) {
            ProviderError::Permanent(m) => {
                assert!(m.contains("HTTP 301"), "{m}");
                assert!(m.contains("set base_url"), "{m}");
                assert!(!m.contains("sk-secret-123"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statuses_are_classified() {
        let h = headers(&[("retry-after", "2")]);
        let transient = |code: u16, body: &str| {
            matches!(
                classify(
                    "openai",
                    StatusCode::from_u16(code).expect("status"),
                    &h,
                    body,
                    None
                ),
                ProviderError::Transient { .. }
            )
        };
        for code in [408, 429, 500, 502, 503, 504, 529] {
            assert!(transient(code, "{}"), "{code}");
        }
        for code in [400, 401, 403, 404, 422, 501] {
            assert!(!transient(code, "{}"), "{code}");
        }
        let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(!transient(429, quota));
        // An ordinary rate limit whose message points to the billing page.
        let rate = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. You can increase your rate limit by adding a payment method to your account at https://platform.openai.com/account/billing.","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert!(transient(429, rate));
        // Google: a per-minute RESOURCE_EXHAUSTED is a rate limit with a
        // retry delay in the body; a per-day quota is exhausted.
        let minute = r#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}]"#;
        assert!(transient(429, minute));
        match classify(
            "gemini",
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            minute,
            None,
        ) {
            ProviderError::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("{other:?}"),
        }
        let day = minute.replace("PerMinute", "PerDay");
        assert!(!transient(429, &day));
        for body in [
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
            r#"{"error":{"code":"insufficient_balance","message":"账户余额不足"}}"#,
            r#"{"error":{"message":"You have reached your spend limit.","code":"billing_hard_limit_reached"}}"#,
        ] {
            assert!(is_quota_exhausted(body), "{body}");
            assert!(!transient(429, body), "{body}");
        }
        match classify("openai", StatusCode::TOO_MANY_REQUESTS, &h, "{}", None) {
            ProviderError::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_inside_a_200_reply_are_classified() {
        let cfg = test_config("spark");
        let ok = r#"{"code":0,"message":"Success","choices":[{"message":{"role":"assistant","content":"4"},"index":0}]}"#;
        assert_eq!(error_in_body(&cfg, ok), None);
        let anthropic = r#"{"content":[{"type":"text","text":"4"}]}"#;
        assert_eq!(error_in_body(&cfg, anthropic), None);
        assert!(matches!(
            error_in_body(&cfg, r#"{"code":11202,"message":"qps limit"}"#),
            Some(ProviderError::Transient { .. })
        ));
        match error_in_body(
            &cfg,
            r#"{"code":11200,"message":"auth error sk-secret-123"}"#,
        ) {
            Some(ProviderError::Permanent(m)) => {
                assert!(m.contains("auth error [redacted] (code 11200)"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            error_in_body(
                &cfg,
                r#"{"error":{"message":"invalid user","type":"api_error","code":null}}"#
            ),
            Some(ProviderError::Transient { .. })
        ));
        assert!(matches!(
            error_in_body(&cfg, r#"{"error":{"message":"bad key","code":401}}"#),
            Some(ProviderError::Permanent(_))
        ));
        // Quota exhaustion reported inside a 200 reply is final, not retried.
        assert!(matches!(
            error_in_body(
                &cfg,
                r#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#
            ),
            Some(ProviderError::Permanent(_))
        ));
        // Not JSON, or JSON without an error: the provider's own parser decides.
        assert_eq!(error_in_body(&cfg, "{not json"), None);
        assert_eq!(error_in_body(&cfg, r#"{"choices":[]}"#), None);
    }

    #[test]
    fn keys_never_show() {
        let key = ApiKey::new("sk-secret-123");
        assert!(!format!("{key:?}").contains("sk-secret"));
        let e = classify(
            "openai",
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            r#"{"error":{"message":"Incorrect API key provided: sk-secret-123","code":"invalid_api_key"}}"#,
            Some(&key),
        );
        let text = e.to_string();
        assert!(!text.contains("sk-secret-123"), "{text}");
        assert!(
            text.contains("Incorrect API key provided: [redacted]"),
            "{text}"
        );
        assert!(text.contains("invalid_api_key"), "{text}");
    }

    #[test]
    fn a_key_cut_by_the_shortened_detail_is_still_redacted() {
        let key = ApiKey::new("sk-abcdefghijklmnopqrstuvwxyz0123456789");
        // The key straddles the point where the detail is cut.
        let body = format!(
            "{}{}{}",
            "x".repeat(MAX_DETAIL_CHARS - 10),
            key.expose(),
            " trailing"
        );
        let text = classify(
            "openai",
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body,
            Some(&key),
        )
        .to_string();
        assert!(!text.contains("sk-abcdefgh"), "{text}");
    }

    #[test]
    fn missing_keys_name_the_field() {
        let settings = ApiSettings {
            api_key_env: "NO_SUCH_KEY_VAR".into(),
            ..Default::default()
        };
        let e = resolve_key("openai", &settings, "respondents[0]", &|_| None).expect_err("not set");
        assert_eq!(e.field, "respondents[0].api_key_env");
        assert_eq!(e.reason, "environment variable NO_SUCH_KEY_VAR is not set");
        let key = resolve_key("openai", &settings, "respondents[0]", &|_| {
            Some(" sk-x \n".into())
        })
        .expect("set");
        assert_eq!(key.as_ref().map(ApiKey::expose), Some("sk-x"));
        let none = ApiSettings::default();
        assert_eq!(
            resolve_key("openai", &none, "respondents[2]", &|_| None)
                .expect_err("needs a key")
                .field,
            "respondents[2].api_key_env"
        );
        assert_eq!(
            resolve_key("ollama", &none, "respondents[2]", &|_| None).expect("optional"),
            None
        );
        let file = ApiSettings {
            api_key_file: "/nonexistent/key".into(),
            ..Default::default()
        };
        assert_eq!(
            resolve_key("openai", &file, "respondents[1]", &|_| None)
                .expect_err("no file")
                .field,
            "respondents[1].api_key_file"
        );
    }
}
