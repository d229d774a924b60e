//! Identity's domain values: organisations, staff, patients, clients and the grants that
//! connect a signed-in subject to a client. No I/O here.

use serde::{Deserialize, Serialize};
use sharedcare_kit::auth::RoleProfile;
use sharedcare_kit::jose::JwkSet;

/// Organisation kinds accepted (ODS organisation role, simplified).
pub const ORGANISATION_KINDS: &[&str] = &[
    "gp_practice",
    "nhs_trust",
    "care_home",
    "home_care_provider",
    "local_authority",
    "icb",
];

/// `acr` for password only, and for password + TOTP (CIS2's authentication assurance levels).
pub const ACR_PASSWORD: &str = "AAL1";
/// `acr` for a second factor.
pub const ACR_MFA: &str = "AAL2";

/// Scopes an app signing people in may be granted: `openid` profile claims, CIS2's RBAC
/// scopes, NHS login's patient scopes and `offline_access`.
pub const USER_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "email",
    "offline_access",
    "nationalrbacaccess",
    "selectedrole",
    "associatedorgs",
    "nhs_number",
    "basic_demographics",
];

/// The platform's service scopes (client credentials).
pub const SERVICE_SCOPES: &[&str] = &[
    "records.read",
    "records.write",
    "records.bulk",
    "consent.decide",
    "consent.write",
    "audit.read",
    "identity.admin",
];

/// Whether `scope` is one a client may be granted at all.
pub fn known_scope(scope: &str) -> bool {
    USER_SCOPES.contains(&scope) || SERVICE_SCOPES.contains(&scope)
}

/// A care organisation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Organisation {
    /// ODS code.
    pub ods_code: String,
    /// Display name.
    pub name: String,
    /// One of [`ORGANISATION_KINDS`].
    pub kind: String,
    /// The ODS code of the organisation it belongs to, or empty.
    pub parent: String,
    /// Inactive organisations' clients get no tokens.
    pub active: bool,
}

/// A member of staff.
#[derive(Clone, Debug)]
pub struct Person {
    /// 12-digit `nhsid_useruid`.
    pub uid: String,
    /// Login name.
    pub username: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Email.
    pub email: String,
    /// Base32 TOTP secret, empty when not enrolled.
    pub totp_secret: String,
    /// How many WebAuthn credentials (passkeys, security keys) they have.
    pub security_keys: i64,
    /// Role profiles.
    pub roles: Vec<RoleProfile>,
}

impl Person {
    /// Whether they have a second factor: an authenticator app or a security key.
    pub fn has_second_factor(&self) -> bool {
        !self.totp_secret.is_empty() || self.security_keys > 0
    }
}

/// A patient account.
#[derive(Clone, Debug)]
pub struct Patient {
    /// NHS number (valid).
    pub nhs_number: String,
    /// Login name.
    pub username: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// `YYYY-MM-DD`.
    pub birthdate: String,
    /// P0, P5 or P9.
    pub proofing_level: sharedcare_kit::nhs::ProofingLevel,
}

/// Who a session or grant is for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    /// Staff: `subject` is the person's uid.
    Staff,
    /// Patient: `subject` is the NHS number.
    Patient,
}

impl SubjectKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Staff => "staff",
            SubjectKind::Patient => "patient",
        }
    }
    /// From storage.
    pub fn parse(s: &str) -> Option<SubjectKind> {
        match s {
            "staff" => Some(SubjectKind::Staff),
            "patient" => Some(SubjectKind::Patient),
            _ => None,
        }
    }
}

/// How a client authenticates at the token endpoint (OIDC Core §9).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the client secret.
    ClientSecretBasic,
    /// `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT signed with a key from the client's registered JWK Set (RFC 7523).
    PrivateKeyJwt,
    /// A public client (PKCE required).
    None,
}

impl AuthMethod {
    /// The registered name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::None => "none",
        }
    }
}

/// A registered client's settings (stored as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientSettings {
    /// Exact redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// OIDC Back-Channel Logout endpoint, empty for none.
    #[serde(default)]
    pub backchannel_logout_uri: String,
    /// authorization_code, refresh_token, client_credentials.
    pub grant_types: Vec<String>,
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
    /// Token endpoint authentication.
    pub auth_method: AuthMethod,
    /// Public keys for private_key_jwt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,
    /// Or where to fetch them (refetched when an assertion names an unknown `kid`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// `id_token_signed_response_alg`: "ES256" (default) or "RS256" for clients that can only
    /// verify RSA. Access and logout tokens are always ES256.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id_token_alg: String,
    /// The ODS code of the organisation the client belongs to, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub organisation: String,
}

/// A registered OIDC client.
#[derive(Clone, Debug)]
pub struct Client {
    /// client_id.
    pub id: String,
    /// Display name shown on login pages.
    pub name: String,
    /// SHA-256 (base64url) of the secret; empty for public and private_key_jwt clients.
    pub secret_hash: String,
    /// Settings.
    pub settings: ClientSettings,
}

impl Client {
    /// Whether the client may use `grant_type`.
    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.settings.grant_types.iter().any(|g| g == grant_type)
    }
}

/// What an authorization code or refresh token stands for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Grant {
    /// The client it was issued to.
    pub client_id: String,
    /// The identity session it came from.
    pub session_id: String,
    /// Staff or patient.
    pub subject_kind: SubjectKind,
    /// uid or NHS number.
    pub subject: String,
    /// Granted scopes, space separated.
    pub scope: String,
    /// OIDC nonce from the authorization request.
    #[serde(default)]
    pub nonce: String,
    /// Redirect URI the code was sent to (must match at the token endpoint).
    #[serde(default)]
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    #[serde(default)]
    pub code_challenge: String,
    /// When the subject authenticated (unix seconds).
    pub auth_time: i64,
    /// Authentication methods.
    pub amr: Vec<String>,
    /// Selected role profile id (staff).
    #[serde(default)]
    pub selected_role: String,
}

impl Grant {
    /// The assurance level the authentication methods reach.
    pub fn acr(&self) -> &'static str {
        acr_for(&self.amr)
    }
    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split_whitespace().any(|s| s == scope)
    }
}

/// The `amr` values (RFC 8176) that prove a second factor: a one-time code (`otp`, TOTP or a
/// recovery code), or a WebAuthn key bound to a device (`hwk`) or synced between devices
/// (`swk`, a passkey in a password manager). CIS2 counts each of them as AAL2.
pub const SECOND_FACTOR_AMR: [&str; 3] = ["otp", "hwk", "swk"];

/// Whether `amr` includes a second factor.
pub fn has_second_factor(amr: &[String]) -> bool {
    amr.iter().any(|m| SECOND_FACTOR_AMR.contains(&m.as_str()))
}

/// `acr` for a list of `amr` values.
pub fn acr_for(amr: &[String]) -> &'static str {
    if has_second_factor(amr) { ACR_MFA } else { ACR_PASSWORD }
}

/// A requested scope the client may not have (`invalid_scope`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {0:?} is not allowed for this client")]
pub struct ScopeNotAllowed(pub String);

/// Parses a requested scope against what a client may have: unknown or not-allowed scopes are
/// refused (`invalid_scope`) with the first offending scope named.
pub fn check_scope(requested: &str, allowed: &[String]) -> Result<String, ScopeNotAllowed> {
    let mut out: Vec<&str> = Vec::new();
    for s in requested.split_whitespace() {
        if !known_scope(s) || !allowed.iter().any(|a| a == s) {
            return Err(ScopeNotAllowed(s.to_string()));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out.join(" "))
}

/// CIS2 national RBAC activities that include others: holding the key includes the values.
/// (A small excerpt of the national RBAC database's "included activities".)
pub const INCLUDED_ACTIVITIES: &[(&str, &[&str])] = &[
    // "Amend patient demographics" includes "View patient demographics".
    ("B0264", &["B0825"]),
    // "Perform detailed health record" includes "View detailed health record" and "View clinical summary".
    ("B0370", &["B0380", "B0360"]),
    // "Manage care package" (social care) includes "View care plan".
    ("B1611", &["B1612"]),
];

/// Activity codes with every included activity added, sorted, without repeats.
pub fn expand_activities(codes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = codes.to_vec();
    let mut i = 0;
    while let Some(code) = out.get(i).cloned() {
        if let Some((_, inc)) = INCLUDED_ACTIVITIES.iter().find(|(k, _)| *k == code) {
            for c in *inc {
                if !out.iter().any(|o| o == c) {
                    out.push((*c).to_string());
                }
            }
        }
        i += 1;
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn included_activities_are_expanded_transitively_once() {
        let got = expand_activities(&["B0370".into(), "B0360".into()]);
        assert_eq!(got, vec!["B0360", "B0370", "B0380"]);
    }

    #[test]
    fn scope_outside_the_client_registration_is_refused() {
        let allowed = vec!["openid".to_string(), "profile".to_string()];
        assert_eq!(
            check_scope("openid profile openid", &allowed).as_deref(),
            Ok("openid profile")
        );
        assert_eq!(
            check_scope("openid records.write", &allowed).map_err(|e| e.to_string()),
            Err("scope \"records.write\" is not allowed for this client".to_string())
        );
        assert!(check_scope("openid bogus", &allowed).is_err());
    }

    #[test]
    fn a_second_factor_raises_the_assurance_level() {
        assert_eq!(acr_for(&["pwd".into()]), ACR_PASSWORD);
        assert_eq!(acr_for(&["pwd".into(), "otp".into()]), ACR_MFA);
        assert_eq!(acr_for(&["pwd".into(), "hwk".into()]), ACR_MFA, "a security key");
        assert_eq!(acr_for(&["pwd".into(), "swk".into()]), ACR_MFA, "a synced passkey");
        assert_eq!(
            acr_for(&["pwd".into(), "mfa".into()]),
            ACR_PASSWORD,
            "a claim, not a factor"
        );
    }
}

/// What an `IdentityEvent` reports: its `kind` on `sharedcare.identity.v1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `login_succeeded`.
    LoginSucceeded,
    /// `login_failed`.
    LoginFailed,
    /// `account_locked`.
    AccountLocked,
    /// `role_selected`.
    RoleSelected,
    /// `totp_enrolled`.
    TotpEnrolled,
    /// `session_ended`.
    SessionEnded,
    /// `session_revoked`.
    SessionRevoked,
    /// `organisation_created`.
    OrganisationCreated,
    /// `person_created`.
    PersonCreated,
    /// `patient_created`.
    PatientCreated,
    /// `client_created`.
    ClientCreated,
    /// `client_updated`.
    ClientUpdated,
    /// `client_deleted`.
    ClientDeleted,
    /// `organisation_updated`.
    OrganisationUpdated,
    /// `keys_rotated`.
    KeysRotated,
    /// `enrolment_issued`.
    EnrolmentIssued,
    /// `security_key_added`: a passkey or security key (WebAuthn) was added to an account.
    SecurityKeyAdded,
}

impl EventKind {
    /// The kind as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LoginSucceeded => "login_succeeded",
            EventKind::LoginFailed => "login_failed",
            EventKind::AccountLocked => "account_locked",
            EventKind::RoleSelected => "role_selected",
            EventKind::TotpEnrolled => "totp_enrolled",
            EventKind::SessionEnded => "session_ended",
            EventKind::SessionRevoked => "session_revoked",
            EventKind::OrganisationCreated => "organisation_created",
            EventKind::PersonCreated => "person_created",
            EventKind::PatientCreated => "patient_created",
            EventKind::ClientCreated => "client_created",
            EventKind::ClientUpdated => "client_updated",
            EventKind::ClientDeleted => "client_deleted",
            EventKind::OrganisationUpdated => "organisation_updated",
            EventKind::KeysRotated => "keys_rotated",
            EventKind::EnrolmentIssued => "enrolment_issued",
            EventKind::SecurityKeyAdded => "security_key_added",
        }
    }
}

/// `client_assertion_type` for private_key_jwt.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Now, unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
