//! The identity admin API's input (organisations, clients, staff and patients, as protobuf
//! from the wire): refused naming a field, or accepted as something either back end stores as
//! given — no control character in any text, URLs absolute http(s) without a fragment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sharedcare_identity::{admin, api};
use sharedcare_kit::edge::ServiceError;
use sharedcare_kit::nhs::OdsCode;

fn storable(what: &str, v: &str) {
    assert!(sharedcare_kit::text::storable(v).is_ok(), "{what} {v:?} would be stored");
}

fn refused_naming_a_field(e: sharedcare_identity::IdentityError) {
    let field = e.field().unwrap_or_default();
    assert!(!field.is_empty(), "a refusal names its field: {e}");
}

fn url(what: &str, u: &str) {
    storable(what, u);
    let p = url::Url::parse(u).expect("an accepted URL parses");
    assert!(matches!(p.scheme(), "http" | "https") && p.fragment().is_none(), "{what} {u:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let Ok(r) = api::Organisation::decode(bytes) else { return };
            match admin::organisation(r, true) {
                Ok(o) => {
                    assert!(OdsCode::parse(&o.ods_code).is_ok());
                    storable("name", &o.name);
                    assert!(o.parent.is_empty() || (OdsCode::parse(&o.parent).is_ok() && o.parent != o.ods_code));
                }
                Err(e) => refused_naming_a_field(e),
            }
        }
        1 => {
            let Ok(r) = api::CreateClientRequest::decode(bytes) else { return };
            let id = r.client_id.clone();
            match admin::client(r) {
                Ok((name, s)) => {
                    storable("name", &name);
                    storable("client_id", &id);
                    for u in s.redirect_uris.iter().chain(&s.post_logout_redirect_uris) {
                        url("redirect", u);
                    }
                    if !s.backchannel_logout_uri.is_empty() {
                        url("backchannel_logout_uri", &s.backchannel_logout_uri);
                    }
                    if !s.jwks_uri.is_empty() {
                        url("jwks_uri", &s.jwks_uri);
                    }
                    assert!(!s.grant_types.is_empty());
                    assert!(s.organisation.is_empty() || OdsCode::parse(&s.organisation).is_ok());
                }
                Err(e) => refused_naming_a_field(e),
            }
        }
        2 => {
            let Ok(r) = api::CreatePersonRequest::decode(bytes) else { return };
            match admin::person(r) {
                Ok((p, _)) => {
                    for (what, v) in [
                        ("username", &p.username),
                        ("given_name", &p.given_name),
                        ("family_name", &p.family_name),
                        ("email", &p.email),
                    ] {
                        storable(what, v);
                    }
                    assert!(p.uid.len() == 12 && p.uid.bytes().all(|b| b.is_ascii_digit()));
                    assert!(!p.roles.is_empty());
                    for r in &p.roles {
                        assert!(OdsCode::parse(&r.org_code).is_ok());
                        for v in [&r.role_code, &r.role_name, &r.person_roleid].into_iter().chain(&r.activity_codes) {
                            storable("role profile", v);
                        }
                    }
                }
                Err(e) => refused_naming_a_field(e),
            }
        }
        _ => {
            let Ok(r) = api::CreatePatientRequest::decode(bytes) else { return };
            match admin::patient(r) {
                Ok((p, _)) => {
                    for v in [&p.username, &p.given_name, &p.family_name, &p.birthdate] {
                        storable("patient", v);
                    }
                    assert!(sharedcare_kit::nhs::NhsNumber::parse(&p.nhs_number).is_ok());
                }
                Err(e) => refused_naming_a_field(e),
            }
        }
    }
});
