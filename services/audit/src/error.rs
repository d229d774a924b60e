//! The audit service's errors and their one mapping to gRPC status.

/// What can go wrong in the audit service.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The request is malformed; the message names the field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: String,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// The audit database failed.
    #[error("audit storage unavailable: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<AuditError> for tonic::Status {
    fn from(e: AuditError) -> Self {
        match &e {
            AuditError::Invalid { .. } => tonic::Status::invalid_argument(e.to_string()),
            AuditError::Storage(inner) => {
                tracing::error!(error = %inner, "audit storage failed");
                tonic::Status::unavailable("audit storage unavailable")
            }
        }
    }
}

impl From<AuditError> for sharedcare_kit::Error {
    fn from(e: AuditError) -> Self {
        sharedcare_kit::Error::Bus(e.to_string())
    }
}
