//! Third-party clients against `sharedcare up`: panva's certified `openid-client` on Node and
//! headless Chromium through the real login pages (scripts in `tests/node/`, dependencies
//! installed by the README's test command with `npm ci`).

use std::path::PathBuf;
use std::process::Command;

use sharedcare_proto::identity::v1::{CreatePersonRequest, RoleProfile};

use crate::harness::{admin, register_app, up};

pub(crate) fn node_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        dir.join("node_modules/openid-client").exists() && dir.join("node_modules/playwright-core").exists(),
        "tests/node/node_modules is missing: run the README's test command (infra/test.sh), which runs `npm ci` there"
    );
    dir
}

pub(crate) fn run_node(script: &str, env: &[(&str, String)]) -> String {
    let dir = node_dir();
    let out = Command::new("node")
        .arg(dir.join(script))
        .current_dir(&dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("STAFF_TOTP", staff_totp())
        .output()
        .expect("run node (install Node.js 20+)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The demo staff's TOTP secrets as JSON {username: secret}, for the scripts' sign-ins.
fn staff_totp() -> String {
    let secrets: serde_json::Map<String, serde_json::Value> = ["gp", "nurse", "careworker", "icsadmin"]
        .into_iter()
        .filter_map(|u| sharedcare_identity::demo::totp_secret(u).map(|s| (u.to_string(), s.into())))
        .collect();
    serde_json::Value::Object(secrets).to_string()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn panva_openid_client_completes_every_flow() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let redirect = "http://127.0.0.1:9/node/callback";
    let (id, secret) = register_app(&p, "Node app", redirect, "").await;
    let out = run_node(
        "oidc.mjs",
        &[
            ("ISSUER", p.http.clone()),
            ("CLIENT_ID", id),
            ("CLIENT_SECRET", secret),
            ("REDIRECT_URI", redirect.into()),
            ("LOGOUT_URI", format!("{redirect}/signed-out")),
            ("USERNAME", "gp".into()),
            ("PASSWORD", "demo-gp-password".into()),
            ("SERVICE_ID", "ics-integration".into()),
            ("SERVICE_SECRET", "demo-integration-secret-95be0d27aa".into()),
        ],
    );
    assert!(out.contains("openid-client: all checks passed"), "{out}");
}

#[tokio::test]
async fn chromium_signs_in_once_for_two_apps_enrols_totp_and_logs_out_of_both() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    // A new member of staff with two role profiles and no second factor yet.
    let person = admin(&p)
        .await
        .create_person(CreatePersonRequest {
            username: "browser-nurse".into(),
            given_name: "Robin".into(),
            family_name: "Hale".into(),
            password: "browser-nurse-password".into(),
            role_profiles: vec![
                RoleProfile {
                    ods_code: "A81001".into(),
                    role_code: "S8000:G8000:R8001".into(),
                    role_name: "Practice Nurse".into(),
                    ..Default::default()
                },
                RoleProfile {
                    ods_code: "VN1C4".into(),
                    role_code: "S8000:G8000:R8001".into(),
                    role_name: "Care Home Nurse".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .expect("create person")
        .into_inner();
    let role = person.role_profiles[1].id.clone();
    // Their first authenticator needs a one-time enrolment code from an administrator.
    let enrolment = admin(&p)
        .await
        .issue_enrolment(sharedcare_proto::identity::v1::IssueEnrolmentRequest {
            uid: person.uid.clone(),
        })
        .await
        .expect("enrolment code")
        .into_inner()
        .enrolment_code;
    let (pa, pb) = (free_port(), free_port());
    let (a_id, a_secret) = register_app(
        &p,
        "App A",
        &format!("http://127.0.0.1:{pa}/callback"),
        &format!("http://127.0.0.1:{pa}/backchannel-logout"),
    )
    .await;
    let (b_id, b_secret) = register_app(
        &p,
        "App B",
        &format!("http://127.0.0.1:{pb}/callback"),
        &format!("http://127.0.0.1:{pb}/backchannel-logout"),
    )
    .await;
    let out = run_node(
        "browser.mjs",
        &[
            ("ISSUER", p.http.clone()),
            ("A_PORT", pa.to_string()),
            ("B_PORT", pb.to_string()),
            ("A_ID", a_id),
            ("A_SECRET", a_secret),
            ("B_ID", b_id),
            ("B_SECRET", b_secret),
            ("USERNAME", "browser-nurse".into()),
            ("PASSWORD", "browser-nurse-password".into()),
            ("ROLE_ID", role),
            ("ENROLMENT_CODE", enrolment),
        ],
    );
    assert!(out.contains("browser: all checks passed"), "{out}");
}

/// WebAuthn as a second factor (CIS2 counts passkeys and security keys as AAL2): a new member
/// of staff adds a passkey in Chromium (its virtual authenticator, over the DevTools protocol)
/// with an administrator's enrolment code, then signs in with it; the app's token says AAL2
/// with a key (`hwk`), and records accepts it. WebAuthn needs a domain name, so identity's
/// issuer here is `http://localhost:<port>`.
#[tokio::test]
async fn chromium_adds_a_passkey_and_signs_in_with_it_at_aal2() {
    use crate::harness::{Proc, claims_of, exchange, relying_party, staff_auth_url};
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let issuer = format!("http://localhost:{port}");
    let p = Proc::start_on(
        &["up", "--data", data.path().to_str().expect("utf-8")],
        &[("SHAREDCARE_IDENTITY__ISSUER", issuer.clone())],
        &format!("127.0.0.1:{port}"),
        "127.0.0.1:0",
    );
    let person = admin(&p)
        .await
        .create_person(CreatePersonRequest {
            username: "passkey-nurse".into(),
            given_name: "Ada".into(),
            family_name: "Key".into(),
            password: "passkey-nurse-password".into(),
            role_profiles: vec![RoleProfile {
                ods_code: "A81001".into(),
                role_code: "S8000:G8000:R8001".into(),
                role_name: "Practice Nurse".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("create person")
        .into_inner();
    let enrolment = admin(&p)
        .await
        .issue_enrolment(sharedcare_proto::identity::v1::IssueEnrolmentRequest {
            uid: person.uid.clone(),
        })
        .await
        .expect("enrolment code")
        .into_inner()
        .enrolment_code;
    // The app: the script answers its redirect URI itself (Chromium refuses port 9).
    let redirect = format!("http://127.0.0.1:{}/passkey/callback", free_port());
    let (id, secret) = register_app(&p, "Passkey app", &redirect, "").await;
    let rp = relying_party(&issuer, &id, &secret, &redirect).await;
    let aal2 = format!("{}&acr_values=AAL2&prompt=login", staff_auth_url(&rp));
    let out = run_node(
        "webauthn.mjs",
        &[
            ("ISSUER", issuer.clone()),
            ("USERNAME", "passkey-nurse".into()),
            ("PASSWORD", "passkey-nurse-password".into()),
            ("ENROLMENT_CODE", enrolment),
            ("AUTH_URL_PASSWORD", staff_auth_url(&rp)),
            ("AUTH_URL_AAL2", aal2),
            ("REDIRECT", redirect.clone()),
        ],
    );
    assert!(out.contains("webauthn: all checks passed"), "{out}");
    let back = out
        .lines()
        .find_map(|l| l.strip_prefix("redirect "))
        .expect("the redirect after the passkey sign-in");
    let tokens = exchange(&rp, back).await;
    use openidconnect::OAuth2TokenResponse;
    let access = claims_of(tokens.access_token().secret());
    assert_eq!(access["acr"], "AAL2", "{access}");
    let id_token = serde_json::to_value(&tokens).expect("json")["id_token"]
        .as_str()
        .map(claims_of)
        .expect("an ID token");
    let amr: Vec<&str> = id_token["amr"]
        .as_array()
        .expect("amr")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    assert!(
        amr.contains(&"pwd") && amr.contains(&"hwk"),
        "password and a device-bound key: {amr:?}"
    );
    // A service takes the token as a member of staff at AAL2: records decides on the request
    // itself (nothing held by that id) instead of refusing the caller.
    let get = sharedcare_proto::records::v1::GetRequest {
        resource_type: "Patient".into(),
        id: "anyone".into(),
        ..Default::default()
    };
    let answer = sharedcare_proto::records::v1::records_client::RecordsClient::new(p.channel().await)
        .get(crate::harness::with_token(get, tokens.access_token().secret()))
        .await
        .expect_err("no such record");
    assert_ne!(answer.code(), tonic::Code::Unauthenticated, "{answer:?}");
}
