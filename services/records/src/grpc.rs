//! `sharedcare.records.v1.Records` over gRPC: decode, call the store, encode.

use sharedcare_kit::db;
use sharedcare_kit::edge::{Refusal, Refuse};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::records::v1::records_server::Records;
use sharedcare_proto::records::v1::{
    DeleteRequest, DeleteResponse, FindPatientsRequest, GetRequest, GetResponse, HistoryRequest, HistoryResponse,
    HoldingsRequest, HoldingsResponse, ImportBundleRequest, ImportBundleResponse, PutManyRequest, PutManyResponse,
    PutRequest, PutResponse, SearchRequest, SearchResponse, VReadRequest,
};
use tonic::{Request, Response, Status};

use crate::api::{RecordsApi, actor_of, check_purpose, check_query, page_size};
use crate::care::writing_organisation;
use crate::store::{Actor, Query, Sort, Stored};
use crate::{RecordsError, fhir};

/// The caller from its bearer token, acting for `purpose`.
async fn actor<T>(req: &Request<T>, scope: &str, purpose: &str) -> Result<Actor, Status> {
    let purpose = check_purpose(purpose)?;
    let p = sharedcare_kit::caller::of(req)?;
    Ok(actor_of(&p, scope, purpose)?)
}

#[tonic::async_trait]
impl Records for RecordsApi {
    async fn holdings(&self, request: Request<HoldingsRequest>) -> Result<Response<HoldingsResponse>, Status> {
        let who = actor(&request, "records.bulk", "").await?;
        if who.kind != "service" {
            return Err(RecordsError::forbidden("holdings need a service token with scope records.bulk").into());
        }
        let (patients, resources) = self.store().holdings().await?;
        Ok(Response::new(HoldingsResponse { patients, resources }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = actor(&request, "records.write", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        let resource = fhir::parse(&req.resource_json)?;
        let source = writing_organisation(&who, &req.source_organisation, "source_organisation")?;
        if req.if_match_version < 0 {
            return Err(RecordsError::invalid("if_match_version", "must be 0 (none) or a version").into());
        }
        let s = self.store().put(resource, &source, &who, req.if_match_version).await?;
        Ok(Response::new(put_response(s)))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let who = actor(&request, "records.write", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        fhir::check_type("resource_type", &req.resource_type)?;
        fhir::check_id("id", &req.id)?;
        let source = writing_organisation(&who, &req.source_organisation, "source_organisation")?;
        let s = self.store().delete(&req.resource_type, &req.id, &source, &who).await?;
        Ok(Response::new(DeleteResponse {
            version: s.version,
            last_updated: Some(sharedcare_kit::db::timestamp(s.last_updated_us)),
        }))
    }

    async fn put_many(&self, request: Request<PutManyRequest>) -> Result<Response<PutManyResponse>, Status> {
        let who = actor(&request, "records.write", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        if req.resources_json.len() > crate::bundle::MAX_ENTRIES {
            return Err(RecordsError::invalid(
                "resources_json",
                format!("at most {} per call", crate::bundle::MAX_ENTRIES),
            )
            .into());
        }
        let source = writing_organisation(&who, &req.source_organisation, "source_organisation")?;
        let document = &req.source_document;
        if document.len() > 256 || document.chars().any(|c| c.is_control()) {
            return Err(RecordsError::invalid(
                "source_document",
                "at most 256 characters, none of them control characters",
            )
            .into());
        }
        if let Some(bad) = req
            .only_if_absent
            .iter()
            .find(|&&i| usize::try_from(i).map_or(true, |i| i >= req.resources_json.len()))
        {
            return Err(RecordsError::invalid(
                "only_if_absent",
                format!(
                    "{bad} is not the position of a resource (there are {})",
                    req.resources_json.len()
                ),
            )
            .into());
        }
        let mut puts = Vec::with_capacity(req.resources_json.len());
        for (i, json) in req.resources_json.iter().enumerate() {
            let r = fhir::parse(json).map_err(|e| at(i, e))?;
            let absent = req
                .only_if_absent
                .iter()
                .any(|&p| usize::try_from(p).is_ok_and(|p| p == i));
            puts.push((r, if absent { crate::store::ONLY_IF_ABSENT } else { 0 }));
        }
        let stored = self
            .store()
            .put_all_from(puts, &source, &who, document)
            .await
            .map_err(|(i, e)| at(i, e))?;
        Ok(Response::new(PutManyResponse {
            stored: stored.into_iter().map(put_response).collect(),
        }))
    }

    async fn import_bundle(
        &self,
        request: Request<ImportBundleRequest>,
    ) -> Result<Response<ImportBundleResponse>, Status> {
        let who = actor(&request, "records.write", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        let source = writing_organisation(&who, &req.source_organisation, "source_organisation")?;
        let bundle: serde_json::Value = serde_json::from_str(&req.bundle_json)
            .map_err(|e| RecordsError::invalid("bundle_json", format!("not valid JSON: {e}")))?;
        let (_, out) = crate::bundle::process(self.store(), bundle, &source, &who, "").await?;
        Ok(Response::new(ImportBundleResponse {
            response_bundle_json: out.to_string(),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let who = actor(&request, "records.read", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        fhir::check_type("resource_type", &req.resource_type)?;
        fhir::check_id("id", &req.id)?;
        let s = self.store().get(&req.resource_type, &req.id, &who).await?;
        Ok(Response::new(response(s)))
    }

    async fn v_read(&self, request: Request<VReadRequest>) -> Result<Response<GetResponse>, Status> {
        let who = actor(&request, "records.read", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        fhir::check_type("resource_type", &req.resource_type)?;
        fhir::check_id("id", &req.id)?;
        if req.version < 1 {
            return Err(RecordsError::invalid("version", "must be 1 or more (meta.versionId)").into());
        }
        let s = self
            .store()
            .vread(&req.resource_type, &req.id, req.version, &who)
            .await?;
        Ok(Response::new(response(s)))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        let who = actor(&request, "records.read", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        fhir::check_type("resource_type", &req.resource_type)?;
        fhir::check_id("id", &req.id)?;
        let size = page_size(req.page_size)?;
        let page = self
            .store()
            .history(&req.resource_type, &req.id, size, &req.cursor, &who)
            .await?;
        Ok(Response::new(HistoryResponse {
            versions: page.items.into_iter().map(response).collect(),
            next_cursor: page.next_cursor,
            some_withheld: page.some_withheld,
        }))
    }

    async fn find_patients(&self, request: Request<FindPatientsRequest>) -> Result<Response<SearchResponse>, Status> {
        let who = actor(&request, "records.read", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        let mut q = crate::demographics::PatientQuery::default();
        for (i, p) in req.parameters.iter().enumerate() {
            let field = format!("parameters[{i}]");
            if p.name == "identifier" {
                q.nhs_number = Some(crate::demographics::nhs_identifier(&field, &p.value)?);
            } else if !q
                .add(&p.name, &p.value)
                .map_err(|e| RecordsError::invalid(field.clone(), e.to_string()))?
            {
                return Err(RecordsError::invalid(
                    field,
                    format!("{:?} is not a Patient search parameter here (family, given, name, birthdate, gender, address-postalcode, identifier)", p.name),
                )
                .into());
            }
        }
        if !req.cursor.is_empty() {
            fhir::check_id("cursor", &req.cursor)?;
        }
        let found = self
            .store()
            .find_patients(&q, page_size(req.page_size)?, &req.cursor, &who)
            .await?;
        Ok(Response::new(SearchResponse {
            resources: found.patients.into_iter().map(response).collect(),
            next_cursor: found.next_cursor,
            some_withheld: false,
        }))
    }

    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let who = actor(&request, "records.read", &request.get_ref().purpose).await?;
        let req = request.into_inner();
        let q = query(req)?;
        let page = self.store().search(&q, &who).await?;
        Ok(Response::new(SearchResponse {
            resources: page.items.into_iter().map(response).collect(),
            next_cursor: page.next_cursor,
            some_withheld: page.some_withheld,
        }))
    }
}

/// `e` about the resource at `i` of a PutMany.
fn at(i: usize, e: RecordsError) -> RecordsError {
    match e {
        RecordsError::Refused(Refusal::Invalid { field, reason }) => {
            RecordsError::invalid(format!("resources[{i}].{field}"), reason)
        }
        RecordsError::Denied(why) => RecordsError::Denied(format!("resources[{i}]: {why}")),
        other => other,
    }
}

fn put_response(s: Stored) -> PutResponse {
    PutResponse {
        resource_type: s.resource_type,
        id: s.id,
        version: s.version,
        last_updated: (!s.unchanged).then(|| db::timestamp(s.last_updated_us)),
        resource_json: s.body,
        unchanged: s.unchanged,
    }
}

/// A stored version as the API returns it.
fn response(s: Stored) -> GetResponse {
    GetResponse {
        resource_type: s.resource_type,
        id: s.id,
        version: s.version,
        last_updated: Some(db::timestamp(s.last_updated_us)),
        resource_json: s.body,
    }
}

/// Checks a search request and turns it into a [`Query`].
pub fn query(req: SearchRequest) -> Result<Query, RecordsError> {
    let nhs_number = match (req.patient.is_empty(), req.nhs_number.is_empty()) {
        (true, true) => {
            return Err(RecordsError::invalid(
                "patient",
                "name the patient (patient or nhs_number)",
            ));
        }
        (false, false) => {
            return Err(RecordsError::invalid(
                "nhs_number",
                "give patient or nhs_number, not both",
            ));
        }
        (false, true) => {
            fhir::check_id("patient", &req.patient)?;
            String::new()
        }
        (true, false) => NhsNumber::parse(&req.nhs_number)
            .map_err(|e| RecordsError::invalid("nhs_number", e.to_string()))?
            .as_str()
            .to_string(),
    };
    for (i, t) in req.types.iter().enumerate() {
        fhir::check_type(&format!("types[{i}]"), t)?;
    }
    let q = Query {
        nhs_number,
        patient: req.patient,
        types: req.types,
        date_from: req.date_from.as_ref().map(db::micros),
        date_to: req.date_to.as_ref().map(db::micros),
        updated_from: req.last_updated_from.as_ref().map(db::micros),
        updated_to: req.last_updated_to.as_ref().map(db::micros),
        code: req.code,
        page_size: page_size(req.page_size)?,
        cursor: req.cursor,
        sort: Sort::parse("sort", &req.sort)?,
    };
    check_query(&q)?;
    Ok(q)
}
