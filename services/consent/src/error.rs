//! Consent's errors and their one mapping to gRPC status.

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
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The database failed.
    #[error("consent storage: {0}")]
    Storage(#[from] sqlx::Error),
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

impl From<ConsentError> for tonic::Status {
    fn from(e: ConsentError) -> Self {
        let msg = e.to_string();
        match e {
            ConsentError::Invalid { .. } => tonic::Status::invalid_argument(msg),
            ConsentError::NotFound(_) => tonic::Status::not_found(msg),
            ConsentError::Forbidden(_) => tonic::Status::permission_denied(msg),
            ConsentError::Storage(_) => {
                tracing::error!(error = %msg, "consent storage failed");
                tonic::Status::unavailable("consent storage unavailable")
            }
        }
    }
}
