//! Identity's errors: one enum, mapped to gRPC status through the kit's edge here and to OAuth
//! error responses in [`crate::oauth`].

use sharedcare_kit::edge::{ErrorCode, Refusal, ServiceError};

/// What went wrong in identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Bad input, nothing by that name, no credentials, or not allowed (the kit's shared refusals).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// A fault inside identity (key generation, say): never the caller's doing.
    #[error("identity failed: {0}")]
    Internal(String),
    /// A stored value is not what identity writes (an internal fault, never the caller's).
    #[error("identity storage holds a corrupt value: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("identity storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// The kit failed (outbox, database connection).
    #[error(transparent)]
    Kit(#[from] sharedcare_kit::Error),
}

/// A token or key could not be made (signing failed): an internal fault.
impl From<sharedcare_kit::jose::JoseError> for IdentityError {
    fn from(e: sharedcare_kit::jose::JoseError) -> Self {
        IdentityError::Internal(e.to_string())
    }
}

/// `Result` with [`IdentityError`].
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

impl ServiceError for IdentityError {
    fn code(&self) -> ErrorCode {
        match self {
            IdentityError::Refused(r) => r.code(),
            IdentityError::Conflict(_) => ErrorCode::AlreadyExists,
            IdentityError::Storage(_) | IdentityError::Kit(_) => ErrorCode::Unavailable,
            IdentityError::Corrupt(_) | IdentityError::Internal(_) => ErrorCode::Internal,
        }
    }

    fn internal_message(&self) -> String {
        match self {
            IdentityError::Corrupt(_) | IdentityError::Internal(_) => "identity could not complete the request".into(),
            _ => "identity storage unavailable".into(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            IdentityError::Refused(r) => r.field(),
            _ => None,
        }
    }
}

/// Answers through the kit's edge: storage detail is logged, never returned.
impl From<IdentityError> for tonic::Status {
    fn from(e: IdentityError) -> Self {
        sharedcare_kit::edge::status(&e)
    }
}
