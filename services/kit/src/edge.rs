//! The one error edge every service answers through. A service's error says what kind of
//! failure it is ([`ErrorCode`]) and what the caller may be told; [`status`] and
//! [`operation_outcome`] turn it into a gRPC status or an HTTP status with a FHIR
//! OperationOutcome. A failure inside the platform (storage, a peer, corrupt data) is logged
//! once, with its detail, and the caller gets a fixed sentence: driver text, SQL and hostnames
//! never leave the service.

use http::StatusCode;
use serde_json::{Value, json};

/// What kind of failure an error is; the same code maps to gRPC and to HTTP/FHIR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The caller's input is malformed (gRPC INVALID_ARGUMENT, HTTP 400).
    Invalid,
    /// Nothing by that name (NOT_FOUND, 404).
    NotFound,
    /// It was there and has been deleted (NOT_FOUND, HTTP 410 Gone).
    Gone,
    /// It exists already (ALREADY_EXISTS, 409).
    AlreadyExists,
    /// A concurrent change won; retry (ABORTED, 409).
    Conflict,
    /// The caller's precondition no longer holds, e.g. a stale version (FAILED_PRECONDITION, 412).
    Stale,
    /// No valid credentials (UNAUTHENTICATED, 401).
    Unauthenticated,
    /// Not allowed (PERMISSION_DENIED, 403).
    Forbidden,
    /// A dependency inside the platform failed; retrying later may work (UNAVAILABLE, 503).
    Unavailable,
    /// A fault inside the service, e.g. corrupt stored data (INTERNAL, 500).
    Internal,
}

impl ErrorCode {
    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::Invalid => tonic::Code::InvalidArgument,
            ErrorCode::NotFound | ErrorCode::Gone => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::Conflict => tonic::Code::Aborted,
            ErrorCode::Stale => tonic::Code::FailedPrecondition,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::Forbidden => tonic::Code::PermissionDenied,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status.
    pub fn http(self) -> StatusCode {
        match self {
            ErrorCode::Invalid => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Gone => StatusCode::GONE,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Stale => StatusCode::PRECONDITION_FAILED,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The FHIR `OperationOutcome.issue.code` (<https://hl7.org/fhir/R4/valueset-issue-type.html>).
    pub fn fhir_issue(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Gone => "deleted",
            ErrorCode::AlreadyExists => "duplicate",
            ErrorCode::Conflict | ErrorCode::Stale => "conflict",
            ErrorCode::Unauthenticated => "login",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "transient",
            ErrorCode::Internal => "exception",
        }
    }

    /// Whether the failure is inside the platform (its detail is logged, never returned).
    pub fn is_internal(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Internal)
    }
}

/// The refusals every service answers with, declared once: the caller's input is wrong, names
/// nothing, or the caller is unknown or not allowed. A service's error wraps it
/// (`Refused(#[from] Refusal)`) and builds one through [`Refuse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The input is malformed; names the field or FHIR element path.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `nhs_number` or `identifier[0].value`.
        field: String,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// Nothing by that name; the whole sentence the caller is told.
    #[error("{0}")]
    NotFound(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
}

impl Refusal {
    /// What kind of failure it is.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Invalid { .. } => ErrorCode::Invalid,
            Refusal::NotFound(_) => ErrorCode::NotFound,
            Refusal::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Refusal::Forbidden(_) => ErrorCode::Forbidden,
        }
    }

    /// The field an [`Refusal::Invalid`] names.
    pub fn field(&self) -> Option<&str> {
        match self {
            Refusal::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Builds a service's error from a [`Refusal`]: `RecordsError::not_found("Patient/1")`.
pub trait Refuse: From<Refusal> {
    /// The input's `field` is wrong, and why.
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Refusal::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
        .into()
    }

    /// `what` (e.g. `Patient/1`) does not exist: "Patient/1 not found".
    fn not_found(what: impl std::fmt::Display) -> Self {
        Refusal::NotFound(format!("{what} not found")).into()
    }

    /// No valid credentials; the message says which were missing or wrong.
    fn unauthenticated(message: impl Into<String>) -> Self {
        Refusal::Unauthenticated(message.into()).into()
    }

    /// The caller may not do this; the message says why.
    fn forbidden(message: impl Into<String>) -> Self {
        Refusal::Forbidden(message.into()).into()
    }
}

impl<E: From<Refusal>> Refuse for E {}

/// An error a service answers a caller with.
pub trait ServiceError: std::error::Error {
    /// What kind of failure it is.
    fn code(&self) -> ErrorCode;

    /// The fixed sentence a caller gets for a failure inside the platform, e.g. "records
    /// storage unavailable".
    fn internal_message(&self) -> String;

    /// The field the caller got wrong, for an OperationOutcome's `expression`.
    fn field(&self) -> Option<&str> {
        None
    }

    /// The FHIR issue code, when it is more precise than the code's (e.g. `suppressed`).
    fn fhir_issue(&self) -> &'static str {
        self.code().fhir_issue()
    }

    /// What the caller is told: the error itself for their own mistakes and for refusals;
    /// [`ServiceError::internal_message`] for failures inside the platform.
    fn public_message(&self) -> String {
        if self.code().is_internal() {
            self.internal_message()
        } else {
            self.to_string()
        }
    }
}

/// The FHIR base URL (`…/fhir/R4`) as the caller addressed it: its `Host`, and `https` when a
/// proxy in front says so (`X-Forwarded-Proto`).
pub fn fhir_base(headers: &http::HeaderMap) -> String {
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{proto}://{host}/fhir/R4")
}

/// Logs the detail of a failure inside the platform, once, at the edge.
fn log<E: ServiceError + ?Sized>(e: &E) {
    if e.code().is_internal() {
        tracing::error!(error = %e, code = ?e.code(), "request failed inside the platform; the caller gets a fixed message");
    }
}

/// The gRPC status for `e` (the detail of an internal failure is logged, not returned).
pub fn status<E: ServiceError + ?Sized>(e: &E) -> tonic::Status {
    log(e);
    tonic::Status::new(e.code().grpc(), e.public_message())
}

/// The HTTP status and FHIR OperationOutcome for `e` (the detail of an internal failure is
/// logged, not returned).
pub fn operation_outcome<E: ServiceError + ?Sized>(e: &E) -> (StatusCode, Value) {
    log(e);
    let mut issue = json!({
        "severity": "error",
        "code": e.fhir_issue(),
        "diagnostics": e.public_message(),
    });
    if let (Some(field), Some(issue)) = (e.field(), issue.as_object_mut()) {
        issue.insert("expression".into(), json!([field]));
    }
    (
        e.code().http(),
        json!({"resourceType": "OperationOutcome", "issue": [issue]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("{0}: is required")]
        Missing(String),
        #[error("storage: connection to 10.0.0.7:5432 refused (password authentication failed)")]
        Storage,
    }

    impl ServiceError for Failure {
        fn code(&self) -> ErrorCode {
            match self {
                Failure::Missing(_) => ErrorCode::Invalid,
                Failure::Storage => ErrorCode::Unavailable,
            }
        }
        fn internal_message(&self) -> String {
            "test storage unavailable".into()
        }
        fn field(&self) -> Option<&str> {
            match self {
                Failure::Missing(f) => Some(f),
                Failure::Storage => None,
            }
        }
    }

    #[test]
    fn the_callers_mistake_is_returned_with_its_field() {
        let e = Failure::Missing("name".into());
        let s = status(&e);
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, "name: is required")
        );
        let (http, outcome) = operation_outcome(&e);
        assert_eq!(http, StatusCode::BAD_REQUEST);
        assert_eq!(outcome["issue"][0]["expression"][0], "name");
        assert_eq!(outcome["issue"][0]["code"], "invalid");
    }

    /// A service error that wraps the shared refusals, as every service's does.
    #[derive(Debug, thiserror::Error)]
    enum Wrapped {
        #[error(transparent)]
        Refused(#[from] Refusal),
    }

    impl ServiceError for Wrapped {
        fn code(&self) -> ErrorCode {
            match self {
                Wrapped::Refused(r) => r.code(),
            }
        }
        fn internal_message(&self) -> String {
            "never".into()
        }
        fn field(&self) -> Option<&str> {
            match self {
                Wrapped::Refused(r) => r.field(),
            }
        }
    }

    #[test]
    fn a_refusal_built_through_a_service_error_answers_with_its_own_code_and_words() {
        let s = status(&Wrapped::not_found("Patient/9"));
        assert_eq!((s.code(), s.message()), (tonic::Code::NotFound, "Patient/9 not found"));
        let s = status(&Wrapped::forbidden("needs records.write"));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::PermissionDenied, "needs records.write")
        );
        let s = status(&Wrapped::unauthenticated("no bearer token"));
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let (http, outcome) = operation_outcome(&Wrapped::invalid("birthDate", "is not a date"));
        assert_eq!(http, StatusCode::BAD_REQUEST);
        assert_eq!(outcome["issue"][0]["expression"][0], "birthDate");
        assert_eq!(outcome["issue"][0]["diagnostics"], "birthDate: is not a date");
    }

    #[test]
    fn an_internal_failure_reaches_the_caller_as_a_fixed_sentence_only() {
        let s = status(&Failure::Storage);
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Unavailable, "test storage unavailable")
        );
        let (http, outcome) = operation_outcome(&Failure::Storage);
        assert_eq!(http, StatusCode::SERVICE_UNAVAILABLE);
        let text = outcome.to_string();
        assert!(!text.contains("10.0.0.7") && !text.contains("password"), "{text}");
        assert_eq!(outcome["issue"][0]["code"], "transient");
    }
}
