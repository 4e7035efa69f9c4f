//! The gRPC `AnalyzerService`: thin, maps requests to [`Analysis`].

use std::sync::Arc;
use std::time::Duration;

use careers_proto::v1::analyzer_service_server::AnalyzerService;
use careers_proto::v1::{
    ExportResponsesRequest, ExportResponsesResponse, GetSummaryRequest, GetSummaryResponse,
    IngestRequest, IngestResponse, WatchSummaryRequest, WatchSummaryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::analysis::Analysis;
use crate::error::AnalyzerError;
use crate::validate::{FieldViolation, MAX_ID_LEN};

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct AnalyzerGrpc {
    analysis: Arc<Analysis>,
    shutdown: watch::Receiver<bool>,
}

impl AnalyzerGrpc {
    /// A service over `analysis`; streams end when `shutdown` turns true.
    pub fn new(analysis: Arc<Analysis>, shutdown: watch::Receiver<bool>) -> Self {
        Self { analysis, shutdown }
    }
}

fn study_filter(study_id: &str) -> Result<(), Status> {
    if study_id.len() > MAX_ID_LEN {
        return Err(AnalyzerError::from(FieldViolation::new(
            "study_id",
            format!("longer than {MAX_ID_LEN} bytes"),
        ))
        .into());
    }
    Ok(())
}

/// Resolves when the server is shutting down (or its sender is gone).
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

type StatusStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AnalyzerService for AnalyzerGrpc {
    type IngestStream = StatusStream<IngestResponse>;
    type WatchSummaryStream = StatusStream<WatchSummaryResponse>;
    type ExportResponsesStream = StatusStream<ExportResponsesResponse>;

    async fn ingest(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let analysis = self.analysis.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = input.message() => m,
                    _ = shutting_down(&mut shutdown) => break,
                };
                let batch = match next {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ingest stream ended by the client");
                        break;
                    }
                };
                let result = if batch.batch_id == 0 {
                    Err(AnalyzerError::from(FieldViolation::new(
                        "batch_id",
                        "must not be zero",
                    )))
                } else {
                    tokio::select! {
                        r = analysis.ingest(&batch) => r,
                        // Dropping the ingest future rolls its transaction back;
                        // the client resends the unacknowledged batch.
                        _ = shutting_down(&mut shutdown) => break,
                    }
                };
                let failed = result.is_err();
                if tx.send(result.map_err(Status::from)).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_summary(
        &self,
        request: Request<GetSummaryRequest>,
    ) -> Result<Response<GetSummaryResponse>, Status> {
        let study_id = request.into_inner().study_id;
        study_filter(&study_id)?;
        Ok(Response::new(GetSummaryResponse {
            summary: Some(self.analysis.summary(&study_id)),
        }))
    }

    async fn watch_summary(
        &self,
        request: Request<WatchSummaryRequest>,
    ) -> Result<Response<Self::WatchSummaryStream>, Status> {
        let request = request.into_inner();
        study_filter(&request.study_id)?;
        let interval = Duration::from_millis(match request.min_interval_ms {
            0 => 200,
            ms => u64::from(ms),
        });
        let (tx, rx) = mpsc::channel(4);
        let analysis = self.analysis.clone();
        let mut shutdown = self.shutdown.clone();
        let mut revisions = analysis.subscribe();
        tokio::spawn(async move {
            loop {
                revisions.mark_unchanged();
                let summary = analysis.summary(&request.study_id);
                if tx
                    .send(Ok(WatchSummaryResponse {
                        summary: Some(summary),
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                    _ = shutting_down(&mut shutdown) => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutting_down(&mut shutdown) => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn export_responses(
        &self,
        request: Request<ExportResponsesRequest>,
    ) -> Result<Response<Self::ExportResponsesStream>, Status> {
        let request = request.into_inner();
        study_filter(&request.study_id)?;
        let page_size = match request.page_size {
            0 => 1000,
            n if n > 10_000 => {
                return Err(AnalyzerError::from(FieldViolation::new(
                    "page_size",
                    format!("{n} is above 10000"),
                ))
                .into());
            }
            n => n,
        };
        let (tx, rx) = mpsc::channel(2);
        let analysis = self.analysis.clone();
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let page = match analysis
                    .store()
                    .page(&request.study_id, after, page_size)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(AnalyzerError::from(e).into())).await;
                        break;
                    }
                };
                let Some(last) = page.last() else { break };
                after = last.seq;
                let done = page.len() < page_size as usize;
                let responses = page.into_iter().map(|row| row.response).collect();
                if tx
                    .send(Ok(ExportResponsesResponse { responses }))
                    .await
                    .is_err()
                    || done
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
