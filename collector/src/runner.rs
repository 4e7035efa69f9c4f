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
//!
//! Each respondent has its own queue of pending tasks, worked with its own
//! concurrency (`ApiSettings.max_concurrency`, else the study's), so a slow or
//! rate-limited respondent never holds up the others; the study's
//! `concurrency` bounds the requests in flight over all respondents. Before
//! each attempt a task waits for its respondent's rate limits ([`crate::limit`]:
//! requests per minute, and tokens per minute charged with an estimate and
//! settled with the reported usage), then for a study-wide slot. A server's
//! retry hint is honoured up to `max_retry_wait_secs` (default 300 s); a
//! longer hint is capped and logged.
//!
//! With log-probabilities, the option probabilities are normalised to sum to
//! 1, `expected_rating` is their mean, and `rating_source` chooses the rating
//! the analyzer receives: the parsed text, the most probable option, or the
//! expected rating rounded to the nearest option.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use careers_proto::scale;
use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{
    Administration, EarlierAnswer, FactorLevel, InvalidAnswer, ItemResponse, OptionProbability,
    RatingSource, Respondent, StudySpec, StudyState, TokenUsage, respondent_spec,
};
use futures::StreamExt;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::transport::Channel;

use crate::answer::{self, Parsed};
use crate::instrument::{Catalog, Item};
use crate::journal::{Journal, JournalError};
use crate::limit::{self, TokenBucket};
use crate::outbox::{self, OutboxError};
use crate::progress::Progress;
use crate::provider::anthropic::Anthropic;
use crate::provider::http::{self, HttpConfig};
use crate::provider::openai::OpenAi;
use crate::provider::simulated::Simulated;
use crate::provider::{Ask, BatchItem, Provider, ProviderError, Reply, default_base_url, preset};
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

/// A server's retry hint is honoured up to this long unless the study says
/// otherwise (`max_retry_wait_secs`).
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// How one respondent may be asked: its rate limits, concurrency, retry-hint
/// cap and rating source.
#[derive(Debug)]
pub struct Limits {
    /// Requests per minute, if limited.
    pub requests: Option<TokenBucket>,
    /// Tokens per minute, if limited.
    pub tokens: Option<TokenBucket>,
    /// Tasks of this respondent in flight at once; 0 means the study's
    /// concurrency.
    pub max_concurrency: u32,
    /// Longest retry hint honoured.
    pub max_retry_wait: Duration,
    /// Which rating the analyzer receives.
    pub rating_source: RatingSource,
    /// `max_tokens` as configured (0 when the provider's default).
    pub max_tokens: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests: None,
            tokens: None,
            max_concurrency: 0,
            max_retry_wait: DEFAULT_MAX_RETRY_WAIT,
            rating_source: RatingSource::Unspecified,
            max_tokens: 0,
        }
    }
}

impl Limits {
    /// The limits an HTTP respondent's settings ask for.
    pub fn from_api(api: &careers_proto::v1::ApiSettings) -> Self {
        Self {
            requests: TokenBucket::per_minute(api.requests_per_minute),
            tokens: TokenBucket::per_minute(api.tokens_per_minute),
            max_concurrency: api.max_concurrency,
            max_retry_wait: if api.max_retry_wait_secs == 0 {
                DEFAULT_MAX_RETRY_WAIT
            } else {
                Duration::from_secs(u64::from(api.max_retry_wait_secs))
            },
            rating_source: RatingSource::try_from(api.rating_source)
                .unwrap_or(RatingSource::Unspecified),
            max_tokens: api.max_tokens,
        }
    }

    /// Tasks of this respondent worked at once, given the study's concurrency.
    pub fn width(&self, study: usize) -> usize {
        match self.max_concurrency as usize {
            0 => study,
            n => n.min(study),
        }
    }

    /// The token estimate charged before a request with this prompt and
    /// system prompt.
    fn estimate(&self, prompt: &str, system: Option<&str>) -> f64 {
        limit::estimate_tokens(prompt, self.max_tokens)
            + (system.map_or(0, |s| s.chars().count()) as f64 / 4.0).ceil()
    }

    /// A server hint longer than [`Limits::max_retry_wait`] as the permanent
    /// error that stops the respondent: asking again sooner than the server
    /// says is not allowed, and waiting a day inside a run helps no one.
    fn hint_too_long(&self, hint: Option<Duration>, message: &str) -> Option<ProviderError> {
        let h = hint.filter(|h| *h > self.max_retry_wait)?;
        Some(ProviderError::Permanent(format!(
            "{message}; the server asks to wait {:.0} s, longer than max_retry_wait_secs ({} s): \
             run the study again later to resume this respondent",
            h.as_secs_f64(),
            self.max_retry_wait.as_secs()
        )))
    }
}

/// A respondent ready to be asked.
#[derive(Debug)]
pub struct Endpoint {
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// How it may be asked.
    pub limits: Limits,
    /// The respondent's own system prompt (empty: none).
    pub system_prompt: String,
    /// Its system prompt per language, replacing `system_prompt` there.
    pub system_prompts: BTreeMap<String, String>,
    /// Token prices, when configured.
    pub prices: Option<Prices>,
}

impl Endpoint {
    /// The respondent's own system prompt in `language` (empty: none).
    pub fn system_prompt_in(&self, language: &str) -> &str {
        self.system_prompts
            .get(language)
            .unwrap_or(&self.system_prompt)
    }
}

/// Token prices of a respondent.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    /// Per million prompt tokens.
    pub input_per_million: f64,
    /// Per million completion tokens.
    pub output_per_million: f64,
    /// ISO 4217 code.
    pub currency: String,
}

impl Prices {
    /// The prices an HTTP respondent's settings give, `None` when both are 0.
    pub fn from_api(api: &careers_proto::v1::ApiSettings) -> Option<Self> {
        (api.input_price_per_million > 0.0 || api.output_price_per_million > 0.0).then(|| Self {
            input_per_million: api.input_price_per_million,
            output_per_million: api.output_price_per_million,
            currency: if api.currency.is_empty() {
                "USD".to_string()
            } else {
                api.currency.clone()
            },
        })
    }

    /// The cost of these tokens.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_million
            + output_tokens as f64 * self.output_per_million)
            / 1e6
    }
}

/// Builds every respondent's provider and limits from a (validated) spec.
pub fn build_providers(spec: &StudySpec) -> Result<HashMap<String, Endpoint>, StudyError> {
    let mut out: HashMap<String, Endpoint> = HashMap::new();
    for (i, r) in spec.respondents.iter().enumerate() {
        let Some(respondent) = &r.respondent else {
            continue;
        };
        let prefix = format!("respondents[{i}]");
        let mut limits = Limits::default();
        let mut system_prompt = String::new();
        let mut system_prompts = BTreeMap::new();
        let mut prices = None;
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
                limits = Limits::from_api(api);
                system_prompt.clone_from(&api.system_prompt);
                system_prompts.clone_from(&api.system_prompts);
                prices = Prices::from_api(api);
                let config = HttpConfig {
                    provider: respondent.provider.clone(),
                    model: respondent.model.clone(),
                    base_url: base_url.to_string(),
                    key,
                    temperature: api.temperature,
                    top_p: api.top_p,
                    seed: api.seed,
                    max_tokens: api.max_tokens,
                    max_tokens_field: preset(&respondent.provider)
                        .map_or("max_tokens", |p| p.max_tokens_field),
                    timeout: if api.timeout_secs == 0 {
                        http::DEFAULT_TIMEOUT
                    } else {
                        Duration::from_secs(u64::from(api.timeout_secs))
                    },
                    logprobs: api.logprobs,
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
        out.insert(
            respondent.name.clone(),
            Endpoint {
                provider,
                limits,
                system_prompt,
                system_prompts,
                prices,
            },
        );
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
    Ok(Arc::new(load_progress(&ctx.journal, spec).await?))
}

/// A study's progress as the journal has it.
pub async fn load_progress(journal: &Journal, spec: &StudySpec) -> Result<Progress, JournalError> {
    let names: Vec<String> = spec
        .respondents
        .iter()
        .filter_map(|r| r.respondent.as_ref())
        .map(|r| r.name.clone())
        .collect();
    Ok(Progress::from_counts(
        &journal.cell_counts(&spec.name).await?,
        &journal.respondent_totals(&spec.name, &names).await?,
    ))
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
    // A cancel that came before the run started (CancelStudy right after
    // CreateStudy) has already written CANCELLED: do not undo it; the run
    // ends at once and writes its outcome below.
    if !*cancel.borrow() {
        ctx.journal
            .set_state(&spec.name, StudyState::Running, "")
            .await?;
    }
    tracing::info!(study = %spec.name, pending = pending.len(), total = tasks.len(), "study running");

    // Each answer travels with a channel the writer signals once the answer is
    // committed; a task holds its place until then, so a kill -9 loses at most
    // one answer per running task (asked, paid for, not yet committed).
    let (answers_tx, mut answers_rx) = mpsc::channel::<(ItemResponse, oneshot::Sender<()>)>(1024);
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
            let (batch, committed): (Vec<ItemResponse>, Vec<oneshot::Sender<()>>) =
                batch.into_iter().unzip();
            writer_journal.record_answers(&batch).await?;
            for done in committed {
                let _ = done.send(());
            }
            for r in batch {
                writer_progress.answered(&r);
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
    // Requests in flight over the whole study.
    let slots = Semaphore::new(concurrency);
    // One queue per respondent, in administration order, of units: one task
    // each, or under all-items administration the pending tasks of one form.
    let all_items = is_all_items(spec);
    let mut queues: Vec<(String, Vec<Vec<Task>>)> = Vec::new();
    for task_id in &pending {
        let Some(task) = tasks.get(task_id) else {
            tracing::warn!(%task_id, "journal task not in the study design; skipped");
            continue;
        };
        let queue = match queues
            .iter_mut()
            .position(|(name, _)| *name == task.respondent)
        {
            Some(i) => &mut queues[i].1,
            None => {
                queues.push((task.respondent.clone(), Vec::new()));
                &mut queues.last_mut().expect("just pushed").1
            }
        };
        match queue.last_mut() {
            Some(unit) if all_items && unit[0].same_form(task) => unit.push(task.clone()),
            _ => queue.push(vec![task.clone()]),
        }
    }
    let shared = Shared {
        ctx,
        spec,
        endpoints: &providers,
        respondents: &respondents,
        failed_respondents: &failed_respondents,
        slots: &slots,
        cancel: &cancel,
        answers_tx: &answers_tx,
        failed: &failed,
        progress: &progress,
    };
    futures::future::join_all(queues.into_iter().map(|(name, queue)| {
        let width = providers
            .get(&name)
            .map_or(concurrency, |e| e.limits.width(concurrency));
        drain(&shared, queue, width)
    }))
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

/// What every task of a run shares.
struct Shared<'a> {
    ctx: &'a RunContext,
    spec: &'a StudySpec,
    endpoints: &'a HashMap<String, Endpoint>,
    respondents: &'a HashMap<String, Respondent>,
    failed_respondents: &'a Mutex<BTreeMap<String, String>>,
    slots: &'a Semaphore,
    cancel: &'a watch::Receiver<bool>,
    answers_tx: &'a mpsc::Sender<(ItemResponse, oneshot::Sender<()>)>,
    failed: &'a std::sync::atomic::AtomicU64,
    progress: &'a Progress,
}

/// Whether the study asks all items of a form in one request.
fn is_all_items(spec: &StudySpec) -> bool {
    spec.administration == Administration::AllItems as i32
}

/// Works one respondent's queue with at most `width` units at once.
async fn drain(shared: &Shared<'_>, queue: Vec<Vec<Task>>, width: usize) {
    let mut queue = queue.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        while running.len() < width.max(1) {
            match queue.next() {
                Some(unit) => running.push(ask_one(shared, unit)),
                None => break,
            }
        }
        if running.next().await.is_none() {
            break;
        }
    }
}

/// Asks one unit (a task, or the pending tasks of a form) and hands its
/// answers to the writer, or records its failure.
async fn ask_one(shared: &Shared<'_>, unit: Vec<Task>) {
    let cancel = shared.cancel;
    let progress = shared.progress;
    let Some(first) = unit.first() else {
        return;
    };
    if *cancel.borrow() {
        return;
    }
    let (Some(endpoint), Some(respondent)) = (
        shared.endpoints.get(&first.respondent),
        shared.respondents.get(&first.respondent),
    ) else {
        return;
    };
    if is_failed(shared.failed_respondents, &first.respondent) {
        return;
    }
    let mut requests = (0, 0);
    let result = administer(
        shared.ctx,
        shared.spec,
        &unit,
        endpoint,
        shared.slots,
        respondent,
        cancel.clone(),
        &mut requests,
    )
    .await;
    progress.requests(&first.respondent, requests.0, requests.1);
    let error = match result {
        Ok(responses) => {
            let mut committed = Vec::with_capacity(responses.len());
            for response in responses {
                let (done, is_committed) = oneshot::channel();
                if shared.answers_tx.send((response, done)).await.is_err() {
                    return;
                }
                committed.push(is_committed);
            }
            // Hold this unit's place until its answers are durable.
            for is_committed in committed {
                let _ = is_committed.await;
            }
            return;
        }
        Err(_) if *cancel.borrow() => return,
        Err(e) => e,
    };
    shared
        .failed
        .fetch_add(unit.len() as u64, std::sync::atomic::Ordering::Relaxed);
    for task in &unit {
        progress.failed(
            &task.respondent,
            &task.language,
            &task.instrument_id,
            &error.to_string(),
        );
    }
    if let ProviderError::Permanent(_) = error {
        let message = error.to_string();
        let first_failure = match shared.failed_respondents.lock() {
            Ok(mut map) => map
                .insert(first.respondent.clone(), message.clone())
                .is_none(),
            Err(poisoned) => poisoned
                .into_inner()
                .insert(first.respondent.clone(), message.clone())
                .is_none(),
        };
        if first_failure {
            progress.respondent_failed(&first.respondent, &message);
            tracing::error!(respondent = %first.respondent, error = %message, "respondent failed; its remaining tasks are skipped");
        }
    } else {
        tracing::warn!(task = %first.task_id, tasks = unit.len(), error = %error, "task failed after retries");
    }
}

fn is_failed(failed: &Mutex<BTreeMap<String, String>>, respondent: &str) -> bool {
    match failed.lock() {
        Ok(map) => map.contains_key(respondent),
        Err(poisoned) => poisoned.into_inner().contains_key(respondent),
    }
}

/// How a task's condition (its design-factor levels) frames the prompt.
#[derive(Debug, Default, PartialEq)]
pub struct Framing<'a> {
    /// The system prompt: the respondent's, then each level's, a paragraph each.
    pub system: Option<String>,
    /// The instructions replacing the instrument's (the last factor's wins).
    pub instructions: Option<&'a str>,
    /// Text put before the prompt, a paragraph per level.
    pub preamble: Option<String>,
}

/// The framing of `task` under `spec`'s factors for a respondent whose own
/// system prompt is `system`.
pub fn framing<'a>(spec: &'a StudySpec, system: &str, task: &Task) -> Framing<'a> {
    let levels: Vec<&'a FactorLevel> = spec
        .factors
        .iter()
        .zip(&task.levels)
        .filter_map(|(f, &l)| f.levels.get(l))
        .collect();
    let join = |parts: Vec<&str>| -> Option<String> {
        let parts: Vec<&str> = parts.into_iter().filter(|p| !p.trim().is_empty()).collect();
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    };
    let lang = task.language.as_str();
    let mut systems = vec![system];
    systems.extend(
        levels
            .iter()
            .filter_map(|l| l.system_prompt.get(lang).map(String::as_str)),
    );
    Framing {
        system: join(systems),
        instructions: levels
            .iter()
            .rev()
            .find_map(|l| l.instructions.get(lang).map(String::as_str)),
        preamble: join(
            levels
                .iter()
                .filter_map(|l| l.preamble.get(lang).map(String::as_str))
                .collect(),
        ),
    }
}

/// A finished item of a unit.
struct Answered {
    answer: Answer,
    raw_text: String,
    /// Normalised (see [`normalise`]).
    probabilities: Vec<OptionProbability>,
    latency: Duration,
    attempt: u32,
}

/// Asks one unit (one task, or under all-items administration the pending
/// tasks of one form in one numbered request), retrying transient errors and
/// re-asking unusable answers, and builds a response per task. `requests`
/// counts the provider requests made and, of them, the retries after a
/// transient error.
#[allow(clippy::too_many_arguments)]
async fn administer(
    ctx: &RunContext,
    spec: &StudySpec,
    unit: &[Task],
    endpoint: &Endpoint,
    slots: &Semaphore,
    respondent: &Respondent,
    mut cancel: watch::Receiver<bool>,
    requests: &mut (u32, u32),
) -> Result<Vec<ItemResponse>, ProviderError> {
    let limits = &endpoint.limits;
    let first = unit
        .first()
        .ok_or_else(|| ProviderError::Permanent("an empty unit of tasks".into()))?;
    let all_items = is_all_items(spec);
    let instrument = ctx.catalog.get(&first.instrument_id).ok_or_else(|| {
        ProviderError::Permanent(format!("instrument {} vanished", first.instrument_id))
    })?;
    let items = unit
        .iter()
        .map(|t| {
            instrument
                .item(&t.item_id)
                .ok_or_else(|| ProviderError::Permanent(format!("item {} vanished", t.item_id)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let language = first.language.as_str();
    let options = instrument
        .options
        .get(language)
        .ok_or_else(|| ProviderError::Permanent(format!("no {language} options")))?;
    let foreign_options = instrument
        .options
        .iter()
        .find(|(l, _)| l.as_str() != language)
        .map(|(_, o)| o);
    let labels = instrument.labels();
    let frame = framing(spec, endpoint.system_prompt_in(language), first);
    let n = unit.len();
    let mut earlier: Vec<Vec<EarlierAnswer>> = vec![Vec::new(); n];
    let mut tokens: Vec<(u64, u64)> = vec![(0, 0); n];
    // Requests and retries charged per item: each request to the first item
    // it asked, so their sum over the unit is what was made.
    let mut charged: Vec<(u32, u32)> = vec![(0, 0); n];
    let mut answered: Vec<Option<Answered>> = (0..n).map(|_| None).collect();
    let mut open: Vec<usize> = (0..n).collect();
    let mut attempt = 0;
    let mut round = 0;
    while !open.is_empty() {
        let asked: Vec<&Item> = open.iter().map(|&i| items[i]).collect();
        let mut prompt = if all_items {
            instrument.render_batch_prompt(&asked, language, frame.instructions)
        } else {
            instrument.render_prompt(asked[0], language, frame.instructions)
        }
        .ok_or_else(|| ProviderError::Permanent(format!("no {language} prompt")))?;
        if let Some(preamble) = &frame.preamble {
            prompt = format!("{preamble}\n\n{prompt}");
        }
        if round > 0 {
            prompt = format!("{prompt}\n\n{}", stricter_follow_up(language, all_items));
        }
        let batch: Vec<BatchItem> = if all_items {
            open.iter()
                .map(|&i| BatchItem {
                    task_id: unit[i].task_id,
                    item_id: &items[i].id,
                    scale_index: scale::index(items[i].scale).unwrap_or(0),
                })
                .collect()
        } else {
            Vec::new()
        };
        let lead = open[0];
        let ask = Ask {
            task_id: unit[lead].task_id,
            instrument_id: &instrument.id,
            construct: &instrument.construct,
            item_id: &items[lead].id,
            scale_index: scale::index(items[lead].scale).unwrap_or(0),
            language,
            prompt: &prompt,
            options,
            foreign_options,
            system: frame.system.as_deref(),
            batch: &batch,
        };
        let before = attempt;
        let result = request(ctx, first, endpoint, slots, ask, &mut attempt, &mut cancel).await;
        let made = attempt - before;
        requests.0 += made;
        requests.1 += made.saturating_sub(1);
        charged[lead].0 += made;
        charged[lead].1 += made.saturating_sub(1);
        let (reply, latency) = result?;
        // A request's tokens are split evenly over the items it asked.
        let k = open.len() as u64;
        for (j, &i) in open.iter().enumerate() {
            let j = j as u64;
            tokens[i].0 += reply.input_tokens / k + u64::from(j < reply.input_tokens % k);
            tokens[i].1 += reply.output_tokens / k + u64::from(j < reply.output_tokens % k);
        }
        // Log-probabilities describe one rating token: only a one-item reply has them.
        let (parsed, probabilities) = if reply.refused {
            let refusal = || answer::refusal("the provider marked the reply as a refusal");
            (
                open.iter()
                    .map(|_| (refusal(), reply.text.clone()))
                    .collect(),
                Vec::new(),
            )
        } else if all_items {
            (
                answer::parse_numbered(&reply.text, open.len(), &labels),
                Vec::new(),
            )
        } else {
            (
                vec![(answer::parse(&reply.text, &labels), reply.text.clone())],
                normalise(reply.option_probabilities),
            )
        };
        let mut still_open = Vec::new();
        for (&i, (parsed, raw_text)) in open.iter().zip(parsed) {
            let answer = match parsed {
                Parsed::Rating(r) => Answer::Rating(r),
                Parsed::Invalid { reason, detail } => Answer::Invalid(InvalidAnswer {
                    reason: reason as i32,
                    detail,
                }),
            };
            // The study's rating source may still take the rating from the
            // probabilities; re-ask only when the answer stays unusable.
            let decides = !probabilities.is_empty()
                && matches!(
                    choose(answer.clone(), &probabilities, limits.rating_source),
                    Answer::Rating(_)
                );
            match answer {
                Answer::Invalid(invalid) if round < spec.reask_invalid && !decides => {
                    earlier[i].push(EarlierAnswer {
                        attempt,
                        raw_text,
                        invalid: Some(invalid),
                    });
                    still_open.push(i);
                }
                answer => {
                    answered[i] = Some(Answered {
                        answer,
                        raw_text,
                        probabilities: probabilities.clone(),
                        latency,
                        attempt,
                    });
                }
            }
        }
        open = still_open;
        round += 1;
    }
    let administration = if all_items {
        Administration::AllItems
    } else {
        Administration::OneItem
    };
    let mut out = Vec::with_capacity(n);
    for ((((task, item), done), ((input_tokens, output_tokens), earlier_answers)), charged) in unit
        .iter()
        .zip(&items)
        .zip(answered)
        .zip(tokens.into_iter().zip(earlier))
        .zip(charged)
    {
        let done = done
            .ok_or_else(|| ProviderError::Permanent(format!("task {} unanswered", task.task_id)))?;
        let probabilities = done.probabilities;
        let expected = expected_rating(&probabilities);
        let answer = choose(done.answer, &probabilities, limits.rating_source);
        let (cost, cost_currency) = match &endpoint.prices {
            Some(p) => (p.cost(input_tokens, output_tokens), p.currency.clone()),
            None => (0.0, String::new()),
        };
        out.push(ItemResponse {
            response_id: task.task_id.to_string(),
            study_id: spec.name.clone(),
            instrument_id: instrument.id.clone(),
            item_id: item.id.clone(),
            scale: item.scale as i32,
            respondent: Some(respondent.clone()),
            language: task.language.clone(),
            replication: task.replication,
            answer: Some(answer),
            raw_text: done.raw_text,
            option_probabilities: probabilities,
            expected_rating: expected.unwrap_or(0.0),
            tokens: Some(TokenUsage {
                input_tokens,
                output_tokens,
            }),
            latency_ms: u32::try_from(done.latency.as_millis()).unwrap_or(u32::MAX),
            answered_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            attempt: done.attempt,
            earlier_answers,
            conditions: task.conditions.clone(),
            cost,
            cost_currency,
            administration: administration as i32,
            requests: charged.0,
            retries: charged.1,
        });
    }
    Ok(out)
}

/// The sentence added to the prompt when unusable answers are re-asked.
fn stricter_follow_up(language: &str, all_items: bool) -> &'static str {
    match (language.starts_with("zh"), all_items) {
        (true, false) => {
            "你上一次的回答无法识别为其中一个选项。请只回答一个1到5之间的数字，不要写其他内容。"
        }
        (true, true) => {
            "你上一次对这些活动的回答无法识别。请每行只写一个活动：活动编号、冒号和一个1到5之间的数字（例如“1: 4”），不要写其他内容。"
        }
        (false, false) => {
            "Your previous answer could not be read as one of the options. Reply with a single number from 1 to 5 and nothing else."
        }
        (false, true) => {
            "Your previous answers to these activities could not be read. Reply with one line per activity: its number, a colon and a single number from 1 to 5 (e.g. \"1: 4\"), and nothing else."
        }
    }
}

/// One request with the single retry policy: waits for the respondent's rate
/// limits and a study slot, retries transient errors (never sooner than the
/// server's hint; a hint beyond `max_retry_wait` stops the respondent), and
/// counts every request in `attempt`.
async fn request(
    ctx: &RunContext,
    task: &Task,
    endpoint: &Endpoint,
    slots: &Semaphore,
    ask: Ask<'_>,
    attempt: &mut u32,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(Reply, Duration), ProviderError> {
    let provider = endpoint.provider.as_ref();
    let limits = &endpoint.limits;
    let first_attempt = *attempt;
    let estimate = limits.estimate(ask.prompt, ask.system);
    let (reply, latency) = loop {
        *attempt += 1;
        let wait_turn = async {
            if let Some(bucket) = &limits.requests {
                bucket.acquire(1.0).await;
            }
            if let Some(bucket) = &limits.tokens {
                bucket.acquire(estimate).await;
            }
            slots.acquire().await.ok()
        };
        let permit = tokio::select! {
            permit = wait_turn => permit,
            () = cancelled(cancel) => {
                return Err(ProviderError::transient("cancelled while waiting for a rate limit"));
            }
        };
        let started = Instant::now();
        let result = provider.ask(ask.clone()).await;
        let latency = started.elapsed();
        drop(permit);
        match result {
            Ok(reply) => {
                let used = reply.input_tokens as f64 + reply.output_tokens as f64;
                if let Some(bucket) = &limits.tokens
                    && used > 0.0
                {
                    bucket.settle(estimate, used);
                }
                break (reply, latency);
            }
            Err(ProviderError::Transient {
                message,
                retry_after,
            }) if *attempt - first_attempt < ctx.retry.max_attempts => {
                if let Some(stop) = limits.hint_too_long(retry_after, &message) {
                    return Err(stop);
                }
                let wait = ctx.retry.wait(*attempt - first_attempt - 1, retry_after);
                tracing::debug!(task = %task.task_id, attempt = *attempt, error = %message, wait_ms = wait.as_millis() as u64, "retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancelled(cancel) => {
                        return Err(ProviderError::transient(format!("cancelled while waiting to retry: {message}")));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    };
    Ok((reply, latency))
}

/// Resolves when the study is cancelled; never if no one can cancel any more.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The option probabilities scaled to sum to 1 (invalid entries dropped);
/// empty when there are none or they sum to 0.
pub fn normalise(options: Vec<OptionProbability>) -> Vec<OptionProbability> {
    let options: Vec<OptionProbability> = options
        .into_iter()
        .filter(|o| {
            (1..=5).contains(&o.rating) && o.probability.is_finite() && o.probability >= 0.0
        })
        .collect();
    let total: f64 = options.iter().map(|o| o.probability).sum();
    if !(total.is_finite() && total > 0.0) {
        return Vec::new();
    }
    options
        .into_iter()
        .map(|o| OptionProbability {
            rating: o.rating,
            probability: (o.probability / total).clamp(0.0, 1.0),
        })
        .collect()
}

/// The expected rating under (normalised) option probabilities.
pub fn expected_rating(options: &[OptionProbability]) -> Option<f64> {
    if options.is_empty() {
        return None;
    }
    Some(
        options
            .iter()
            .map(|o| f64::from(o.rating) * o.probability)
            .sum(),
    )
}

/// The answer the analyzer receives: the parsed text unless `source` asks for
/// a probability-based rating and there are (normalised) probabilities.
pub fn choose(parsed: Answer, options: &[OptionProbability], source: RatingSource) -> Answer {
    match source {
        RatingSource::MostProbable => options
            .iter()
            // The first maximum, so a tie goes to the lower rating.
            .fold(None::<&OptionProbability>, |best, o| match best {
                Some(b) if b.probability >= o.probability && b.rating < o.rating => Some(b),
                Some(b) if b.probability > o.probability => Some(b),
                _ => Some(o),
            })
            .map_or(parsed, |o| Answer::Rating(o.rating)),
        RatingSource::Expected => expected_rating(options).map_or(parsed, |e| {
            // 1..5 fits u32; round half away from zero.
            Answer::Rating(e.round().clamp(1.0, 5.0) as u32)
        }),
        RatingSource::Sampled | RatingSource::Unspecified => parsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(u32, f64)]) -> Vec<OptionProbability> {
        pairs
            .iter()
            .map(|&(rating, probability)| OptionProbability {
                rating,
                probability,
            })
            .collect()
    }

    #[test]
    fn ratings_are_chosen_from_normalised_probabilities() {
        let probs = normalise(options(&[(2, 0.4), (4, 0.45), (5, 0.15), (9, 0.5)]));
        assert_eq!(probs.len(), 3);
        let total: f64 = probs.iter().map(|o| o.probability).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let e = expected_rating(&probs).expect("expected");
        assert!((e - 3.35).abs() < 1e-12, "{e}");
        let text = Answer::Rating(2);
        assert_eq!(choose(text.clone(), &probs, RatingSource::Sampled), text);
        assert_eq!(
            choose(text.clone(), &probs, RatingSource::Unspecified),
            text
        );
        assert_eq!(
            choose(text.clone(), &probs, RatingSource::MostProbable),
            Answer::Rating(4)
        );
        assert_eq!(
            choose(text.clone(), &probs, RatingSource::Expected),
            Answer::Rating(3)
        );
        // Sums other than 1 are scaled first: 0.2 / 0.2 is a tie, won by 2.
        let tie = normalise(options(&[(4, 0.1), (2, 0.1)]));
        assert!((tie[0].probability - 0.5).abs() < 1e-12);
        assert_eq!(
            choose(text.clone(), &tie, RatingSource::MostProbable),
            Answer::Rating(2)
        );
        assert_eq!(
            choose(text.clone(), &tie, RatingSource::Expected),
            Answer::Rating(3)
        );
        // Without probabilities the text decides.
        assert!(normalise(options(&[(3, 0.0)])).is_empty());
        assert_eq!(expected_rating(&[]), None);
        assert_eq!(choose(text.clone(), &[], RatingSource::Expected), text);
        assert_eq!(choose(text.clone(), &[], RatingSource::MostProbable), text);
    }

    #[test]
    fn backoff_doubles_within_its_jitter_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(3),
        };
        // Full jitter over the upper half: attempt k waits in
        // [base * 2^k / 2, base * 2^k], capped.
        for attempt in 0..8u32 {
            let full = Duration::from_millis(100 * (1u64 << attempt)).min(Duration::from_secs(3));
            let waits: Vec<Duration> = (0..200).map(|_| policy.wait(attempt, None)).collect();
            for w in &waits {
                assert!(*w >= full / 2 && *w <= full, "attempt {attempt}: {w:?}");
            }
            // The jitter is real: not every wait is the same.
            assert!(waits.iter().any(|w| *w != waits[0]), "attempt {attempt}");
        }
    }

    #[test]
    fn a_hint_beyond_max_retry_wait_stops_the_respondent() {
        let limits = Limits {
            max_retry_wait: Duration::from_secs(60),
            ..Limits::default()
        };
        assert!(limits.hint_too_long(None, "x").is_none());
        assert!(
            limits
                .hint_too_long(Some(Duration::from_secs(60)), "x")
                .is_none()
        );
        match limits.hint_too_long(Some(Duration::from_secs(86_400)), "HTTP 429: daily") {
            Some(ProviderError::Permanent(m)) => {
                assert!(
                    m.starts_with("HTTP 429: daily; the server asks to wait 86400 s"),
                    "{m}"
                );
                assert!(m.contains("max_retry_wait_secs (60 s)"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

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
