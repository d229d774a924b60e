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

impl Error {
    /// Wraps a database error with what was being done.
    pub fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let context = context.into();
        move |source| Error::Database { context, source }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::Config(_) => tonic::Status::failed_precondition(e.to_string()),
            Error::Database { .. } | Error::Migrate { .. } | Error::Bus(_) | Error::Outbox(_) => {
                tonic::Status::unavailable(e.to_string())
            }
            Error::Telemetry(_) | Error::Io(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
