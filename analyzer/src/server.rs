//! Starting and stopping the analyzer's gRPC server: AnalyzerService plus
//! health and reflection (through `careers_proto::serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use careers_proto::serve::{self, RunningServer, ServeError};
use careers_proto::v1::analyzer_service_server::{AnalyzerServiceServer, SERVICE_NAME};
use tokio::sync::watch;
use tonic::service::Routes;

use crate::analysis::Analysis;
use crate::error::AnalyzerError;
use crate::service::AnalyzerGrpc;
use crate::store::Store;

/// Where the analyzer keeps its responses.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A private in-memory SQLite database (lost on exit).
    Memory,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The response store.
    pub database: Database,
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or replayed.
    #[error("cannot open the response store: {0}")]
    Store(#[from] AnalyzerError),
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A running analyzer server.
#[derive(Debug)]
pub struct RunningAnalyzer {
    /// The bound address (with the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// The shared state, for in-process callers.
    pub analysis: Arc<Analysis>,
    server: RunningServer,
}

impl RunningAnalyzer {
    /// Stops accepting, ends open streams, waits for the server to finish.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        self.server.shutdown().await
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        self.server.wait().await
    }

    /// A sender that stops the server when `true` is sent.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.server.shutdown_handle()
    }
}

/// Opens the store, replays it, binds and serves in a background task.
pub async fn start(config: AnalyzerConfig) -> Result<RunningAnalyzer, StartError> {
    let store = match &config.database {
        Database::Sqlite(path) => Store::open(path).await.map_err(AnalyzerError::from)?,
        Database::Memory => Store::in_memory().await.map_err(AnalyzerError::from)?,
    };
    let analysis = Analysis::open(store).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let service = AnalyzerServiceServer::new(AnalyzerGrpc::new(analysis.clone(), shutdown_rx))
        .max_decoding_message_size(64 * 1024 * 1024);
    let server = serve::spawn(config.listen, SERVICE_NAME, Routes::new(service), shutdown).await?;
    Ok(RunningAnalyzer {
        addr: server.addr,
        analysis,
        server,
    })
}
