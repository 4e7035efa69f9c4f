//! The collector's durable journal (SQLite): studies, one task row per
//! (respondent, language, instrument, item, replication) written before any
//! LLM is called, each answer committed with its raw text before it is
//! forwarded, and a `forwarded` mark set only when the analyzer acknowledged
//! it. A restart resumes from here: answered tasks are never asked again, and
//! answered-but-unacknowledged ones are resent.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use careers_proto::v1::{ItemResponse, StudySpec, StudyState};
use futures::TryStreamExt;
use prost::Message;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::study::Task;

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database failed.
    #[error("journal database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored message did not decode.
    #[error("journal row {0} does not decode: {1}")]
    Corrupt(String, prost::DecodeError),
    /// A study id is taken by a different design.
    #[error("study {0:?} already exists with a different design")]
    Conflict(String),
    /// A request id was used before for a different study or design.
    #[error("request id {0:?} was used before for a different study or design")]
    RequestReused(String),
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS studies (
    study_id    TEXT    PRIMARY KEY,
    request_id  TEXT    UNIQUE,
    spec        BLOB    NOT NULL,
    state       INTEGER NOT NULL,
    error       TEXT    NOT NULL DEFAULT '',
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id       TEXT    PRIMARY KEY,
    study_id      TEXT    NOT NULL,
    respondent    TEXT    NOT NULL,
    language      TEXT    NOT NULL,
    instrument_id TEXT    NOT NULL,
    item_id       TEXT    NOT NULL,
    replication   INTEGER NOT NULL,
    ord           INTEGER NOT NULL,
    answered      INTEGER NOT NULL DEFAULT 0,
    invalid       INTEGER NOT NULL DEFAULT 0,
    forwarded     INTEGER NOT NULL DEFAULT 0,
    response      BLOB,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost          REAL    NOT NULL DEFAULT 0,
    currency      TEXT    NOT NULL DEFAULT '',
    refusal       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_study ON tasks (study_id, answered, ord);
CREATE INDEX IF NOT EXISTS tasks_unforwarded ON tasks (study_id, answered, forwarded);
"#;

/// A stored study.
#[derive(Debug, Clone)]
pub struct StudyRow {
    /// Study id.
    pub study_id: String,
    /// The design.
    pub spec: StudySpec,
    /// State.
    pub state: StudyState,
    /// Error message for failed studies.
    pub error: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Last state change, ms since the epoch.
    pub updated_ms: i64,
}

/// Columns added to `tasks` after its first version, with their definitions.
const ACCOUNTING_COLUMNS: &[(&str, &str)] = &[
    ("input_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("output_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("cost", "REAL NOT NULL DEFAULT 0"),
    ("currency", "TEXT NOT NULL DEFAULT ''"),
    ("refusal", "INTEGER NOT NULL DEFAULT 0"),
];

/// Tokens and cost of one respondent's answered tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct RespondentTotals {
    /// Respondent.
    pub respondent: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost at the configured prices.
    pub cost: f64,
    /// Currency of the cost; empty without prices.
    pub currency: String,
}

/// Task counts of one respondent x language x instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellCount {
    /// Respondent.
    pub respondent: String,
    /// Language.
    pub language: String,
    /// Instrument.
    pub instrument_id: String,
    /// Tasks.
    pub total: u64,
    /// Answered tasks.
    pub done: u64,
    /// Answered with an invalid answer.
    pub invalid: u64,
    /// Of them, refusals.
    pub refusals: u64,
    /// Acknowledged by the analyzer.
    pub forwarded: u64,
}

/// The journal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    pool: SqlitePool,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn state_from(v: i64) -> StudyState {
    StudyState::try_from(v as i32).unwrap_or(StudyState::Unspecified)
}

impl Journal {
    /// Opens (creating) the journal file.
    pub async fn open(path: &Path) -> Result<Self, JournalError> {
        Self::with_options(careers_analyzer::store::durable_options(path), 4).await
    }

    /// A private in-memory journal (tests).
    pub async fn in_memory() -> Result<Self, JournalError> {
        Self::with_options(SqliteConnectOptions::from_str("sqlite::memory:")?, 1).await
    }

    async fn with_options(
        options: SqliteConnectOptions,
        connections: u32,
    ) -> Result<Self, JournalError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        // Journals written before the accounting columns existed get them
        // (their earlier answers count no tokens).
        let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('tasks')")
            .fetch_all(&pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (column, definition) in ACCOUNTING_COLUMNS {
            if !columns.iter().any(|c| c == column) {
                // Both parts are compile-time constants above, never input.
                let sql = format!("ALTER TABLE tasks ADD COLUMN {column} {definition}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&pool)
                    .await?;
            }
        }
        Ok(Self { pool })
    }

    /// Tokens and cost per respondent of a study, from its answered tasks,
    /// in the order of `respondents` (respondents without answers count 0).
    pub async fn respondent_totals(
        &self,
        study_id: &str,
        respondents: &[String],
    ) -> Result<Vec<RespondentTotals>, JournalError> {
        let rows = sqlx::query(
            "SELECT respondent, SUM(input_tokens), SUM(output_tokens), SUM(cost), MAX(currency) \
             FROM tasks WHERE study_id = ? AND answered = 1 GROUP BY respondent",
        )
        .bind(study_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(respondents
            .iter()
            .map(|name| {
                let row = rows.iter().find(|r| r.get::<String, _>(0) == *name);
                RespondentTotals {
                    respondent: name.clone(),
                    input_tokens: row.map_or(0, |r| r.get::<i64, _>(1) as u64),
                    output_tokens: row.map_or(0, |r| r.get::<i64, _>(2) as u64),
                    cost: row.map_or(0.0, |r| r.get::<f64, _>(3)),
                    currency: row.map_or(String::new(), |r| r.get(4)),
                }
            })
            .collect())
    }

    /// Records a study, idempotently: the same `request_id` with the same
    /// study returns the existing row (a retried request), the same
    /// `request_id` with anything else is [`JournalError::RequestReused`]; the
    /// same study id with an identical design returns the existing row, with
    /// a different design it is [`JournalError::Conflict`]. Safe under
    /// concurrent calls: the insert is conditional, the answer is read back.
    pub async fn create_study(
        &self,
        request_id: &str,
        spec: &StudySpec,
    ) -> Result<StudyRow, JournalError> {
        let request = (!request_id.is_empty()).then_some(request_id);
        if let Some(existing) = self.study_by_request(request).await? {
            return Self::same_study(request_id, spec, existing);
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO studies (study_id, request_id, spec, state, created_ms, updated_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&spec.name)
        .bind(request)
        .bind(spec.encode_to_vec())
        .bind(StudyState::Running as i32)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        match self.study(&spec.name).await? {
            Some(existing) if existing.spec == *spec => Ok(existing),
            Some(_) => Err(JournalError::Conflict(spec.name.clone())),
            // The name is free but the insert did nothing: a concurrent call
            // took the request id for another study.
            None => match self.study_by_request(request).await? {
                Some(existing) => Self::same_study(request_id, spec, existing),
                None => Err(JournalError::RequestReused(request_id.to_string())),
            },
        }
    }

    async fn study_by_request(
        &self,
        request_id: Option<&str>,
    ) -> Result<Option<StudyRow>, JournalError> {
        match request_id {
            Some(id) => {
                self.study_where("SELECT * FROM studies WHERE request_id = ?", id)
                    .await
            }
            None => Ok(None),
        }
    }

    /// The study `query` (a select on a unique column, one `?`) finds for
    /// `value`.
    async fn study_where(
        &self,
        query: &'static str,
        value: &str,
    ) -> Result<Option<StudyRow>, JournalError> {
        let row = sqlx::query(query)
            .bind(value)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::study_row).transpose()
    }

    fn same_study(
        request_id: &str,
        spec: &StudySpec,
        existing: StudyRow,
    ) -> Result<StudyRow, JournalError> {
        if existing.spec == *spec {
            Ok(existing)
        } else {
            Err(JournalError::RequestReused(request_id.to_string()))
        }
    }

    fn study_row(row: &sqlx::sqlite::SqliteRow) -> Result<StudyRow, JournalError> {
        let study_id: String = row.get("study_id");
        let spec_bytes: Vec<u8> = row.get("spec");
        let spec = StudySpec::decode(spec_bytes.as_slice())
            .map_err(|e| JournalError::Corrupt(study_id.clone(), e))?;
        Ok(StudyRow {
            study_id,
            spec,
            state: state_from(row.get("state")),
            error: row.get("error"),
            created_ms: row.get("created_ms"),
            updated_ms: row.get("updated_ms"),
        })
    }

    /// One study.
    pub async fn study(&self, study_id: &str) -> Result<Option<StudyRow>, JournalError> {
        self.study_where("SELECT * FROM studies WHERE study_id = ?", study_id)
            .await
    }

    /// Studies newest first (ties by id), `limit` of them, starting after
    /// the study `after` names by its `(created_ms, study_id)`: a page
    /// boundary that new studies do not shift.
    pub async fn studies(
        &self,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<StudyRow>, JournalError> {
        let (ms, id) = after.unwrap_or((i64::MAX, ""));
        let rows = sqlx::query(
            "SELECT * FROM studies WHERE created_ms < ? OR (created_ms = ? AND study_id > ?) \
             ORDER BY created_ms DESC, study_id LIMIT ?",
        )
        .bind(ms)
        .bind(ms)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::study_row).collect()
    }

    /// Sets a study's state (and error message) if it is in state `from`;
    /// whether it was.
    pub async fn set_state_from(
        &self,
        study_id: &str,
        from: StudyState,
        to: StudyState,
        error: &str,
    ) -> Result<bool, JournalError> {
        let done = sqlx::query(
            "UPDATE studies SET state = ?, error = ?, updated_ms = ? WHERE study_id = ? AND state = ?",
        )
        .bind(to as i32)
        .bind(error)
        .bind(now_ms())
        .bind(study_id)
        .bind(from as i32)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The ids of the studies in `state`, oldest first.
    pub async fn studies_in_state(&self, state: StudyState) -> Result<Vec<String>, JournalError> {
        let rows = sqlx::query(
            "SELECT study_id FROM studies WHERE state = ? ORDER BY created_ms, study_id",
        )
        .bind(state as i32)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Sets a study's state (and error message).
    pub async fn set_state(
        &self,
        study_id: &str,
        state: StudyState,
        error: &str,
    ) -> Result<(), JournalError> {
        sqlx::query("UPDATE studies SET state = ?, error = ?, updated_ms = ? WHERE study_id = ?")
            .bind(state as i32)
            .bind(error)
            .bind(now_ms())
            .bind(study_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes every task row that is not there yet (one transaction).
    pub async fn ensure_tasks(&self, study_id: &str, tasks: &[Task]) -> Result<(), JournalError> {
        let mut tx = self.pool.begin().await?;
        for chunk in tasks.chunks(1000) {
            for t in chunk {
                sqlx::query(
                    "INSERT INTO tasks (task_id, study_id, respondent, language, instrument_id, item_id, replication, ord) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id) DO NOTHING",
                )
                .bind(t.task_id.to_string())
                .bind(study_id)
                .bind(&t.respondent)
                .bind(&t.language)
                .bind(&t.instrument_id)
                .bind(&t.item_id)
                .bind(i64::from(t.replication))
                .bind(t.order as i64)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Task ids not answered yet, in administration order.
    pub async fn pending(&self, study_id: &str) -> Result<Vec<String>, JournalError> {
        let rows = sqlx::query(
            "SELECT task_id FROM tasks WHERE study_id = ? AND answered = 0 ORDER BY ord",
        )
        .bind(study_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Commits answers (one transaction). A task already answered keeps its
    /// first answer; returns how many rows changed.
    pub async fn record_answers(&self, responses: &[ItemResponse]) -> Result<u64, JournalError> {
        let mut tx = self.pool.begin().await?;
        let mut changed = 0;
        for r in responses {
            let (invalid, refusal) = match &r.answer {
                Some(careers_proto::v1::item_response::Answer::Invalid(i)) => (
                    true,
                    i.reason == careers_proto::v1::InvalidReason::Refusal as i32,
                ),
                _ => (false, false),
            };
            let tokens = r.tokens.unwrap_or_default();
            changed += sqlx::query(
                "UPDATE tasks SET answered = 1, invalid = ?, refusal = ?, response = ?, \
                 input_tokens = ?, output_tokens = ?, cost = ?, currency = ? \
                 WHERE task_id = ? AND answered = 0",
            )
            .bind(invalid)
            .bind(refusal)
            .bind(r.encode_to_vec())
            .bind(i64::try_from(tokens.input_tokens).unwrap_or(i64::MAX))
            .bind(i64::try_from(tokens.output_tokens).unwrap_or(i64::MAX))
            .bind(if r.cost.is_finite() { r.cost } else { 0.0 })
            .bind(&r.cost_currency)
            .bind(&r.response_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Marks answers as acknowledged by the analyzer (one transaction).
    /// Returns how many were not marked before (a resent answer is acknowledged twice).
    pub async fn mark_forwarded(&self, task_ids: &[String]) -> Result<u64, JournalError> {
        let mut tx = self.pool.begin().await?;
        let mut newly = 0;
        for id in task_ids {
            newly +=
                sqlx::query("UPDATE tasks SET forwarded = 1 WHERE task_id = ? AND forwarded = 0")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        tx.commit().await?;
        Ok(newly)
    }

    /// Answered responses the analyzer has not acknowledged, in order.
    pub async fn unforwarded(&self, study_id: &str) -> Result<Vec<ItemResponse>, JournalError> {
        let mut rows = sqlx::query(
            "SELECT task_id, response FROM tasks WHERE study_id = ? AND answered = 1 AND forwarded = 0 ORDER BY ord",
        )
        .bind(study_id)
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let id: String = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            out.push(
                ItemResponse::decode(bytes.as_slice()).map_err(|e| JournalError::Corrupt(id, e))?,
            );
        }
        Ok(out)
    }

    /// Per-cell counts for a study.
    pub async fn cell_counts(&self, study_id: &str) -> Result<Vec<CellCount>, JournalError> {
        let rows = sqlx::query(
            "SELECT respondent, language, instrument_id, COUNT(*), SUM(answered), SUM(invalid), SUM(forwarded), \
             SUM(refusal) \
             FROM tasks WHERE study_id = ? GROUP BY respondent, language, instrument_id \
             ORDER BY respondent, language, instrument_id",
        )
        .bind(study_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| CellCount {
                respondent: r.get(0),
                language: r.get(1),
                instrument_id: r.get(2),
                total: r.get::<i64, _>(3) as u64,
                done: r.get::<i64, _>(4) as u64,
                invalid: r.get::<i64, _>(5) as u64,
                forwarded: r.get::<i64, _>(6) as u64,
                refusals: r.get::<i64, _>(7) as u64,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use careers_proto::v1::item_response::Answer;
    use std::sync::Arc;

    fn task(n: u128) -> Task {
        Task {
            task_id: uuid::Uuid::from_u128(n),
            respondent: "r".into(),
            language: "en".into(),
            instrument_id: "i".into(),
            item_id: format!("X{n}"),
            replication: 1,
            conditions: Default::default(),
            levels: Vec::new(),
            order: n as u64,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_of_one_study_all_get_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Arc::new(
            Journal::open(&dir.path().join("j.sqlite"))
                .await
                .expect("journal"),
        );
        let spec = StudySpec {
            name: "s".into(),
            replications: 1,
            ..Default::default()
        };
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let j = j.clone();
                let spec = spec.clone();
                // Half retry one request id, half send their own.
                let request = if i % 2 == 0 {
                    "req".to_string()
                } else {
                    format!("req-{i}")
                };
                tokio::spawn(async move { j.create_study(&request, &spec).await })
            })
            .collect();
        let mut created = std::collections::HashSet::new();
        for call in calls {
            let row = call
                .await
                .expect("joined")
                .expect("every call gets the study");
            created.insert(row.created_ms);
        }
        assert_eq!(created.len(), 1, "one study row");
        assert_eq!(j.studies(None, 10).await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn tasks_are_answered_once_and_forwarded_once() {
        let j = Journal::in_memory().await.expect("journal");
        let spec = StudySpec {
            name: "s".into(),
            replications: 1,
            ..Default::default()
        };
        let a = j.create_study("req-1", &spec).await.expect("create");
        let b = j.create_study("req-1", &spec).await.expect("idempotent");
        assert_eq!(a.created_ms, b.created_ms);
        let other = StudySpec {
            name: "s".into(),
            replications: 2,
            ..Default::default()
        };
        assert!(matches!(
            j.create_study("req-2", &other).await,
            Err(JournalError::Conflict(_))
        ));
        // A request id names one request: reusing it for anything else is refused
        // and changes nothing.
        assert!(matches!(
            j.create_study("req-1", &other).await,
            Err(JournalError::RequestReused(_))
        ));
        let renamed = StudySpec {
            name: "t".into(),
            ..spec.clone()
        };
        assert!(matches!(
            j.create_study("req-1", &renamed).await,
            Err(JournalError::RequestReused(_))
        ));
        assert!(j.study("t").await.expect("read").is_none());
        assert_eq!(
            j.study("s").await.expect("read").expect("s").spec,
            spec,
            "the stored design is untouched"
        );
        // The same design under another request id is the same study.
        let c = j.create_study("req-3", &spec).await.expect("same design");
        assert_eq!(c.created_ms, a.created_ms);

        let tasks: Vec<Task> = (1..=3).map(task).collect();
        j.ensure_tasks("s", &tasks).await.expect("tasks");
        j.ensure_tasks("s", &tasks).await.expect("tasks again");
        assert_eq!(j.pending("s").await.expect("pending").len(), 3);

        let answer = |n: u128, r: u32| ItemResponse {
            response_id: uuid::Uuid::from_u128(n).to_string(),
            answer: Some(Answer::Rating(r)),
            ..Default::default()
        };
        assert_eq!(
            j.record_answers(&[answer(1, 4), answer(2, 5)])
                .await
                .expect("record"),
            2
        );
        // A second answer for a finished task is ignored: the first one stays.
        assert_eq!(j.record_answers(&[answer(1, 1)]).await.expect("record"), 0);
        assert_eq!(
            j.pending("s").await.expect("pending"),
            vec![uuid::Uuid::from_u128(3).to_string()]
        );
        let unforwarded = j.unforwarded("s").await.expect("unforwarded");
        assert_eq!(unforwarded.len(), 2);
        assert_eq!(unforwarded[0].answer, Some(Answer::Rating(4)));
        let id = unforwarded[0].response_id.clone();
        assert_eq!(
            j.mark_forwarded(std::slice::from_ref(&id))
                .await
                .expect("mark"),
            1
        );
        assert_eq!(j.mark_forwarded(&[id]).await.expect("mark again"), 0);
        assert_eq!(j.unforwarded("s").await.expect("unforwarded").len(), 1);
        let cells = j.cell_counts("s").await.expect("cells");
        assert_eq!(
            (cells[0].total, cells[0].done, cells[0].forwarded),
            (3, 2, 1)
        );
    }
}
