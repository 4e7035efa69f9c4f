//! Starting and stopping the collector's gRPC server: CollectorService plus
//! health and reflection (through `careers_proto::serve`).

use std::net::SocketAddr;
use std::sync::Arc;

use careers_proto::serve::{self, RunningServer, ServeError};
use careers_proto::v1::collector_service_server::{CollectorServiceServer, SERVICE_NAME};
use tokio::sync::watch;
use tonic::service::Routes;

use crate::runner::RunContext;
use crate::service::{Collector, CollectorGrpc, KeySources};

/// A running collector server.
#[derive(Debug)]
pub struct RunningCollector {
    /// The bound address.
    pub addr: SocketAddr,
    /// Shared state.
    pub collector: Arc<Collector>,
    server: RunningServer,
}

impl RunningCollector {
    /// Stops the server and waits for it.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        self.server.shutdown().await
    }

    /// A sender that stops the server when `true` is sent.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.server.shutdown_handle()
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        self.server.wait().await
    }
}

/// Binds `listen` and serves the collector over `ctx` in a background task;
/// studies created over gRPC may use no API key (see [`start_with_keys`]).
pub async fn start(listen: SocketAddr, ctx: RunContext) -> Result<RunningCollector, ServeError> {
    start_with_keys(listen, ctx, KeySources::default()).await
}

/// [`start`], with the key files and variables studies created over gRPC
/// may use.
pub async fn start_with_keys(
    listen: SocketAddr,
    ctx: RunContext,
    keys: KeySources,
) -> Result<RunningCollector, ServeError> {
    let collector = Collector::new(ctx, keys);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let service = CollectorServiceServer::new(CollectorGrpc::new(collector.clone(), shutdown_rx));
    let server = serve::spawn(listen, SERVICE_NAME, Routes::new(service), shutdown).await?;
    // Once the server is up (a bind failure starts nothing), studies a
    // previous server left running carry on. Failing to read the journal
    // here is not fatal: the server still serves what it can.
    if let Err(e) = collector.resume_running().await {
        tracing::error!(error = %e, "cannot resume the running studies");
    }
    Ok(RunningCollector {
        addr: server.addr,
        collector,
        server,
    })
}
