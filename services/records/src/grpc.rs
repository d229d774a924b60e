//! `sharedcare.records.v1.Records` over gRPC: decode, call the store, encode.

use sharedcare_kit::auth::{Principal, Verifier, has_scope};
use sharedcare_kit::db;
use sharedcare_kit::nhs::OdsCode;
use sharedcare_proto::records::v1::records_server::Records;
use sharedcare_proto::records::v1::{GetRequest, GetResponse, PutRequest, PutResponse};
use tonic::{Request, Response, Status};

use crate::store::{Actor, Store};
use crate::{RecordsError, fhir};

/// The gRPC service.
#[derive(Clone)]
pub struct RecordsApi {
    store: Store,
    verifier: Verifier,
}

impl RecordsApi {
    /// Serves `store`, admitting callers whose bearer token `verifier` accepts.
    pub fn new(store: Store, verifier: Verifier) -> Self {
        RecordsApi { store, verifier }
    }

    /// The caller from its bearer token, acting for `purpose`. Services need the scope for the
    /// operation; staff are admitted here and decided per patient by consent; patients read
    /// through the passport.
    async fn actor<T>(&self, req: &Request<T>, scope: &str, purpose: &str) -> Result<Actor, Status> {
        let purpose = check_purpose(purpose)?;
        let p = self.verifier.from_metadata(req.metadata()).await?;
        match &p {
            Principal::Service { .. } if !has_scope(&p, scope) => {
                Err(Status::permission_denied(format!("this operation needs scope {scope}")))
            }
            Principal::Patient { .. } => Err(Status::permission_denied(
                "patients read their record through the passport service",
            )),
            Principal::Staff { role, .. } => Ok(Actor {
                kind: "staff",
                id: p.id(),
                organisation: role.org_code.clone(),
                role: role.role_code.clone(),
                role_profile: role.person_roleid.clone(),
                purpose,
            }),
            Principal::Service { .. } => Ok(Actor {
                kind: "service",
                id: p.id(),
                purpose,
                ..Actor::default()
            }),
        }
    }
}

/// A purpose of use: empty = TREAT; otherwise an HL7 v3 PurposeOfUse code (upper-case
/// letters and '-', e.g. TREAT, ETREAT, BTG, CAREMGT, HRESCH).
fn check_purpose(purpose: &str) -> Result<String, RecordsError> {
    if purpose.is_empty() {
        return Ok("TREAT".into());
    }
    if purpose.len() > 32 || !purpose.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return Err(RecordsError::invalid(
            "purpose",
            format!("{purpose:?} is not a PurposeOfUse code (e.g. TREAT, ETREAT, BTG)"),
        ));
    }
    Ok(purpose.to_string())
}

#[tonic::async_trait]
impl Records for RecordsApi {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = self
            .actor(&request, "records.write", &request.get_ref().purpose)
            .await?;
        let req = request.into_inner();
        let resource = fhir::parse(&req.resource_json)?;
        let source = if req.source_organisation.is_empty() {
            String::new()
        } else {
            OdsCode::parse(&req.source_organisation)
                .map_err(|e| RecordsError::invalid("source_organisation", e.to_string()))?
                .as_str()
                .to_string()
        };
        let s = self.store.put(resource, &source, &who).await?;
        Ok(Response::new(PutResponse {
            resource_type: s.resource_type,
            id: s.id,
            version: s.version,
            last_updated: Some(db::timestamp(s.last_updated_us)),
            resource_json: s.body,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let who = self.actor(&request, "records.read", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        fhir::check_type("resource_type", &req.resource_type)?;
        fhir::check_id("id", &req.id)?;
        let s = self.store.get(&req.resource_type, &req.id, &who).await?;
        Ok(Response::new(GetResponse {
            resource_type: s.resource_type,
            id: s.id,
            version: s.version,
            last_updated: Some(db::timestamp(s.last_updated_us)),
            resource_json: s.body,
        }))
    }
}
