//! What both protocols call: the records API over the store, and the checks every request
//! gets whichever way it came (gRPC in `grpc`, FHIR REST in `http`).

use sharedcare_kit::auth::{Principal, Verifier};
use sharedcare_kit::edge::Refuse;

use crate::RecordsError;
use crate::export_storage::{ExportStorage, FsExportStorage};
use crate::fhir;
use crate::store::{Actor, DEFAULT_PAGE, MAX_PAGE, Query, Store};

/// The gRPC service.
#[derive(Clone)]
pub struct RecordsApi {
    store: Store,
    verifier: Verifier,
    exports: std::sync::Arc<dyn ExportStorage>,
}

impl RecordsApi {
    /// Serves `store`, admitting callers whose bearer token `verifier` accepts; Bulk Data
    /// exports are written under the system's temporary directory.
    pub fn new(store: Store, verifier: Verifier) -> Self {
        RecordsApi {
            store,
            verifier,
            exports: std::sync::Arc::new(FsExportStorage::new(std::env::temp_dir().join("sharedcare-exports"))),
        }
    }

    /// The same API keeping Bulk Data export files in `storage`.
    pub fn with_export_storage(self, storage: std::sync::Arc<dyn ExportStorage>) -> Self {
        RecordsApi {
            exports: storage,
            ..self
        }
    }

    /// Where Bulk Data export files are kept.
    pub fn exports(&self) -> &std::sync::Arc<dyn ExportStorage> {
        &self.exports
    }

    /// The store this API serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The verifier callers' tokens are checked with.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }
}

/// The actor a verified principal is, for an operation needing `scope`. Services need the
/// scope; staff are admitted here and decided per patient by consent; patients read through
/// the passport.
pub fn actor_of(p: &Principal, scope: &str, purpose: String) -> Result<Actor, RecordsError> {
    sharedcare_kit::pdp::actor_of(p, scope, purpose).ok_or_else(|| match p {
        Principal::Patient { .. } => RecordsError::forbidden("patients read their record through the passport service"),
        _ => RecordsError::forbidden(format!("this operation needs scope {scope}")),
    })
}

/// A purpose of use: empty = TREAT; otherwise an HL7 v3 PurposeOfUse code.
pub fn check_purpose(purpose: &str) -> Result<String, RecordsError> {
    sharedcare_kit::pdp::check_purpose(purpose).map_err(|e| RecordsError::invalid("purpose", e.to_string()))
}

/// A page size: 0 = the default, at most [`MAX_PAGE`].
pub fn page_size(n: i32) -> Result<usize, RecordsError> {
    match n {
        0 => Ok(DEFAULT_PAGE),
        1.. if n as usize <= MAX_PAGE => Ok(n as usize),
        _ => Err(RecordsError::invalid(
            "page_size",
            format!("must be 1 to {MAX_PAGE}, got {n}"),
        )),
    }
}

/// Checks a query's cursor, code and date range.
pub fn check_query(q: &Query) -> Result<(), RecordsError> {
    if !q.cursor.is_empty() {
        let ok = crate::store::parse_cursor(&q.cursor)
            .is_some_and(|(_, t, id)| fhir::check_type("cursor", t).is_ok() && fhir::check_id("cursor", id).is_ok());
        if !ok {
            return Err(RecordsError::invalid("cursor", "not a cursor from a previous page"));
        }
    }
    if q.code.chars().any(char::is_whitespace) {
        return Err(RecordsError::invalid(
            "code",
            "a code is \"system|code\" or \"code\", without spaces",
        ));
    }
    if let (Some(a), Some(b)) = (q.date_from, q.date_to)
        && a > b
    {
        return Err(RecordsError::invalid("date", "the range ends before it starts"));
    }
    if let (Some(a), Some(b)) = (q.updated_from, q.updated_to)
        && a > b
    {
        return Err(RecordsError::invalid("_lastUpdated", "the range ends before it starts"));
    }
    Ok(())
}
