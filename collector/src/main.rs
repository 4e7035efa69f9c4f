//! `careers-collector`: run a study from a file, or serve the CollectorService.
//!
//! Exit codes: 0 done, 1 the study or a service failed, 2 bad input (a study
//! or instrument file, a flag).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use careers_analyzer::telemetry::{self, LogFormat};
use careers_analyzer::{AnalyzerConfig, Database, RunningAnalyzer};
use careers_collector::instrument::Catalog;
use careers_collector::journal::Journal;
use careers_collector::runner::{self, RetryPolicy, RunContext};
use careers_collector::service::KeySources;
use careers_collector::{outbox, study, table};
use careers_proto::v1::analyzer_service_client::AnalyzerServiceClient;
use careers_proto::v1::{GetSummaryRequest, StudyState};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "careers-collector",
    version,
    about = "Administers career-interest instruments to LLMs"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "CAREERS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Directory for the journal (and the embedded analyzer's store).
    #[arg(
        long,
        global = true,
        env = "CAREERS_DATA_DIR",
        default_value = "careers-data"
    )]
    data_dir: PathBuf,
    /// Extra instrument files (*.toml) to load besides the built-in ones.
    #[arg(long, global = true, env = "CAREERS_INSTRUMENTS_DIR")]
    instruments_dir: Option<PathBuf>,
    /// Analyzer to forward answers to, e.g. http://127.0.0.1:50052. Without it
    /// an analyzer is started in this process on a loopback port.
    #[arg(long, global = true, env = "CAREERS_ANALYZER_URL")]
    analyzer: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run (or resume) the study in STUDY.toml, then print its RIASEC table.
    Run {
        /// The study file.
        study: PathBuf,
        /// Also write the final Summary as canonical proto3 JSON to this path.
        #[arg(long)]
        summary_json: Option<PathBuf>,
    },
    /// Serve the CollectorService over gRPC.
    Serve {
        /// Address to listen on.
        #[arg(
            long,
            env = "CAREERS_COLLECTOR_LISTEN",
            default_value = "127.0.0.1:50051"
        )]
        listen: SocketAddr,
        /// Directory of API key files that studies created over gRPC may
        /// name (e.g. a mounted Kubernetes secret). Without it they may name
        /// none.
        #[arg(long, env = "CAREERS_KEY_DIR")]
        key_dir: Option<PathBuf>,
        /// Environment variables that studies created over gRPC may take keys
        /// from (repeat, or comma-separated). Anyone who can call CreateStudy
        /// can use these keys, with a base_url of their choice.
        #[arg(long, env = "CAREERS_KEY_ENV", value_delimiter = ',')]
        key_env: Vec<String>,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn bad_input(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { code: 1, error }
    }
}

fn catalog(dir: Option<&Path>) -> Result<Arc<Catalog>, Failure> {
    let catalog = match dir {
        Some(d) => Catalog::with_dir(d),
        None => Catalog::built_in(),
    };
    catalog.map(Arc::new).map_err(bad_input)
}

async fn context(
    cli: &Cli,
    catalog: Arc<Catalog>,
) -> Result<(RunContext, Option<RunningAnalyzer>, String), Failure> {
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("cannot create data directory {}", cli.data_dir.display()))?;
    let journal = Journal::open(&cli.data_dir.join("collector.sqlite"))
        .await
        .context("cannot open the journal")?;
    let (url, embedded) = match &cli.analyzer {
        Some(url) => (url.clone(), None),
        None => {
            let analyzer = careers_analyzer::start(AnalyzerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                database: Database::Sqlite(cli.data_dir.join("analyzer.sqlite")),
            })
            .await
            .context("cannot start the embedded analyzer")?;
            (format!("http://{}", analyzer.addr), Some(analyzer))
        }
    };
    let channel = outbox::analyzer_channel(&url).map_err(bad_input)?;
    Ok((
        RunContext {
            journal,
            catalog,
            analyzer: channel,
            retry: RetryPolicy::default(),
        },
        embedded,
        url,
    ))
}

async fn run(cli: &Cli, study_path: &Path, summary_json: Option<&Path>) -> Result<(), Failure> {
    let catalog = catalog(cli.instruments_dir.as_deref())?;
    let text = std::fs::read_to_string(study_path)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", study_path.display())))?;
    let spec = study::parse_file(&text)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", study_path.display())))?;
    study::validate(&spec, &catalog)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", study_path.display())))?;

    let (ctx, embedded, url) = context(cli, catalog).await?;
    let progress = runner::prepare(&ctx, "", &spec)
        .await
        .map_err(|e| Failure::from(anyhow::Error::from(e)))?;
    let reporter = tokio::spawn(report_progress(progress.clone()));
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let outcome = runner::run(&ctx, &spec, progress.clone(), cancel_rx).await;
    reporter.abort();
    let outcome = outcome.context("the study stopped")?;

    let mut client = AnalyzerServiceClient::new(ctx.analyzer.clone());
    let summary = client
        .get_summary(GetSummaryRequest {
            study_id: spec.name.clone(),
        })
        .await
        .with_context(|| format!("cannot get the summary from the analyzer at {url}"))?
        .into_inner()
        .summary
        .unwrap_or_default();
    print!("{}", table::riasec_table(&summary));
    let p = progress.snapshot();
    println!(
        "study {}: {:?}; {} of {} tasks answered ({} in this run), {} forwarded, {} failed",
        spec.name,
        outcome.state,
        p.done,
        p.total,
        outcome.answered_now,
        p.forwarded,
        outcome.failed
    );
    if let Some(path) = summary_json {
        let json = careers_proto::json::to_json_pretty("careers.v1.Summary", &summary)
            .context("cannot encode the summary")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(analyzer) = embedded {
        analyzer.shutdown().await.context("embedded analyzer")?;
    }
    if outcome.state != StudyState::Completed {
        return Err(anyhow::anyhow!(
            "study {} ended {:?}: {}",
            spec.name,
            outcome.state,
            outcome.error
        )
        .into());
    }
    Ok(())
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
/// Retries, cost and stopped respondents for the progress line ("" when
/// there are none).
fn accounting(p: &careers_proto::v1::StudyProgress) -> String {
    let mut out = String::new();
    let retries: u64 = p.respondents.iter().map(|r| r.retries).sum();
    if retries > 0 {
        out.push_str(&format!(", {retries} retries"));
    }
    let mut costs: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
    for r in p.respondents.iter().filter(|r| !r.currency.is_empty()) {
        *costs.entry(r.currency.as_str()).or_default() += r.cost;
    }
    for (currency, cost) in costs {
        out.push_str(&format!(", {cost:.4} {currency}"));
    }
    for r in p.respondents.iter().filter(|r| !r.failure.is_empty()) {
        out.push_str(&format!(", {} stopped", r.respondent));
    }
    out
}

async fn report_progress(progress: Arc<careers_collector::progress::Progress>) {
    let terminal = std::io::stderr().is_terminal();
    let first = progress.snapshot();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(first.total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} answers ({per_sec}, eta {eta}) {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let mut ticker = tokio::time::interval(if terminal {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    });
    loop {
        ticker.tick().await;
        let p = progress.snapshot();
        let accounts = accounting(&p);
        match &bar {
            Some(bar) => {
                bar.set_position(p.done);
                bar.set_message(format!(
                    "{} invalid ({} refusals), {} forwarded{accounts}",
                    p.invalid, p.refusals, p.forwarded
                ));
            }
            None => eprintln!(
                "progress: {}/{} answered, {} invalid ({} refusals), {} forwarded, {} errors, {:.0}/s{accounts}",
                p.done, p.total, p.invalid, p.refusals, p.forwarded, p.errors, p.answers_per_second
            ),
        }
        if p.done + p.errors >= p.total && p.forwarded >= p.done {
            if let Some(bar) = &bar {
                bar.finish();
            }
            break;
        }
    }
}

async fn serve(cli: &Cli, listen: SocketAddr, keys: KeySources) -> Result<(), Failure> {
    let catalog = catalog(cli.instruments_dir.as_deref())?;
    let (ctx, embedded, url) = context(cli, catalog).await?;
    tracing::info!(analyzer = %url, "forwarding answers");
    let server = careers_collector::server::start_with_keys(listen, ctx, keys)
        .await
        .context("cannot start the collector")?;
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        careers_analyzer::signal::shutdown_signal().await;
        let _ = stop.send(true);
    });
    server.wait().await.context("collector server")?;
    if let Some(analyzer) = embedded {
        analyzer.shutdown().await.context("embedded analyzer")?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let default_level = match cli.command {
        Command::Run { .. } => "warn",
        Command::Serve { .. } => "info",
    };
    telemetry::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("careers-collector: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Run {
                study,
                summary_json,
            } => run(&cli, study, summary_json.as_deref()).await,
            Command::Serve {
                listen,
                key_dir,
                key_env,
            } => {
                let keys = KeySources {
                    dir: key_dir.clone(),
                    env: key_env.clone(),
                };
                serve(&cli, *listen, keys).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("careers-collector: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
