//! `sharedcare.records.v1.Records` over gRPC: decode, call the store, encode.

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
}

impl RecordsApi {
    /// Serves `store`.
    pub fn new(store: Store) -> Self {
        RecordsApi { store }
    }
}

fn actor<T>(_req: &Request<T>) -> Actor {
    // Until the identity service issues tokens, accesses are recorded as unauthenticated.
    Actor::default()
}

#[tonic::async_trait]
impl Records for RecordsApi {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = actor(&request);
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
        let who = actor(&request);
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
