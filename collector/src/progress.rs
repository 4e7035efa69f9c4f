//! Live progress of a running study, shared by the runner (answers), the
//! outbox (acknowledgements), the gRPC `WatchStudy` stream and the CLI's
//! progress bar.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use careers_analyzer::descriptive::LatencyHistogram;
use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{
    InvalidReason, ItemResponse, ProgressCell, RespondentProgress, StudyProgress,
};
use tokio::sync::watch;

use crate::journal::{CellCount, RespondentTotals};

type CellKey = (String, String, String);

/// The accounting of one respondent.
#[derive(Debug, Default)]
struct Account {
    /// Requests made in this run.
    requests: u64,
    /// Of them, repeats after a transient error.
    retries: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    currency: String,
    latency: LatencyHistogram,
    failure: String,
}

#[derive(Debug, Default)]
struct State {
    cells: BTreeMap<CellKey, ProgressCell>,
    /// In the study's respondent order.
    accounts: Vec<(String, Account)>,
    forwarded: u64,
    rejected: u64,
    samples: VecDeque<(Instant, u64)>,
    last_error: String,
}

/// Progress counters with change notification.
#[derive(Debug)]
pub struct Progress {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Progress {
    /// Progress starting from the journal's counts and per-respondent
    /// totals (`respondents` in the study's order).
    pub fn from_counts(counts: &[CellCount], respondents: &[RespondentTotals]) -> Self {
        let mut state = State::default();
        for r in respondents {
            state.accounts.push((
                r.respondent.clone(),
                Account {
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cost: r.cost,
                    currency: r.currency.clone(),
                    ..Account::default()
                },
            ));
        }
        for c in counts {
            state.forwarded += c.forwarded;
            state.cells.insert(
                (
                    c.respondent.clone(),
                    c.language.clone(),
                    c.instrument_id.clone(),
                ),
                ProgressCell {
                    respondent: c.respondent.clone(),
                    language: c.language.clone(),
                    instrument_id: c.instrument_id.clone(),
                    done: c.done,
                    total: c.total,
                    invalid: c.invalid,
                    errors: 0,
                    refusals: c.refusals,
                },
            );
        }
        let done = state.cells.values().map(|c| c.done).sum();
        state.samples.push_back((Instant::now(), done));
        Self {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut guard);
        drop(guard);
        self.changed.send_modify(|v| *v += 1);
        r
    }

    fn cell<'a>(
        state: &'a mut State,
        respondent: &str,
        language: &str,
        instrument: &str,
    ) -> &'a mut ProgressCell {
        state
            .cells
            .entry((
                respondent.to_string(),
                language.to_string(),
                instrument.to_string(),
            ))
            .or_insert_with(|| ProgressCell {
                respondent: respondent.to_string(),
                language: language.to_string(),
                instrument_id: instrument.to_string(),
                ..Default::default()
            })
    }

    fn account<'a>(state: &'a mut State, respondent: &str) -> &'a mut Account {
        let i = match state.accounts.iter().position(|(n, _)| n == respondent) {
            Some(i) => i,
            None => {
                state
                    .accounts
                    .push((respondent.to_string(), Account::default()));
                state.accounts.len() - 1
            }
        };
        &mut state.accounts[i].1
    }

    /// One answer committed to the journal.
    pub fn answered(&self, r: &ItemResponse) {
        let respondent = r
            .respondent
            .as_ref()
            .map(|p| p.name.as_str())
            .unwrap_or_default();
        let invalid = matches!(r.answer, Some(Answer::Invalid(_)));
        let refusal = matches!(
            &r.answer,
            Some(Answer::Invalid(i)) if i.reason == InvalidReason::Refusal as i32
        );
        self.with(|s| {
            let c = Self::cell(s, respondent, &r.language, &r.instrument_id);
            c.done += 1;
            c.invalid += u64::from(invalid);
            c.refusals += u64::from(refusal);
            let a = Self::account(s, respondent);
            if let Some(t) = &r.tokens {
                a.input_tokens += t.input_tokens;
                a.output_tokens += t.output_tokens;
            }
            if r.cost.is_finite() {
                a.cost += r.cost;
            }
            if !r.cost_currency.is_empty() && a.currency != r.cost_currency {
                a.currency.clone_from(&r.cost_currency);
            }
            a.latency.add(r.latency_ms);
        });
    }

    /// Provider requests made for a respondent, `retries` of them repeats
    /// after a transient error.
    pub fn requests(&self, respondent: &str, requests: u32, retries: u32) {
        if requests > 0 {
            self.with(|s| {
                let a = Self::account(s, respondent);
                a.requests += u64::from(requests);
                a.retries += u64::from(retries);
            });
        }
    }

    /// A respondent stopped by a permanent error.
    pub fn respondent_failed(&self, respondent: &str, message: &str) {
        self.with(|s| Self::account(s, respondent).failure = message.to_string());
    }

    /// One task failed after all retries.
    pub fn failed(&self, respondent: &str, language: &str, instrument: &str, error: &str) {
        self.with(|s| {
            Self::cell(s, respondent, language, instrument).errors += 1;
            s.last_error = error.to_string();
        });
    }

    /// Answers acknowledged by the analyzer (`rejected` of them were refused).
    pub fn forwarded(&self, n: u64, rejected: u64) {
        self.with(|s| {
            s.forwarded += n;
            s.rejected += rejected;
        });
    }

    /// The most recent provider error, if any.
    pub fn last_error(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error
            .clone()
    }

    /// Answers the analyzer refused.
    pub fn rejected(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rejected
    }

    /// The wire form, with the recent answer rate.
    pub fn snapshot(&self) -> StudyProgress {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let cells: Vec<ProgressCell> = s.cells.values().cloned().collect();
        let done: u64 = cells.iter().map(|c| c.done).sum();
        let now = Instant::now();
        s.samples.push_back((now, done));
        while s.samples.len() > 2
            && s.samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            s.samples.pop_front();
        }
        let rate = match (s.samples.front(), s.samples.back()) {
            (Some((t0, d0)), Some((t1, d1))) if t1 > t0 => {
                (d1 - d0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let respondents = s
            .accounts
            .iter()
            .map(|(name, a)| {
                let (done, total) = s
                    .cells
                    .values()
                    .filter(|c| c.respondent == *name)
                    .fold((0, 0), |(d, t), c| (d + c.done, t + c.total));
                RespondentProgress {
                    respondent: name.clone(),
                    done,
                    total,
                    requests: a.requests,
                    retries: a.retries,
                    input_tokens: a.input_tokens,
                    output_tokens: a.output_tokens,
                    cost: a.cost,
                    currency: a.currency.clone(),
                    latency_p50_ms: a.latency.quantile(0.5),
                    latency_p90_ms: a.latency.quantile(0.9),
                    latency_p99_ms: a.latency.quantile(0.99),
                    failure: a.failure.clone(),
                }
            })
            .collect();
        StudyProgress {
            respondents,
            done,
            total: cells.iter().map(|c| c.total).sum(),
            invalid: cells.iter().map(|c| c.invalid).sum(),
            refusals: cells.iter().map(|c| c.refusals).sum(),
            errors: cells.iter().map(|c| c.errors).sum(),
            forwarded: s.forwarded,
            answers_per_second: rate,
            cells,
        }
    }

    /// A receiver that changes on every update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
