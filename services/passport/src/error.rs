//! The passport's errors and what kind of failure each is; the kit's edge maps them to gRPC
//! and HTTP.

use sharedcare_kit::edge::{ErrorCode, ServiceError};
use sharedcare_kit::pdp::PdpError;

/// What can go wrong serving a passport.
#[derive(Debug, thiserror::Error)]
pub enum PassportError {
    /// The request is malformed; the message names the field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: String,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// Nothing is known about the person (told only to callers consent lets see them).
    #[error("no record is held for {0}")]
    NotFound(String),
    /// No valid bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// Refused: by consent, by proofing level, or for want of a scope.
    #[error("{0}")]
    Forbidden(String),
    /// Consent could not decide, so nothing is returned.
    #[error("consent decision unavailable: {0}")]
    Consent(#[from] PdpError),
    /// The view could not be audited, so nothing is returned.
    #[error("audit trail unavailable: {0}")]
    Audit(String),
    /// The passport's database failed.
    #[error("passport storage unavailable: {0}")]
    Storage(#[from] sqlx::Error),
    /// A batched lookup failed or the service is stopping.
    #[error("passport storage unavailable: {0}")]
    Unavailable(String),
    /// The audit log could not be read or did not prove an entry.
    #[error("audit log unavailable: {0}")]
    AuditLog(String),
    /// The read model holds something it cannot read: the passport's own fault.
    #[error("corrupt passport data: {0}")]
    Corrupt(String),
}

impl PassportError {
    /// An invalid-input error for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PassportError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl ServiceError for PassportError {
    fn code(&self) -> ErrorCode {
        match self {
            PassportError::Invalid { .. } => ErrorCode::Invalid,
            PassportError::NotFound(_) => ErrorCode::NotFound,
            PassportError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            PassportError::Forbidden(_) => ErrorCode::Forbidden,
            PassportError::Consent(_)
            | PassportError::Audit(_)
            | PassportError::Storage(_)
            | PassportError::Unavailable(_)
            | PassportError::AuditLog(_) => ErrorCode::Unavailable,
            PassportError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn internal_message(&self) -> String {
        match self {
            PassportError::Consent(_) => "the consent decision could not be made, so no data is returned".into(),
            PassportError::Audit(_) => "the view could not be audited, so no data is returned".into(),
            PassportError::AuditLog(_) => "the audit log could not be read; try again later".into(),
            PassportError::Corrupt(_) => "the passport holds data it cannot read".into(),
            _ => "passport storage unavailable".into(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            PassportError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<PassportError> for tonic::Status {
    fn from(e: PassportError) -> Self {
        sharedcare_kit::edge::status(&e)
    }
}
