//! The one way both services go on the network: a listener, the service's
//! routes, `grpc.health.v1` and reflection v1, and a graceful stop that first
//! reports NOT_SERVING. Long-lived streams watch the same shutdown signal so a
//! stop never waits on an open stream.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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

/// A server running in a background task.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address (with the real port when 0 was asked for).
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Stops accepting, ends open streams, waits for the server to finish.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after a shutdown, or on failure).
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(error = %join, "server task failed");
                Ok(())
            }
        }
    }

    /// A sender that stops the server when `true` is sent.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds `listen` and serves `routes` (whose main service is `service_name`,
/// e.g. `careers.v1.AnalyzerService`) with health and reflection until
/// `shutdown` turns true.
pub async fn spawn(
    listen: SocketAddr,
    service_name: &'static str,
    routes: Routes,
    shutdown: watch::Sender<bool>,
) -> Result<RunningServer, ServeError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service_name, ServingStatus::Serving)
        .await;
    let reflection = crate::reflection_service(service_name)?;
    let routes = routes.add_service(health_service).add_service(reflection);
    let mut signal = shutdown.subscribe();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = signal.wait_for(|s| *s).await;
                // Both the service and the server as a whole ("", what a
                // Kubernetes gRPC probe asks by default) stop serving.
                for name in [service_name, ""] {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
            })
            .await
    });
    tracing::info!(%addr, service = service_name, "listening");
    Ok(RunningServer {
        addr,
        shutdown,
        task,
    })
}
