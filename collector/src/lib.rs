//! careers-collector: administers psychometric instruments to LLM respondents
//! and streams every answer to the analyzer.
//!
//! A study ([`study`]) is a design: respondents, languages, instruments
//! ([`instrument`], data files validated at start-up) and replications. Its
//! tasks are written to the journal ([`journal`]) before any respondent is
//! asked; the runner ([`runner`]) asks each pending task through a provider
//! ([`provider`]), parses the text ([`answer`]), commits the answer, and hands
//! it to the outbox ([`outbox`]), which streams it to the analyzer and marks it
//! forwarded only on acknowledgement. A restart resumes from the journal.
//!
//! [`service`] is the gRPC `CollectorService` and [`server`] puts it on a
//! listener with health and reflection; [`progress`] feeds `WatchStudy` and
//! the CLI's progress bar; [`table`] prints the final RIASEC table.

pub mod answer;
pub mod error;
pub mod instrument;
pub mod journal;
/// Per-respondent rate limits (token buckets on tokio time).
pub mod limit;
pub mod outbox;
pub mod progress;
pub mod provider;
pub mod runner;
pub mod server;
pub mod service;
pub mod study;
pub mod table;
