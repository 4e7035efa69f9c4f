//! SQLite implementation of the response store.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use careers_proto::v1::ItemResponse;
use careers_proto::v1::item_response::Answer;
use futures::TryStreamExt;
use prost::Message;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{StoreError, StoredResponse};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS responses (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id    TEXT    NOT NULL UNIQUE,
    study_id       TEXT    NOT NULL,
    instrument_id  TEXT    NOT NULL,
    item_id        TEXT    NOT NULL,
    scale          INTEGER NOT NULL,
    respondent     TEXT    NOT NULL,
    language       TEXT    NOT NULL,
    replication    INTEGER NOT NULL,
    rating         INTEGER,
    invalid_reason INTEGER,
    message        BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_study ON responses (study_id, seq);
"#;

/// Connection settings for a SQLite file that must survive `kill -9` and
/// power loss: WAL, `synchronous = FULL`, created if missing, and a generous
/// busy timeout. The collector's journal uses the same settings.
pub fn durable_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
}

/// The SQLite response store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::with_options(durable_options(path)).await
    }

    /// Opens a private in-memory database (tests, throwaway runs).
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        Self::with_options(options).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        // One connection: the store has a single writer, and an in-memory
        // database exists only per connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    /// Inserts the responses in one transaction and returns, per response,
    /// whether it was newly stored (`false`: its id was already there).
    /// Callers validate first; the transaction is all or nothing.
    pub async fn insert_batch(&self, responses: &[&ItemResponse]) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut inserted = Vec::with_capacity(responses.len());
        for r in responses {
            let (rating, reason) = match &r.answer {
                Some(Answer::Rating(v)) => (Some(i64::from(*v)), None),
                Some(Answer::Invalid(inv)) => (None, Some(i64::from(inv.reason))),
                None => (None, None),
            };
            let respondent = r
                .respondent
                .as_ref()
                .map(|p| p.name.as_str())
                .unwrap_or_default();
            let result = sqlx::query(
                "INSERT INTO responses (response_id, study_id, instrument_id, item_id, scale, respondent, \
                 language, replication, rating, invalid_reason, message) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (response_id) DO NOTHING",
            )
            .bind(&r.response_id)
            .bind(&r.study_id)
            .bind(&r.instrument_id)
            .bind(&r.item_id)
            .bind(r.scale)
            .bind(respondent)
            .bind(&r.language)
            .bind(i64::from(r.replication))
            .bind(rating)
            .bind(reason)
            .bind(r.encode_to_vec())
            .execute(&mut *tx)
            .await?;
            inserted.push(result.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Number of stored responses, optionally for one study.
    pub async fn count(&self, study_id: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM responses WHERE (?1 = '' OR study_id = ?1)")
            .bind(study_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(row.get::<i64, _>(0)).unwrap_or(0))
    }

    /// Up to `limit` responses after row `after_seq`, in insertion order,
    /// optionally restricted to one study (keyset pagination: no long reads).
    pub async fn page(
        &self,
        study_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredResponse>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, message FROM responses WHERE seq > ?1 AND (?2 = '' OR study_id = ?2) ORDER BY seq LIMIT ?3",
        )
        .bind(after_seq)
        .bind(study_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(decode_row).collect()
    }

    /// Calls `f` on every stored response in insertion order (start-up replay).
    pub async fn replay(&self, mut f: impl FnMut(StoredResponse)) -> Result<u64, StoreError> {
        let mut rows =
            sqlx::query("SELECT seq, message FROM responses ORDER BY seq").fetch(&self.pool);
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            f(decode_row(row)?);
            n += 1;
        }
        Ok(n)
    }
}

fn decode_row(row: sqlx::sqlite::SqliteRow) -> Result<StoredResponse, StoreError> {
    let seq: i64 = row.get(0);
    let bytes: Vec<u8> = row.get(1);
    let response = ItemResponse::decode(bytes.as_slice())
        .map_err(|source| StoreError::Corrupt { seq, source })?;
    Ok(StoredResponse { seq, response })
}
