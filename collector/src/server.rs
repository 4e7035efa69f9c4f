//! Starting and stopping the collector's gRPC server: CollectorService,
//! grpc.health.v1 and reflection v1 on one listener.

use std::net::SocketAddr;
use std::sync::Arc;

use careers_proto::v1::collector_service_server::CollectorServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::runner::RunContext;
use crate::service::{Collector, CollectorGrpc};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reflection could not be built.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running collector server.
#[derive(Debug)]
pub struct RunningCollector {
    /// The bound address.
    pub addr: SocketAddr,
    /// Shared state.
    pub collector: Arc<Collector>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningCollector {
    /// Stops the server and waits for it.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        let _ = self.shutdown.send(true);
        self.task.await.unwrap_or(Ok(()))
    }

    /// A sender that stops the server when `true` is sent.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Binds `listen` and serves the collector over `ctx` in a background task.
pub async fn start(listen: SocketAddr, ctx: RunContext) -> Result<RunningCollector, StartError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let collector = Collector::new(ctx);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CollectorServiceServer<CollectorGrpc>>()
        .await;
    let reflection = careers_proto::reflection_service()?;
    let service =
        CollectorServiceServer::new(CollectorGrpc::new(collector.clone(), shutdown_rx.clone()));
    let mut signal = shutdown_rx;
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = signal.wait_for(|s| *s).await;
                health
                    .set_not_serving::<CollectorServiceServer<CollectorGrpc>>()
                    .await;
            })
            .await
    });
    tracing::info!(%addr, "collector listening");
    Ok(RunningCollector {
        addr,
        collector,
        shutdown,
        task,
    })
}
