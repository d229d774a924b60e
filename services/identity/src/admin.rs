//! The admin API's input, checked field by field without I/O (what [`crate::grpc`] then looks
//! up — a parent organisation, a client's organisation, role profiles' organisations — comes
//! after). Everything accepted here can be stored on either back end: no control character a
//! store would refuse, URLs absolute http(s) without a fragment.

use sharedcare_kit::auth::RoleProfile;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::jose::{self, JwkSet};
use sharedcare_kit::nhs::{NhsNumber, OdsCode, ProofingLevel};

use crate::api;
use crate::error::IdentityError;
use crate::model::{AuthMethod, ClientSettings, ORGANISATION_KINDS, Organisation, Patient, Person};

type Result<T> = std::result::Result<T, IdentityError>;

/// `field` must be given, and storable.
pub fn required(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(IdentityError::invalid(field, "is required"));
    }
    text(field, v)
}

/// Refuses text no store should keep (a NUL Postgres refuses and SQLite keeps, and the like).
pub fn text(field: &str, v: &str) -> Result<()> {
    sharedcare_kit::text::storable(v).map_err(|e| IdentityError::invalid(field, e.to_string()))
}

fn ods(field: &str, v: &str) -> Result<OdsCode> {
    OdsCode::parse(v).map_err(|e| IdentityError::invalid(field, e.to_string()))
}

/// An organisation: ODS code, name, kind, and a parent that is not itself (whether the parent
/// is registered is for the caller to look up).
pub fn organisation(r: api::Organisation, active: bool) -> Result<Organisation> {
    let code = ods("ods_code", &r.ods_code)?;
    required("name", &r.name)?;
    if !ORGANISATION_KINDS.contains(&r.kind.as_str()) {
        return Err(IdentityError::invalid(
            "kind",
            format!("expected one of {}", ORGANISATION_KINDS.join(", ")),
        ));
    }
    let parent = if r.parent_ods_code.is_empty() {
        String::new()
    } else {
        let p = ods("parent_ods_code", &r.parent_ods_code)?;
        if p.as_str() == code.as_str() {
            return Err(IdentityError::invalid(
                "parent_ods_code",
                "an organisation cannot be its own parent",
            ));
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

/// A client registration: its name and settings. `settings.organisation`, when set, is a
/// well-formed ODS code the caller must find registered.
pub fn client(r: api::CreateClientRequest) -> Result<(String, ClientSettings)> {
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
            ));
        }
    };
    for (i, g) in r.grant_types.iter().enumerate() {
        if !["authorization_code", "refresh_token", "client_credentials"].contains(&g.as_str()) {
            return Err(IdentityError::invalid(
                format!("grant_types[{i}]"),
                format!("{g:?} is not supported"),
            ));
        }
    }
    if r.grant_types.is_empty() {
        return Err(IdentityError::invalid(
            "grant_types",
            "at least one grant type is required",
        ));
    }
    if method == AuthMethod::None && r.grant_types.iter().any(|g| g == "client_credentials") {
        return Err(IdentityError::invalid(
            "grant_types",
            "a public client cannot use client_credentials",
        ));
    }
    for (i, s) in r.scopes.iter().enumerate() {
        if !crate::model::known_scope(s) {
            return Err(IdentityError::invalid(
                format!("scopes[{i}]"),
                format!("{s:?} is not a known scope"),
            ));
        }
    }
    let uris = [
        ("redirect_uris", &r.redirect_uris),
        ("post_logout_redirect_uris", &r.post_logout_redirect_uris),
    ];
    for (field, list) in uris {
        for (i, u) in list.iter().enumerate() {
            url_without_fragment(&format!("{field}[{i}]"), u)?;
        }
    }
    if !r.backchannel_logout_uri.is_empty() {
        url_without_fragment("backchannel_logout_uri", &r.backchannel_logout_uri)?;
    }
    if r.grant_types.iter().any(|g| g == "authorization_code") && r.redirect_uris.is_empty() {
        return Err(IdentityError::invalid(
            "redirect_uris",
            "required for authorization_code",
        ));
    }
    if method == AuthMethod::PrivateKeyJwt && !r.jwks_uri.is_empty() {
        if !r.jwks_json.is_empty() {
            return Err(IdentityError::invalid(
                "jwks_uri",
                "give jwks_json or jwks_uri, not both",
            ));
        }
        url_without_fragment("jwks_uri", &r.jwks_uri)?;
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
            return Err(IdentityError::invalid(
                "jwks_json",
                "needs a P-256 (ES256) key with a kid",
            ));
        }
        text("jwks_json", &r.jwks_json)?;
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
            ));
        }
    };
    let organisation = if r.organisation.is_empty() {
        String::new()
    } else {
        ods("organisation", &r.organisation)?.as_str().to_string()
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

/// An absolute http(s) URL without a fragment, kept as given (redirects are matched exactly),
/// so it must be storable as given too: the URL parser would quietly drop a tab or encode a NUL.
fn url_without_fragment(field: &str, u: &str) -> Result<()> {
    let refused = || IdentityError::invalid(field, format!("{u:?} is not an absolute http(s) URL without fragment"));
    match url::Url::parse(u) {
        Ok(p) if p.fragment().is_none() && matches!(p.scheme(), "https" | "http") => {}
        _ => return Err(refused()),
    }
    if u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refused());
    }
    Ok(())
}

/// A member of staff and their password (its strength is checked when it is hashed). Each role
/// profile's ODS code is well formed; whether it is registered is for the caller to look up.
/// A `uid` or role profile id not given is made up here.
pub fn person(r: api::CreatePersonRequest) -> Result<(Person, String)> {
    required("username", &r.username)?;
    required("given_name", &r.given_name)?;
    required("family_name", &r.family_name)?;
    text("email", &r.email)?;
    let uid = if r.uid.is_empty() { random_digits(12) } else { r.uid };
    if uid.len() != 12 || !uid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdentityError::invalid("uid", "must be 12 digits"));
    }
    let mut roles = Vec::with_capacity(r.role_profiles.len());
    for (i, rp) in r.role_profiles.into_iter().enumerate() {
        let field = |name: &str| format!("role_profiles[{i}].{name}");
        let code = ods(&field("ods_code"), &rp.ods_code)?;
        required(&field("role_code"), &rp.role_code)?;
        text(&field("role_name"), &rp.role_name)?;
        text(&field("id"), &rp.id)?;
        for (j, a) in rp.activity_codes.iter().enumerate() {
            required(&field(&format!("activity_codes[{j}]")), a)?;
        }
        roles.push(RoleProfile {
            person_roleid: if rp.id.is_empty() { random_digits(12) } else { rp.id },
            org_code: code.as_str().to_string(),
            role_code: rp.role_code,
            role_name: rp.role_name,
            activity_codes: rp.activity_codes,
            person_orgid: String::new(),
        });
    }
    if roles.is_empty() {
        return Err(IdentityError::invalid(
            "role_profiles",
            "at least one role profile is required",
        ));
    }
    let person = Person {
        uid,
        username: r.username,
        given_name: r.given_name,
        family_name: r.family_name,
        email: r.email,
        totp_secret: String::new(),
        security_keys: 0,
        roles,
    };
    Ok((person, r.password))
}

/// A patient's account (NHS login's stand-in) and their password.
pub fn patient(r: api::CreatePatientRequest) -> Result<(Patient, String)> {
    let nhs = NhsNumber::parse(&r.nhs_number).map_err(|e| IdentityError::invalid("nhs_number", e.to_string()))?;
    required("username", &r.username)?;
    text("given_name", &r.given_name)?;
    text("family_name", &r.family_name)?;
    if chrono::NaiveDate::parse_from_str(&r.birthdate, "%Y-%m-%d").is_err() {
        return Err(IdentityError::invalid("birthdate", "expected YYYY-MM-DD"));
    }
    let Some(proofing_level) = ProofingLevel::parse(&r.identity_proofing_level) else {
        return Err(IdentityError::invalid(
            "identity_proofing_level",
            "expected P0, P5 or P9",
        ));
    };
    let patient = Patient {
        nhs_number: nhs.as_str().to_string(),
        username: r.username,
        given_name: r.given_name,
        family_name: r.family_name,
        birthdate: r.birthdate,
        proofing_level,
    };
    Ok((patient, r.password))
}

/// `n` random decimal digits (a uid or role profile id).
pub fn random_digits(n: usize) -> String {
    let b = jose::random_bytes(n);
    b.iter().map(|x| char::from(b'0' + x % 10)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: IdentityError) -> String {
        use sharedcare_kit::edge::ServiceError;
        e.field().unwrap_or_default().to_string()
    }

    #[test]
    fn text_a_store_would_refuse_is_named_before_it_is_stored() {
        let person = api::CreatePersonRequest {
            username: "ann".into(),
            given_name: "Ann".into(),
            family_name: "Lee".into(),
            email: "ann\0@example.org".into(),
            role_profiles: vec![api::RoleProfile {
                ods_code: "A81001".into(),
                role_code: "R8000".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            field_of(super::person(person.clone()).expect_err("NUL in email")),
            "email"
        );
        let mut tab = person;
        tab.email = "ann@example.org".into();
        tab.role_profiles[0].activity_codes = vec!["B0370".into(), "B\u{7}".into()];
        assert_eq!(
            field_of(super::person(tab).expect_err("bell in an activity")),
            "role_profiles[0].activity_codes[1]"
        );
        let client = api::CreateClientRequest {
            name: "App".into(),
            grant_types: vec!["authorization_code".into()],
            redirect_uris: vec!["https://app.example/cb".into(), "https://app.example/c\u{0}b".into()],
            ..Default::default()
        };
        assert_eq!(
            field_of(super::client(client).expect_err("NUL in a redirect")),
            "redirect_uris[1]"
        );
    }
}
