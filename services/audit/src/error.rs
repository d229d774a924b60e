//! The audit service's errors and what kind of failure each is; the kit's edge maps them to
//! gRPC.

use sharedcare_kit::edge::{ErrorCode, Refusal, ServiceError};

/// What can go wrong in the audit service.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Bad input, nothing by that name, no credentials, or not allowed (the kit's shared refusals).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The audit database failed.
    #[error("audit storage unavailable: {0}")]
    Storage(#[from] sqlx::Error),
    /// A stored value is not what audit writes (an internal fault, never the caller's).
    #[error("audit storage holds a corrupt value: {0}")]
    Corrupt(String),
    /// The kit failed (the outbox).
    #[error(transparent)]
    Kit(#[from] sharedcare_kit::Error),
}

impl ServiceError for AuditError {
    fn code(&self) -> ErrorCode {
        match self {
            AuditError::Refused(r) => r.code(),
            AuditError::Storage(_) | AuditError::Kit(_) => ErrorCode::Unavailable,
            AuditError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn internal_message(&self) -> String {
        match self {
            AuditError::Corrupt(_) => "the audit log could not be read".into(),
            _ => "audit storage unavailable".into(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            AuditError::Refused(r) => r.field(),
            _ => None,
        }
    }
}

impl From<AuditError> for tonic::Status {
    fn from(e: AuditError) -> Self {
        sharedcare_kit::edge::status(&e)
    }
}

/// A tile the tree needs is missing or short: the stored log is not what audit wrote.
impl From<crate::tiles::TileError> for AuditError {
    fn from(e: crate::tiles::TileError) -> Self {
        AuditError::Corrupt(e.to_string())
    }
}
