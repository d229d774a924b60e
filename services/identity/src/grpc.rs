//! `sharedcare.identity.v1.IdentityAdmin`: decode, authorise, call the store, encode.
//! Every change is an identity event on the outbox.

use sharedcare_kit::auth::Principal;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::jose;
use sharedcare_kit::nhs::OdsCode;
use tonic::{Request, Response, Status};

use crate::admin;
use crate::api;
use crate::api::identity_admin_server::IdentityAdmin;
use crate::error::IdentityError;
use crate::model::now;
use crate::model::{AuthMethod, Client, ClientSettings, EventKind, Organisation, Person};
use crate::oauth::Provider;

/// National RBAC activity that lets staff administer identity.
pub const ADMIN_ACTIVITY: &str = "B1300";

/// How long an enrolment code works (seconds): 72 hours.
const ENROLMENT_SECS: i64 = 72 * 3600;
/// Scope that lets a service administer identity.
pub const ADMIN_SCOPE: &str = "identity.admin";

/// The admin API.
#[derive(Clone)]
pub struct AdminApi {
    provider: Provider,
}

impl AdminApi {
    /// The API over `provider`.
    pub fn new(provider: Provider) -> Self {
        AdminApi { provider }
    }

    async fn authorise<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let p = sharedcare_kit::caller::of(req)?;
        let allowed = match &p {
            Principal::Service { scopes, .. } => scopes.iter().any(|s| s == ADMIN_SCOPE),
            Principal::Staff { role, .. } => role.activity_codes.iter().any(|a| a == ADMIN_ACTIVITY),
            Principal::Patient { .. } => false,
        };
        if !allowed {
            return Err(IdentityError::forbidden(format!(
                "identity administration needs scope {ADMIN_SCOPE} or activity {ADMIN_ACTIVITY}"
            ))
            .into());
        }
        Ok(p)
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        if password.chars().count() < 12 {
            return Err(IdentityError::invalid("password", "must be at least 12 characters").into());
        }
        Ok(self.provider.hasher.hash(password).await?)
    }

    async fn changed(&self, who: &Principal, kind: EventKind, subject_kind: &str, subject: &str) {
        let actor = match who {
            Principal::Service { client_id, .. } => client_id.clone(),
            Principal::Staff { person, .. } => person.clone(),
            Principal::Patient { nhs_number, .. } => nhs_number.to_string(),
        };
        self.provider
            .event(kind, subject_kind, subject, "", "", &format!("by {actor}"), &[], "")
            .await;
    }
}

impl AdminApi {
    /// Checks an organisation field by field ([`admin::organisation`]), then that its parent
    /// is registered.
    async fn organisation_in(&self, r: api::Organisation, active: bool) -> Result<Organisation, Status> {
        let o = admin::organisation(r, active)?;
        if !o.parent.is_empty() && self.provider.store.organisation(&o.parent).await?.is_none() {
            return Err(IdentityError::invalid(
                "parent_ods_code",
                format!("{} is not a registered organisation", o.parent),
            )
            .into());
        }
        Ok(o)
    }

    /// Checks a client registration field by field ([`admin::client`]), then that its
    /// organisation is registered; publishes the RS256 key before a client that asks for it.
    async fn registration(&self, r: api::CreateClientRequest) -> Result<(String, ClientSettings), Status> {
        let (name, settings) = admin::client(r)?;
        let o = &settings.organisation;
        if !o.is_empty() && self.provider.store.organisation(o).await?.is_none() {
            return Err(IdentityError::invalid("organisation", format!("{o} is not a registered organisation")).into());
        }
        if !settings.id_token_alg.is_empty() {
            // Publish the RS256 key before the client's first token.
            self.provider.keys.rsa().await?;
        }
        Ok((name, settings))
    }
}

/// A new client secret for `method`, or none when it uses no secret.
fn new_secret(method: AuthMethod) -> String {
    match method {
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => jose::random_token(32),
        _ => String::new(),
    }
}

/// What is stored of a secret ("" for none).
fn secret_hash(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        jose::sha256_b64(secret)
    }
}

/// A stored client as its registration.
fn registration_out(c: Client) -> api::ClientRegistration {
    let s = c.settings;
    api::ClientRegistration {
        has_secret: !c.secret_hash.is_empty(),
        client: Some(api::CreateClientRequest {
            client_id: c.id,
            name: c.name,
            redirect_uris: s.redirect_uris,
            post_logout_redirect_uris: s.post_logout_redirect_uris,
            backchannel_logout_uri: s.backchannel_logout_uri,
            grant_types: s.grant_types,
            scopes: s.scopes,
            token_endpoint_auth_method: s.auth_method.as_str().to_string(),
            jwks_json: s
                .jwks
                .map(|j| serde_json::to_string(&j).unwrap_or_default())
                .unwrap_or_default(),
            jwks_uri: s.jwks_uri,
            id_token_signed_response_alg: if s.id_token_alg.is_empty() {
                "ES256".into()
            } else {
                s.id_token_alg
            },
            organisation: s.organisation,
        }),
    }
}

fn required(field: &str, v: &str) -> Result<(), Status> {
    Ok(admin::required(field, v)?)
}

fn org_out(o: Organisation) -> api::Organisation {
    api::Organisation {
        ods_code: o.ods_code,
        name: o.name,
        kind: o.kind,
        parent_ods_code: o.parent,
        active: o.active,
    }
}

#[tonic::async_trait]
impl IdentityAdmin for AdminApi {
    async fn get_organisation(
        &self,
        req: Request<api::GetOrganisationRequest>,
    ) -> Result<Response<api::Organisation>, Status> {
        // The organisation directory is reference data (as the national ODS is): any
        // signed-in caller may read it, e.g. to name organisations to a patient.
        sharedcare_kit::caller::of(&req)?;
        let code =
            OdsCode::parse(&req.get_ref().ods_code).map_err(|e| IdentityError::invalid("ods_code", e.to_string()))?;
        let o = self
            .provider
            .store
            .organisation(code.as_str())
            .await?
            .ok_or_else(|| IdentityError::not_found(format!("organisation {}", code.as_str())))?;
        Ok(Response::new(org_out(o)))
    }

    async fn list_organisations(
        &self,
        req: Request<api::ListOrganisationsRequest>,
    ) -> Result<Response<api::ListOrganisationsResponse>, Status> {
        // The organisation directory is reference data (as the national ODS is): any
        // signed-in caller may read it, e.g. to name organisations to a patient.
        sharedcare_kit::caller::of(&req)?;
        let r = req.get_ref();
        let size = i64::from(r.page_size.clamp(1, 500));
        let page = self.provider.store.organisations(&r.page_token, size).await?;
        let next = if page.len() as i64 == size {
            page.last().map(|o| o.ods_code.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(api::ListOrganisationsResponse {
            organisations: page.into_iter().map(org_out).collect(),
            next_page_token: next,
        }))
    }

    async fn create_organisation(
        &self,
        req: Request<api::Organisation>,
    ) -> Result<Response<api::Organisation>, Status> {
        let who = self.authorise(&req).await?;
        let o = self.organisation_in(req.into_inner(), true).await?;
        self.provider.store.insert_organisation(&o).await?;
        self.changed(&who, EventKind::OrganisationCreated, "organisation", &o.ods_code)
            .await;
        Ok(Response::new(org_out(o)))
    }

    async fn update_organisation(
        &self,
        req: Request<api::Organisation>,
    ) -> Result<Response<api::Organisation>, Status> {
        let who = self.authorise(&req).await?;
        let r = req.into_inner();
        let active = r.active;
        let o = self.organisation_in(r, active).await?;
        if !self.provider.store.update_organisation(&o).await? {
            return Err(IdentityError::not_found(format!("organisation {}", o.ods_code)).into());
        }
        self.provider.forget_clients();
        self.changed(&who, EventKind::OrganisationUpdated, "organisation", &o.ods_code)
            .await;
        Ok(Response::new(org_out(o)))
    }

    async fn deactivate_organisation(
        &self,
        req: Request<api::DeactivateOrganisationRequest>,
    ) -> Result<Response<api::Organisation>, Status> {
        let who = self.authorise(&req).await?;
        let code =
            OdsCode::parse(&req.get_ref().ods_code).map_err(|e| IdentityError::invalid("ods_code", e.to_string()))?;
        let mut o = self
            .provider
            .store
            .organisation(code.as_str())
            .await?
            .ok_or_else(|| IdentityError::not_found(format!("organisation {}", code.as_str())))?;
        o.active = false;
        self.provider.store.update_organisation(&o).await?;
        self.provider.forget_clients();
        self.changed(&who, EventKind::OrganisationUpdated, "organisation", &o.ods_code)
            .await;
        Ok(Response::new(org_out(o)))
    }

    async fn create_person(&self, req: Request<api::CreatePersonRequest>) -> Result<Response<api::Person>, Status> {
        let who = self.authorise(&req).await?;
        let (p, password) = admin::person(req.into_inner())?;
        let codes: Vec<&str> = p.roles.iter().map(|r| r.org_code.as_str()).collect();
        let known = self.provider.store.organisation_names(&codes).await?;
        if let Some(i) = codes.iter().position(|c| !known.iter().any(|(k, _)| k == c)) {
            return Err(IdentityError::invalid(format!("role_profiles[{i}].ods_code"), "no such organisation").into());
        }
        let hash = self.hash(password).await?;
        self.provider.store.insert_person(&p, &hash).await?;
        self.changed(&who, EventKind::PersonCreated, "staff", &p.uid).await;
        Ok(Response::new(person_out(p)))
    }

    async fn get_person(&self, req: Request<api::GetPersonRequest>) -> Result<Response<api::Person>, Status> {
        let p = sharedcare_kit::caller::of(&req)?;
        let allowed = match &p {
            Principal::Service { scopes, .. } => scopes.iter().any(|s| s == ADMIN_SCOPE),
            Principal::Staff { role, .. } => role
                .activity_codes
                .iter()
                .any(|a| a == ADMIN_ACTIVITY || a == sharedcare_kit::auth::BREAK_GLASS_REVIEW_ACTIVITY),
            Principal::Patient { .. } => false,
        };
        if !allowed {
            return Err(IdentityError::forbidden(format!(
                "the staff directory needs scope {ADMIN_SCOPE}, or activity {ADMIN_ACTIVITY} or {}",
                sharedcare_kit::auth::BREAK_GLASS_REVIEW_ACTIVITY
            ))
            .into());
        }
        let uid = req.into_inner().uid;
        required("uid", &uid)?;
        let (person, _, _) = self
            .provider
            .store
            .person("uid", &uid)
            .await?
            .ok_or_else(|| IdentityError::not_found(format!("member of staff {uid}")))?;
        Ok(Response::new(person_out(person)))
    }

    async fn create_patient(&self, req: Request<api::CreatePatientRequest>) -> Result<Response<api::Patient>, Status> {
        let who = self.authorise(&req).await?;
        let (p, password) = admin::patient(req.into_inner())?;
        let hash = self.hash(password).await?;
        self.provider.store.insert_patient(&p, &hash).await?;
        self.changed(&who, EventKind::PatientCreated, "patient", &p.nhs_number)
            .await;
        Ok(Response::new(api::Patient {
            nhs_number: p.nhs_number,
            username: p.username,
            identity_proofing_level: p.proofing_level.to_string(),
        }))
    }

    async fn create_client(
        &self,
        req: Request<api::CreateClientRequest>,
    ) -> Result<Response<api::CreatedClient>, Status> {
        let who = self.authorise(&req).await?;
        let r = req.into_inner();
        let id = if r.client_id.is_empty() {
            format!("client-{}", admin::random_digits(10))
        } else {
            r.client_id.clone()
        };
        let (name, settings) = self.registration(r).await?;
        let secret = new_secret(settings.auth_method);
        let client = Client {
            id: id.clone(),
            name,
            secret_hash: secret_hash(&secret),
            settings,
        };
        self.provider.store.insert_client(&client).await?;
        self.provider.forget_client(&id);
        self.changed(&who, EventKind::ClientCreated, "client", &id).await;
        Ok(Response::new(api::CreatedClient {
            client_id: id,
            client_secret: secret,
        }))
    }

    async fn get_client(
        &self,
        req: Request<api::GetClientRequest>,
    ) -> Result<Response<api::ClientRegistration>, Status> {
        self.authorise(&req).await?;
        let id = &req.get_ref().client_id;
        required("client_id", id)?;
        let c = self
            .provider
            .store
            .client(id)
            .await?
            .ok_or_else(|| IdentityError::not_found(format!("client {id}")))?;
        Ok(Response::new(registration_out(c)))
    }

    async fn update_client(
        &self,
        req: Request<api::UpdateClientRequest>,
    ) -> Result<Response<api::CreatedClient>, Status> {
        let who = self.authorise(&req).await?;
        let r = req.into_inner();
        let client = r
            .client
            .ok_or_else(|| IdentityError::invalid("client", "is required"))?;
        let id = client.client_id.clone();
        required("client.client_id", &id)?;
        let old = self
            .provider
            .store
            .client(&id)
            .await?
            .ok_or_else(|| IdentityError::not_found(format!("client {id}")))?;
        let (name, settings) = self.registration(client).await?;
        let needs_secret = matches!(
            settings.auth_method,
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
        );
        let (secret, hash) = if needs_secret && (r.rotate_secret || old.secret_hash.is_empty()) {
            let secret = new_secret(settings.auth_method);
            let hash = secret_hash(&secret);
            (secret, hash)
        } else if needs_secret {
            (String::new(), old.secret_hash)
        } else {
            (String::new(), String::new())
        };
        let client = Client {
            id: id.clone(),
            name,
            secret_hash: hash,
            settings,
        };
        if !self.provider.store.update_client(&client).await? {
            return Err(IdentityError::not_found(format!("client {id}")).into());
        }
        self.provider.forget_client(&id);
        self.changed(&who, EventKind::ClientUpdated, "client", &id).await;
        Ok(Response::new(api::CreatedClient {
            client_id: id,
            client_secret: secret,
        }))
    }

    async fn delete_client(
        &self,
        req: Request<api::DeleteClientRequest>,
    ) -> Result<Response<api::DeleteClientResponse>, Status> {
        let who = self.authorise(&req).await?;
        let id = req.into_inner().client_id;
        required("client_id", &id)?;
        if !self.provider.store.delete_client(&id).await? {
            return Err(IdentityError::not_found(format!("client {id}")).into());
        }
        self.provider.forget_client(&id);
        self.changed(&who, EventKind::ClientDeleted, "client", &id).await;
        Ok(Response::new(api::DeleteClientResponse {}))
    }

    async fn list_sessions(
        &self,
        req: Request<api::ListSessionsRequest>,
    ) -> Result<Response<api::ListSessionsResponse>, Status> {
        self.authorise(&req).await?;
        let sessions = self.provider.store.sessions(&req.get_ref().subject, now()).await?;
        Ok(Response::new(api::ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|s| api::Session {
                    id: s.id,
                    subject_kind: s.subject_kind.as_str().into(),
                    subject: s.subject,
                    auth_time: s.auth_time,
                    last_seen: s.last_seen,
                    expires_at: s.expires_at,
                    amr: s.amr,
                    selected_role: s.selected_role,
                })
                .collect(),
        }))
    }

    async fn revoke_session(
        &self,
        req: Request<api::RevokeSessionRequest>,
    ) -> Result<Response<api::RevokeSessionResponse>, Status> {
        let who = self.authorise(&req).await?;
        let id = &req.get_ref().session_id;
        let session = self
            .provider
            .store
            .session(id)
            .await?
            .ok_or_else(|| IdentityError::not_found(format!("session {id}")))?;
        let notified = self
            .provider
            .end_session(&session, EventKind::SessionRevoked)
            .await
            .map_err(|e| Status::unavailable(e.description))?;
        self.changed(
            &who,
            EventKind::SessionRevoked,
            session.subject_kind.as_str(),
            &session.subject,
        )
        .await;
        Ok(Response::new(api::RevokeSessionResponse {
            notified_clients: notified,
        }))
    }

    async fn issue_enrolment(
        &self,
        req: Request<api::IssueEnrolmentRequest>,
    ) -> Result<Response<api::IssueEnrolmentResponse>, Status> {
        let who = self.authorise(&req).await?;
        let uid = req.into_inner().uid;
        required("uid", &uid)?;
        let code = sharedcare_kit::jose::random_token(12);
        let expires_at = now() + ENROLMENT_SECS;
        if !self
            .provider
            .store
            .set_enrolment(&uid, &sharedcare_kit::jose::sha256_b64(&code), expires_at)
            .await?
        {
            return Err(Status::not_found(format!("no member of staff {uid}")));
        }
        self.changed(&who, EventKind::EnrolmentIssued, "staff", &uid).await;
        Ok(Response::new(api::IssueEnrolmentResponse {
            enrolment_code: code,
            expires_at,
        }))
    }

    async fn rotate_keys(
        &self,
        req: Request<api::RotateKeysRequest>,
    ) -> Result<Response<api::RotateKeysResponse>, Status> {
        let who = self.authorise(&req).await?;
        let kid = if req.get_ref().emergency {
            self.provider.keys.rotate_emergency(now()).await?
        } else {
            self.provider.keys.rotate(now()).await?
        };
        self.changed(&who, EventKind::KeysRotated, "key", &kid).await;
        Ok(Response::new(api::RotateKeysResponse { active_kid: kid }))
    }
}

/// A member of staff as the admin API shows them (no secrets).
fn person_out(p: Person) -> api::Person {
    api::Person {
        uid: p.uid,
        username: p.username,
        given_name: p.given_name,
        family_name: p.family_name,
        role_profiles: p
            .roles
            .into_iter()
            .map(|r| api::RoleProfile {
                id: r.person_roleid,
                ods_code: r.org_code,
                role_code: r.role_code,
                activity_codes: r.activity_codes,
                role_name: r.role_name,
            })
            .collect(),
    }
}
