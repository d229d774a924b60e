//! The demo ICS that `sharedcare up` seeds into an empty identity database and that
//! `sharedcare demo` prints, so scripts and tests can sign in without setting anything up.
//! Its passwords, TOTP secret and client secrets are public: never seed it in production
//! (`identity.seed_demo = false`).

use serde_json::{Value, json};
use sharedcare_kit::auth::RoleProfile;
use sharedcare_kit::jose;
use sharedcare_kit::nhs::{NhsNumber, ProofingLevel};

use crate::error::Result;
use crate::model::{AuthMethod, Client, ClientSettings, Organisation, Patient, Person};
use crate::secrets::Hasher;
use crate::store::Store;

/// The nurse's TOTP secret (base32), so tests can compute codes.
pub const NURSE_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// The GP's TOTP secret (base32). Every demo staff account has a second factor: services
/// accept staff only at AAL2 (password and security code), as NHS CIS2 authenticates staff.
pub const GP_TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// The care worker's TOTP secret (base32).
pub const CAREWORKER_TOTP_SECRET: &str = "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U";
/// The ICS administrator's TOTP secret (base32).
pub const ICSADMIN_TOTP_SECRET: &str = "OVWXQ6LAMJRGIZLGM5UGS2TLNRWW433Q";

/// A demo staff member's TOTP secret by username (for tests and the README's walk-through).
pub fn totp_secret(username: &str) -> Option<&'static str> {
    match username {
        "gp" => Some(GP_TOTP_SECRET),
        "nurse" => Some(NURSE_TOTP_SECRET),
        "careworker" => Some(CAREWORKER_TOTP_SECRET),
        "icsadmin" => Some(ICSADMIN_TOTP_SECRET),
        _ => None,
    }
}

fn org(ods: &str, name: &str, kind: &str) -> Organisation {
    Organisation {
        ods_code: ods.into(),
        name: name.into(),
        kind: kind.into(),
        // Every provider belongs to the ICB (whose privacy officer reviews their break-glass).
        parent: if ods == DEMO_ICB {
            String::new()
        } else {
            DEMO_ICB.into()
        },
        active: true,
    }
}

/// The demo ICB's ODS code: the parent of every demo organisation.
pub const DEMO_ICB: &str = "QN1";

/// The demo organisations: a GP practice, an acute trust, a community trust, a care home, a
/// home care provider, the local authority and the ICB.
pub fn organisations() -> Vec<Organisation> {
    vec![
        org("A81001", "Riverside Medical Practice", "gp_practice"),
        org("RX1", "Northbridge University Hospitals NHS Trust", "nhs_trust"),
        org("RVC", "Northbridge Community Health NHS Trust", "nhs_trust"),
        org("VN1C4", "Willow House Care Home", "care_home"),
        org("VH2D7", "Homeward Care Services", "home_care_provider"),
        org("LA101", "Northbridge City Council Adult Social Care", "local_authority"),
        org("QN1", "NHS Northbridge Integrated Care Board", "icb"),
    ]
}

fn role(id: &str, ods: &str, code: &str, name: &str, acts: &[&str]) -> RoleProfile {
    RoleProfile {
        person_roleid: id.into(),
        org_code: ods.into(),
        role_code: code.into(),
        role_name: name.into(),
        activity_codes: acts.iter().map(|a| a.to_string()).collect(),
        person_orgid: String::new(),
    }
}

/// Demo staff with their passwords.
pub fn people() -> Vec<(Person, &'static str)> {
    let person = |uid: &str, user: &str, given: &str, family: &str, totp: &str, roles: Vec<RoleProfile>| Person {
        uid: uid.into(),
        username: user.into(),
        given_name: given.into(),
        family_name: family.into(),
        email: format!("{user}@example.nhs.uk"),
        totp_secret: totp.into(),
        security_keys: 0,
        roles,
    };
    vec![
        (
            person(
                "555000000001",
                "gp",
                "Amara",
                "Okafor",
                GP_TOTP_SECRET,
                vec![role(
                    "100000000001",
                    "A81001",
                    "S8000:G8000:R8000",
                    "Clinical Practitioner Access Role",
                    &["B0370", "B0264"],
                )],
            ),
            "demo-gp-password",
        ),
        (
            person(
                "555000000002",
                "nurse",
                "Sam",
                "Patel",
                NURSE_TOTP_SECRET,
                vec![
                    role(
                        "100000000002",
                        "RX1",
                        "S8000:G8000:R8001",
                        "Nurse Access Role",
                        &["B0370"],
                    ),
                    role(
                        "100000000003",
                        "VN1C4",
                        "S8000:G8000:R8001",
                        "Nurse Access Role",
                        &["B1611"],
                    ),
                ],
            ),
            "demo-nurse-password",
        ),
        (
            person(
                "555000000003",
                "careworker",
                "Jo",
                "Williams",
                CAREWORKER_TOTP_SECRET,
                vec![role(
                    "100000000004",
                    "VH2D7",
                    "S8002:G8003:R8010",
                    "Care Worker",
                    &["B1611"],
                )],
            ),
            "demo-careworker-password",
        ),
        (
            person(
                "555000000004",
                "icsadmin",
                "Priya",
                "Shah",
                ICSADMIN_TOTP_SECRET,
                vec![role(
                    "100000000005",
                    "QN1",
                    "S8001:G8005:R8008",
                    "Admin and Clerical Access Role",
                    &["B1300", "B0015"],
                )],
            ),
            "demo-icsadmin-password",
        ),
    ]
}

/// Demo patients (valid NHS numbers) with their passwords: three at P9, one at P5.
pub fn patients() -> Vec<(Patient, &'static str)> {
    let nhs = |stem: u32| {
        NhsNumber::from_stem(stem)
            .map(|n| n.as_str().to_string())
            .unwrap_or_default()
    };
    let patient = |stem: u32, user: &str, given: &str, family: &str, born: &str, level: ProofingLevel| Patient {
        nhs_number: nhs(stem),
        username: user.into(),
        given_name: given.into(),
        family_name: family.into(),
        birthdate: born.into(),
        proofing_level: level,
    };
    vec![
        (
            patient(
                943_476_591,
                "patient1",
                "Margaret",
                "Evans",
                "1941-03-12",
                ProofingLevel::P9,
            ),
            "demo-patient1-password",
        ),
        (
            patient(
                943_476_592,
                "patient2",
                "David",
                "Nowak",
                "1958-11-02",
                ProofingLevel::P9,
            ),
            "demo-patient2-password",
        ),
        (
            patient(
                943_476_593,
                "patient3",
                "Aisha",
                "Rahman",
                "1990-06-25",
                ProofingLevel::P9,
            ),
            "demo-patient3-password",
        ),
        (
            patient(943_476_594, "patient4", "Tom", "Baker", "1985-01-30", ProofingLevel::P5),
            "demo-patient4-password",
        ),
    ]
}

/// The demo patients' care relationships (NHS number, organisation's ODS code, kind), which
/// `up` seeds into consent: every patient is registered at Riverside Medical Practice;
/// Margaret Evans has a care package at Willow House and David Nowak an episode of care at
/// the trust.
pub fn care_relationships() -> Vec<(String, &'static str, &'static str)> {
    let p = patients();
    let nhs = |i: usize| {
        p.get(i)
            .map(|(person, _)| person.nhs_number.clone())
            .unwrap_or_default()
    };
    let mut out: Vec<(String, &'static str, &'static str)> =
        (0..p.len()).map(|i| (nhs(i), "A81001", "gp_registration")).collect();
    out.push((nhs(0), "VN1C4", "care_package"));
    out.push((nhs(1), "RX1", "episode_of_care"));
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The web portal's client in the demo (id, secret): `up` signs the portal in with it.
pub const PORTAL_CLIENT: (&str, &str) = ("sharedcare-portal", "demo-portal-secret-7c1f9e2b4a");

/// The sample ICS app's client in the demo (id, secret): `sharedcare sample-app` by default.
pub const SAMPLE_APP_CLIENT: (&str, &str) = ("ics-sample-app", "demo-sample-secret-3d8a61f0c5");

/// The ICS integration engine's client in the demo (id, secret): a trusted feed (the demo's
/// `records.feeds`); `up` writes the demo's clinical record with it.
pub const INTEGRATION_CLIENT: (&str, &str) = ("ics-integration", "demo-integration-secret-95be0d27aa");

/// The demo acute trust's PAS (Northbridge University Hospitals, RX1) as a client (id,
/// secret): the connectors service writes what its HL7 v2 feed sends with it, so records,
/// consent and audit see the trust's own system as the writer. A trusted feed in `up`.
pub const PAS_CLIENT: (&str, &str) = ("rx1-pas", "demo-rx1-pas-secret-4e9b27c1d8");

/// Demo clients with their secrets (empty for public clients). `base` is the HTTP base URL.
pub fn clients(base: &str) -> Vec<(Client, &'static str)> {
    let user_scopes = strings(crate::model::USER_SCOPES);
    let client = |id: &str, name: &str, secret: &str, settings: ClientSettings| Client {
        id: id.into(),
        name: name.into(),
        secret_hash: if secret.is_empty() {
            String::new()
        } else {
            jose::sha256_b64(secret)
        },
        settings,
    };
    vec![
        (
            client(
                PORTAL_CLIENT.0,
                "Shared care record (staff portal)",
                PORTAL_CLIENT.1,
                ClientSettings {
                    redirect_uris: vec![format!("{base}/portal/callback")],
                    post_logout_redirect_uris: vec![format!("{base}/portal/"), format!("{base}/passport/")],
                    backchannel_logout_uri: format!("{base}/portal/backchannel-logout"),
                    grant_types: strings(&["authorization_code", "refresh_token"]),
                    scopes: user_scopes.clone(),
                    auth_method: AuthMethod::ClientSecretBasic,
                    jwks: None,
                    jwks_uri: String::new(),
                    id_token_alg: String::new(),
                    organisation: String::new(),
                },
            ),
            PORTAL_CLIENT.1,
        ),
        (
            client(
                SAMPLE_APP_CLIENT.0,
                "Care home handover (sample ICS app: `sharedcare sample-app`)",
                SAMPLE_APP_CLIENT.1,
                ClientSettings {
                    redirect_uris: strings(&["http://127.0.0.1:8400/callback", "http://localhost:8400/callback"]),
                    post_logout_redirect_uris: strings(&["http://127.0.0.1:8400/"]),
                    backchannel_logout_uri: "http://127.0.0.1:8400/backchannel-logout".into(),
                    grant_types: strings(&["authorization_code", "refresh_token"]),
                    scopes: user_scopes.clone(),
                    auth_method: AuthMethod::ClientSecretBasic,
                    jwks: None,
                    jwks_uri: String::new(),
                    id_token_alg: String::new(),
                    organisation: String::new(),
                },
            ),
            SAMPLE_APP_CLIENT.1,
        ),
        (
            client(
                "nhs-app-demo",
                "Patient passport (NHS App)",
                "",
                ClientSettings {
                    redirect_uris: strings(&["http://127.0.0.1:8401/callback"]),
                    post_logout_redirect_uris: Vec::new(),
                    backchannel_logout_uri: String::new(),
                    grant_types: strings(&["authorization_code", "refresh_token"]),
                    scopes: user_scopes,
                    auth_method: AuthMethod::None,
                    jwks: None,
                    jwks_uri: String::new(),
                    id_token_alg: String::new(),
                    organisation: String::new(),
                },
            ),
            "",
        ),
        (
            client(
                INTEGRATION_CLIENT.0,
                "ICS integration engine (service)",
                INTEGRATION_CLIENT.1,
                ClientSettings {
                    redirect_uris: Vec::new(),
                    post_logout_redirect_uris: Vec::new(),
                    backchannel_logout_uri: String::new(),
                    grant_types: strings(&["client_credentials"]),
                    scopes: strings(crate::model::SERVICE_SCOPES),
                    auth_method: AuthMethod::ClientSecretBasic,
                    jwks: None,
                    jwks_uri: String::new(),
                    id_token_alg: String::new(),
                    organisation: String::new(),
                },
            ),
            INTEGRATION_CLIENT.1,
        ),
        (
            client(
                PAS_CLIENT.0,
                "Northbridge University Hospitals PAS (HL7 v2 feed through the connectors)",
                PAS_CLIENT.1,
                ClientSettings {
                    redirect_uris: Vec::new(),
                    post_logout_redirect_uris: Vec::new(),
                    backchannel_logout_uri: String::new(),
                    grant_types: strings(&["client_credentials"]),
                    scopes: strings(&["records.write"]),
                    auth_method: AuthMethod::ClientSecretBasic,
                    jwks: None,
                    jwks_uri: String::new(),
                    id_token_alg: String::new(),
                    organisation: "RX1".into(),
                },
            ),
            PAS_CLIENT.1,
        ),
    ]
}

/// Seeds the demo ICS when the identity database is empty; true when it seeded.
pub async fn seed(store: &Store, base: &str, hasher: &Hasher) -> Result<bool> {
    if !store.is_empty().await? {
        return Ok(false);
    }
    for o in organisations() {
        store.insert_organisation(&o).await?;
    }
    for (p, password) in people() {
        let hash = hasher.hash(password.into()).await?;
        store.insert_person(&p, &hash).await?;
    }
    for (p, password) in patients() {
        let hash = hasher.hash(password.into()).await?;
        store.insert_patient(&p, &hash).await?;
    }
    for (c, _) in clients(base) {
        store.insert_client(&c).await?;
    }
    Ok(true)
}

/// The demo ICS as JSON (what `sharedcare demo` prints).
pub fn describe(base: &str) -> Value {
    json!({
        "issuer": base,
        "discovery": format!("{base}/.well-known/openid-configuration"),
        "organisations": organisations(),
        "staff": people().into_iter().map(|(p, password)| json!({
            "nhsid_useruid": p.uid, "username": p.username, "password": password,
            "name": format!("{} {}", p.given_name, p.family_name),
            "totp_secret": p.totp_secret, "role_profiles": p.roles,
        })).collect::<Vec<_>>(),
        "patients": patients().into_iter().map(|(p, password)| json!({
            "nhs_number": p.nhs_number, "username": p.username, "password": password,
            "name": format!("{} {}", p.given_name, p.family_name), "birthdate": p.birthdate,
            "identity_proofing_level": p.proofing_level,
        })).collect::<Vec<_>>(),
        "care_relationships": care_relationships().into_iter().map(|(nhs, ods, kind)| json!({
            "nhs_number": nhs, "ods_code": ods, "kind": kind,
        })).collect::<Vec<_>>(),
        "clients": clients(base).into_iter().map(|(c, secret)| json!({
            "client_id": c.id, "name": c.name, "client_secret": secret,
            "token_endpoint_auth_method": c.settings.auth_method.as_str(),
            "redirect_uris": c.settings.redirect_uris,
            "post_logout_redirect_uris": c.settings.post_logout_redirect_uris,
            "backchannel_logout_uri": c.settings.backchannel_logout_uri,
            "grant_types": c.settings.grant_types, "scopes": c.settings.scopes,
        })).collect::<Vec<_>>(),
    })
}
