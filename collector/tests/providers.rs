//! The HTTP providers against a fault-injecting mock server on loopback
//! (OpenAI Chat Completions and Anthropic Messages wire formats), alone and
//! through the runner into an in-process analyzer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, Uri};
use careers_analyzer::{AnalyzerConfig, Database, RunningAnalyzer};
use careers_collector::instrument::Catalog;
use careers_collector::journal::Journal;
use careers_collector::outbox;
use careers_collector::provider::anthropic::Anthropic;
use careers_collector::provider::http::{ApiKey, HttpConfig};
use careers_collector::provider::openai::OpenAi;
use careers_collector::provider::{Ask, Provider, ProviderError, Reply};
use careers_collector::runner::{self, RetryPolicy, RunContext, RunOutcome};
use careers_collector::study;
use careers_proto::v1::analyzer_service_client::AnalyzerServiceClient;
use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{
    ApiSettings, GetSummaryRequest, RatingSource, Respondent, RespondentSpec, StudySpec,
    StudyState, Summary, respondent_spec,
};

const KEY: &str = "sk-test-DO-NOT-LEAK-4f1c9a";

// ---------------------------------------------------------------- the mock

#[derive(Debug, Clone)]
struct MockReply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> MockReply {
    MockReply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

impl MockReply {
    fn with(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

fn openai_answer(text: &str) -> MockReply {
    let body = serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}
    });
    reply(200, &body.to_string())
}

fn anthropic_answer(text: &str) -> MockReply {
    let body = serde_json::json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 40, "output_tokens": 2}
    });
    reply(200, &body.to_string())
}

fn unauthorized() -> MockReply {
    // Servers echo (part of) the key; the collector must not repeat it.
    reply(
        401,
        &format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
        ),
    )
}

fn insufficient_quota() -> MockReply {
    reply(
        429,
        r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#,
    )
}

#[derive(Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: String,
    at: Instant,
}

#[derive(Default)]
struct MockState {
    script: Mutex<VecDeque<MockReply>>,
    fallback: Mutex<Option<MockReply>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Answers from the request body once the script is used up (instead of
    /// the fallback).
    responder: Mutex<Option<Responder>>,
}

type Responder = Arc<dyn Fn(&serde_json::Value) -> MockReply + Send + Sync>;

struct Mock {
    addr: SocketAddr,
    state: Arc<MockState>,
}

impl Mock {
    /// A server that answers every request from its JSON body.
    async fn responding(
        responder: impl Fn(&serde_json::Value) -> MockReply + Send + Sync + 'static,
    ) -> Self {
        let mock = Self::start(Vec::new(), reply(500, "no responder")).await;
        *mock.state.responder.lock().expect("responder") = Some(Arc::new(responder));
        mock
    }

    /// A server that answers with `script` in order, then with `fallback`.
    async fn start(script: Vec<MockReply>, fallback: MockReply) -> Self {
        let state = Arc::new(MockState {
            script: Mutex::new(script.into()),
            fallback: Mutex::new(Some(fallback)),
            ..MockState::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    fn base_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.state.seen.lock().expect("seen").len()
    }

    fn with_seen<T>(&self, f: impl FnOnce(&[Seen]) -> T) -> T {
        f(&self.state.seen.lock().expect("seen"))
    }

    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(
    State(state): State<Arc<MockState>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response<Body> {
    let request_body = body.clone();
    state.seen.lock().expect("seen").push(Seen {
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    });
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let next = state.script.lock().expect("script").pop_front();
    let responder = state.responder.lock().expect("responder").clone();
    let next = next
        .or_else(|| {
            let json = serde_json::from_str(&request_body).ok()?;
            responder.map(|r| r(&json))
        })
        .or_else(|| state.fallback.lock().expect("fallback").clone())
        .unwrap_or_else(|| reply(500, "script exhausted"));
    if !next.delay.is_zero() {
        tokio::time::sleep(next.delay).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = Response::builder()
        .status(next.status)
        .header("content-type", "application/json");
    for (name, value) in &next.headers {
        response = response.header(*name, value.as_str());
    }
    response.body(Body::from(next.body)).expect("mock response")
}

// ------------------------------------------------------- provider alone

fn config(provider: &str, base_url: &str) -> HttpConfig {
    HttpConfig {
        provider: provider.into(),
        model: "model-1".into(),
        base_url: base_url.into(),
        key: Some(ApiKey::new(KEY)),
        temperature: Some(0.7),
        top_p: None,
        seed: None,
        max_tokens: 16,
        max_tokens_field: careers_collector::provider::preset(provider)
            .map_or("max_tokens", |p| p.max_tokens_field),
        timeout: Duration::from_secs(10),
        logprobs: false,
    }
}

/// The interest form's option labels in `language`, from the built-in
/// instrument.
fn options_in(language: &str) -> [String; 5] {
    let catalog = Catalog::built_in().expect("catalog");
    let form = catalog.get("onet-ip-sf").expect("interest form");
    form.options[language].clone()
}

fn options() -> [String; 5] {
    options_in("en")
}

async fn ask(provider: &dyn Provider) -> Result<Reply, ProviderError> {
    let options = options();
    provider
        .ask(Ask {
            task_id: uuid::Uuid::from_u128(1),
            instrument_id: "onet-ip-sf",
            construct: "interest",
            item_id: "R1",
            scale_index: 0,
            language: "en",
            prompt: "Build kitchen cabinets. Answer 1-5.",
            options: &options,
            foreign_options: None,
            system: Some("You are a survey respondent."),
            batch: &[],
        })
        .await
}

fn hint(e: &ProviderError) -> Option<Duration> {
    match e {
        ProviderError::Transient { retry_after, .. } => *retry_after,
        ProviderError::Permanent(m) => panic!("expected a transient error, got permanent {m}"),
    }
}

#[tokio::test]
async fn openai_faults_are_classified_and_good_answers_parsed() {
    let mock = Mock::start(
        vec![
            reply(429, r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#)
                .with("retry-after", "3"),
            reply(429, "{}").with("retry-after-ms", "250"),
            reply(429, "{}").with("x-ratelimit-reset-requests", "1s").with("x-ratelimit-reset-tokens", "6m0s"),
            reply(500, "internal"),
            reply(502, "<html>bad gateway</html>"),
            reply(503, r#"{"error":{"message":"overloaded"}}"#).with("retry-after", "1"),
            reply(504, ""),
            reply(529, "{}"),
            reply(200, "{not json"),
            reply(200, r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":0}}"#),
            reply(200, "Sorry, garbage text instead of JSON"),
        ],
        openai_answer("4"),
    )
    .await;
    let provider = OpenAi::new(config("openai", &mock.base_url("/v1"))).expect("provider");
    let mut hints = Vec::new();
    for _ in 0..11 {
        let e = ask(&provider).await.expect_err("a fault");
        assert!(!e.to_string().contains(KEY), "{e}");
        hints.push(hint(&e));
    }
    assert_eq!(
        hints,
        vec![
            Some(Duration::from_secs(3)),
            Some(Duration::from_millis(250)),
            Some(Duration::from_secs(360)),
            None,
            None,
            Some(Duration::from_secs(1)),
            None,
            None,
            None,
            None,
            None,
        ]
    );
    let good = ask(&provider).await.expect("good answer");
    assert_eq!(
        good,
        Reply {
            text: "4".into(),
            input_tokens: 42,
            output_tokens: 3,
            option_probabilities: Vec::new(),
            refused: false,
        }
    );
    assert_eq!(mock.requests(), 12);
    mock.with_seen(|seen| {
        let last = seen.last().expect("a request");
        assert_eq!(last.path, "/v1/chat/completions");
        assert_eq!(
            last.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {KEY}").as_str())
        );
        let body: serde_json::Value = serde_json::from_str(&last.body).expect("json body");
        assert_eq!(body["model"], "model-1");
        assert_eq!(body["temperature"], 0.7);
        // OpenAI's newer models refuse max_tokens.
        assert_eq!(body["max_completion_tokens"], 16);
        assert!(body.get("max_tokens").is_none(), "{body}");
        assert!(
            body.get("top_p").is_none() && body.get("seed").is_none(),
            "{body}"
        );
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["role"], "user");
        assert_eq!(
            body["messages"][1]["content"],
            "Build kitchen cabinets. Answer 1-5."
        );
    });
}

#[tokio::test]
async fn auth_and_quota_errors_are_permanent() {
    let mock = Mock::start(
        vec![
            unauthorized(),
            insufficient_quota(),
            reply(400, r#"{"error":{"message":"bad model"}}"#),
        ],
        openai_answer("4"),
    )
    .await;
    let provider = OpenAi::new(config("openai", &mock.base_url("/v1"))).expect("provider");
    let mut got = Vec::new();
    for _ in 0..3 {
        match ask(&provider).await {
            Err(ProviderError::Permanent(m)) => got.push(m),
            other => panic!("expected permanent, got {other:?}"),
        }
    }
    assert!(got[0].contains("HTTP 401"), "{}", got[0]);
    assert!(
        got[0].contains("Incorrect API key provided: [redacted]"),
        "{}",
        got[0]
    );
    assert!(got[1].contains("insufficient_quota"), "{}", got[1]);
    assert!(got[2].contains("HTTP 400: bad model"), "{}", got[2]);
    for m in &got {
        assert!(!m.contains(KEY), "{m}");
    }
}

#[tokio::test]
async fn anthropic_wire_format_and_faults() {
    let mock = Mock::start(
        vec![
            reply(529, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
                .with("retry-after", "2"),
            reply(200, r#"{"content":[],"usage":{"input_tokens":1,"output_tokens":0}}"#),
            reply(200, "<html>"),
            reply(401, r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#),
        ],
        anthropic_answer("Like"),
    )
    .await;
    let mut cfg = config("anthropic", &mock.base_url(""));
    cfg.max_tokens = 0;
    let provider = Anthropic::new(cfg).expect("provider");
    let e = ask(&provider).await.expect_err("overloaded");
    assert_eq!(hint(&e), Some(Duration::from_secs(2)));
    assert!(
        e.to_string().contains("Overloaded (overloaded_error)"),
        "{e}"
    );
    assert_eq!(hint(&ask(&provider).await.expect_err("no content")), None);
    assert_eq!(hint(&ask(&provider).await.expect_err("not json")), None);
    match ask(&provider).await {
        Err(ProviderError::Permanent(m)) => assert!(m.contains("invalid x-api-key"), "{m}"),
        other => panic!("expected permanent, got {other:?}"),
    }
    let good = ask(&provider).await.expect("good");
    assert_eq!(
        good,
        Reply {
            text: "Like".into(),
            input_tokens: 40,
            output_tokens: 2,
            option_probabilities: Vec::new(),
            refused: false,
        }
    );
    mock.with_seen(|seen| {
        assert_eq!(seen.len(), 5);
        let last = seen.last().expect("a request");
        assert_eq!(last.path, "/v1/messages");
        let header = |n: &str| last.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(header("x-api-key"), Some(KEY));
        assert_eq!(header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(header("authorization"), None);
        let body: serde_json::Value = serde_json::from_str(&last.body).expect("json body");
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["system"], "You are a survey respondent.");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["model"], "model-1");
    });
}

#[tokio::test]
async fn connection_errors_and_timeouts_are_transient() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let provider = OpenAi::new(config("openai", &format!("http://{closed}/v1"))).expect("provider");
    let e = ask(&provider).await.expect_err("refused");
    assert_eq!(hint(&e), None);
    assert!(e.to_string().contains("connection failed"), "{e}");

    let mut slow = openai_answer("4");
    slow.delay = Duration::from_secs(5);
    let mock = Mock::start(vec![slow], openai_answer("4")).await;
    let mut cfg = config("openai", &mock.base_url("/v1"));
    cfg.timeout = Duration::from_millis(300);
    let provider = OpenAi::new(cfg).expect("provider");
    let e = ask(&provider).await.expect_err("timeout");
    assert_eq!(hint(&e), None);
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(ask(&provider).await.expect("then fine").text, "4");
}

#[tokio::test]
async fn logprobs_are_requested_and_variants_merged() {
    let body = serde_json::json!({
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": " 4"},
            "logprobs": {"content": [{
                "token": " 4",
                "logprob": 0.6f64.ln(),
                "top_logprobs": [
                    {"token": " 4", "logprob": 0.6f64.ln()},
                    {"token": "4", "logprob": 0.2f64.ln()},
                    {"token": " 3", "logprob": 0.125f64.ln()},
                    {"token": " Like", "logprob": 0.05f64.ln()},
                    {"token": " 5", "logprob": 0.025f64.ln()}
                ]
            }]}
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1}
    });
    let mock = Mock::start(vec![reply(200, &body.to_string())], openai_answer("4")).await;
    let mut cfg = config("vllm", &mock.base_url("/v1"));
    cfg.logprobs = true;
    let provider = OpenAi::new(cfg).expect("provider");
    let got = ask(&provider).await.expect("answer");
    assert_eq!(got.text, " 4");
    let pairs: Vec<(u32, f64)> = got
        .option_probabilities
        .iter()
        .map(|o| (o.rating, (o.probability * 1000.0).round() / 1000.0))
        .collect();
    // 0.125, 0.8 and 0.025, normalised by their sum 0.95.
    assert_eq!(pairs, vec![(3, 0.132), (4, 0.842), (5, 0.026)]);
    // Without logprobs in the reply there are no probabilities.
    assert!(
        ask(&provider)
            .await
            .expect("answer")
            .option_probabilities
            .is_empty()
    );
    mock.with_seen(|seen| {
        let body: serde_json::Value = serde_json::from_str(&seen[0].body).expect("json");
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 5);
    });
}

#[test]
fn debug_output_never_shows_the_key() {
    let cfg = config("openai", "http://127.0.0.1:9/v1");
    let openai = OpenAi::new(cfg.clone()).expect("provider");
    let anthropic = Anthropic::new(cfg.clone()).expect("provider");
    for text in [
        format!("{cfg:?}"),
        format!("{openai:?}"),
        format!("{anthropic:?}"),
        format!("{:?}", ApiKey::new(KEY)),
    ] {
        assert!(!text.contains(KEY), "{text}");
        assert!(!text.contains("DO-NOT-LEAK"), "{text}");
    }
}

// ------------------------------------------------- through the runner

struct Rig {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    analyzer: RunningAnalyzer,
    ctx: RunContext,
    key_file: String,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let analyzer = careers_analyzer::start(AnalyzerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: Database::Sqlite(path.join("analyzer.sqlite")),
    })
    .await
    .expect("analyzer starts");
    let key_file = path.join("key.txt");
    std::fs::write(&key_file, format!("  {KEY}\n")).expect("key file");
    let ctx = RunContext {
        journal: Journal::open(&path.join("collector.sqlite"))
            .await
            .expect("journal"),
        catalog: Arc::new(Catalog::built_in().expect("catalog")),
        analyzer: outbox::analyzer_channel(&format!("http://{}", analyzer.addr)).expect("channel"),
        retry: RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
    };
    Rig {
        _dir: dir,
        dir: path,
        analyzer,
        ctx,
        key_file: key_file.display().to_string(),
    }
}

fn api_respondent(name: &str, provider: &str, base_url: &str, key_file: &str) -> RespondentSpec {
    RespondentSpec {
        respondent: Some(Respondent {
            name: name.into(),
            provider: provider.into(),
            model: format!("{name}-model"),
            version_label: "1".into(),
            family: provider.into(),
        }),
        settings: Some(respondent_spec::Settings::Api(ApiSettings {
            base_url: base_url.into(),
            api_key_env: String::new(),
            api_key_file: key_file.into(),
            temperature: Some(1.0),
            max_tokens: 8,
            ..Default::default()
        })),
    }
}

fn simulated_respondent() -> RespondentSpec {
    let paper = study::parse_file(include_str!("../studies/paper-simulated.toml"))
        .expect("paper study parses");
    paper
        .respondents
        .into_iter()
        .next()
        .expect("a simulated respondent")
}

fn small_spec(name: &str, respondents: Vec<RespondentSpec>) -> StudySpec {
    StudySpec {
        name: name.into(),
        respondents,
        languages: vec!["en".into()],
        instruments: vec!["onet-ip-sf".into(), "onet-ip-sf-competence".into()],
        replications: 1,
        // One request at a time, so the scripted faults hit one task in order.
        concurrency: 1,
        seed: 7,
        reask_invalid: 0,
        ..StudySpec::default()
    }
}

async fn run_study(rig: &Rig, spec: &StudySpec) -> RunOutcome {
    run_study_with_progress(rig, spec).await.0
}

/// Runs a study and returns, with its outcome, the last progress message
/// (what `WatchStudy` sends).
async fn run_study_with_progress(
    rig: &Rig,
    spec: &StudySpec,
) -> (RunOutcome, careers_proto::v1::StudyProgress) {
    let progress = runner::prepare(&rig.ctx, "", spec).await.expect("prepared");
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let outcome = runner::run(&rig.ctx, spec, progress.clone(), cancel_rx)
        .await
        .expect("run ends");
    (outcome, progress.snapshot())
}

async fn summary(rig: &Rig, study: &str) -> Summary {
    let mut client = AnalyzerServiceClient::connect(format!("http://{}", rig.analyzer.addr))
        .await
        .expect("connect");
    client
        .get_summary(GetSummaryRequest {
            study_id: study.into(),
        })
        .await
        .expect("summary")
        .into_inner()
        .summary
        .expect("summary present")
}

/// No file the collector wrote (journal, WAL) holds the key.
fn assert_key_not_stored(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        if name
            .as_deref()
            .is_some_and(|n| n.starts_with("collector.sqlite"))
        {
            let bytes = std::fs::read(&path).expect("read journal file");
            assert!(
                !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                "{} holds the key",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_a_study_lands_exactly() {
    let rig = rig().await;
    let openai = Mock::start(
        vec![
            reply(429, r#"{"error":{"message":"Rate limit reached"}}"#).with("retry-after", "1"),
            reply(500, "oops"),
            reply(503, "unavailable"),
            reply(529, "{}"),
            reply(200, "{malformed"),
            reply(200, r#"{"choices":[]}"#),
            openai_answer("It depends on the circumstances."),
        ],
        openai_answer("4"),
    )
    .await;
    // Anthropic's classifier refusal: no text at all, still a refusal, not a retry.
    let refusal =
        r#"{"content":[],"stop_reason":"refusal","usage":{"input_tokens":40,"output_tokens":0}}"#;
    let anthropic = Mock::start(
        vec![reply(529, "{}"), reply(200, refusal)],
        anthropic_answer("2"),
    )
    .await;
    let gpt = with_api(
        api_respondent("gpt", "openai", &openai.base_url("/v1"), &rig.key_file),
        |api| {
            api.input_price_per_million = 0.5;
            api.output_price_per_million = 1.5;
        },
    );
    let claude = with_api(
        api_respondent(
            "claude",
            "anthropic",
            &anthropic.base_url(""),
            &rig.key_file,
        ),
        |api| {
            api.input_price_per_million = 3.0;
            api.output_price_per_million = 15.0;
            api.currency = "EUR".into();
        },
    );
    let spec = small_spec("live-mock", vec![gpt, claude]);
    let (outcome, progress) = run_study_with_progress(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    assert_eq!((outcome.answered_now, outcome.failed), (240, 0));
    // 120 tasks each, plus one request per transient fault.
    assert_eq!(openai.requests(), 120 + 6);
    assert_eq!(anthropic.requests(), 120 + 1);
    openai.with_seen(|seen| {
        // The first task was asked seven times with the same prompt.
        let first: serde_json::Value = serde_json::from_str(&seen[0].body).expect("json");
        for s in &seen[1..7] {
            let again: serde_json::Value = serde_json::from_str(&s.body).expect("json");
            assert_eq!(again["messages"], first["messages"]);
        }
        let second: serde_json::Value = serde_json::from_str(&seen[7].body).expect("json");
        assert_ne!(second["messages"], first["messages"]);
        // The retry waited at least the server's retry-after of 1 s.
        assert!(
            seen[1].at.duration_since(seen[0].at) >= Duration::from_secs(1),
            "retried too early"
        );
    });
    let s = summary(&rig, "live-mock").await;
    assert_eq!(s.responses, 240);
    assert_eq!((s.valid, s.invalid), (238, 2));
    // Exact accounting: every request and retry, the tokens of the
    // successful replies (42 + 3 from the OpenAI mock, 40 + 2 from the
    // Anthropic one), and their cost at the configured prices.
    let gpt_cost = (120.0 * 42.0 * 0.5 + 120.0 * 3.0 * 1.5) / 1e6;
    let claude_cost = (120.0 * 40.0 * 3.0 + 119.0 * 2.0 * 15.0) / 1e6;
    let usage: Vec<_> = s
        .usage
        .iter()
        .map(|u| {
            (
                u.respondent.as_str(),
                u.responses,
                u.requests,
                u.retries,
                u.input_tokens,
                u.output_tokens,
                u.cost_currency.as_str(),
            )
        })
        .collect();
    assert_eq!(
        usage,
        vec![
            ("claude", 120, 121, 1, 4800, 238, "EUR"),
            ("gpt", 120, 126, 6, 5040, 360, "USD"),
        ]
    );
    assert!(
        (s.usage[0].cost - claude_cost).abs() < 1e-12,
        "{}",
        s.usage[0].cost
    );
    assert!(
        (s.usage[1].cost - gpt_cost).abs() < 1e-12,
        "{}",
        s.usage[1].cost
    );
    // The same in the progress message WatchStudy sends, in study order.
    let accounts: Vec<_> = progress
        .respondents
        .iter()
        .map(|r| {
            (
                r.respondent.as_str(),
                r.done,
                r.total,
                r.requests,
                r.retries,
                r.input_tokens,
                r.output_tokens,
                r.currency.as_str(),
                r.failure.as_str(),
            )
        })
        .collect();
    assert_eq!(
        accounts,
        vec![
            ("gpt", 120, 120, 126, 6, 5040, 360, "USD", ""),
            ("claude", 120, 120, 121, 1, 4800, 238, "EUR", ""),
        ]
    );
    assert!((progress.respondents[0].cost - gpt_cost).abs() < 1e-12);
    assert!((progress.respondents[1].cost - claude_cost).abs() < 1e-12);
    // "It depends ..." is unusable but no refusal; Anthropic's is one.
    assert_eq!((progress.invalid, progress.refusals), (2, 1));
    // The final table shows the cost per respondent.
    let table = careers_collector::table::riasec_table(&s);
    assert!(table.contains("0.0031 USD"), "{table}");
    assert!(table.contains("0.0180 EUR"), "{table}");
    let counts = rig
        .ctx
        .journal
        .cell_counts("live-mock")
        .await
        .expect("counts");
    assert_eq!(counts.iter().map(|c| c.done).sum::<u64>(), 240);
    assert_eq!(counts.iter().map(|c| c.forwarded).sum::<u64>(), 240);
    assert_key_not_stored(&rig.dir);
}

async fn permanent_failure_case(name: &str, fault: MockReply, expect: &str) {
    let rig = rig().await;
    let mock = Mock::start(vec![fault], openai_answer("4")).await;
    let spec = small_spec(
        name,
        vec![
            api_respondent("gpt", "openai", &mock.base_url("/v1"), &rig.key_file),
            simulated_respondent(),
        ],
    );
    let (outcome, progress) = run_study_with_progress(&rig, &spec).await;
    assert_eq!(mock.requests(), 1, "a permanent error is not retried");
    // WatchStudy shows the stopped respondent with the provider's message.
    let gpt = &progress.respondents[0];
    assert_eq!(
        (gpt.respondent.as_str(), gpt.done, gpt.requests),
        ("gpt", 0, 1)
    );
    assert!(gpt.failure.contains(expect), "{}", gpt.failure);
    assert!(!gpt.failure.contains(KEY), "{}", gpt.failure);
    assert!(progress.respondents[1].failure.is_empty());
    assert_eq!(outcome.state, StudyState::Failed, "{outcome:?}");
    assert_eq!(
        outcome.answered_now, 120,
        "the simulated respondent goes on"
    );
    assert_eq!(outcome.failed, 1);
    assert!(
        outcome.error.contains("respondent gpt failed"),
        "{}",
        outcome.error
    );
    assert!(outcome.error.contains(expect), "{}", outcome.error);
    assert!(
        outcome.error.contains("120 tasks unanswered"),
        "{}",
        outcome.error
    );
    assert!(!outcome.error.contains(KEY), "{}", outcome.error);
    let row = rig
        .ctx
        .journal
        .study(name)
        .await
        .expect("journal")
        .expect("study row");
    let row_text = format!("{row:?}");
    assert!(!row_text.contains(KEY), "{row_text}");
    assert!(row_text.contains("respondent gpt failed"), "{row_text}");
    assert_eq!(summary(&rig, name).await.responses, 120);
    assert_key_not_stored(&rig.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_fails_the_respondent_without_retry() {
    permanent_failure_case(
        "live-401",
        unauthorized(),
        "HTTP 401: Incorrect API key provided: [redacted]",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exhaustion_fails_the_respondent_without_retry() {
    permanent_failure_case("live-quota", insufficient_quota(), "insufficient_quota").await;
}

// ------------------------------------- study settings through the runner

/// An OpenAI-compatible answer "2" whose log-probabilities favour 4:
/// 2 -> 0.4, 4 -> 0.45 (" 4" and "4" merged), 5 -> 0.15 (sum 1 after
/// dropping "Like"), so sampled = 2, most probable = 4, expected = 3.35 -> 3.
fn logprob_answer() -> MockReply {
    logprob_reply("2")
}

/// [`logprob_answer`]'s log-probabilities with another text.
fn logprob_reply(content: &str) -> MockReply {
    let body = serde_json::json!({
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": {"content": [{
                "token": "2",
                "logprob": 0.4f64.ln(),
                "top_logprobs": [
                    {"token": "2", "logprob": 0.4f64.ln()},
                    {"token": " 4", "logprob": 0.3f64.ln()},
                    {"token": "4", "logprob": 0.15f64.ln()},
                    {"token": "5", "logprob": 0.15f64.ln()},
                    {"token": "Like", "logprob": 0.2f64.ln()}
                ]
            }]}
        }],
        "usage": {"prompt_tokens": 30, "completion_tokens": 1}
    });
    reply(200, &body.to_string())
}

fn with_api(mut r: RespondentSpec, edit: impl FnOnce(&mut ApiSettings)) -> RespondentSpec {
    if let Some(respondent_spec::Settings::Api(api)) = &mut r.settings {
        edit(api);
    }
    r
}

async fn export(rig: &Rig, study: &str) -> Vec<careers_proto::v1::ItemResponse> {
    let mut client = AnalyzerServiceClient::connect(format!("http://{}", rig.analyzer.addr))
        .await
        .expect("connect");
    let mut stream = client
        .export_responses(careers_proto::v1::ExportResponsesRequest {
            study_id: study.into(),
            page_size: 0,
        })
        .await
        .expect("export")
        .into_inner();
    let mut out = Vec::new();
    while let Some(page) = stream.message().await.expect("page") {
        out.extend(page.responses);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_source_chooses_from_logprobs_and_expected_rating_is_exported() {
    let rig = rig().await;
    let mock = Mock::start(Vec::new(), logprob_answer()).await;
    let url = mock.base_url("/v1");
    let respondent = |name: &str, source: RatingSource| {
        with_api(api_respondent(name, "vllm", &url, &rig.key_file), |api| {
            api.logprobs = true;
            api.rating_source = source as i32;
            api.system_prompt = "Answer with one digit.".into();
            api.timeout_secs = 5;
        })
    };
    let mut spec = small_spec(
        "live-logprobs",
        vec![
            respondent("sampled", RatingSource::Unspecified),
            respondent("most", RatingSource::MostProbable),
            respondent("expected", RatingSource::Expected),
        ],
    );
    spec.instruments = vec!["onet-ip-sf".into()];
    spec.concurrency = 4;
    let outcome = run_study(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    assert_eq!(outcome.answered_now, 180);
    let responses = export(&rig, "live-logprobs").await;
    assert_eq!(responses.len(), 180);
    for r in &responses {
        let name = r.respondent.as_ref().expect("respondent").name.as_str();
        let want = match name {
            "sampled" => 2,
            "most" => 4,
            "expected" => 3,
            other => panic!("unexpected respondent {other}"),
        };
        assert_eq!(r.answer, Some(Answer::Rating(want)), "{name}");
        assert_eq!(r.raw_text, "2");
        assert!(
            (r.expected_rating - 3.35).abs() < 1e-9,
            "{}",
            r.expected_rating
        );
        let probs: Vec<(u32, f64)> = r
            .option_probabilities
            .iter()
            .map(|o| (o.rating, (o.probability * 1e6).round() / 1e6))
            .collect();
        assert_eq!(probs, vec![(2, 0.4), (4, 0.45), (5, 0.15)], "{name}");
    }
    mock.with_seen(|seen| {
        assert_eq!(seen.len(), 180);
        let body: serde_json::Value = serde_json::from_str(&seen[0].body).expect("json");
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 5);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][0]["content"], "Answer with one digit.");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_answer_is_re_asked_unless_its_probabilities_decide() {
    let rig = rig().await;
    // Each respondent's first answer is unreadable text with the same
    // log-probabilities as every other answer.
    let sampled_mock =
        Mock::start(vec![logprob_reply("Hmm, hard to say.")], logprob_answer()).await;
    let most_mock = Mock::start(vec![logprob_reply("Hmm, hard to say.")], logprob_answer()).await;
    let respondent = |name: &str, url: String, source: RatingSource| {
        with_api(api_respondent(name, "vllm", &url, &rig.key_file), |api| {
            api.logprobs = true;
            api.rating_source = source as i32;
        })
    };
    let mut spec = small_spec(
        "live-logprob-reask",
        vec![
            respondent(
                "sampled",
                sampled_mock.base_url("/v1"),
                RatingSource::Sampled,
            ),
            respondent(
                "most",
                most_mock.base_url("/v1"),
                RatingSource::MostProbable,
            ),
        ],
    );
    spec.instruments = vec!["onet-ip-sf".into()];
    spec.reask_invalid = 1;
    let outcome = run_study(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    assert_eq!(outcome.answered_now, 120);
    // The sampled text decides: the unreadable answer is re-asked once.
    assert_eq!(sampled_mock.requests(), 61);
    // The probabilities decide: nothing to re-ask, the answer is their mode.
    assert_eq!(most_mock.requests(), 60);
    let responses = export(&rig, "live-logprob-reask").await;
    let unreadable: Vec<_> = responses
        .iter()
        .filter(|r| r.raw_text == "Hmm, hard to say.")
        .collect();
    assert_eq!(unreadable.len(), 1, "kept only where it was the answer");
    assert_eq!(unreadable[0].answer, Some(Answer::Rating(4)));
    assert_eq!(
        unreadable[0].respondent.as_ref().map(|r| r.name.as_str()),
        Some("most")
    );
    assert!(
        responses
            .iter()
            .all(|r| matches!(r.answer, Some(Answer::Rating(_)))),
        "every task ends with a rating"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_hint_beyond_max_retry_wait_stops_the_respondent_until_a_rerun() {
    let rig = rig().await;
    let mock = Mock::start(
        vec![
            reply(429, r#"{"error":{"message":"daily limit reached"}}"#)
                .with("retry-after", "86400"),
        ],
        openai_answer("4"),
    )
    .await;
    let gpt = with_api(
        api_respondent("gpt", "openai", &mock.base_url("/v1"), &rig.key_file),
        |api| api.max_retry_wait_secs = 60,
    );
    let mut spec = small_spec("live-retry-cap", vec![gpt, simulated_respondent()]);
    spec.instruments = vec!["onet-ip-sf".into()];
    let (outcome, progress) = tokio::time::timeout(
        Duration::from_secs(120),
        run_study_with_progress(&rig, &spec),
    )
    .await
    .expect("the run does not sit out the server's day-long hint");
    // Never asked again sooner than the server said: one request, then stop.
    assert_eq!(mock.requests(), 1);
    assert_eq!(outcome.state, StudyState::Failed, "{outcome:?}");
    assert_eq!(outcome.answered_now, 60, "the simulated respondent goes on");
    assert!(
        outcome
            .error
            .contains("longer than max_retry_wait_secs (60 s)"),
        "{}",
        outcome.error
    );
    let gpt = &progress.respondents[0];
    assert_eq!(gpt.respondent, "gpt");
    assert!(
        gpt.failure.contains("asks to wait 86400 s"),
        "{}",
        gpt.failure
    );
    assert_eq!((gpt.done, gpt.total, gpt.requests), (0, 60, 1));
    // Run again later: the study resumes and finishes the stopped respondent.
    let again = run_study(&rig, &spec).await;
    assert_eq!(again.state, StudyState::Completed, "{again:?}");
    assert_eq!(again.answered_now, 60);
    assert_eq!(mock.requests(), 61);
    assert_eq!(summary(&rig, "live-retry-cap").await.responses, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_spaces_a_respondents_requests() {
    let rig = rig().await;
    let mock = Mock::start(Vec::new(), openai_answer("4")).await;
    // 1,200 a minute: 20 a second, a burst of 20; 60 tasks take >= 2 s.
    let gpt = with_api(
        api_respondent("gpt", "openai", &mock.base_url("/v1"), &rig.key_file),
        |api| {
            api.requests_per_minute = 1200.0;
            api.max_concurrency = 2;
        },
    );
    let mut spec = small_spec("live-rpm", vec![gpt]);
    spec.instruments = vec!["onet-ip-sf".into()];
    spec.concurrency = 8;
    let started = Instant::now();
    let outcome = run_study(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    assert_eq!(outcome.answered_now, 60);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_answers_are_reasked_and_every_raw_text_is_kept() {
    let rig = rig().await;
    let mock = Mock::start(
        vec![
            openai_answer("As an AI, I don't have personal preferences."),
            openai_answer("3 or 4"),
            openai_answer("5"),
        ],
        openai_answer("4"),
    )
    .await;
    let mut spec = small_spec(
        "reask",
        vec![api_respondent(
            "gpt",
            "openai",
            &mock.base_url("/v1"),
            &rig.key_file,
        )],
    );
    spec.instruments = vec!["onet-ip-sf".into()];
    spec.reask_invalid = 2;
    let outcome = run_study(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    assert_eq!(
        mock.requests(),
        62,
        "60 tasks, one of them asked three times"
    );
    // The re-asks carry the stricter follow-up; the first request does not.
    mock.with_seen(|seen| {
        assert!(!seen[0].body.contains("single number from 1 to 5"));
        assert!(seen[1].body.contains("single number from 1 to 5"));
        assert!(seen[2].body.contains("single number from 1 to 5"));
    });
    let responses = export(&rig, "reask").await;
    assert_eq!(responses.len(), 60);
    let reasked: Vec<_> = responses
        .iter()
        .filter(|r| !r.earlier_answers.is_empty())
        .collect();
    assert_eq!(reasked.len(), 1);
    let r = reasked[0];
    assert_eq!(
        r.answer,
        Some(careers_proto::v1::item_response::Answer::Rating(5))
    );
    assert_eq!(r.attempt, 3);
    let earlier: Vec<(u32, &str, i32)> = r
        .earlier_answers
        .iter()
        .map(|e| {
            (
                e.attempt,
                e.raw_text.as_str(),
                e.invalid.as_ref().map_or(0, |i| i.reason),
            )
        })
        .collect();
    assert_eq!(
        earlier,
        vec![
            (
                1,
                "As an AI, I don't have personal preferences.",
                careers_proto::v1::InvalidReason::Refusal as i32
            ),
            (
                2,
                "3 or 4",
                careers_proto::v1::InvalidReason::MultipleRatings as i32
            ),
        ]
    );
    let usage = summary(&rig, "reask").await.usage;
    // Two re-asks are requests, not retries (no transient error happened).
    assert_eq!((usage[0].requests, usage[0].retries), (62, 0));
}

/// The user and system messages of an OpenAI-compatible request body.
fn messages(body: &serde_json::Value) -> (Option<String>, String) {
    let mut system = None;
    let mut user = String::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        let text = m["content"].as_str().unwrap_or_default().to_string();
        match m["role"].as_str() {
            Some("system") => system = Some(text),
            _ => user = text,
        }
    }
    (system, user)
}

/// The rating the mock gives an activity: fixed by its text, so a test can
/// check that every numbered answer line reached the right item.
fn rating_for(text: &str) -> u32 {
    (text.chars().count() % 5) as u32 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personas_and_all_items_requests_reach_the_wire_and_map_back_to_items() {
    let rig = rig().await;
    let (en, zh) = (options_in("en"), options_in("zh"));
    // Answers every numbered activity of the prompt, a line each, in mixed
    // styles: a digit, the English label, the Chinese label (the wrong
    // language for this English study), or a markdown list item.
    let mock = Mock::responding(move |body| {
        let (_, user) = messages(body);
        let mut lines = vec!["Sure, here are my answers:".to_string(), String::new()];
        for line in user.lines() {
            let Some((n, text)) = line.split_once(". ") else {
                continue;
            };
            let Ok(n) = n.parse::<usize>() else { continue };
            let r = rating_for(text) as usize;
            lines.push(match n % 4 {
                0 => format!("{n}: {r}"),
                1 => format!("{n}. {}", en[r - 1]),
                2 => format!("{n}: {}", zh[r - 1]),
                _ => format!("- **{n}**: {r}"),
            });
        }
        let reply_body = serde_json::json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": lines.join("\n")}}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 301}
        });
        reply(200, &reply_body.to_string())
    })
    .await;
    let gpt = with_api(
        api_respondent("gpt", "vllm", &mock.base_url("/v1"), &rig.key_file),
        |api| {
            api.system_prompts
                .insert("en".into(), "You are a survey respondent.".into());
            api.max_tokens = 0;
        },
    );
    let mut spec = small_spec("live-factors", vec![gpt]);
    spec.instruments = vec!["onet-ip-sf".into()];
    spec.administration = careers_proto::v1::Administration::AllItems as i32;
    spec.factors = vec![careers_proto::v1::DesignFactor {
        name: "persona".into(),
        levels: vec![
            careers_proto::v1::FactorLevel {
                name: "none".into(),
                ..Default::default()
            },
            careers_proto::v1::FactorLevel {
                name: "teacher".into(),
                system_prompt: [("en".to_string(), "You are a teacher.".to_string())].into(),
                preamble: [("en".to_string(), "Answer as yourself.".to_string())].into(),
                ..Default::default()
            },
        ],
    }];
    study::validate_with_env(&spec, &rig.ctx.catalog, &|_| None).expect("valid");
    let outcome = run_study(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    assert_eq!(outcome.answered_now, 120);
    // One request per form: persona none and teacher.
    assert_eq!(mock.requests(), 2);
    mock.with_seen(|seen| {
        let mut framings: Vec<(Option<String>, bool, usize)> = seen
            .iter()
            .map(|s| {
                let body: serde_json::Value = serde_json::from_str(&s.body).expect("json");
                let (system, user) = messages(&body);
                let listed = user.lines().filter(|l| l.starts_with("60. ")).count();
                (system, user.starts_with("Answer as yourself.\n\n"), listed)
            })
            .collect();
        framings.sort();
        assert_eq!(
            framings,
            vec![
                (Some("You are a survey respondent.".into()), false, 1),
                (
                    Some("You are a survey respondent.\n\nYou are a teacher.".into()),
                    true,
                    1
                ),
            ]
        );
    });
    let catalog = Catalog::built_in().expect("catalog");
    let instrument = catalog.get("onet-ip-sf").expect("instrument");
    let responses = export(&rig, "live-factors").await;
    assert_eq!(responses.len(), 120);
    for r in &responses {
        let item = instrument.item(&r.item_id).expect("item");
        let text = item.texts.get("en").expect("en text");
        assert_eq!(
            r.answer,
            Some(Answer::Rating(rating_for(text))),
            "{} answered {:?}",
            r.item_id,
            r.raw_text
        );
        assert_eq!(
            r.administration,
            careers_proto::v1::Administration::AllItems as i32
        );
        assert!(r.conditions.contains_key("persona"));
        // Each item keeps its own line of the reply as raw text.
        assert!(!r.raw_text.contains('\n'), "{:?}", r.raw_text);
    }
    let usage = &summary(&rig, "live-factors").await.usage[0];
    // Two requests, their tokens split over the items without loss.
    assert_eq!(
        (
            usage.requests,
            usage.retries,
            usage.input_tokens,
            usage.output_tokens
        ),
        (2, 0, 1800, 602)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_the_other_language_are_read() {
    let rig = rig().await;
    // An English prompt answered in Chinese, a Chinese one in English.
    let mock = Mock::responding(|body| {
        let (_, user) = messages(body);
        let chinese = user.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        openai_answer(if chinese {
            "I would choose: Like"
        } else {
            "我的选择是：非常喜欢"
        })
    })
    .await;
    let mut spec = small_spec(
        "live-languages",
        vec![api_respondent(
            "gpt",
            "openai",
            &mock.base_url("/v1"),
            &rig.key_file,
        )],
    );
    spec.languages = vec!["en".into(), "zh".into()];
    spec.instruments = vec!["onet-ip-sf".into()];
    spec.concurrency = 8;
    let outcome = run_study(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    let responses = export(&rig, "live-languages").await;
    assert_eq!(responses.len(), 120);
    for r in &responses {
        let want = if r.language == "zh" { 4 } else { 5 };
        assert_eq!(
            r.answer,
            Some(Answer::Rating(want)),
            "{}: {:?}",
            r.language,
            r.raw_text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_and_max_concurrency_hold_a_respondent_back() {
    let rig = rig().await;
    let mut slow = openai_answer("4");
    slow.delay = Duration::from_millis(20);
    let mock = Mock::start(Vec::new(), slow).await;
    // 54,000 tokens a minute is 900 a second (and a burst of 900); each
    // answer settles at 45 tokens (42 + 3), so 60 answers use 2,700 tokens:
    // at least (2,700 - 900) / 900 = 2 s.
    let gpt = with_api(
        api_respondent("gpt", "openai", &mock.base_url("/v1"), &rig.key_file),
        |api| {
            api.tokens_per_minute = 54_000.0;
            api.max_concurrency = 3;
        },
    );
    let mut spec = small_spec("live-tpm", vec![gpt]);
    spec.instruments = vec!["onet-ip-sf".into()];
    spec.concurrency = 16;
    let started = Instant::now();
    let outcome = run_study(&rig, &spec).await;
    assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
    assert_eq!(outcome.answered_now, 60);
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    assert!(
        mock.max_in_flight() <= 3,
        "{} at once",
        mock.max_in_flight()
    );
    assert!(
        mock.max_in_flight() >= 2,
        "the respondent was asked one at a time"
    );
}

#[tokio::test]
async fn provider_quirks_spark_errors_in_200_and_gemini_retry_delay() {
    let mock = Mock::start(
        vec![
            reply(200, r#"{"code":11202,"message":"QPS limit exceeded","sid":"x"}"#),
            reply(
                429,
                r#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"3s"}]}}]"#,
            ),
            reply(200, r#"{"code":11200,"message":"AppIdNoAuthError"}"#),
        ],
        reply(
            200,
            r#"{"code":0,"message":"Success","choices":[{"message":{"role":"assistant","content":"喜欢"},"index":0}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
        ),
    )
    .await;
    let mut cfg = config("spark", &mock.base_url("/v1"));
    cfg.temperature = None;
    cfg.max_tokens = 0;
    let provider = OpenAi::new(cfg).expect("provider");
    let e = ask(&provider).await.expect_err("qps");
    assert_eq!(hint(&e), None);
    assert!(
        e.to_string().contains("QPS limit exceeded (code 11202)"),
        "{e}"
    );
    let e = ask(&provider).await.expect_err("gemini-style 429");
    assert_eq!(hint(&e), Some(Duration::from_secs(3)));
    match ask(&provider).await {
        Err(ProviderError::Permanent(m)) => assert!(m.contains("AppIdNoAuthError"), "{m}"),
        other => panic!("expected permanent, got {other:?}"),
    }
    assert_eq!(ask(&provider).await.expect("answer").text, "喜欢");
    mock.with_seen(|seen| {
        let body: serde_json::Value = serde_json::from_str(&seen[0].body).expect("json");
        // Unset temperature and max_tokens are not sent: the API's defaults apply.
        assert!(body.get("temperature").is_none(), "{body}");
        assert!(body.get("max_tokens").is_none(), "{body}");
    });
}
