//! Running a study: task rows first, then the respondents are asked with
//! bounded concurrency, answers are parsed and committed to the journal in
//! groups, and each committed group is handed to the outbox.
//!
//! ```text
//! pending tasks --(concurrency N)--> provider --> answer::parse --> journal writer --> outbox --> analyzer
//! ```
//!
//! One retry policy lives here ([`RetryPolicy`]); providers never retry.
//! A transient error is retried after the longer of the backoff and the
//! server's retry hint. A permanent error (auth, quota, bad request) marks
//! its respondent failed: its remaining tasks are not asked, the other
//! respondents go on, and the study ends `FAILED` naming the respondent and
//! the provider's message.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use careers_proto::scale;
use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{
    InvalidAnswer, ItemResponse, Respondent, StudySpec, StudyState, TokenUsage, respondent_spec,
};
use futures::StreamExt;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::answer::{self, Parsed};
use crate::instrument::Catalog;
use crate::journal::{Journal, JournalError};
use crate::outbox::{self, OutboxError};
use crate::progress::Progress;
use crate::provider::anthropic::Anthropic;
use crate::provider::http::{self, HttpConfig};
use crate::provider::openai::OpenAi;
use crate::provider::simulated::Simulated;
use crate::provider::{Ask, Provider, ProviderError, default_base_url};
use crate::study::{self, StudyError, Task};

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The design is invalid.
    #[error("invalid study: {0}")]
    Study(#[from] StudyError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The outbox failed for good.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Final state.
    pub state: StudyState,
    /// Tasks answered in this run.
    pub answered_now: u64,
    /// Tasks that failed after all retries in this run.
    pub failed: u64,
    /// Error summary when failed.
    pub error: String,
}

/// The one retry policy for transient provider errors: exponential backoff
/// with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        exp.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// How long to wait before attempt `attempt + 1` (`attempt` from 0): the
    /// jittered backoff, but never less than the server's hint.
    pub fn wait(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let backoff = self.backoff(attempt);
        hint.map_or(backoff, |h| h.max(backoff))
    }
}

/// Everything a run needs besides the design.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The journal.
    pub journal: Journal,
    /// The instruments.
    pub catalog: Arc<Catalog>,
    /// Channel to the analyzer.
    pub analyzer: Channel,
    /// Retry policy for providers.
    pub retry: RetryPolicy,
}

fn build_providers(spec: &StudySpec) -> Result<HashMap<String, Arc<dyn Provider>>, StudyError> {
    let mut out: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    for (i, r) in spec.respondents.iter().enumerate() {
        let Some(respondent) = &r.respondent else {
            continue;
        };
        let prefix = format!("respondents[{i}]");
        let provider: Arc<dyn Provider> = match &r.settings {
            Some(respondent_spec::Settings::Simulated(profile)) => Arc::new(
                Simulated::new(&respondent.name, spec.seed, profile.clone()).map_err(|e| {
                    StudyError {
                        field: format!("respondents[{i}].simulated.{}", e.field),
                        reason: e.reason,
                    }
                })?,
            ),
            Some(respondent_spec::Settings::Api(api)) => {
                let key = http::resolve_key(&respondent.provider, api, &prefix, &|name| {
                    std::env::var(name).ok()
                })?;
                let base_url = if api.base_url.is_empty() {
                    default_base_url(&respondent.provider).unwrap_or_default()
                } else {
                    api.base_url.as_str()
                };
                let config = HttpConfig {
                    provider: respondent.provider.clone(),
                    model: respondent.model.clone(),
                    base_url: base_url.to_string(),
                    key,
                    temperature: api.temperature,
                    max_tokens: api.max_tokens,
                    system: None,
                    timeout: http::DEFAULT_TIMEOUT,
                    // No study field asks for log-probabilities yet
                    // (`ApiSettings` has none).
                    logprobs: false,
                };
                let built = if respondent.provider == "anthropic" {
                    Anthropic::new(config).map(|p| Arc::new(p) as Arc<dyn Provider>)
                } else {
                    OpenAi::new(config).map(|p| Arc::new(p) as Arc<dyn Provider>)
                };
                built.map_err(|e| StudyError {
                    field: format!("{prefix}.provider"),
                    reason: e.to_string(),
                })?
            }
            None => {
                return Err(StudyError {
                    field: format!("{prefix}.settings"),
                    reason: format!(
                        "provider {:?} needs its settings (a simulated profile or API settings)",
                        respondent.provider
                    ),
                });
            }
        };
        out.insert(respondent.name.clone(), provider);
    }
    Ok(out)
}

/// Creates the journal rows of a study (idempotent on `request_id`) and
/// returns its progress as the journal has it.
pub async fn prepare(
    ctx: &RunContext,
    request_id: &str,
    spec: &StudySpec,
) -> Result<Arc<Progress>, RunError> {
    study::validate(spec, &ctx.catalog)?;
    ctx.journal.create_study(request_id, spec).await?;
    let tasks = study::tasks(spec, &ctx.catalog);
    ctx.journal.ensure_tasks(&spec.name, &tasks).await?;
    Ok(Arc::new(Progress::from_counts(
        &ctx.journal.cell_counts(&spec.name).await?,
    )))
}

/// Runs (or resumes) a prepared study to the end, or until `cancel` is true.
pub async fn run(
    ctx: &RunContext,
    spec: &StudySpec,
    progress: Arc<Progress>,
    cancel: watch::Receiver<bool>,
) -> Result<RunOutcome, RunError> {
    let providers = build_providers(spec)?;
    let respondents: HashMap<String, Respondent> = spec
        .respondents
        .iter()
        .filter_map(|r| r.respondent.clone())
        .map(|r| (r.name.clone(), r))
        .collect();
    let tasks: HashMap<String, Task> = study::tasks(spec, &ctx.catalog)
        .into_iter()
        .map(|t| (t.task_id.to_string(), t))
        .collect();
    let pending = ctx.journal.pending(&spec.name).await?;
    ctx.journal
        .set_state(&spec.name, StudyState::Running, "")
        .await?;
    tracing::info!(study = %spec.name, pending = pending.len(), total = tasks.len(), "study running");

    let (answers_tx, mut answers_rx) = mpsc::channel::<ItemResponse>(1024);
    let (live_tx, live_rx) = mpsc::channel::<ItemResponse>(4096);
    let outbox = tokio::spawn(outbox::run(
        ctx.journal.clone(),
        ctx.analyzer.clone(),
        spec.name.clone(),
        live_rx,
        progress.clone(),
    ));

    // Group commit: one transaction per burst of answers, then forward.
    let writer_journal = ctx.journal.clone();
    let writer_progress = progress.clone();
    let writer = tokio::spawn(async move {
        let mut written = 0u64;
        while let Some(first) = answers_rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match answers_rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            writer_journal.record_answers(&batch).await?;
            for r in batch {
                let name = r
                    .respondent
                    .as_ref()
                    .map(|p| p.name.as_str())
                    .unwrap_or_default();
                writer_progress.answered(
                    name,
                    &r.language,
                    &r.instrument_id,
                    matches!(r.answer, Some(Answer::Invalid(_))),
                );
                written += 1;
                // The outbox also finds answers in the journal, so a closed
                // channel (outbox gone) loses nothing.
                let _ = live_tx.send(r).await;
            }
        }
        Ok::<u64, JournalError>(written)
    });

    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Respondents stopped by a permanent error, with the error.
    let failed_respondents: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let concurrency = spec.concurrency.max(1) as usize;
    futures::stream::iter(pending)
        .for_each_concurrent(concurrency, |task_id| {
            let cancel = cancel.clone();
            let answers_tx = answers_tx.clone();
            let failed = failed.clone();
            let progress = progress.clone();
            let tasks = &tasks;
            let providers = &providers;
            let respondents = &respondents;
            let failed_respondents = &failed_respondents;
            async move {
                if *cancel.borrow() {
                    return;
                }
                let Some(task) = tasks.get(&task_id) else {
                    tracing::warn!(%task_id, "journal task not in the study design; skipped");
                    return;
                };
                let (Some(provider), Some(respondent)) = (providers.get(&task.respondent), respondents.get(&task.respondent)) else {
                    return;
                };
                if is_failed(failed_respondents, &task.respondent) {
                    return;
                }
                match administer(ctx, spec, task, provider.as_ref(), respondent, cancel.clone()).await {
                    Ok(response) => {
                        let _ = answers_tx.send(response).await;
                    }
                    Err(e @ ProviderError::Permanent(_)) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        progress.failed(&task.respondent, &task.language, &task.instrument_id, &e.to_string());
                        let first = match failed_respondents.lock() {
                            Ok(mut map) => map.insert(task.respondent.clone(), e.to_string()).is_none(),
                            Err(poisoned) => poisoned.into_inner().insert(task.respondent.clone(), e.to_string()).is_none(),
                        };
                        if first {
                            tracing::error!(respondent = %task.respondent, error = %e, "respondent failed; its remaining tasks are skipped");
                        }
                    }
                    Err(_) if *cancel.borrow() => {}
                    Err(e) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        progress.failed(&task.respondent, &task.language, &task.instrument_id, &e.to_string());
                        tracing::warn!(task = %task.task_id, error = %e, "task failed after retries");
                    }
                }
            }
        })
        .await;
    drop(answers_tx);
    let answered_now = match writer.await {
        Ok(result) => result?,
        Err(join) => {
            return Err(RunError::Journal(JournalError::Database(
                sqlx::Error::Protocol(join.to_string()),
            )));
        }
    };
    match outbox.await {
        Ok(result) => result?,
        Err(join) => return Err(RunError::Outbox(OutboxError::Refused(join.to_string()))),
    }

    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    let remaining = ctx.journal.pending(&spec.name).await?.len();
    let failed_respondents = failed_respondents
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (state, error) = if remaining == 0 {
        (StudyState::Completed, String::new())
    } else if !failed_respondents.is_empty() {
        let which: Vec<String> = failed_respondents
            .iter()
            .map(|(name, e)| format!("respondent {name} failed: {e}"))
            .collect();
        (
            StudyState::Failed,
            format!("{}; {remaining} tasks unanswered", which.join("; ")),
        )
    } else if *cancel.borrow() {
        (StudyState::Cancelled, String::new())
    } else {
        (
            StudyState::Failed,
            format!(
                "{remaining} tasks unanswered; last error: {}",
                progress.last_error()
            ),
        )
    };
    ctx.journal.set_state(&spec.name, state, &error).await?;
    Ok(RunOutcome {
        state,
        answered_now,
        failed,
        error,
    })
}

fn is_failed(failed: &Mutex<BTreeMap<String, String>>, respondent: &str) -> bool {
    match failed.lock() {
        Ok(map) => map.contains_key(respondent),
        Err(poisoned) => poisoned.into_inner().contains_key(respondent),
    }
}

/// Asks one task, retrying transient errors, and builds its response.
async fn administer(
    ctx: &RunContext,
    spec: &StudySpec,
    task: &Task,
    provider: &dyn Provider,
    respondent: &Respondent,
    mut cancel: watch::Receiver<bool>,
) -> Result<ItemResponse, ProviderError> {
    let instrument = ctx.catalog.get(&task.instrument_id).ok_or_else(|| {
        ProviderError::Permanent(format!("instrument {} vanished", task.instrument_id))
    })?;
    let item = instrument
        .item(&task.item_id)
        .ok_or_else(|| ProviderError::Permanent(format!("item {} vanished", task.item_id)))?;
    let prompt = instrument
        .render_prompt(item, &task.language)
        .ok_or_else(|| ProviderError::Permanent(format!("no {} prompt", task.language)))?;
    let options = instrument
        .options
        .get(&task.language)
        .ok_or_else(|| ProviderError::Permanent(format!("no {} options", task.language)))?;
    let ask = Ask {
        task_id: task.task_id,
        instrument_id: &instrument.id,
        construct: &instrument.construct,
        item_id: &item.id,
        scale_index: scale::index(item.scale).unwrap_or(0),
        language: &task.language,
        prompt: &prompt,
        options,
    };
    let mut attempt = 0;
    let (reply, latency) = loop {
        attempt += 1;
        let started = Instant::now();
        match provider.ask(ask.clone()).await {
            Ok(reply) => break (reply, started.elapsed()),
            Err(ProviderError::Transient {
                message,
                retry_after,
            }) if attempt < ctx.retry.max_attempts => {
                let wait = ctx.retry.wait(attempt - 1, retry_after);
                tracing::debug!(task = %task.task_id, attempt, error = %message, wait_ms = wait.as_millis() as u64, "retrying");
                let cancelled = async {
                    if cancel.wait_for(|c| *c).await.is_err() {
                        // No one can cancel any more: just wait.
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancelled => {
                        return Err(ProviderError::transient(format!("cancelled while waiting to retry: {message}")));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    };
    let answer = match answer::parse(&reply.text, &instrument.labels()) {
        Parsed::Rating(r) => Answer::Rating(r),
        Parsed::Invalid { reason, detail } => Answer::Invalid(InvalidAnswer {
            reason: reason as i32,
            detail,
        }),
    };
    Ok(ItemResponse {
        response_id: task.task_id.to_string(),
        study_id: spec.name.clone(),
        instrument_id: instrument.id.clone(),
        item_id: item.id.clone(),
        scale: item.scale as i32,
        respondent: Some(respondent.clone()),
        language: task.language.clone(),
        replication: task.replication,
        answer: Some(answer),
        raw_text: reply.text,
        option_probabilities: reply.option_probabilities,
        tokens: Some(TokenUsage {
            input_tokens: reply.input_tokens,
            output_tokens: reply.output_tokens,
        }),
        latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
        answered_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        attempt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_at_least_the_servers_hint() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
        };
        for attempt in 0..8 {
            let plain = policy.wait(attempt, None);
            assert!(plain <= Duration::from_millis(40), "{plain:?}");
            assert!(plain >= Duration::from_millis(5), "{plain:?}");
            let hinted = policy.wait(attempt, Some(Duration::from_secs(2)));
            assert!(hinted >= Duration::from_secs(2), "{hinted:?}");
            let small = policy.wait(attempt, Some(Duration::from_millis(1)));
            assert!(small >= Duration::from_millis(5), "{small:?}");
        }
    }
}
