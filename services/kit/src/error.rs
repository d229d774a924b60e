//! The kit's error type and its one mapping to `tonic::Status`.

/// What can go wrong in the shared runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration could not be loaded or is invalid; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
    /// A database could not be reached or a statement failed.
    #[error("database ({context}): {source}")]
    Database {
        /// What was being done, e.g. "connect to postgres://…@host/db".
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations could not be applied.
    #[error("migrations for {service}: {source}")]
    Migrate {
        /// The service whose schema failed.
        service: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The event bus (Kafka or embedded) failed.
    #[error("event bus: {0}")]
    Bus(String),
    /// A consumer could not apply an event to its own state (it is redelivered).
    #[error("{consumer} could not apply an event: {source}")]
    Apply {
        /// The consuming service.
        consumer: &'static str,
        /// Why (the service's own error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An event could not be written to a service's outbox.
    #[error("outbox: {0}")]
    Outbox(String),
    /// Telemetry could not be initialised.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// A listener could not be bound or a server failed.
    #[error("{0}")]
    Io(String),
}

/// `Result` with the kit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A column that did not decode (`try_get`): sqlx's error names the column and the type.
impl From<sqlx::Error> for Error {
    fn from(source: sqlx::Error) -> Self {
        Error::Database {
            context: "read a row".into(),
            source,
        }
    }
}

impl Error {
    /// Wraps a consumer's own error: `consumer` could not apply an event.
    pub fn apply<E: std::error::Error + Send + Sync + 'static>(consumer: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Apply {
            consumer,
            source: Box::new(e),
        }
    }

    /// Wraps a database error with what was being done.
    pub fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let context = context.into();
        move |source| Error::Database { context, source }
    }
}

impl crate::edge::ServiceError for Error {
    fn code(&self) -> crate::edge::ErrorCode {
        use crate::edge::ErrorCode;
        match self {
            Error::Database { .. } | Error::Migrate { .. } | Error::Bus(_) | Error::Outbox(_) | Error::Apply { .. } => {
                ErrorCode::Unavailable
            }
            Error::Config(_) | Error::Telemetry(_) | Error::Io(_) => ErrorCode::Internal,
        }
    }

    fn internal_message(&self) -> String {
        match self {
            Error::Database { .. } | Error::Migrate { .. } | Error::Apply { .. } => "storage unavailable".into(),
            Error::Bus(_) | Error::Outbox(_) => "the event log is unavailable".into(),
            Error::Config(_) | Error::Telemetry(_) | Error::Io(_) => "internal error".into(),
        }
    }
}

/// Answers through [`crate::edge`]: a caller never sees driver text, SQL or addresses.
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        crate::edge::status(&e)
    }
}
