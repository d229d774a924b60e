//! What tokens and userinfo say about their subject: claims by scope (CIS2 and NHS login
//! names), access token checks and introspection (RFC 7662).

use sharedcare_kit::json::Fields;

use serde_json::{Value, json};
use sharedcare_kit::jose::{self};

use super::{OAuthError, OAuthErrorCode, OResult, Provider};
use crate::model::now;
use crate::model::{Grant, SubjectKind};
use crate::store::Session;

impl Provider {
    /// Everything known about the grant's subject, as claims (filtered by scope later).
    pub async fn subject_claims(&self, grant: &Grant) -> OResult<Value> {
        match grant.subject_kind {
            SubjectKind::Staff => {
                let (p, _, _) = self
                    .store
                    .person("uid", &grant.subject)
                    .await?
                    .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidGrant, "the person no longer exists"))?;
                let codes: Vec<&str> = p.roles.iter().map(|r| r.org_code.as_str()).collect();
                let orgs = self.store.organisation_names(&codes).await?;
                let mut user_orgs = Vec::new();
                for r in &p.roles {
                    if !user_orgs.iter().any(|o: &Value| o["org_code"] == r.org_code.as_str()) {
                        let name = orgs.iter().find(|(c, _)| *c == r.org_code).map(|(_, n)| n.clone());
                        user_orgs.push(json!({"org_code": r.org_code, "org_name": name.unwrap_or_default()}));
                    }
                }
                let roles: Vec<Value> = p
                    .roles
                    .iter()
                    .map(|r| {
                        json!({
                            "person_orgid": format!("{}{}", p.uid, r.org_code), "person_roleid": r.person_roleid,
                            "org_code": r.org_code, "role_name": r.role_name, "role_code": r.role_code,
                            "activity_codes": crate::model::expand_activities(&r.activity_codes),
                        })
                    })
                    .collect();
                Ok(json!({
                    "nhsid_useruid": p.uid, "name": format!("{} {}", p.given_name, p.family_name),
                    "given_name": p.given_name, "family_name": p.family_name, "email": p.email,
                    "nhsid_nrbac_roles": roles, "nhsid_user_orgs": user_orgs,
                    "selected_roleid": grant.selected_role, "idassurancelevel": if grant.acr() == crate::model::ACR_MFA { "3" } else { "2" },
                }))
            }
            SubjectKind::Patient => {
                let (p, _, _) = self
                    .store
                    .patient("nhs_number", &grant.subject)
                    .await?
                    .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidGrant, "the patient no longer exists"))?;
                let vot = if grant.amr.iter().any(|m| m == "otp") {
                    format!("{}.Cp.Cd", p.proofing_level)
                } else {
                    format!("{}.Cp", p.proofing_level)
                };
                Ok(json!({
                    "nhs_number": p.nhs_number, "identity_proofing_level": p.proofing_level,
                    "given_name": p.given_name, "family_name": p.family_name, "birthdate": p.birthdate,
                    "name": format!("{} {}", p.given_name, p.family_name), "vot": vot,
                }))
            }
        }
    }

    /// Verifies one of identity's access tokens for userinfo: signature, issuer, audience,
    /// expiry, not revoked, session live. Returns its claims.
    /// Also returns the token's live session (`None` for service tokens, which have none).
    pub async fn check_access_token(&self, token: &str) -> OResult<(Value, Option<Session>)> {
        let invalid = |why: String| OAuthError::new(OAuthErrorCode::InvalidToken, why);
        let claims = self
            .verifier
            .claims(token, sharedcare_kit::auth::ACCESS_TOKEN_TYP)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let jti = claims.at("jti").as_str().unwrap_or_default();
        if self.store.jti_revoked(jti).await? {
            return Err(invalid("the access token was revoked".into()));
        }
        let session = match claims.at("sid").as_str() {
            None => None,
            Some(sid) => match self.store.session(sid).await? {
                Some(s) if !s.revoked && s.expires_at > now() => Some(s),
                _ => return Err(invalid("the sign-in session has ended".into())),
            },
        };
        Ok((claims, session))
    }

    /// userinfo (OIDC Core §5.3): the subject's claims the token's scopes allow.
    pub async fn userinfo(&self, token: &str) -> OResult<Value> {
        let (claims, session) = self.check_access_token(token).await?;
        let session = session.ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidToken, "not a user's token"))?;
        let grant = Grant::of_session(
            &session,
            claims.at("client_id").as_str().unwrap_or_default(),
            claims.at("scope").as_str().unwrap_or_default(),
        );
        let subject = self.subject_claims(&grant).await?;
        let mut out = json!({"sub": self.subject_id(&grant)});
        merge(&mut out, scoped_claims(&grant, &subject));
        Ok(out)
    }

    /// RFC 7662 introspection by an authenticated client.
    pub async fn introspect(&self, caller: &str, token: &str) -> OResult<Value> {
        if token.is_empty() {
            return Err(OAuthError::new(OAuthErrorCode::InvalidRequest, "token is required"));
        }
        // Only a resource server the token names (its audience) learns about it: to anyone
        // else every token is inactive (RFC 7662 §4: the server decides who may ask about what).
        let names_caller = |aud: &Value| match aud {
            Value::String(a) => a == caller,
            Value::Array(a) => a.iter().any(|v| v.as_str() == Some(caller)),
            _ => false,
        };
        if let Ok((c, _)) = self.check_access_token(token).await
            && names_caller(c.at("aud"))
        {
            let mut out = json!({"active": true, "token_type": "Bearer"});
            for k in [
                "scope",
                "client_id",
                "sub",
                "exp",
                "iat",
                "nbf",
                "iss",
                "aud",
                "jti",
                "sid",
                "acr",
            ] {
                if !c.at(k).is_null() {
                    out.put(k, c.at(k).clone());
                }
            }
            return Ok(out);
        }
        if let Some(g) = self.store.refresh_active(&jose::sha256_b64(token), now()).await?
            && g.client_id == caller
        {
            return Ok(json!({
                "active": true, "token_type": "refresh_token", "client_id": g.client_id,
                "scope": g.scope, "sub": self.subject_id(&g), "iss": &*self.issuer,
            }));
        }
        Ok(json!({"active": false}))
    }
}

/// `sub`: the person's uid for staff (as CIS2); for patients a pairwise-stable pseudonym, not
/// the NHS number (as NHS login), which is a claim of its own under the `nhs_number` scope.
pub(super) fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// Claims the access token carries so services can authorise without calling identity.
pub(super) fn access_claims(grant: &Grant, s: &Value) -> Value {
    match grant.subject_kind {
        SubjectKind::Staff => json!({
            "nhsid_useruid": s["nhsid_useruid"], "selected_roleid": s["selected_roleid"],
            "nhsid_nrbac_roles": s["nhsid_nrbac_roles"], "idassurancelevel": s["idassurancelevel"],
        }),
        SubjectKind::Patient => json!({
            "nhs_number": s["nhs_number"], "identity_proofing_level": s["identity_proofing_level"], "vot": s["vot"],
        }),
    }
}

/// Claims for the ID token and userinfo, by scope (CIS2 and NHS login scope names).
pub(super) fn scoped_claims(grant: &Grant, s: &Value) -> Value {
    let mut out = json!({});
    let mut copy = |keys: &[&str]| {
        for k in keys {
            if !s[*k].is_null() && s[*k] != json!("") {
                out.put(k, s[*k].clone());
            }
        }
    };
    if grant.has_scope("profile") {
        copy(&[
            "name",
            "given_name",
            "family_name",
            "birthdate",
            "nhsid_useruid",
            "idassurancelevel",
        ]);
    }
    if grant.has_scope("email") {
        copy(&["email"]);
    }
    if grant.has_scope("nationalrbacaccess") {
        copy(&["nhsid_useruid", "nhsid_nrbac_roles"]);
    }
    if grant.has_scope("selectedrole") {
        copy(&["selected_roleid"]);
    }
    if grant.has_scope("associatedorgs") {
        copy(&["nhsid_user_orgs"]);
    }
    if grant.has_scope("nhs_number") {
        copy(&["nhs_number", "identity_proofing_level", "vot"]);
    }
    if grant.has_scope("basic_demographics") {
        copy(&["birthdate", "family_name", "given_name", "identity_proofing_level"]);
    }
    out
}
