//! Shared set-up for the end-to-end tests: real servers on loopback ports.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use careers_analyzer::{AnalyzerConfig, Database, RunningAnalyzer};
use careers_collector::instrument::Catalog;
use careers_collector::journal::Journal;
use careers_collector::outbox;
use careers_collector::runner::{RetryPolicy, RunContext};
use careers_collector::study;
use careers_proto::v1::StudySpec;

pub const PAPER: &str = include_str!("../../../collector/studies/paper-simulated.toml");

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub async fn analyzer_at(listen: SocketAddr, db: &Path) -> RunningAnalyzer {
    careers_analyzer::start(AnalyzerConfig {
        listen,
        database: Database::Sqlite(db.to_path_buf()),
    })
    .await
    .expect("analyzer starts")
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

pub async fn run_context(dir: &Path, analyzer_url: &str) -> RunContext {
    RunContext {
        journal: Journal::open(&dir.join("collector.sqlite"))
            .await
            .expect("journal"),
        catalog: Arc::new(Catalog::built_in().expect("catalog")),
        analyzer: outbox::analyzer_channel(analyzer_url).expect("channel"),
        retry: RetryPolicy::default(),
    }
}

/// The paper's simulated design with another name and replication count.
pub fn paper_spec(name: &str, replications: u32) -> StudySpec {
    let mut spec = study::parse_file(PAPER).expect("paper study parses");
    spec.name = name.to_string();
    spec.replications = replications;
    spec
}

/// Tasks in a spec: respondents x languages x 120 items x replications.
pub fn task_count(spec: &StudySpec) -> u64 {
    spec.respondents.len() as u64 * spec.languages.len() as u64 * 120 * u64::from(spec.replications)
}
