//! End-to-end collector throughput: LLM calls per second through the whole
//! path (HTTP provider -> answer parser -> journal -> outbox -> analyzer
//! ingest and store) against a mock OpenAI-compatible server that answers at
//! once, all on loopback in this one process.
//!
//! Run: `cargo bench -p careers-collector --bench throughput`.
//! Environment: `CAREERS_BENCH_CONCURRENCY` (default 256),
//! `CAREERS_BENCH_REPLICATIONS` (default 20: 4 respondents x 2 languages x
//! 120 items x 20 = 19,200 calls). Prints figures, asserts nothing. CPU time
//! is the whole process (mock server, collector and analyzer together), so
//! the per-call figure is an upper bound for the collector alone.

#[path = "../tests/support/fast_llm.rs"]
mod fast_llm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use careers_analyzer::{AnalyzerConfig, Database};
use careers_collector::instrument::Catalog;
use careers_collector::journal::Journal;
use careers_collector::runner::{self, RetryPolicy, RunContext};
use careers_collector::{outbox, study};
use careers_proto::v1::StudyState;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of this process, from /proc (Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command name: state is field 3, utime field 14, stime field 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

fn main() {
    let concurrency = env_u32("CAREERS_BENCH_CONCURRENCY", 256);
    let replications = env_u32("CAREERS_BENCH_REPLICATIONS", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let llm = fast_llm::FastLlm::start(Duration::ZERO).await;
        let analyzer = careers_analyzer::start(AnalyzerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: Database::Sqlite(dir.path().join("analyzer.sqlite")),
        })
        .await
        .expect("analyzer");
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-bench").expect("key");
        let text = fast_llm::study_toml("bench", &llm.base_url, &key.display().to_string(), 4, replications, concurrency);
        let spec = study::parse_file(&text).expect("study");
        let ctx = RunContext {
            journal: Journal::open(&dir.path().join("collector.sqlite")).await.expect("journal"),
            catalog: Arc::new(Catalog::built_in().expect("catalog")),
            analyzer: outbox::analyzer_channel(&format!("http://{}", analyzer.addr)).expect("channel"),
            retry: RetryPolicy::default(),
        };
        let prepare_start = Instant::now();
        let progress = runner::prepare(&ctx, "", &spec).await.expect("prepare");
        let prepare = prepare_start.elapsed();
        let total = progress.snapshot().total;

        let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let cpu0 = cpu_time();
        let started = Instant::now();
        let outcome = runner::run(&ctx, &spec, progress.clone(), cancel_rx).await.expect("run");
        let wall = started.elapsed();
        let cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        assert_eq!(outcome.state, StudyState::Completed, "{outcome:?}");
        let stored = analyzer.analysis.summary("bench").responses;

        let calls = llm.requests();
        let rate = calls as f64 / wall.as_secs_f64();
        println!("collector end-to-end throughput (mock LLM answering at once, 2-core machine)");
        println!("  tasks {total}, LLM calls {calls}, stored by the analyzer {stored}, concurrency {concurrency}");
        println!("  task rows written in {:.2} s (before the first call)", prepare.as_secs_f64());
        println!("  wall {:.2} s  ->  {rate:.0} calls/s  (target 5,000: {:.2}x)", wall.as_secs_f64(), rate / 5000.0);
        if let Some(cpu) = cpu {
            println!(
                "  CPU {:.2} s for the whole process  ->  {:.0} us CPU per call (mock + collector + analyzer)",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / calls.max(1) as f64
            );
        }
        analyzer.shutdown().await.expect("analyzer stops");
    });
}
