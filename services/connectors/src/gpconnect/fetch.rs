//! `POST /connectors/v1/gp-connect/patients/{nhs_number}`: a clinician opening a patient asks
//! for the registered practice's structured record. Consent decides first (the clinician must
//! be allowed to read the patient's record: GP Connect is for direct care); then the practice
//! is asked, its answer mapped to R4 and written to records as the practice (consent decides
//! the write, audit records it, the Provenance names the fetch); the caller is told what was
//! written. A refusal by the practice (e.g. the patient has dissented) is passed on; nothing
//! is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sharedcare_kit::auth::{Principal, Verifier};
use sharedcare_kit::caller::Caller;
use sharedcare_kit::edge::{self, ErrorCode, Refusal, Refuse, ServiceError};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::pdp::Pdp;
use sharedcare_proto::consent::v1::decide_response::Effect;

use super::{GpConnectConfig, Practitioner, stu3};
use crate::config::SenderConfig;
use crate::records::{WriteError, Writer};

/// Why a fetch was not done, or not stored.
#[derive(Debug, thiserror::Error)]
pub enum GpConnectError {
    /// The caller's own mistake or a refusal.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The practice refused (its OperationOutcome's code and diagnostics).
    #[error("the GP practice refused: {0}")]
    Practice(String),
    /// Consent, the practice or records could not be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl ServiceError for GpConnectError {
    fn code(&self) -> ErrorCode {
        match self {
            GpConnectError::Refused(r) => r.code(),
            GpConnectError::Practice(_) => ErrorCode::Forbidden,
            GpConnectError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    fn internal_message(&self) -> String {
        "the GP record could not be fetched or stored now; try again later".into()
    }

    fn field(&self) -> Option<&str> {
        match self {
            GpConnectError::Refused(r) => r.field(),
            _ => None,
        }
    }
}

/// What a fetch needs.
#[derive(Clone)]
pub struct GpConnect {
    config: Arc<GpConnectConfig>,
    http: reqwest::Client,
    pdp: Arc<dyn Pdp>,
    writer: Arc<Writer>,
    verifier: Verifier,
}

impl FromRef<GpConnect> for Verifier {
    fn from_ref(g: &GpConnect) -> Verifier {
        g.verifier.clone()
    }
}

impl GpConnect {
    /// Fetches with `config`, deciding with `pdp` and writing with `writer` (which holds the
    /// practice's client), callers verified by `verifier`.
    pub fn new(
        config: GpConnectConfig,
        pdp: Arc<dyn Pdp>,
        writer: Writer,
        verifier: Verifier,
    ) -> sharedcare_kit::Result<GpConnect> {
        let timeout = Duration::from_millis(config.timeout_ms.max(1000));
        Ok(GpConnect {
            config: Arc::new(config),
            http: sharedcare_kit::http_client::build(timeout, false)?,
            pdp,
            writer: Arc::new(writer),
            verifier,
        })
    }

    /// The route.
    pub fn router(self) -> Router {
        Router::new()
            .route("/connectors/v1/gp-connect/patients/{nhs_number}", post(fetch))
            .with_state(self)
    }

    /// Fetches `nhs`'s structured record for `who` and stores it; returns what was written.
    pub async fn fetch(&self, who: &Principal, nhs: &str) -> Result<Value, GpConnectError> {
        let nhs = NhsNumber::parse(nhs).map_err(|e| GpConnectError::invalid("nhs_number", e.to_string()))?;
        let Principal::Staff { person, role, .. } = who else {
            return Err(GpConnectError::forbidden(
                "GP Connect is asked on behalf of a clinician: sign in as staff",
            ));
        };
        // Direct care only: the clinician must be allowed to read this patient's record.
        let actor = sharedcare_kit::pdp::actor_of(who, "records.read", "TREAT".into())
            .ok_or_else(|| GpConnectError::forbidden("fetching a GP record needs scope records.read"))?;
        let ask = sharedcare_kit::pdp::ask(&actor, nhs.as_str(), "read", Vec::new());
        let decided = self
            .pdp
            .decide(vec![ask])
            .await
            .map_err(|e| GpConnectError::Unavailable(format!("consent: {e}")))?;
        match decided.first().map(|d| (Effect::try_from(d.effect), d.reason.clone())) {
            Some((Ok(Effect::Permit | Effect::PermitWithWithholding), _)) => {}
            Some((_, reason)) => {
                return Err(GpConnectError::forbidden(format!(
                    "you may not read this patient's record, so their GP record is not fetched for you: {reason}"
                )));
            }
            None => return Err(GpConnectError::Unavailable("consent gave no decision".into())),
        }
        let practitioner = Practitioner {
            sds_user_id: person.clone(),
            role_profile_id: role.person_roleid.clone(),
            // Sharedcare's access tokens carry no names; GP Connect requires one.
            family: person.clone(),
            given: if role.role_name.is_empty() {
                "Clinician".into()
            } else {
                role.role_name.clone()
            },
        };
        let now = chrono::Utc::now();
        let request = self.config.request(&nhs, &practitioner, now.timestamp());
        // The body as bytes: `.json()` would add a second Content-Type (application/json),
        // which a GP Connect provider refuses (415).
        let mut call = self.http.post(self.config.url()).body(request.body.to_string());
        for (k, v) in &request.headers {
            call = call.header(*k, v);
        }
        let answer = call.send().await.map_err(|e| {
            GpConnectError::Unavailable(format!("the GP practice's GP Connect endpoint did not answer: {e}"))
        })?;
        let status = answer.status();
        let body: Value = answer.json().await.map_err(|e| {
            GpConnectError::Unavailable(format!("the GP practice's answer is not JSON ({status}): {e}"))
        })?;
        if !status.is_success() {
            let issue = body.pointer("/issue/0");
            let text = |path: &str| issue.and_then(|i| i.pointer(path)).and_then(Value::as_str);
            let code = text("/details/coding/0/code").unwrap_or("unknown");
            let why = text("/diagnostics").unwrap_or_default();
            return Err(match status.as_u16() {
                403 | 404 => GpConnectError::Practice(format!("{code}: {why}")),
                _ => GpConnectError::Unavailable(format!("the GP practice answered {status}: {code}: {why}")),
            });
        }
        let from = stu3::Source {
            ods_code: self.config.ods_code.clone(),
            source: format!("{}#{}", self.config.endpoint.trim_end_matches('/'), request.trace_id),
            fetched_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let resources = stu3::structured(&body, &nhs, &from)
            .map_err(|e| GpConnectError::Unavailable(format!("the GP practice's answer: {e}")))?;
        let practice = SenderConfig {
            application: "GPCONNECT".into(),
            facility: self.config.ods_code.clone(),
            ods_code: self.config.ods_code.clone(),
            client_id: self.config.client_id.clone(),
            client_secret: String::new(),
            client_secret_file: String::new(),
            local_time: "utc".into(),
        };
        let document = format!("gpconnect:{}:{}", self.config.ods_code, request.trace_id);
        match self.writer.put_many(&practice, &resources, &document).await {
            Ok(()) => {}
            Err(WriteError::Refused { message, .. }) => {
                return Err(GpConnectError::Unavailable(format!(
                    "records refused the GP record: {message}"
                )));
            }
            Err(WriteError::Unavailable(why)) => return Err(GpConnectError::Unavailable(why)),
        }
        let written: Vec<String> = resources
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap_or_default(),
                    r["id"].as_str().unwrap_or_default()
                )
            })
            .collect();
        Ok(json!({
            "nhsNumber": nhs.as_str(),
            "practice": self.config.ods_code,
            "fetchedAt": from.fetched_at,
            "traceId": request.trace_id,
            "written": written,
        }))
    }
}

async fn fetch(State(g): State<GpConnect>, Caller(who): Caller, Path(nhs_number): Path<String>) -> Response {
    match g.fetch(&who, &nhs_number).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(e) => {
            let (status, body) = edge::operation_outcome(&e);
            (status, axum::Json(body)).into_response()
        }
    }
}
