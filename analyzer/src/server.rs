//! Starting and stopping the analyzer's gRPC server: AnalyzerService,
//! grpc.health.v1 and reflection v1 on one listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use careers_proto::v1::analyzer_service_server::AnalyzerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::analysis::Analysis;
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
    Store(#[from] crate::error::AnalyzerError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reflection could not be built (a bug in the descriptor set).
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running analyzer server.
#[derive(Debug)]
pub struct RunningAnalyzer {
    /// The bound address (with the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// The shared state, for in-process callers.
    pub analysis: Arc<Analysis>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningAnalyzer {
    /// Stops accepting, ends open streams, waits for the server to finish.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        let _ = self.shutdown.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(error = %join, "analyzer server task failed");
                Ok(())
            }
        }
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        self.task.await.unwrap_or(Ok(()))
    }

    /// A sender that stops the server when `true` is sent.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Opens the store, replays it, binds and serves in a background task.
pub async fn start(config: AnalyzerConfig) -> Result<RunningAnalyzer, StartError> {
    let store = match &config.database {
        Database::Sqlite(path) => Store::open(path)
            .await
            .map_err(crate::error::AnalyzerError::from)?,
        Database::Memory => Store::in_memory()
            .await
            .map_err(crate::error::AnalyzerError::from)?,
    };
    let analysis = Analysis::open(store).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AnalyzerServiceServer<AnalyzerGrpc>>()
        .await;
    let reflection = careers_proto::reflection_service()?;
    let service =
        AnalyzerServiceServer::new(AnalyzerGrpc::new(analysis.clone(), shutdown_rx.clone()))
            .max_decoding_message_size(64 * 1024 * 1024);

    let mut signal = shutdown_rx;
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = signal.wait_for(|s| *s).await;
                health
                    .set_not_serving::<AnalyzerServiceServer<AnalyzerGrpc>>()
                    .await;
            })
            .await
    });
    tracing::info!(%addr, "analyzer listening");
    Ok(RunningAnalyzer {
        addr,
        analysis,
        shutdown,
        task,
    })
}
