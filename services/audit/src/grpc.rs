//! `sharedcare.audit.v1.Audit` over gRPC.

use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::audit::v1::audit_server::Audit;
use sharedcare_proto::audit::v1::{ListByPatientRequest, ListByPatientResponse};
use tonic::{Request, Response, Status};

use crate::AuditError;
use crate::store::Store;

/// The gRPC service.
#[derive(Clone)]
pub struct AuditApi {
    store: Store,
}

impl AuditApi {
    /// Serves `store`.
    pub fn new(store: Store) -> Self {
        AuditApi { store }
    }
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn list_by_patient(
        &self,
        request: Request<ListByPatientRequest>,
    ) -> Result<Response<ListByPatientResponse>, Status> {
        let req = request.into_inner();
        let nhs = NhsNumber::parse(&req.nhs_number).map_err(|e| AuditError::Invalid {
            field: "nhs_number".into(),
            reason: e.to_string(),
        })?;
        let limit = match req.page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(AuditError::Invalid {
                    field: "page_size".into(),
                    reason: format!("{n} is more than 1000"),
                }
                .into());
            }
            n => i64::from(n),
        };
        let before = i64::try_from(req.before_sequence).map_err(|_| AuditError::Invalid {
            field: "before_sequence".into(),
            reason: "out of range".into(),
        })?;
        let entries = self.store.list_by_patient(nhs.as_str(), before, limit).await?;
        let next = if entries.len() as i64 == limit {
            entries.last().map(|e| e.sequence).unwrap_or(0)
        } else {
            0
        };
        Ok(Response::new(ListByPatientResponse {
            entries,
            next_before_sequence: next,
        }))
    }
}
