//! `sharedcare.audit.v1.Audit` over gRPC.

use sharedcare_kit::auth::{BREAK_GLASS_REVIEW_ACTIVITY, Principal, has_scope};
use sharedcare_kit::directory::Directory;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::audit::v1::audit_server::Audit;
use sharedcare_proto::audit::v1::{
    ConsistencyProof, ExportAuditEventsResponse, GetConsistencyProofRequest, GetInclusionProofRequest,
    GetInclusionProofsRequest, GetTreeHeadRequest, InclusionProof, InclusionProofs, ListAlertsRequest,
    ListAlertsResponse, ListByPatientRequest, ListByPatientResponse, QueryRequest, SignedTreeHead,
};
use tonic::{Request, Response, Status};

use crate::AuditError;
use crate::log::Log;
use crate::store::{Filter, Store};

/// The gRPC service.
#[derive(Clone)]
pub struct AuditApi {
    store: Store,
    log: Log,
    directory: std::sync::Arc<Directory>,
}

impl AuditApi {
    /// Serves `store` and its verifiable `log` to the callers the process's gRPC server
    /// verified ([`sharedcare_kit::caller`]).
    pub fn new(store: Store, log: Log) -> Self {
        AuditApi {
            store,
            log,
            directory: std::sync::Arc::new(Directory::known(&[])),
        }
    }

    /// The same API reading which organisations a break-glass reviewer covers from `directory`.
    pub fn with_directory(self, directory: Directory) -> Self {
        AuditApi {
            directory: std::sync::Arc::new(directory),
            ..self
        }
    }

    /// The query `request` asks for, once its caller may ask it: services with `audit.read`;
    /// patients (P9) their own record; staff their own organisation's accesses, and a
    /// break-glass reviewer (activity B0015) those of organisations they cover (theirs and those
    /// under it in identity's directory), so a review can show what a grant opened.
    async fn allowed<T>(&self, request: &Request<T>, req: &QueryRequest) -> Result<Filter, Status> {
        let who = sharedcare_kit::caller::of(request)?;
        let f = filter(req)?;
        let allowed = match &who {
            Principal::Service { .. } => has_scope(&who, "audit.read"),
            Principal::Patient { nhs_number, proofing } => {
                proofing.sees_own_record() && req.nhs_number == nhs_number.as_str()
            }
            Principal::Staff { role, .. } if req.actor_organisation.eq_ignore_ascii_case(&role.org_code) => true,
            Principal::Staff { role, .. }
                if !req.actor_organisation.is_empty()
                    && role.activity_codes.iter().any(|a| a == BREAK_GLASS_REVIEW_ACTIVITY) =>
            {
                let bearer = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(sharedcare_kit::auth::bearer)
                    .unwrap_or_default();
                self.directory
                    .covers(&role.org_code, &req.actor_organisation, bearer)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?
            }
            Principal::Staff { .. } => false,
        };
        if !allowed {
            return Err(Status::permission_denied(format!(
                "this query needs scope audit.read; staff may query their own organisation (actor_organisation), a break-glass reviewer ({BREAK_GLASS_REVIEW_ACTIVITY}) the organisations they cover, patients (P9) their own record"
            )));
        }
        Ok(f)
    }
}

impl AuditApi {
    /// Inclusion proofs for `indexes` in the tree of `tree_size` (0 = the latest head), once
    /// `who` may read every entry asked for.
    async fn proofs(&self, who: &Principal, indexes: &[u64], tree_size: u64) -> Result<Vec<InclusionProof>, Status> {
        let size = if tree_size == 0 {
            self.log.latest().await?.tree_size
        } else {
            tree_size
        };
        let found = self.log.inclusions(indexes, size).await?;
        let mut out = Vec::with_capacity(found.len());
        for (entry, path) in found {
            // An entry about no patient (e.g. a read of an Organization) is for services only; a
            // stored number that does not parse is audit's own fault, never the caller's.
            let allowed = match entry.nhs_number.as_str() {
                "" => matches!(who, Principal::Service { .. }) && has_scope(who, "audit.read"),
                n => {
                    let nhs = NhsNumber::parse(n).map_err(|e| {
                        Status::from(AuditError::Corrupt(format!(
                            "entry {}: nhs_number {e}",
                            entry.leaf_index
                        )))
                    })?;
                    may_read(who, &nhs)
                }
            };
            if !allowed {
                return Err(Status::permission_denied(format!(
                    "entry {} is about a patient whose audit trail the caller may not read",
                    entry.leaf_index
                )));
            }
            let data = crate::leaf::leaf_data(&entry);
            out.push(InclusionProof {
                leaf_index: entry.leaf_index,
                tree_size: size,
                leaf_hash: crate::merkle::leaf_hash(data.as_bytes()).to_vec(),
                leaf_data: data,
                audit_path: path.iter().map(|h| h.to_vec()).collect(),
                entry: Some(entry),
            });
        }
        Ok(out)
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Status {
    AuditError::invalid(field, reason).into()
}

/// Who may read a patient's audit trail: services with `audit.read`, staff (information
/// governance; narrowed by the consent issue), and the patient themself at P9.
fn may_read(p: &Principal, nhs: &NhsNumber) -> bool {
    match p {
        Principal::Service { .. } => has_scope(p, "audit.read"),
        Principal::Staff { .. } => true,
        Principal::Patient { nhs_number, proofing } => nhs_number == nhs && proofing.sees_own_record(),
    }
}

/// Checks a query and who may run it: services with `audit.read` anything; a patient at P9
/// their own record; staff their own organisation's activity.
fn filter(req: &QueryRequest) -> Result<Filter, Status> {
    if req.nhs_number.is_empty() && req.actor.is_empty() && req.actor_organisation.is_empty() {
        return Err(invalid("nhs_number", "name a patient, an actor or an organisation"));
    }
    if !req.nhs_number.is_empty() {
        NhsNumber::parse(&req.nhs_number).map_err(|e| invalid("nhs_number", e.to_string()))?;
    }
    if !req.outcome.is_empty() && sharedcare_kit::access::Outcome::parse(&req.outcome).is_none() {
        let words: Vec<&str> = sharedcare_kit::access::Outcome::ALL
            .iter()
            .map(|o| o.as_str())
            .collect();
        return Err(invalid("outcome", format!("expected one of {}", words.join(", "))));
    }
    let from_us = req.from.as_ref().map(sharedcare_kit::db::micros);
    let to_us = req.to.as_ref().map(sharedcare_kit::db::micros);
    if let (Some(a), Some(b)) = (from_us, to_us)
        && a > b
    {
        return Err(invalid("to", "is before from"));
    }
    Ok(Filter {
        nhs_number: req.nhs_number.clone(),
        actor: req.actor.clone(),
        actor_organisation: req.actor_organisation.to_ascii_uppercase(),
        outcome: req.outcome.clone(),
        from_us,
        to_us,
        before: i64::try_from(req.before_sequence).map_err(|_| invalid("before_sequence", "out of range"))?,
        limit: page(req.page_size)?,
    })
}

fn page(size: u32) -> Result<i64, Status> {
    match size {
        0 => Ok(100),
        n if n > 1000 => Err(invalid("page_size", format!("{n} is more than 1000"))),
        n => Ok(i64::from(n)),
    }
}

fn next_before(entries: &[sharedcare_proto::audit::v1::AuditEntry], limit: i64) -> u64 {
    if entries.len() as i64 == limit {
        entries.last().map(|e| e.sequence).unwrap_or(0)
    } else {
        0
    }
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<ListByPatientResponse>, Status> {
        let f = self.allowed(&request, request.get_ref()).await?;
        let entries = self.store.query(&f).await?;
        let next = next_before(&entries, f.limit);
        Ok(Response::new(ListByPatientResponse {
            entries,
            next_before_sequence: next,
        }))
    }

    async fn export_audit_events(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<ExportAuditEventsResponse>, Status> {
        let f = self.allowed(&request, request.get_ref()).await?;
        let entries = self.store.query(&f).await?;
        Ok(Response::new(ExportAuditEventsResponse {
            bundle_json: crate::fhir::bundle(&entries).to_string(),
            next_before_sequence: next_before(&entries, f.limit),
        }))
    }

    async fn list_alerts(&self, request: Request<ListAlertsRequest>) -> Result<Response<ListAlertsResponse>, Status> {
        let who = sharedcare_kit::caller::of(&request)?;
        let req = request.into_inner();
        let org = match &who {
            Principal::Service { .. } if has_scope(&who, "audit.read") => req.actor_organisation.to_ascii_uppercase(),
            Principal::Staff { role, .. }
                if req.actor_organisation.is_empty() || req.actor_organisation.eq_ignore_ascii_case(&role.org_code) =>
            {
                role.org_code.clone()
            }
            _ => {
                return Err(Status::permission_denied(
                    "alerts need scope audit.read, or a staff role (for its own organisation)",
                ));
            }
        };
        let alerts = self.store.alerts(&org, page(req.page_size)?).await?;
        Ok(Response::new(ListAlertsResponse { alerts }))
    }

    async fn list_by_patient(
        &self,
        request: Request<ListByPatientRequest>,
    ) -> Result<Response<ListByPatientResponse>, Status> {
        let who = sharedcare_kit::caller::of(&request)?;
        let req = request.into_inner();
        let nhs = NhsNumber::parse(&req.nhs_number).map_err(|e| AuditError::invalid("nhs_number", e.to_string()))?;
        if !may_read(&who, &nhs) {
            return Err(Status::permission_denied(
                "reading this audit trail needs scope audit.read, a staff role, or being the patient (P9)",
            ));
        }
        let limit = match req.page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(AuditError::invalid("page_size", format!("{n} is more than 1000")).into());
            }
            n => i64::from(n),
        };
        let before =
            i64::try_from(req.before_sequence).map_err(|_| AuditError::invalid("before_sequence", "out of range"))?;
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
        sharedcare_kit::caller::of(&request)?;
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
        let who = sharedcare_kit::caller::of(&request)?;
        let req = request.into_inner();
        let mut proofs = self.proofs(&who, &[req.leaf_index], req.tree_size).await?;
        Ok(Response::new(proofs.remove(0)))
    }

    async fn get_inclusion_proofs(
        &self,
        request: Request<GetInclusionProofsRequest>,
    ) -> Result<Response<InclusionProofs>, Status> {
        let who = sharedcare_kit::caller::of(&request)?;
        let req = request.into_inner();
        if req.leaf_indexes.len() > 1000 {
            return Err(invalid(
                "leaf_indexes",
                format!("{} asked for; at most 1000", req.leaf_indexes.len()),
            ));
        }
        let proofs = self.proofs(&who, &req.leaf_indexes, req.tree_size).await?;
        Ok(Response::new(InclusionProofs { proofs }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        sharedcare_kit::caller::of(&request)?;
        let req = request.into_inner();
        let proof = self.log.consistency(req.first, req.second).await?;
        Ok(Response::new(ConsistencyProof {
            first: req.first,
            second: req.second,
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }
}
