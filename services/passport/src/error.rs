//! The passport's errors and what kind of failure each is; the kit's edge maps them to gRPC
//! and HTTP.

use sharedcare_kit::edge::{ErrorCode, Refusal, ServiceError};
use sharedcare_kit::pdp::PdpError;

/// What can go wrong serving a passport.
#[derive(Debug, thiserror::Error)]
pub enum PassportError {
    /// Bad input, nothing by that name, no credentials, or not allowed (the kit's shared refusals).
    #[error(transparent)]
    Refused(#[from] Refusal),
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

impl ServiceError for PassportError {
    fn code(&self) -> ErrorCode {
        match self {
            PassportError::Refused(r) => r.code(),
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
            PassportError::Refused(r) => r.field(),
            _ => None,
        }
    }
}

impl From<PassportError> for tonic::Status {
    fn from(e: PassportError) -> Self {
        sharedcare_kit::edge::status(&e)
    }
}
