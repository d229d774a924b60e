//! Consent's errors and what kind of failure each is; the kit's edge maps them to gRPC.

use sharedcare_kit::edge::{ErrorCode, ServiceError};

/// What can go wrong in consent.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// Bad input; names the field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// What was wrong.
        reason: String,
    },
    /// Nothing by that id.
    #[error("{0} not found")]
    NotFound(String),
    /// No valid bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
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
            D::Config(field, reason) => ConsentError::Invalid { field, reason },
            D::Forbidden(m) => ConsentError::Forbidden(m),
            D::Unavailable(m) => ConsentError::Unavailable(m),
        }
    }
}

impl ConsentError {
    /// An [`ConsentError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConsentError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl ServiceError for ConsentError {
    fn code(&self) -> ErrorCode {
        match self {
            ConsentError::Invalid { .. } => ErrorCode::Invalid,
            ConsentError::NotFound(_) => ErrorCode::NotFound,
            ConsentError::Forbidden(_) => ErrorCode::Forbidden,
            ConsentError::Unauthenticated(_) => ErrorCode::Unauthenticated,
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
            ConsentError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<ConsentError> for tonic::Status {
    fn from(e: ConsentError) -> Self {
        sharedcare_kit::edge::status(&e)
    }
}
