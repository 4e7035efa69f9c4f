//! `careers-analyzer`: the analyzer server, the CSV export and the offline fit command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use careers_analyzer::telemetry::{self, LogFormat};
use careers_analyzer::{AnalyzerConfig, Database};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "careers-analyzer",
    version,
    about = "Stores LLM item responses and serves their statistics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// Address to listen on.
        #[arg(
            long,
            env = "CAREERS_ANALYZER_LISTEN",
            default_value = "127.0.0.1:50052"
        )]
        listen: SocketAddr,
        /// SQLite database file for the responses.
        #[arg(
            long,
            env = "CAREERS_ANALYZER_DATABASE",
            default_value = "careers-data/analyzer.sqlite"
        )]
        database: PathBuf,
        /// Log format.
        #[arg(long, env = "CAREERS_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Write the stored responses as CSV (a column per design factor; an
    /// invalid answer's rating is NA), for `fit` or R.
    Export {
        /// SQLite database file of the analyzer.
        #[arg(
            long,
            env = "CAREERS_ANALYZER_DATABASE",
            default_value = "careers-data/analyzer.sqlite"
        )]
        database: PathBuf,
        /// Only this study's responses (default: all).
        #[arg(long, default_value = "")]
        study: String,
        /// Output file; "-" (the default) writes to standard output.
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Fit a linear mixed model to a CSV file (lme4 formula syntax).
    Fit {
        /// CSV file with a header; factor columns as text, the response as a number.
        #[arg(long)]
        data: PathBuf,
        /// Model formula, e.g. "rating ~ scale * respondent + (1 | item)".
        #[arg(long)]
        formula: String,
        /// Maximum likelihood instead of REML.
        #[arg(long)]
        ml: bool,
        /// Estimated marginal means over these factors, e.g. "scale:respondent".
        #[arg(long)]
        emmeans: Option<String>,
        /// Print one JSON object instead of a readable summary.
        #[arg(long)]
        json: bool,
    },
}

async fn serve(listen: SocketAddr, database: PathBuf) -> anyhow::Result<()> {
    if let Some(dir) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let server = careers_analyzer::start(AnalyzerConfig {
        listen,
        database: Database::Sqlite(database),
    })
    .await?;
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        careers_analyzer::signal::shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    server.wait().await?;
    Ok(())
}

async fn export(database: &Path, study: &str, out: &Path) -> anyhow::Result<u64> {
    use careers_analyzer::export::export_database;
    if out.as_os_str() == "-" {
        return Ok(export_database(database, study, std::io::stdout().lock()).await?);
    }
    let file = std::fs::File::create(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    Ok(export_database(database, study, std::io::BufWriter::new(file)).await?)
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
    if let Command::Fit {
        data,
        formula,
        ml,
        emmeans,
        json,
    } = cli.command
    {
        let args = careers_analyzer::fit::FitArgs {
            data,
            formula,
            ml,
            emmeans,
            json,
        };
        return match careers_analyzer::fit::run_fit(&args) {
            Ok(out) => {
                println!("{}", out.trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("careers-analyzer: {e}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("careers-analyzer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve {
            listen,
            database,
            log_format,
        } => {
            telemetry::init(log_format, "info");
            runtime.block_on(serve(listen, database))
        }
        Command::Export {
            database,
            study,
            out,
        } => {
            return match runtime.block_on(export(&database, &study, &out)) {
                Ok(rows) => {
                    eprintln!("careers-analyzer: exported {rows} responses");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("careers-analyzer: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Fit { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("careers-analyzer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
