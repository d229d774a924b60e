//! `sharedcare.identity.v1.IdentityAdmin`: decode, authorise, call the store, encode.
//! Every change is an identity event on the outbox.

use sharedcare_kit::auth::{Principal, RoleProfile};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::jose::{self, JwkSet};
use sharedcare_kit::nhs::{NhsNumber, OdsCode, ProofingLevel};
use tonic::{Request, Response, Status};

use crate::api;
use crate::api::identity_admin_server::IdentityAdmin;
use crate::error::IdentityError;
use crate::model::now;
use crate::model::{AuthMethod, Client, ClientSettings, EventKind, ORGANISATION_KINDS, Organisation, Patient, Person};
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
    /// Checks an organisation field by field: ODS code, name, kind and parent (registered, not
    /// itself).
    async fn organisation_in(&self, r: api::Organisation, active: bool) -> Result<Organisation, Status> {
        let code = OdsCode::parse(&r.ods_code).map_err(|e| IdentityError::invalid("ods_code", e.to_string()))?;
        required("name", &r.name)?;
        if !ORGANISATION_KINDS.contains(&r.kind.as_str()) {
            return Err(
                IdentityError::invalid("kind", format!("expected one of {}", ORGANISATION_KINDS.join(", "))).into(),
            );
        }
        let parent = if r.parent_ods_code.is_empty() {
            String::new()
        } else {
            let p = OdsCode::parse(&r.parent_ods_code)
                .map_err(|e| IdentityError::invalid("parent_ods_code", e.to_string()))?;
            if p.as_str() == code.as_str() {
                return Err(
                    IdentityError::invalid("parent_ods_code", "an organisation cannot be its own parent").into(),
                );
            }
            if self.provider.store.organisation(p.as_str()).await?.is_none() {
                return Err(IdentityError::invalid(
                    "parent_ods_code",
                    format!("{} is not a registered organisation", p.as_str()),
                )
                .into());
            }
            p.as_str().to_string()
        };
        Ok(Organisation {
            ods_code: code.as_str().to_string(),
            name: r.name,
            kind: r.kind,
            parent,
            active,
        })
    }

    /// Checks a client registration field by field; its name and settings.
    async fn registration(&self, r: api::CreateClientRequest) -> Result<(String, ClientSettings), Status> {
        required("name", &r.name)?;
        text("client_id", &r.client_id)?;
        let method = match r.token_endpoint_auth_method.as_str() {
            "" | "client_secret_basic" => AuthMethod::ClientSecretBasic,
            "client_secret_post" => AuthMethod::ClientSecretPost,
            "private_key_jwt" => AuthMethod::PrivateKeyJwt,
            "none" => AuthMethod::None,
            other => {
                return Err(IdentityError::invalid(
                    "token_endpoint_auth_method",
                    format!("{other:?}: expected client_secret_basic, client_secret_post, private_key_jwt or none"),
                )
                .into());
            }
        };
        for (i, g) in r.grant_types.iter().enumerate() {
            if !["authorization_code", "refresh_token", "client_credentials"].contains(&g.as_str()) {
                return Err(
                    IdentityError::invalid(format!("grant_types[{i}]"), format!("{g:?} is not supported")).into(),
                );
            }
        }
        if r.grant_types.is_empty() {
            return Err(IdentityError::invalid("grant_types", "at least one grant type is required").into());
        }
        if method == AuthMethod::None && r.grant_types.iter().any(|g| g == "client_credentials") {
            return Err(IdentityError::invalid("grant_types", "a public client cannot use client_credentials").into());
        }
        for (i, s) in r.scopes.iter().enumerate() {
            if !crate::model::known_scope(s) {
                return Err(
                    IdentityError::invalid(format!("scopes[{i}]"), format!("{s:?} is not a known scope")).into(),
                );
            }
        }
        let uris = r
            .redirect_uris
            .iter()
            .chain(&r.post_logout_redirect_uris)
            .chain(std::iter::once(&r.backchannel_logout_uri));
        for u in uris.filter(|u| !u.is_empty()) {
            match url::Url::parse(u) {
                Ok(p) if p.fragment().is_none() && matches!(p.scheme(), "https" | "http") => {}
                _ => {
                    return Err(IdentityError::invalid(
                        "redirect_uris",
                        format!("{u:?} is not an absolute http(s) URL without fragment"),
                    )
                    .into());
                }
            }
        }
        if r.grant_types.iter().any(|g| g == "authorization_code") && r.redirect_uris.is_empty() {
            return Err(IdentityError::invalid("redirect_uris", "required for authorization_code").into());
        }
        if method == AuthMethod::PrivateKeyJwt && !r.jwks_uri.is_empty() {
            if !r.jwks_json.is_empty() {
                return Err(IdentityError::invalid("jwks_uri", "give jwks_json or jwks_uri, not both").into());
            }
            if !matches!(url::Url::parse(&r.jwks_uri), Ok(u) if matches!(u.scheme(), "https" | "http")) {
                return Err(IdentityError::invalid("jwks_uri", "expected an absolute http(s) URL").into());
            }
        }
        let jwks = if method == AuthMethod::PrivateKeyJwt && r.jwks_uri.is_empty() {
            let set: JwkSet = serde_json::from_str(&r.jwks_json)
                .map_err(|e| IdentityError::invalid("jwks_json", format!("not a JWK Set: {e}")))?;
            let usable = set
                .keys
                .iter()
                .filter_map(|k| serde_json::from_value::<jose::Jwk>(k.clone()).ok())
                .any(|k| k.verifying_key().is_ok() && !k.kid.is_empty());
            if !usable {
                return Err(IdentityError::invalid("jwks_json", "needs a P-256 (ES256) key with a kid").into());
            }
            Some(set)
        } else {
            None
        };
        let id_token_alg = match r.id_token_signed_response_alg.as_str() {
            "" | "ES256" => String::new(),
            "RS256" => "RS256".to_string(),
            other => {
                return Err(IdentityError::invalid(
                    "id_token_signed_response_alg",
                    format!("{other:?}: expected ES256 or RS256"),
                )
                .into());
            }
        };
        if !id_token_alg.is_empty() {
            // Publish the RS256 key before the client's first token.
            self.provider.keys.rsa().await?;
        }
        let organisation = if r.organisation.is_empty() {
            String::new()
        } else {
            let code =
                OdsCode::parse(&r.organisation).map_err(|e| IdentityError::invalid("organisation", e.to_string()))?;
            if self.provider.store.organisation(code.as_str()).await?.is_none() {
                return Err(IdentityError::invalid(
                    "organisation",
                    format!("{} is not a registered organisation", code.as_str()),
                )
                .into());
            }
            code.as_str().to_string()
        };
        let settings = ClientSettings {
            redirect_uris: r.redirect_uris,
            post_logout_redirect_uris: r.post_logout_redirect_uris,
            backchannel_logout_uri: r.backchannel_logout_uri,
            grant_types: r.grant_types,
            scopes: r.scopes,
            auth_method: method,
            jwks,
            jwks_uri: if method == AuthMethod::PrivateKeyJwt {
                r.jwks_uri
            } else {
                String::new()
            },
            id_token_alg,
            organisation,
        };
        Ok((r.name, settings))
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
    if v.trim().is_empty() {
        return Err(IdentityError::invalid(field, "is required").into());
    }
    text(field, v)
}

/// Refuses text no store should keep (a NUL Postgres refuses and SQLite keeps, and the like).
fn text(field: &str, v: &str) -> Result<(), Status> {
    sharedcare_kit::text::storable(v).map_err(|e| IdentityError::invalid(field, e.to_string()).into())
}

fn random_digits(n: usize) -> String {
    let b = sharedcare_kit::jose::random_bytes(n);
    b.iter().map(|x| char::from(b'0' + x % 10)).collect()
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
        let r = req.into_inner();
        required("username", &r.username)?;
        required("given_name", &r.given_name)?;
        required("family_name", &r.family_name)?;
        let uid = if r.uid.is_empty() { random_digits(12) } else { r.uid };
        if uid.len() != 12 || !uid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdentityError::invalid("uid", "must be 12 digits").into());
        }
        // Every code is parsed before any is looked up: a malformed one (a NUL, say) must be
        // refused as invalid on every back end, not reach a query one of them rejects.
        let mut codes = Vec::with_capacity(r.role_profiles.len());
        for (i, rp) in r.role_profiles.iter().enumerate() {
            codes.push(
                OdsCode::parse(&rp.ods_code)
                    .map_err(|e| IdentityError::invalid(format!("role_profiles[{i}].ods_code"), e.to_string()))?,
            );
        }
        let names: Vec<&str> = codes.iter().map(OdsCode::as_str).collect();
        let known = self.provider.store.organisation_names(&names).await?;
        let mut roles = Vec::new();
        for (i, (rp, code)) in r.role_profiles.iter().zip(&codes).enumerate() {
            if !known.iter().any(|(c, _)| c == code.as_str()) {
                return Err(
                    IdentityError::invalid(format!("role_profiles[{i}].ods_code"), "no such organisation").into(),
                );
            }
            required(&format!("role_profiles[{i}].role_code"), &rp.role_code)?;
            text(&format!("role_profiles[{i}].role_name"), &rp.role_name)?;
            roles.push(RoleProfile {
                person_roleid: if rp.id.is_empty() {
                    random_digits(12)
                } else {
                    rp.id.clone()
                },
                org_code: code.as_str().to_string(),
                role_code: rp.role_code.clone(),
                role_name: rp.role_name.clone(),
                activity_codes: rp.activity_codes.clone(),
                person_orgid: String::new(),
            });
        }
        if roles.is_empty() {
            return Err(IdentityError::invalid("role_profiles", "at least one role profile is required").into());
        }
        let hash = self.hash(r.password).await?;
        let p = Person {
            uid,
            username: r.username,
            given_name: r.given_name,
            family_name: r.family_name,
            email: r.email,
            totp_secret: String::new(),
            security_keys: 0,
            roles,
        };
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
        let r = req.into_inner();
        let nhs = NhsNumber::parse(&r.nhs_number).map_err(|e| IdentityError::invalid("nhs_number", e.to_string()))?;
        required("username", &r.username)?;
        text("given_name", &r.given_name)?;
        text("family_name", &r.family_name)?;
        if chrono::NaiveDate::parse_from_str(&r.birthdate, "%Y-%m-%d").is_err() {
            return Err(IdentityError::invalid("birthdate", "expected YYYY-MM-DD").into());
        }
        let Some(proofing_level) = ProofingLevel::parse(&r.identity_proofing_level) else {
            return Err(IdentityError::invalid("identity_proofing_level", "expected P0, P5 or P9").into());
        };
        let hash = self.hash(r.password).await?;
        let p = Patient {
            nhs_number: nhs.as_str().to_string(),
            username: r.username,
            given_name: r.given_name,
            family_name: r.family_name,
            birthdate: r.birthdate,
            proofing_level,
        };
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
            format!("client-{}", random_digits(10))
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
