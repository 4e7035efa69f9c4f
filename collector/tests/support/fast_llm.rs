//! A minimal OpenAI-compatible chat server on loopback for load and crash
//! tests: every `POST .../chat/completions` gets a valid answer after an
//! optional delay, and every request is counted. (The fault-injecting mock is
//! in `providers.rs`; this one only has to be fast.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;

#[derive(Debug)]
struct Shared {
    delay: Duration,
    requests: AtomicU64,
}

/// A running mock.
#[derive(Debug, Clone)]
pub struct FastLlm {
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    shared: Arc<Shared>,
}

impl FastLlm {
    /// Starts the mock; each answer waits `delay` first.
    pub async fn start(delay: Duration) -> Self {
        let shared = Arc::new(Shared {
            delay,
            requests: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock");
        let addr = listener.local_addr().expect("mock address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            shared,
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    body: String,
) -> ([(&'static str, &'static str); 1], String) {
    let n = shared.requests.fetch_add(1, Ordering::Relaxed);
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    // A rating that depends on the prompt, so answers are not all alike.
    let rating = 1 + (body.len() as u64 + n % 2) % 5;
    let json = format!(
        r#"{{"id":"m{n}","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"{rating}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{},"completion_tokens":1,"total_tokens":{}}}}}"#,
        body.len() / 4,
        body.len() / 4 + 1
    );
    ([("content-type", "application/json")], json)
}

/// A study file with `respondents` OpenAI-compatible respondents at `base_url`.
pub fn study_toml(
    name: &str,
    base_url: &str,
    key_file: &str,
    respondents: usize,
    replications: u32,
    concurrency: u32,
) -> String {
    let mut s = format!(
        "name = \"{name}\"\nseed = 7\nreplications = {replications}\nlanguages = [\"en\", \"zh\"]\n\
         instruments = [\"onet-ip-sf\", \"onet-ip-sf-competence\"]\nconcurrency = {concurrency}\n"
    );
    for i in 0..respondents {
        s.push_str(&format!(
            "\n[[respondents]]\nname = \"mock-{i}\"\nprovider = \"vllm\"\nmodel = \"mock\"\nbase_url = \"{base_url}\"\n\
             api_key_file = \"{key_file}\"\n"
        ));
    }
    s
}
