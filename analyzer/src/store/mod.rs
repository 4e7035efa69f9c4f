//! The response store: every accepted `ItemResponse`, unique on its response
//! id, in insertion order, and the replay of stored rows into the statistics
//! at start-up. SQLite (WAL, `synchronous = FULL`) is the embedded default.
//!
//! The store never decides what is valid (the service validates first) and
//! never touches the statistics itself: [`Store::insert_batch`] reports which
//! rows were new, and the caller applies exactly those.

mod sqlite;

pub use sqlite::{SqliteStore as Store, durable_options};

use careers_proto::v1::ItemResponse;

/// Store failures. They are server-side problems, never the client's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored message did not decode (corruption or a foreign writer).
    #[error("stored response {seq} does not decode: {source}")]
    Corrupt {
        /// Row number.
        seq: i64,
        /// Decoder error.
        source: prost::DecodeError,
    },
}

/// A stored row as replayed into the statistics.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// Insertion order.
    pub seq: i64,
    /// The response.
    pub response: ItemResponse,
}
