//! The records service's errors and what kind of failure each is; the kit's edge maps them
//! to gRPC and to FHIR OperationOutcomes.

use sharedcare_kit::edge::{ErrorCode, Refusal, ServiceError};

/// What can go wrong handling a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// Bad input, nothing by that name, no credentials, or not allowed (the kit's shared refusals).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The resource (or this version of it) was deleted; its history is kept.
    #[error("{0} was deleted")]
    Gone(String),
    /// Someone else wrote the same resource at the same moment.
    #[error("{0} was changed concurrently; retry")]
    Conflict(String),
    /// The access could not be recorded for audit, so nothing is returned.
    #[error("audit trail unavailable: {0}")]
    Audit(String),
    /// The records database could not be read; nothing is returned.
    #[error("records storage unavailable: {0}")]
    Unavailable(String),
    /// An update named a version that is no longer the current one (optimistic concurrency).
    #[error("{reference} is at version {current}, not {expected}; read it again and reapply the change")]
    VersionMismatch {
        /// `type/id`.
        reference: String,
        /// The version the writer based the change on.
        expected: i64,
        /// The current version (0 = none).
        current: i64,
    },
    /// A conditional request's condition does not hold (HTTP 412); names the header.
    #[error("{0}: {1}")]
    Precondition(String, String),
    /// Consent could not be asked, so nothing is returned or stored.
    #[error("consent decision unavailable: {0}")]
    Consent(crate::consent::PdpError),
    /// Consent denied the access; the reason is consent's.
    #[error("access denied: {0}")]
    Denied(String),
    /// The resource carries a category the patient has withheld from this caller.
    #[error("withheld in line with the patient's wishes")]
    Withheld,
    /// The service is shutting down and its writer has stopped.
    #[error("the records service is stopping")]
    Stopped,
    /// The database or the outbox failed; nothing was returned or stored.
    #[error("records storage unavailable: {0}")]
    Storage(#[from] sqlx::Error),
}

impl ServiceError for RecordsError {
    fn code(&self) -> ErrorCode {
        match self {
            RecordsError::Refused(r) => r.code(),
            RecordsError::Gone(_) => ErrorCode::Gone,
            RecordsError::Conflict(_) => ErrorCode::Conflict,
            RecordsError::Denied(_) | RecordsError::Withheld => ErrorCode::Forbidden,
            RecordsError::VersionMismatch { .. } | RecordsError::Precondition(..) => ErrorCode::Stale,
            RecordsError::Stopped
            | RecordsError::Consent(_)
            | RecordsError::Unavailable(_)
            | RecordsError::Audit(_)
            | RecordsError::Storage(_) => ErrorCode::Unavailable,
        }
    }

    fn internal_message(&self) -> String {
        match self {
            RecordsError::Consent(_) => "the consent decision could not be made, so no data is returned".into(),
            RecordsError::Audit(_) => "the access could not be audited, so no data is returned".into(),
            RecordsError::Stopped => "the records service is stopping".into(),
            _ => "records storage unavailable".into(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            RecordsError::Refused(r) => r.field(),
            RecordsError::Precondition(field, _) => Some(field),
            _ => None,
        }
    }

    fn fhir_issue(&self) -> &'static str {
        match self {
            RecordsError::Withheld => "suppressed",
            other => other.code().fhir_issue(),
        }
    }
}

impl From<RecordsError> for tonic::Status {
    fn from(e: RecordsError) -> Self {
        sharedcare_kit::edge::status(&e)
    }
}
