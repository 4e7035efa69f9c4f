//! The analyzer's state: the store, the statistics kept in step with it, and
//! a revision counter that watchers subscribe to.
//!
//! Ordering guarantee: batches are written by one writer at a time; a response
//! reaches the statistics only after the transaction that newly stored it has
//! committed, in the order it was stored, so the statistics always equal a
//! replay of the store.

use std::sync::{Arc, Mutex, MutexGuard};

use careers_proto::v1::{IngestRequest, IngestResponse, Rejection, Summary};
use tokio::sync::watch;

use crate::descriptive::DescriptiveStats;
use crate::error::AnalyzerError;
use crate::store::Store;
use crate::summary;
use crate::validate::{self, FieldViolation};

/// Most responses accepted in one batch.
pub const MAX_BATCH: usize = 10_000;

/// Shared analyzer state; clone the `Arc`, not this.
#[derive(Debug)]
pub struct Analysis {
    store: Store,
    stats: Mutex<DescriptiveStats>,
    writer: tokio::sync::Mutex<()>,
    revision: watch::Sender<u64>,
}

impl Analysis {
    /// Opens the state over `store`, replaying every stored response.
    pub async fn open(store: Store) -> Result<Arc<Self>, AnalyzerError> {
        let mut stats = DescriptiveStats::default();
        let replayed = store
            .replay(|row| stats.add_response(&row.response))
            .await?;
        tracing::info!(replayed, "statistics rebuilt from the store");
        let (revision, _) = watch::channel(replayed);
        Ok(Arc::new(Self {
            store,
            stats: Mutex::new(stats),
            writer: tokio::sync::Mutex::new(()),
            revision,
        }))
    }

    fn stats(&self) -> MutexGuard<'_, DescriptiveStats> {
        // A panic while holding this lock cannot leave the statistics half
        // updated (each add is a few integer and float additions), so a
        // poisoned lock is still consistent.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store, for exports.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Validates, stores and counts one batch; returns its ack.
    pub async fn ingest(&self, batch: &IngestRequest) -> Result<IngestResponse, AnalyzerError> {
        if batch.responses.len() > MAX_BATCH {
            return Err(FieldViolation::new(
                "responses",
                format!(
                    "{} responses in one batch, at most {MAX_BATCH} allowed",
                    batch.responses.len()
                ),
            )
            .into());
        }
        let mut ack = IngestResponse {
            batch_id: batch.batch_id,
            ..Default::default()
        };
        let mut valid = Vec::with_capacity(batch.responses.len());
        for (i, r) in batch.responses.iter().enumerate() {
            match validate::response(&format!("responses[{i}]"), r) {
                Ok(()) => valid.push(r),
                Err(v) => {
                    ack.rejected += 1;
                    ack.rejections.push(Rejection {
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        response_id: r.response_id.clone(),
                        field: v.field,
                        reason: v.reason,
                        code: tonic::Code::InvalidArgument as i32,
                    });
                }
            }
        }
        if valid.is_empty() {
            return Ok(ack);
        }
        let _writer = self.writer.lock().await;
        let inserted = self.store.insert_batch(&valid).await?;
        let mut new = 0u64;
        {
            let mut stats = self.stats();
            for (r, is_new) in valid.iter().zip(&inserted) {
                if *is_new {
                    new += 1;
                    stats.add_response(r);
                }
            }
            // Bumped under the statistics lock, so a summary's revision always
            // names exactly the data it was built from.
            if new > 0 {
                self.revision.send_modify(|rev| *rev += new);
            }
        }
        ack.accepted = u32::try_from(new).unwrap_or(u32::MAX);
        ack.duplicate = u32::try_from(valid.len() as u64 - new).unwrap_or(u32::MAX);
        Ok(ack)
    }

    /// The current summary, optionally for one study.
    pub fn summary(&self, study_id: &str) -> Summary {
        let stats = self.stats();
        let revision = *self.revision.borrow();
        summary::build(&stats, study_id, revision)
    }

    /// A receiver that changes whenever new responses are stored.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}
