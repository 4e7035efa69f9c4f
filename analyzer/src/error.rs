//! The one mapping from analyzer errors to gRPC statuses.

use tonic::{Code, Status};

use crate::store::StoreError;
use crate::validate::FieldViolation;

/// Everything an analyzer request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    /// The request is malformed; the message names the field.
    #[error(transparent)]
    InvalidArgument(#[from] FieldViolation),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AnalyzerError> for Status {
    fn from(e: AnalyzerError) -> Self {
        match &e {
            AnalyzerError::InvalidArgument(v) => Status::new(Code::InvalidArgument, v.to_string()),
            AnalyzerError::Store(inner) => {
                tracing::error!(error = %inner, "store failure");
                Status::new(Code::Internal, "the analyzer's store failed; retry later")
            }
        }
    }
}
