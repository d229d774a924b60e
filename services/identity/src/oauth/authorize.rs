//! The authorization request, checked before anything is shown (OIDC Core §3.1.2, RFC 7636
//! PKCE), and what a session must satisfy (max_age, acr_values, vtr).

use super::{OAuthError, OAuthErrorCode};
use crate::model::{ACR_PASSWORD, AuthMethod, Client, acr_for, check_scope};
use sharedcare_kit::nhs::ProofingLevel;

/// An authorization request's parameters that are checked without I/O (RFC 6749 §4.1.1,
/// RFC 7636, OIDC Core §3.1.2.1), once the client and redirect URI are known to be good.
#[derive(Debug, Clone, Default)]
pub struct AuthzParams<'a> {
    /// `response_type`.
    pub response_type: &'a str,
    /// `scope`.
    pub scope: &'a str,
    /// `code_challenge`.
    pub code_challenge: &'a str,
    /// `code_challenge_method`.
    pub code_challenge_method: &'a str,
    /// `max_age`.
    pub max_age: &'a str,
    /// `prompt`.
    pub prompt: &'a str,
}

/// What [`check_authorization`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedAuthz {
    /// The granted scope (requested ∩ the client's, `openid` included).
    pub scope: String,
    /// The PKCE challenge ("" when none was sent by a confidential client).
    pub code_challenge: String,
    /// `max_age` in seconds, if asked.
    pub max_age: Option<i64>,
    /// `prompt`, as sent.
    pub prompt: String,
}

/// Checks the parameters of an authorization request for `client` (response type, scope,
/// PKCE, `max_age`, `prompt`); the error goes back to the client's redirect URI.
pub fn check_authorization(client: &Client, p: &AuthzParams<'_>) -> Result<CheckedAuthz, OAuthError> {
    use OAuthErrorCode::*;
    if p.response_type != "code" {
        return Err(OAuthError::new(UnsupportedResponseType, "response_type must be code"));
    }
    if !client.allows_grant("authorization_code") {
        return Err(OAuthError::new(
            UnauthorizedClient,
            "this client may not use the authorization code flow",
        ));
    }
    let scope = match check_scope(p.scope, &client.settings.scopes) {
        Ok(s) if s.split(' ').any(|x| x == "openid") => s,
        Ok(_) => return Err(OAuthError::new(InvalidScope, "scope must include openid")),
        Err(e) => return Err(OAuthError::new(InvalidScope, e.to_string())),
    };
    let code_challenge = check_pkce(
        p.code_challenge,
        p.code_challenge_method,
        client.settings.auth_method == AuthMethod::None,
    )?;
    let max_age = match p.max_age {
        "" => None,
        v => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                return Err(OAuthError::new(
                    InvalidRequest,
                    "max_age must be a non-negative integer",
                ));
            }
        },
    };
    if p.prompt
        .split_whitespace()
        .any(|x| !["none", "login", "select_account", "consent"].contains(&x))
    {
        return Err(OAuthError::new(
            InvalidRequest,
            "prompt must be none, login or select_account",
        ));
    }
    Ok(CheckedAuthz {
        scope,
        code_challenge,
        max_age,
        prompt: p.prompt.to_string(),
    })
}

/// RFC 7636: only S256; required of public clients; a challenge is a base64url SHA-256.
pub(super) fn check_pkce(challenge: &str, method: &str, public_client: bool) -> Result<String, OAuthError> {
    use base64::Engine;
    let invalid = |why: &str| Err(OAuthError::new(OAuthErrorCode::InvalidRequest, why));
    if challenge.is_empty() {
        if public_client {
            return invalid("PKCE with code_challenge_method=S256 is required for public clients");
        }
        return Ok(String::new());
    }
    if method != "S256" {
        return invalid("code_challenge_method must be S256");
    }
    let decodes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(challenge)
        .is_ok();
    if challenge.len() != 43 || !decodes {
        return invalid("code_challenge must be a base64url SHA-256 (43 characters)");
    }
    Ok(challenge.to_string())
}

/// Whether a session authenticated at `auth_time` may answer a request with `max_age` at
/// `now` (OIDC Core §3.1.2.1: older sessions must sign in again).
pub fn session_fresh_enough(max_age: Option<i64>, auth_time: i64, now: i64) -> bool {
    max_age.is_none_or(|m| now - auth_time <= m)
}

/// Whether `acr_values` asks for more than a password while the session's methods (`amr`)
/// give only that: the user must present a second factor.
pub fn needs_second_factor(acr_values: &str, amr: &[String]) -> bool {
    acr_values.split_whitespace().any(|a| a != ACR_PASSWORD) && acr_for(amr) == ACR_PASSWORD
}

/// Whether a patient proofed at `have` satisfies NHS login's `vtr` (a JSON list of vectors
/// such as `["P9.Cp.Cd"]`): no list, or any vector whose level is at most `have`. A `vtr` that
/// is not such a list is satisfied by nothing.
pub fn vtr_satisfied(vtr: &str, have: ProofingLevel) -> bool {
    if vtr.is_empty() {
        return true;
    }
    let Ok(wanted) = serde_json::from_str::<Vec<String>>(vtr) else {
        return false;
    };
    wanted.is_empty()
        || wanted
            .iter()
            .any(|v| ProofingLevel::parse(v.split('.').next().unwrap_or_default()).is_some_and(|level| level <= have))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClientSettings;

    fn client(auth_method: AuthMethod) -> Client {
        Client {
            id: "app".into(),
            name: "App".into(),
            secret_hash: String::new(),
            settings: ClientSettings {
                redirect_uris: vec!["https://app.example/cb".into()],
                post_logout_redirect_uris: Vec::new(),
                backchannel_logout_uri: String::new(),
                grant_types: vec!["authorization_code".into()],
                scopes: vec!["openid".into(), "profile".into()],
                auth_method,
                jwks: None,
                jwks_uri: String::new(),
                id_token_alg: String::new(),
                organisation: String::new(),
            },
        }
    }

    /// A valid S256 challenge (43 base64url characters).
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn params<'a>() -> AuthzParams<'a> {
        AuthzParams {
            response_type: "code",
            scope: "openid profile",
            code_challenge: CHALLENGE,
            code_challenge_method: "S256",
            ..Default::default()
        }
    }

    fn refused(c: &Client, p: &AuthzParams<'_>) -> (OAuthErrorCode, String) {
        let e = check_authorization(c, p).expect_err("refused");
        (e.code, e.description)
    }

    #[test]
    fn a_well_formed_request_is_accepted_as_asked() {
        let ok = check_authorization(&client(AuthMethod::None), &params()).expect("accepted");
        assert_eq!(ok.scope, "openid profile");
        assert_eq!(ok.code_challenge, CHALLENGE);
        assert_eq!(ok.max_age, None);
    }

    #[test]
    fn pkce_is_s256_only_and_required_of_public_clients() {
        let public = client(AuthMethod::None);
        let no_pkce = AuthzParams {
            code_challenge: "",
            code_challenge_method: "",
            ..params()
        };
        assert_eq!(refused(&public, &no_pkce).0, OAuthErrorCode::InvalidRequest);
        let confidential = client(AuthMethod::ClientSecretBasic);
        assert_eq!(
            check_authorization(&confidential, &no_pkce)
                .expect("optional")
                .code_challenge,
            ""
        );
        let plain = AuthzParams {
            code_challenge_method: "plain",
            ..params()
        };
        assert_eq!(refused(&confidential, &plain).1, "code_challenge_method must be S256");
        let short = AuthzParams {
            code_challenge: "abc",
            ..params()
        };
        assert!(refused(&confidential, &short).1.contains("43 characters"));
    }

    #[test]
    fn response_type_scope_max_age_and_prompt_are_checked_by_name() {
        let c = client(AuthMethod::ClientSecretBasic);
        let cases = [
            (
                AuthzParams {
                    response_type: "token",
                    ..params()
                },
                OAuthErrorCode::UnsupportedResponseType,
            ),
            (
                AuthzParams {
                    scope: "profile",
                    ..params()
                },
                OAuthErrorCode::InvalidScope,
            ),
            (
                AuthzParams {
                    scope: "openid records.write",
                    ..params()
                },
                OAuthErrorCode::InvalidScope,
            ),
            (
                AuthzParams {
                    max_age: "-1",
                    ..params()
                },
                OAuthErrorCode::InvalidRequest,
            ),
            (
                AuthzParams {
                    prompt: "none bogus",
                    ..params()
                },
                OAuthErrorCode::InvalidRequest,
            ),
        ];
        for (p, want) in cases {
            assert_eq!(refused(&c, &p).0, want, "{p:?}");
        }
        let aged = AuthzParams {
            max_age: "300",
            prompt: "login select_account",
            ..params()
        };
        let ok = check_authorization(&c, &aged).expect("accepted");
        assert_eq!((ok.max_age, ok.prompt.as_str()), (Some(300), "login select_account"));
    }

    #[test]
    fn a_client_without_the_code_grant_is_unauthorized() {
        let mut c = client(AuthMethod::ClientSecretBasic);
        c.settings.grant_types = vec!["client_credentials".into()];
        assert_eq!(refused(&c, &params()).0, OAuthErrorCode::UnauthorizedClient);
    }

    #[test]
    fn max_age_acr_and_vtr_decide_what_a_session_satisfies() {
        assert!(session_fresh_enough(None, 0, 1_000));
        assert!(session_fresh_enough(Some(60), 1_000, 1_060));
        assert!(!session_fresh_enough(Some(60), 1_000, 1_061));
        assert!(!session_fresh_enough(Some(0), 1_000, 1_001));

        let pwd = vec!["pwd".to_string()];
        let otp = vec!["pwd".to_string(), "otp".to_string()];
        assert!(needs_second_factor("AAL2", &pwd));
        assert!(!needs_second_factor("AAL2", &otp));
        assert!(!needs_second_factor("AAL1", &pwd));
        assert!(!needs_second_factor("", &pwd));

        assert!(vtr_satisfied("", ProofingLevel::P0));
        assert!(vtr_satisfied(r#"["P9.Cp.Cd"]"#, ProofingLevel::P9));
        assert!(!vtr_satisfied(r#"["P9.Cp.Cd"]"#, ProofingLevel::P5));
        assert!(vtr_satisfied(r#"["P9.Cp.Cd", "P5.Cp.Cd"]"#, ProofingLevel::P5));
        assert!(
            !vtr_satisfied("not json", ProofingLevel::P9),
            "a malformed vtr is met by nothing"
        );
    }

    #[test]
    fn upstream_errors_keep_their_prompt_none_meaning_or_become_a_refusal() {
        assert_eq!(
            OAuthErrorCode::from_upstream("login_required"),
            OAuthErrorCode::LoginRequired
        );
        assert_eq!(
            OAuthErrorCode::from_upstream("server_error"),
            OAuthErrorCode::AccessDenied
        );
        assert_eq!(
            OAuthErrorCode::UnmetAuthenticationRequirements.as_str(),
            "unmet_authentication_requirements"
        );
    }
}
