//! The one mapping from collector errors to gRPC statuses.

use tonic::{Code, Status};

use crate::journal::JournalError;
use crate::runner::RunError;
use crate::study::StudyError;

/// Everything a collector request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A malformed request; names the field.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Field path.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// No such study.
    #[error("no study {0:?}")]
    NotFound(String),
    /// A run failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl CollectorError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<JournalError> for CollectorError {
    fn from(e: JournalError) -> Self {
        Self::Run(RunError::Journal(e))
    }
}

impl From<StudyError> for CollectorError {
    fn from(e: StudyError) -> Self {
        Self::invalid(format!("spec.{}", e.field), e.reason)
    }
}

impl From<CollectorError> for Status {
    fn from(e: CollectorError) -> Self {
        match e {
            CollectorError::InvalidArgument { .. } => {
                Status::new(Code::InvalidArgument, e.to_string())
            }
            CollectorError::NotFound(_) => Status::new(Code::NotFound, e.to_string()),
            CollectorError::Run(RunError::Study(s)) => Status::from(CollectorError::from(s)),
            CollectorError::Run(RunError::Journal(JournalError::Conflict(id))) => Status::new(
                Code::AlreadyExists,
                format!("spec.name: study {id:?} already exists with a different design"),
            ),
            CollectorError::Run(RunError::Journal(JournalError::RequestReused(id))) => Status::new(
                Code::AlreadyExists,
                format!(
                    "request_id: {id:?} was used before for a different study or design; \
                         a retried request must be identical"
                ),
            ),
            CollectorError::Run(other) => {
                tracing::error!(error = %other, "collector failure");
                Status::new(Code::Internal, other.to_string())
            }
        }
    }
}
