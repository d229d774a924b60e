//! Writes the demo ICS's clinical record ([`crate::demo_record`]) into an empty shared care
//! record through the door every feeding system uses: the demo's ICS integration engine (the
//! `ics-integration` client, a trusted feed) writes each organisation's part over records' gRPC
//! API with that organisation as its source, so consent decides each write, audit records it,
//! provenance names the organisation and the passport projects it. The patients' sharing
//! choices and the attorney go to consent the same way, as a GP system's would.
//!
//! `up` seeds on the first start of a demo platform; `sharedcare demo seed` does it for a
//! running one. Only an empty record is seeded: a record already holding the demo is left as
//! it is, and one holding anything else is refused, saying what it holds.

use anyhow::{Context, bail};
use chrono::NaiveDate;
use serde_json::json;
use sharedcare_identity::demo::INTEGRATION_CLIENT;
use sharedcare_kit::auth::ServiceToken;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{AddRepresentativeRequest, Directive, PutDirectiveRequest, Representative};
use sharedcare_proto::records::v1::records_client::RecordsClient;
use sharedcare_proto::records::v1::{HoldingsRequest, PutManyRequest};
use tonic::transport::Channel;

use crate::demo_record::{Record, records};

/// What seeding did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeded {
    /// Wrote the demo record: patients and resources.
    Wrote { patients: usize, resources: usize },
    /// The record already holds exactly the demo: nothing written.
    AlreadyThere,
    /// The record holds other data: nothing written.
    NotEmpty { patients: i64, resources: i64 },
}

impl Seeded {
    /// What happened, in a sentence; `Err` when the record held other data (a refusal).
    pub fn describe(&self) -> anyhow::Result<String> {
        match self {
            Seeded::Wrote { patients, resources } => Ok(format!(
                "seeded the demo's clinical record: {resources} resources for {patients} patients, written by the organisations that hold them"
            )),
            Seeded::AlreadyThere => Ok("the demo's clinical record is already there: nothing to do".into()),
            Seeded::NotEmpty { patients, resources } => bail!(
                "the record already holds {patients} patients and {resources} resources: the demo is seeded only into an empty record, so that it never mixes with real or other data"
            ),
        }
    }
}

/// The security label system consent's directives name categories in (HL7 v3 ActCode).
const LABELS: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Seeds the demo record as of `today` through the platform whose identity serves at `http`
/// (its token endpoint), whose records serve gRPC at `grpc` and consent at `consent_grpc`
/// (the same address in `up`; separate Services in a cluster).
pub async fn seed(http: &str, grpc: &str, consent_grpc: &str, today: NaiveDate) -> anyhow::Result<Seeded> {
    let demo = records(today);
    let token = ServiceToken::new(
        format!("{}/oauth2/token", http.trim_end_matches('/')),
        INTEGRATION_CLIENT.0,
        INTEGRATION_CLIENT.1,
        "records.write records.bulk consent.write",
    )?;
    let bearer = token
        .get()
        .await
        .context("the demo's integration engine could not get a token (is this the demo ICS?)")?;
    let channel = Channel::from_shared(grpc.to_string())?
        .connect()
        .await
        .with_context(|| format!("cannot reach records at {grpc}"))?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {bearer}").parse().context("token")?;
    let mut records_api = RecordsClient::new(channel.clone());
    let held = records_api
        .holdings(authorised(&bearer, HoldingsRequest {}))
        .await
        .context("records could not say what it holds")?
        .into_inner();
    let (patients, resources) = (demo.len(), demo.iter().map(Record::resources).sum::<usize>());
    if held.patients == patients as i64 && held.resources == resources as i64 {
        return Ok(Seeded::AlreadyThere);
    }
    if held.patients > 0 || held.resources > 0 {
        return Ok(Seeded::NotEmpty {
            patients: held.patients,
            resources: held.resources,
        });
    }
    let consent_channel = if consent_grpc == grpc {
        channel
    } else {
        Channel::from_shared(consent_grpc.to_string())?
            .connect()
            .await
            .with_context(|| format!("cannot reach consent at {consent_grpc}"))?
    };
    let mut consent = ConsentClient::new(consent_channel);
    for r in &demo {
        for code in &r.withholds {
            let directive = json!({
                "resourceType": "Consent",
                "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
                "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": r.nhs_number}},
                "dateTime": format!("{}T09:00:00Z", today - chrono::Duration::days(540)),
                "policyRule": {"coding": [{"system": LABELS, "code": "OPTIN"}]},
                "provision": {"type": "deny", "securityLabel": [{"system": LABELS, "code": code}]},
            });
            consent
                .put_directive(authorised(
                    &bearer,
                    PutDirectiveRequest {
                        directive: Some(Directive {
                            resource_json: directive.to_string(),
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .with_context(|| format!("consent refused the demo's choice to withhold {code}"))?;
        }
        if let Some((rep, kind)) = &r.representative {
            let start = (today - chrono::Duration::days(700))
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp())
                .unwrap_or_default();
            consent
                .add_representative(authorised(
                    &bearer,
                    AddRepresentativeRequest {
                        representative: Some(Representative {
                            nhs_number: r.nhs_number.clone(),
                            representative_nhs_number: rep.clone(),
                            kind: kind.to_string(),
                            start,
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .context("consent refused the demo's representative")?;
        }
        for part in &r.parts {
            records_api
                .put_many(authorised(
                    &bearer,
                    PutManyRequest {
                        resources_json: part.resources.iter().map(|v| v.to_string()).collect(),
                        source_organisation: part.org.to_string(),
                        purpose: String::new(),
                        ..Default::default()
                    },
                ))
                .await
                .with_context(|| format!("records refused {}'s part of {}'s demo record", part.org, r.patient_id))?;
        }
    }
    Ok(Seeded::Wrote { patients, resources })
}

/// `msg` with the integration engine's bearer token.
fn authorised<T>(bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", bearer.clone());
    r
}
