//! The outbox: streams committed answers to the analyzer over `Ingest` and
//! marks them forwarded only when their batch is acknowledged.
//!
//! On a broken stream it reconnects with backoff and resends everything the
//! journal still holds as unforwarded (the analyzer drops the duplicates).
//! Every answer reaches the outbox either through the live channel (after its
//! commit) or through that journal query, so none is lost; it finishes when
//! the live channel is closed and the journal has nothing unforwarded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use careers_proto::v1::analyzer_service_client::AnalyzerServiceClient;
use careers_proto::v1::{IngestRequest, ItemResponse};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::journal::{Journal, JournalError};
use crate::progress::Progress;

/// Responses per batch.
pub const BATCH: usize = 500;
/// Unacknowledged batches in flight.
const WINDOW: usize = 8;

/// Outbox failures that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The analyzer address is not a valid URI.
    #[error("invalid analyzer address {0:?}: {1}")]
    Address(String, String),
    /// The analyzer refused the stream itself (not a single response).
    #[error("the analyzer refused the ingest stream: {0}")]
    Refused(String),
}

/// Connects to an analyzer at `url` (e.g. `http://127.0.0.1:50052`), lazily.
pub fn analyzer_channel(url: &str) -> Result<Channel, OutboxError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| OutboxError::Address(url.to_string(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// Streams one study's answers until `live` closes and all are acknowledged.
pub async fn run(
    journal: Journal,
    channel: Channel,
    study_id: String,
    mut live: mpsc::Receiver<ItemResponse>,
    progress: Arc<Progress>,
) -> Result<(), OutboxError> {
    let mut backoff = Duration::from_millis(100);
    let mut next_batch: u64 = 1;
    let mut live_open = true;
    loop {
        match session(
            &journal,
            channel.clone(),
            &study_id,
            &mut live,
            &mut live_open,
            &progress,
            &mut next_batch,
        )
        .await
        {
            Ok(true) => return Ok(()),
            Ok(false) => backoff = Duration::from_millis(100),
            Err(SessionError::Fatal(e)) => return Err(e),
            Err(SessionError::Broken(why)) => {
                tracing::warn!(%why, retry_in_ms = backoff.as_millis() as u64, "analyzer stream broken; will resend unacknowledged answers");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum SessionError {
    Broken(String),
    Fatal(OutboxError),
}

impl From<JournalError> for SessionError {
    fn from(e: JournalError) -> Self {
        SessionError::Fatal(e.into())
    }
}

/// One stream; `Ok(true)` when everything is acknowledged and nothing more
/// can come, `Ok(false)` to start a fresh stream, `Broken` to back off first.
async fn session(
    journal: &Journal,
    channel: Channel,
    study_id: &str,
    live: &mut mpsc::Receiver<ItemResponse>,
    live_open: &mut bool,
    progress: &Progress,
    next_batch: &mut u64,
) -> Result<bool, SessionError> {
    let mut client =
        AnalyzerServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<IngestRequest>(WINDOW);
    let mut acks = client
        .ingest(ReceiverStream::new(rx))
        .await
        .map_err(|s| SessionError::Broken(s.to_string()))?
        .into_inner();
    let mut pending: HashMap<u64, Vec<String>> = HashMap::new();

    let mut send = |batch: Vec<ItemResponse>, pending: &mut HashMap<u64, Vec<String>>| {
        let id = *next_batch;
        *next_batch += 1;
        pending.insert(id, batch.iter().map(|r| r.response_id.clone()).collect());
        (
            IngestRequest {
                batch_id: id,
                responses: batch,
            },
            tx.clone(),
        )
    };

    // Resend what the journal holds as unacknowledged.
    let backlog = journal.unforwarded(study_id).await?;
    for chunk in backlog.chunks(BATCH) {
        let (req, tx) = send(chunk.to_vec(), &mut pending);
        // Wait for acks while the window is full.
        while pending.len() > WINDOW {
            let ack = acks.next().await;
            settle(journal, ack, &mut pending, progress).await?;
        }
        tx.send(req)
            .await
            .map_err(|_| SessionError::Broken("request stream closed".into()))?;
    }

    loop {
        if !*live_open && pending.is_empty() {
            if journal.unforwarded(study_id).await?.is_empty() {
                return Ok(true);
            }
            // Something was committed but never acknowledged: go round again.
            return Ok(false);
        }
        tokio::select! {
            first = live.recv(), if *live_open && pending.len() < WINDOW => {
                match first {
                    None => *live_open = false,
                    Some(r) => {
                        let mut batch = vec![r];
                        while batch.len() < BATCH {
                            match live.try_recv() {
                                Ok(r) => batch.push(r),
                                Err(_) => break,
                            }
                        }
                        let (req, tx) = send(batch, &mut pending);
                        tx.send(req).await.map_err(|_| SessionError::Broken("request stream closed".into()))?;
                    }
                }
            }
            ack = acks.next() => settle(journal, ack, &mut pending, progress).await?,
        }
    }
}

async fn settle(
    journal: &Journal,
    ack: Option<Result<careers_proto::v1::IngestResponse, tonic::Status>>,
    pending: &mut HashMap<u64, Vec<String>>,
    progress: &Progress,
) -> Result<(), SessionError> {
    let ack = match ack {
        None => {
            return Err(SessionError::Broken(
                "the analyzer closed the stream".into(),
            ));
        }
        Some(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
            return Err(SessionError::Fatal(OutboxError::Refused(
                status.message().to_string(),
            )));
        }
        Some(Err(status)) => return Err(SessionError::Broken(status.to_string())),
        Some(Ok(ack)) => ack,
    };
    let Some(ids) = pending.remove(&ack.batch_id) else {
        tracing::warn!(batch_id = ack.batch_id, "ack for an unknown batch ignored");
        return Ok(());
    };
    for r in &ack.rejections {
        // Resending cannot fix a rejected answer; it stays in the journal for audit.
        tracing::error!(response_id = %r.response_id, field = %r.field, reason = %r.reason, "analyzer rejected an answer");
    }
    let newly = journal.mark_forwarded(&ids).await?;
    progress.forwarded(newly, u64::from(ack.rejected));
    Ok(())
}
