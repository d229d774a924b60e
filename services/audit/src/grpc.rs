//! `sharedcare.audit.v1.Audit` over gRPC.

use sharedcare_kit::auth::{Principal, Verifier, has_scope};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::audit::v1::audit_server::Audit;
use sharedcare_proto::audit::v1::{
    ConsistencyProof, GetConsistencyProofRequest, GetInclusionProofRequest, GetTreeHeadRequest, InclusionProof,
    ListByPatientRequest, ListByPatientResponse, SignedTreeHead,
};
use tonic::{Request, Response, Status};

use crate::AuditError;
use crate::log::Log;
use crate::store::Store;

/// The gRPC service.
#[derive(Clone)]
pub struct AuditApi {
    store: Store,
    log: Log,
    verifier: Verifier,
}

impl AuditApi {
    /// Serves `store` and its verifiable `log` to callers whose bearer token `verifier` accepts.
    pub fn new(store: Store, log: Log, verifier: Verifier) -> Self {
        AuditApi { store, log, verifier }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Status {
    AuditError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
    .into()
}

/// Who may read a patient's audit trail: services with `audit.read`, staff (information
/// governance; narrowed by the consent issue), and the patient themself at P9.
fn may_read(p: &Principal, nhs: &NhsNumber) -> bool {
    match p {
        Principal::Service { .. } => has_scope(p, "audit.read"),
        Principal::Staff { .. } => true,
        Principal::Patient { nhs_number, proofing } => nhs_number == nhs && proofing == "P9",
    }
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn list_by_patient(
        &self,
        request: Request<ListByPatientRequest>,
    ) -> Result<Response<ListByPatientResponse>, Status> {
        let who = self.verifier.from_metadata(request.metadata()).await?;
        let req = request.into_inner();
        let nhs = NhsNumber::parse(&req.nhs_number).map_err(|e| AuditError::Invalid {
            field: "nhs_number".into(),
            reason: e.to_string(),
        })?;
        if !may_read(&who, &nhs) {
            return Err(Status::permission_denied(
                "reading this audit trail needs scope audit.read, a staff role, or being the patient (P9)",
            ));
        }
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

    async fn get_tree_head(&self, request: Request<GetTreeHeadRequest>) -> Result<Response<SignedTreeHead>, Status> {
        self.verifier.from_metadata(request.metadata()).await?;
        let head = if request.get_ref().fresh {
            self.log.sign_head().await?
        } else {
            self.log.latest().await?
        };
        Ok(Response::new(head))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        let who = self.verifier.from_metadata(request.metadata()).await?;
        let req = request.into_inner();
        let size = if req.tree_size == 0 {
            self.log.latest().await?.tree_size
        } else {
            req.tree_size
        };
        let (entry, path) = self.log.inclusion(req.leaf_index, size).await?;
        let nhs = NhsNumber::parse(&entry.nhs_number).map_err(|e| invalid("leaf_index", e.to_string()))?;
        if !may_read(&who, &nhs) {
            return Err(Status::permission_denied(
                "this entry is about a patient whose audit trail the caller may not read",
            ));
        }
        let data = crate::log::leaf_data(&entry);
        Ok(Response::new(InclusionProof {
            leaf_index: req.leaf_index,
            tree_size: size,
            leaf_hash: crate::merkle::leaf_hash(data.as_bytes()).to_vec(),
            leaf_data: data,
            audit_path: path.iter().map(|h| h.to_vec()).collect(),
            entry: Some(entry),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        self.verifier.from_metadata(request.metadata()).await?;
        let req = request.into_inner();
        let proof = self.log.consistency(req.first, req.second).await?;
        Ok(Response::new(ConsistencyProof {
            first: req.first,
            second: req.second,
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }
}
