//! Consent's errors and what kind of failure each is; the kit's edge maps them to gRPC.

use sharedcare_kit::edge::{ErrorCode, Refusal, ServiceError};

/// What can go wrong in consent.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// Bad input, nothing by that name, no credentials, or not allowed (the kit's shared refusals).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A stored value is not what consent writes (an internal fault, never the caller's).
    #[error("consent storage holds a corrupt value: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("consent storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A service consent asks (identity's organisation directory) could not answer.
    #[error("{0}")]
    Unavailable(String),
}

impl From<sharedcare_kit::directory::DirectoryError> for ConsentError {
    fn from(e: sharedcare_kit::directory::DirectoryError) -> Self {
        use sharedcare_kit::directory::DirectoryError as D;
        match e {
            D::Config(field, reason) => Refusal::Invalid { field, reason }.into(),
            D::Forbidden(m) => Refusal::Forbidden(m).into(),
            D::Unavailable(m) => ConsentError::Unavailable(m),
        }
    }
}

impl ServiceError for ConsentError {
    fn code(&self) -> ErrorCode {
        match self {
            ConsentError::Refused(r) => r.code(),
            ConsentError::Storage(_) | ConsentError::Unavailable(_) => ErrorCode::Unavailable,
            ConsentError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn internal_message(&self) -> String {
        match self {
            ConsentError::Corrupt(_) => "consent could not read its own records".into(),
            ConsentError::Unavailable(_) => "the organisation directory is unavailable".into(),
            _ => "consent storage unavailable".into(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ConsentError::Refused(r) => r.field(),
            _ => None,
        }
    }
}

impl From<ConsentError> for tonic::Status {
    fn from(e: ConsentError) -> Self {
        sharedcare_kit::edge::status(&e)
    }
}
