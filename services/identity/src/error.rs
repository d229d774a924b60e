//! Identity's errors: one enum, mapped to gRPC status here and to OAuth error responses in
//! [`crate::oauth`].

/// What went wrong in identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Bad input; names the field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. "nhs_number".
        field: String,
        /// Why it is wrong.
        reason: String,
    },
    /// Nothing by that id.
    #[error("{0} not found")]
    NotFound(String),
    /// Already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The caller is not authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// The database failed.
    #[error("identity storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// The kit failed (outbox, database connection).
    #[error(transparent)]
    Kit(#[from] sharedcare_kit::Error),
}

/// `Result` with [`IdentityError`].
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

impl IdentityError {
    /// An [`IdentityError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        IdentityError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<IdentityError> for tonic::Status {
    fn from(e: IdentityError) -> Self {
        let msg = e.to_string();
        match e {
            IdentityError::Invalid { .. } => tonic::Status::invalid_argument(msg),
            IdentityError::NotFound(_) => tonic::Status::not_found(msg),
            IdentityError::Conflict(_) => tonic::Status::already_exists(msg),
            IdentityError::Forbidden(_) => tonic::Status::permission_denied(msg),
            IdentityError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            IdentityError::Storage(_) | IdentityError::Kit(_) => tonic::Status::unavailable(msg),
        }
    }
}
