//! GP Connect Access Record: Structured, as a consumer: the registered GP practice's
//! structured record (allergies and medication) fetched with `$gpc.getstructuredrecord`,
//! mapped from STU3 to R4 ([`stu3`]) and written to records as the practice.
//!
//! The request is GP Connect 1.2's: a FHIR `Parameters` body, the Spine headers
//! (`Ssp-TraceID`, `Ssp-From` our ASID, `Ssp-To` the practice's, `Ssp-InteractionID`) and an
//! unsigned JWT (`alg: none`, as GP Connect specifies; the Spine Secure Proxy authenticates
//! the systems by TLS) with the claims GP Connect requires: `reason_for_request`,
//! `requested_scope`, `requesting_device`, `requesting_organization` and
//! `requesting_practitioner`, the practitioner being `sub`.

pub mod fetch;
pub mod stu3;

use base64::Engine as _;
use serde_json::{Value, json};
use sharedcare_kit::nhs::NhsNumber;

/// `Ssp-InteractionID` of Access Record: Structured.
pub const INTERACTION: &str = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1";
const SDS_USER: &str = "https://fhir.nhs.uk/Id/sds-user-id";
const SDS_ROLE_PROFILE: &str = "https://fhir.nhs.uk/Id/sds-role-profile-id";
const DEVICE_SYSTEM: &str = "https://sharedcare.nhs.uk/Id/device";

pub use crate::config::GpConnectConfig;

/// The clinician a fetch is made for (`requesting_practitioner`, and `sub`).
#[derive(Clone, Debug)]
pub struct Practitioner {
    /// SDS user id (`nhsid_useruid`).
    pub sds_user_id: String,
    /// Their selected role profile.
    pub role_profile_id: String,
    /// Family name.
    pub family: String,
    /// Given name.
    pub given: String,
}

/// The request for `nhs`'s structured record: body, and headers in order.
pub struct Request {
    /// The `Parameters` resource.
    pub body: Value,
    /// `Ssp-*`, `Authorization`, `Accept`, `Content-Type`.
    pub headers: Vec<(&'static str, String)>,
    /// The `Ssp-TraceID`, also the fetched resources' `meta.source` fragment.
    pub trace_id: String,
}

impl GpConnectConfig {
    /// `$gpc.getstructuredrecord`'s URL.
    pub fn url(&self) -> String {
        format!(
            "{}/Patient/$gpc.getstructuredrecord",
            self.endpoint.trim_end_matches('/')
        )
    }

    /// The request for `nhs`'s record (allergies with resolved ones, medication with issues)
    /// made for `who` at `now` (unix seconds).
    pub fn request(&self, nhs: &NhsNumber, who: &Practitioner, now: i64) -> Request {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let claims = json!({
            "iss": "https://sharedcare.nhs.uk/connectors",
            "sub": who.sds_user_id,
            "aud": self.url(),
            "exp": now + 300,
            "iat": now,
            "reason_for_request": "directcare",
            "requested_scope": "patient/*.read",
            "requesting_device": {
                "resourceType": "Device",
                "identifier": [{"system": DEVICE_SYSTEM, "value": "sharedcare-connectors"}],
                "model": "Sharedcare connectors",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "requesting_organization": {
                "resourceType": "Organization",
                "identifier": [{"system": crate::adt::ODS_SYSTEM, "value": self.organisation_ods}],
                "name": self.organisation_name,
            },
            "requesting_practitioner": {
                "resourceType": "Practitioner",
                "id": who.sds_user_id,
                "identifier": [
                    {"system": SDS_USER, "value": who.sds_user_id},
                    {"system": SDS_ROLE_PROFILE, "value": who.role_profile_id},
                ],
                "name": [{"family": who.family, "given": [who.given]}],
            },
        });
        let part = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let jwt = format!("{}.{}.", part(&json!({"alg": "none", "typ": "JWT"})), part(&claims));
        let body = json!({
            "resourceType": "Parameters",
            "parameter": [
                {"name": "patientNHSNumber", "valueIdentifier": {"system": crate::adt::NHS_NUMBER_SYSTEM, "value": nhs.as_str()}},
                {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]},
                {"name": "includeMedication", "part": [{"name": "includePrescriptionIssues", "valueBoolean": true}]},
            ],
        });
        let headers = vec![
            ("Ssp-TraceID", trace_id.clone()),
            ("Ssp-From", self.consumer_asid.clone()),
            ("Ssp-To", self.provider_asid.clone()),
            ("Ssp-InteractionID", INTERACTION.to_string()),
            ("Authorization", format!("Bearer {jwt}")),
            ("Accept", "application/fhir+json".to_string()),
            ("Content-Type", "application/fhir+json".to_string()),
        ];
        Request {
            body,
            headers,
            trace_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GpConnectConfig {
        GpConnectConfig {
            endpoint: "http://gp.example/fhir/".into(),
            ods_code: "A20047".into(),
            provider_asid: "918999198993".into(),
            consumer_asid: "200000000359".into(),
            organisation_ods: "RX1".into(),
            organisation_name: "Northbridge Hospital".into(),
            client_id: "gp-connect".into(),
            ..Default::default()
        }
    }

    fn claims(r: &Request) -> Value {
        let auth = &r.headers.iter().find(|(k, _)| *k == "Authorization").expect("auth").1;
        let jwt = auth.strip_prefix("Bearer ").expect("bearer");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "header.claims.(empty signature)");
        assert_eq!(parts[2], "", "GP Connect's JWT is unsigned");
        let decode = |p: &str| -> Value {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .expect("base64url");
            serde_json::from_slice(&bytes).expect("json")
        };
        assert_eq!(decode(parts[0])["alg"], "none");
        decode(parts[1])
    }

    /// The checks the GP Connect demonstrator makes of every request (its
    /// `WebTokenValidator` and request interceptor), restated.
    #[test]
    fn the_request_carries_what_a_gp_connect_provider_checks() {
        let who = Practitioner {
            sds_user_id: "555000000001".into(),
            role_profile_id: "100000000002".into(),
            family: "Achebe".into(),
            given: "Ngozi".into(),
        };
        let nhs = NhsNumber::parse("9658218873").expect("valid");
        let r = config().request(&nhs, &who, 1_800_000_000);
        let header = |k: &str| r.headers.iter().find(|(h, _)| *h == k).map(|(_, v)| v.as_str());
        assert_eq!(header("Ssp-To"), Some("918999198993"));
        assert_eq!(header("Ssp-From"), Some("200000000359"));
        assert_eq!(header("Ssp-InteractionID"), Some(INTERACTION));
        assert_eq!(header("Ssp-TraceID"), Some(r.trace_id.as_str()));
        let c = claims(&r);
        assert_eq!(c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"), 300);
        assert_eq!(c["reason_for_request"], "directcare");
        assert_eq!(c["requested_scope"], "patient/*.read");
        assert_eq!(c["aud"], "http://gp.example/fhir/Patient/$gpc.getstructuredrecord");
        assert_eq!(c["sub"], c["requesting_practitioner"]["id"], "sub is the practitioner");
        assert_eq!(c["requesting_device"]["resourceType"], "Device");
        for k in ["system", "value"] {
            assert!(
                c["requesting_device"]["identifier"][0][k].is_string(),
                "device identifier {k}"
            );
        }
        assert!(c["requesting_device"]["model"].is_string() && c["requesting_device"]["version"].is_string());
        assert_eq!(c["requesting_organization"]["resourceType"], "Organization");
        assert_eq!(c["requesting_organization"]["identifier"][0]["value"], "RX1");
        assert_eq!(c["requesting_organization"]["name"], "Northbridge Hospital");
        let p = &c["requesting_practitioner"];
        assert_eq!(p["resourceType"], "Practitioner");
        assert_eq!(p["identifier"][0]["system"], SDS_USER);
        assert_eq!(
            (p["name"][0]["family"].as_str(), p["name"][0]["given"][0].as_str()),
            (Some("Achebe"), Some("Ngozi"))
        );
        assert_eq!(r.body["parameter"][0]["valueIdentifier"]["value"], "9658218873");
    }

    #[test]
    fn an_asid_reads_as_a_number_or_a_string() {
        let c: GpConnectConfig =
            serde_json::from_str(r#"{"provider_asid": 918999198993, "consumer_asid": "200000000359"}"#).expect("reads");
        assert_eq!(
            (c.provider_asid.as_str(), c.consumer_asid.as_str()),
            ("918999198993", "200000000359")
        );
    }

    #[test]
    fn a_configured_endpoint_needs_its_asids_and_client() {
        assert!(GpConnectConfig::default().validate().is_ok(), "off by default");
        assert!(config().validate().is_ok());
        let e = GpConnectConfig {
            provider_asid: String::new(),
            ..config()
        }
        .validate()
        .expect_err("refused");
        assert_eq!(e.key, "connectors.gp_connect.provider_asid");
    }
}
