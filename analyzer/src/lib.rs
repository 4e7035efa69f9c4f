//! careers-analyzer: stores LLM item responses and serves their statistics.
//!
//! Responses arrive over the `Ingest` stream ([`service`]), are validated
//! ([`validate`]: every problem names its field), and are written to the
//! response store ([`store`]) unique on their response id. Only newly stored
//! responses update the statistics ([`analysis`]), after their transaction
//! commits, so the statistics always equal a replay of the store; that replay
//! is exactly what happens at start-up. Summaries ([`summary`]) are computed
//! from per-cell sums ([`descriptive`]) in time proportional to the number of
//! cells, never the number of rows, and pushed to watchers on every update.
//!
//! [`stats`] holds the mixed-model engine: pure numerics, no I/O or async;
//! [`fit`] is the offline `careers-analyzer fit` command over a CSV file;
//! [`export`] writes the stored responses as that CSV, a column per design
//! factor.
//! [`server`] wires the gRPC service, health and reflection onto a listener.

pub mod analysis;
pub mod descriptive;
pub mod error;
pub mod export;
pub mod fit;
pub mod server;
pub mod service;
pub mod signal;
pub mod stats;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod validate;

pub use server::{AnalyzerConfig, Database, RunningAnalyzer, start};
