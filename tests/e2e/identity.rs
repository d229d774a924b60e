//! Identity as an ICS app sees it: the `openidconnect` crate (a real relying-party library)
//! against `sharedcare up`, a cookie-keeping HTTP client in the browser's place for the login
//! pages, and the admin API over gRPC. Browser tests with Chromium and panva's Node client are
//! in `tests/node/` and run from `oidc_node.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims};
use openidconnect::{
    AccessToken, AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, Scope, TokenIntrospectionResponse, TokenResponse,
};
use serde_json::Value;
use sharedcare_kit::auth::{HttpKeys, Principal, Verifier};
use sharedcare_kit::jose::{self, JwkSet, Signer256};
use sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient;
use sharedcare_proto::identity::v1::{
    CreateClientRequest, ListSessionsRequest, RevokeSessionRequest, RotateKeysRequest,
};

use crate::harness::*;

/// The key set identity publishes now.
async fn published_keys(base: &str) -> JwkSet {
    http()
        .get(format!("{base}/oauth2/jwks"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn code_flow_with_pkce_gives_verified_tokens_userinfo_refresh_introspection_and_revocation() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let redirect = "http://127.0.0.1:9/app/callback";
    let (id, secret) = register_app(&p, "Test app", redirect, "").await;
    let rp = relying_party(&p.http, &id, &secret, redirect).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, state, nonce) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("nationalrbacaccess".into()))
        .add_scope(Scope::new("selectedrole".into()))
        .add_scope(Scope::new("associatedorgs".into()))
        .set_pkce_challenge(challenge)
        .url();
    let b = browser();
    let (back, _, _) = sign_in(&b, &p.http, auth_url.as_str(), "gp", "demo-gp-password").await;
    assert!(back.starts_with(redirect), "redirected back to the app: {back}");
    let q = query(&back);
    assert_eq!(q["state"], *state.secret());
    assert_eq!(q["iss"], p.http, "RFC 9207 iss parameter");

    let tokens = rp
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .expect("token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("id_token");
    let claims = id_token
        .claims(&rp.id_token_verifier(), &nonce)
        .expect("ID token verifies");
    assert_eq!(claims.subject().as_str(), "555000000001");
    let raw = claims_of(&id_token.to_string());
    assert_eq!(raw["selected_roleid"], "100000000001");
    assert_eq!(raw["nhsid_nrbac_roles"][0]["org_code"], "A81001");
    assert_eq!(raw["nhsid_user_orgs"][0]["org_name"], "Riverside Medical Practice");
    assert_eq!(
        (raw["acr"].as_str(), raw["amr"].as_array().map(Vec::len)),
        (Some("AAL2"), Some(2)),
        "password and security code: {raw}"
    );
    let activities = raw["nhsid_nrbac_roles"][0]["activity_codes"]
        .as_array()
        .expect("activities");
    assert!(
        activities.iter().any(|a| a == "B0380"),
        "included activities expanded: {activities:?}"
    );

    let info: CoreUserInfoClaims = rp
        .user_info(tokens.access_token().clone(), Some(claims.subject().clone()))
        .expect("userinfo endpoint")
        .request_async(&http())
        .await
        .expect("userinfo");
    assert_eq!(
        info.given_name().and_then(|n| n.get(None)).map(|n| n.as_str()),
        Some("Amara")
    );

    // Services verify the same access token through the kit, with keys from jwks_uri.
    let verifier_kit = Verifier::new(
        p.http.clone(),
        "sharedcare",
        Arc::new(HttpKeys::new(format!("{}/oauth2/jwks", p.http)).expect("keys")),
    );
    match verifier_kit
        .principal(tokens.access_token().secret())
        .await
        .expect("kit verifies")
    {
        Principal::Staff { person, role, .. } => {
            assert_eq!((person.as_str(), role.org_code.as_str()), ("555000000001", "A81001"))
        }
        other => panic!("expected staff, got {other:?}"),
    }

    // Refresh rotates; the old refresh token replayed revokes the whole family.
    let first_refresh = tokens.refresh_token().expect("refresh token").clone();
    let refreshed = rp
        .exchange_refresh_token(&first_refresh)
        .expect("token endpoint")
        .request_async(&http())
        .await
        .expect("refresh");
    let second_refresh = refreshed.refresh_token().expect("rotated").clone();
    assert_ne!(first_refresh.secret(), second_refresh.secret());
    let replay = rp
        .exchange_refresh_token(&first_refresh)
        .expect("endpoint")
        .request_async(&http())
        .await;
    assert!(format!("{replay:?}").contains("invalid_grant"), "{replay:?}");
    let after = rp
        .exchange_refresh_token(&second_refresh)
        .expect("endpoint")
        .request_async(&http())
        .await;
    assert!(
        format!("{after:?}").contains("invalid_grant"),
        "family revoked: {after:?}"
    );

    // Introspection, then revocation of the access token.
    let at: AccessToken = refreshed.access_token().clone();
    let active = rp
        .introspect(&at)
        .set_token_type_hint("access_token")
        .request_async(&http())
        .await
        .expect("introspect");
    assert!(active.active());
    assert_eq!(active.client_id().map(|c| c.as_str()), Some(id.as_str()));
    // Another confidential client learns nothing about a token that does not name it.
    let (other_id, other_secret) = register_app(&p, "Another app", "http://127.0.0.1:9/other", "").await;
    let nosy: Value = http()
        .post(format!("{}/oauth2/introspect", p.http))
        .basic_auth(&other_id, Some(&other_secret))
        .form(&[("token", at.secret().as_str())])
        .send()
        .await
        .expect("introspect")
        .json()
        .await
        .expect("json");
    assert_eq!(nosy, serde_json::json!({"active": false}), "not the audience: inactive");
    // (The oauth2 crate refuses a plain-http revocation URL, so this request is made directly.)
    let revoked = http()
        .post(format!("{}/oauth2/revoke", p.http))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", at.secret().as_str()), ("token_type_hint", "access_token")])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status().as_u16(), 200);
    let gone = rp.introspect(&at).request_async(&http()).await.expect("introspect");
    assert!(!gone.active(), "revoked token is inactive");
    let ui = http()
        .get(format!("{}/oauth2/userinfo", p.http))
        .bearer_auth(at.secret())
        .send()
        .await
        .expect("userinfo");
    assert_eq!(ui.status().as_u16(), 401);
}

#[tokio::test]
async fn client_credentials_tokens_name_the_service_and_keys_rotate_without_breaking_them() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let meta = CoreProviderMetadata::discover_async(IssuerUrl::new(p.http.clone()).expect("issuer"), &http())
        .await
        .expect("discovery");
    let rp = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(SERVICE_ID.into()),
        Some(ClientSecret::new(SERVICE_SECRET.into())),
    );
    let t = rp
        .exchange_client_credentials()
        .expect("token endpoint")
        .add_scope(Scope::new("records.read".into()))
        .request_async(&http())
        .await
        .expect("client_credentials");
    let old = t.access_token().secret().clone();
    let kit = Verifier::new(
        p.http.clone(),
        "sharedcare",
        Arc::new(HttpKeys::new(format!("{}/oauth2/jwks", p.http)).expect("keys")),
    );
    assert_eq!(
        kit.principal(&old).await.expect("verifies"),
        Principal::Service {
            client_id: SERVICE_ID.into(),
            scopes: vec!["records.read".into()]
        }
    );
    let bad_scope = rp
        .exchange_client_credentials()
        .expect("endpoint")
        .add_scope(Scope::new("openid".into()))
        .request_async(&http())
        .await;
    assert!(format!("{bad_scope:?}").contains("invalid_scope"), "{bad_scope:?}");

    let mut a = admin(&p).await;
    let new_kid = a
        .rotate_keys(RotateKeysRequest::default())
        .await
        .expect("rotate")
        .into_inner()
        .active_kid;
    let jwks = published_keys(&p.http).await;
    assert_eq!(
        jwks.keys.len(),
        2,
        "the old key stays published until its tokens expire"
    );
    let fresh = service_token(&p.http).await;
    assert_eq!(
        jose::header(&fresh).expect("header").kid,
        new_kid,
        "new tokens use the new key"
    );
    assert!(
        kit.principal(&old).await.is_ok(),
        "a token signed before rotation still verifies"
    );
    assert!(
        kit.principal(&fresh).await.is_ok(),
        "an unknown kid makes the verifier refresh its keys"
    );

    // The admin API refuses a token without identity.admin.
    let weak = t.access_token().secret().clone();
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {weak}").parse().expect("md");
    let mut w = IdentityAdminClient::with_interceptor(p.channel().await, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", value.clone());
        Ok(r)
    });
    let denied = w
        .rotate_keys(RotateKeysRequest::default())
        .await
        .expect_err("forbidden");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let mut anon = IdentityAdminClient::new(p.channel().await);
    assert_eq!(
        anon.rotate_keys(RotateKeysRequest::default())
            .await
            .expect_err("no token")
            .code(),
        tonic::Code::Unauthenticated
    );
}

/// A key that may have leaked: an emergency rotation takes it out of the published set at
/// once, and records stops trusting tokens it signed (even ones it had already verified)
/// within `auth.jwks_max_age_secs` (2 s here; 300 s by default).
#[tokio::test]
async fn an_emergency_rotation_stops_the_old_key_being_trusted_within_the_max_age() {
    use sharedcare_proto::records::v1::GetRequest;
    use sharedcare_proto::records::v1::records_client::RecordsClient;

    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("utf-8 path")],
        &[("SHAREDCARE_AUTH__JWKS_MAX_AGE_SECS", "2".into())],
    );
    let old = service_token_for(&p.http, "records.read").await;
    let mut records = RecordsClient::new(p.channel().await);
    let ask = |token: &str| {
        with_token(
            GetRequest {
                resource_type: "Patient".into(),
                id: "nobody".into(),
                ..Default::default()
            },
            token,
        )
    };
    let trusted = records.get(ask(&old)).await.expect_err("no such patient");
    assert_eq!(
        trusted.code(),
        tonic::Code::NotFound,
        "the token is accepted: {trusted:?}"
    );
    let new_kid = admin(&p)
        .await
        .rotate_keys(RotateKeysRequest { emergency: true })
        .await
        .expect("emergency rotation")
        .into_inner()
        .active_kid;
    let jwks = published_keys(&p.http).await;
    let kids: Vec<&str> = jwks.keys.iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, [new_kid.as_str()], "only the new key is published");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let refused = records.get(ask(&old)).await.expect_err("the old key is not trusted");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let fresh = service_token_for(&p.http, "records.read").await;
    assert_eq!(jose::header(&fresh).expect("header").kid, new_kid);
    let accepted = records.get(ask(&fresh)).await.expect_err("no such patient");
    assert_eq!(accepted.code(), tonic::Code::NotFound, "{accepted:?}");
}

/// Staff are accepted only at AAL2: a password-only staff token is refused by records,
/// consent and identity's admin API, naming the reason. And a stolen password is not enough to
/// take over an account's second factor: once the owner has an authenticator, replacing it
/// needs a session that proved it with a code, so a password-only session (here one started
/// before the owner enrolled) is refused.
#[tokio::test]
async fn password_only_staff_are_refused_and_cannot_replace_an_authenticator() {
    use sharedcare_proto::consent::v1::ListBreakGlassRequest;
    use sharedcare_proto::consent::v1::consent_client::ConsentClient;
    use sharedcare_proto::identity::v1::{CreatePersonRequest, ListOrganisationsRequest, RoleProfile};
    use sharedcare_proto::records::v1::GetRequest;
    use sharedcare_proto::records::v1::records_client::RecordsClient;

    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let uid = admin(&p)
        .await
        .create_person(CreatePersonRequest {
            username: "new.starter".into(),
            given_name: "Nia".into(),
            family_name: "Starter".into(),
            password: "a-long-new-starter-password".into(),
            role_profiles: vec![RoleProfile {
                ods_code: "A81001".into(),
                role_code: "R8000".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("person")
        .into_inner()
        .uid;
    let redirect = "http://127.0.0.1:9/enrol";
    let (id, secret) = register_app(&p, "Enrol test", redirect, "").await;
    let rp = relying_party(&p.http, &id, &secret, redirect).await;
    let auth = || staff_auth_url(&rp);
    // Someone with the password signs in while there is no second factor yet: the token is
    // AAL1, and no service takes it.
    let thief = browser();
    let (back, _, _) = password_login(&thief, &p.http, &auth(), "new.starter", "a-long-new-starter-password").await;
    assert!(back.starts_with(redirect), "{back}");
    let weak = exchange(&rp, &back).await.access_token().secret().clone();
    assert_eq!(claims_of(&weak)["acr"], "AAL1");
    let named = |e: tonic::Status| {
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(
            e.message().contains("acr") && e.message().contains("second factor"),
            "{}",
            e.message()
        );
    };
    let get = GetRequest {
        resource_type: "Patient".into(),
        id: "anyone".into(),
        ..Default::default()
    };
    named(
        RecordsClient::new(p.channel().await)
            .get(with_token(get, &weak))
            .await
            .expect_err("records"),
    );
    named(
        ConsentClient::new(p.channel().await)
            .list_break_glass(with_token(ListBreakGlassRequest {}, &weak))
            .await
            .expect_err("consent"),
    );
    named(
        IdentityAdminClient::new(p.channel().await)
            .list_organisations(with_token(ListOrganisationsRequest::default(), &weak))
            .await
            .expect_err("admin"),
    );
    // The owner signs in and enrols an authenticator.
    let owner = browser();
    let (back, _, _) = password_login(&owner, &p.http, &auth(), "new.starter", "a-long-new-starter-password").await;
    assert!(back.starts_with(redirect), "{back}");
    // A first authenticator needs an administrator's one-time enrolment code.
    let (status, page) = enrol_totp(&owner, &p.http, "").await;
    assert_eq!(status, 400);
    assert!(page.contains("enrolment_code:"));
    let issued = admin(&p)
        .await
        .issue_enrolment(sharedcare_proto::identity::v1::IssueEnrolmentRequest { uid: uid.clone() })
        .await
        .expect("issue")
        .into_inner();
    let (status, _) = enrol_totp(&owner, &p.http, &issued.enrolment_code).await;
    assert_eq!(status, 200, "the owner enrols");
    // The password-only session cannot replace it, nor even see the enrolment page.
    let refused = thief.get(format!("{}/account/totp", p.http)).send().await.expect("GET");
    assert_eq!(refused.status().as_u16(), 403);
    assert!(refused.text().await.expect("page").contains("second factor first"));
}

/// Identity's pages allow no inline script or style (their style sheet is a file), and behind
/// TLS (an https issuer) identity tells browsers to use nothing else (HSTS); on plain http in
/// development it does not.
#[tokio::test]
async fn identity_pages_have_a_strict_csp_and_an_https_issuer_sends_hsts() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("utf-8 path")],
        &[("SHAREDCARE_IDENTITY__ISSUER", "https://id.example-ics.nhs.uk".into())],
    );
    let r = http()
        .get(format!("{}/.well-known/openid-configuration", p.http))
        .send()
        .await
        .expect("discovery");
    assert_eq!(
        r.headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000; includeSubDomains")
    );
    let plain_data = tempfile::tempdir().expect("tmp");
    let plain = up(plain_data.path());
    let r = http()
        .get(format!("{}/.well-known/openid-configuration", plain.http))
        .send()
        .await
        .expect("discovery");
    assert!(r.headers().get("strict-transport-security").is_none());
    let page = http()
        .get(format!("{}/oauth2/login?req=nothing-parked", plain.http))
        .send()
        .await
        .expect("a login page");
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("style-src 'self'") && !csp.contains("unsafe-inline") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = page.text().await.expect("html");
    assert!(!html.contains("<style") && !html.contains("style=") && html.contains("/oauth2/identity.css"));
    // Built on the vendored NHS.UK frontend, served by identity itself (its own pod in
    // production), its icons under identity's own prefix.
    let frontend = sharedcare_kit::nhsuk::path("/oauth2/assets/", "nhsuk-frontend.min.css");
    assert!(html.contains(&frontend) && html.contains("nhsuk-header"), "{html}");
    for sheet in [frontend.as_str(), "/oauth2/identity.css"] {
        let css = http().get(format!("{}{sheet}", plain.http)).send().await.expect("css");
        assert_eq!(
            css.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("text/css; charset=utf-8"),
            "{sheet}"
        );
        let text = css.text().await.expect("css");
        if sheet == frontend {
            assert!(text.contains("#005eb8"), "the NHS blue header");
            assert!(
                text.contains("url(/oauth2/assets/nhsuk-frontend-") && !text.contains("url(/assets/"),
                "its images under identity's prefix"
            );
        }
    }
    let icon = http()
        .get(format!(
            "{}{}",
            plain.http,
            sharedcare_kit::nhsuk::path("/oauth2/assets/", "images/nhsuk-icon-cross.svg")
        ))
        .send()
        .await
        .expect("icon");
    assert_eq!(icon.status().as_u16(), 200);
}

#[tokio::test]
async fn private_key_jwt_client_authenticates_with_its_registered_key_and_assertions_are_single_use() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let key = Signer256::generate().expect("key");
    let jwks = serde_json::json!({"keys": [key.jwk()]}).to_string();
    let mut a = admin(&p).await;
    let c = a
        .create_client(CreateClientRequest {
            name: "GP system (private_key_jwt)".into(),
            grant_types: vec!["client_credentials".into()],
            scopes: vec!["records.write".into()],
            token_endpoint_auth_method: "private_key_jwt".into(),
            jwks_json: jwks,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert!(c.client_secret.is_empty(), "no secret for private_key_jwt");
    let assertion = |k: &Signer256, jti: &str| {
        let now = chrono::Utc::now().timestamp();
        k.sign(
            "JWT",
            &serde_json::json!({
                "iss": c.client_id, "sub": c.client_id, "aud": format!("{}/oauth2/token", p.http),
                "jti": jti, "iat": now, "exp": now + 60,
            }),
        )
        .expect("sign")
    };
    // The openidconnect crate sends the assertion as extra token request parameters.
    let meta = CoreProviderMetadata::discover_async(IssuerUrl::new(p.http.clone()).expect("issuer"), &http())
        .await
        .expect("discovery");
    let rp = CoreClient::from_provider_metadata(meta, ClientId::new(c.client_id.clone()), None)
        .set_auth_type(AuthType::RequestBody);
    let good = assertion(&key, "a-1");
    let ok = rp
        .exchange_client_credentials()
        .expect("endpoint")
        .add_extra_param(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .add_extra_param("client_assertion", good.clone())
        .request_async(&http())
        .await
        .expect("private_key_jwt accepted");
    assert_eq!(
        ok.scopes().map(|s| s[0].as_str().to_string()),
        Some("records.write".into())
    );
    let token = |a: String| {
        let (base, id) = (p.http.clone(), c.client_id.clone());
        async move {
            http()
                .post(format!("{base}/oauth2/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", id.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", a.as_str()),
                ])
                .send()
                .await
                .expect("POST")
        }
    };
    let replay = token(good).await;
    assert_eq!(replay.status().as_u16(), 401);
    let body: Value = replay.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"].as_str().unwrap_or_default().contains("jti"),
        "{body}"
    );
    let stranger = token(assertion(&Signer256::generate().expect("key"), "a-2")).await;
    assert_eq!(stranger.json::<Value>().await.expect("json")["error"], "invalid_client");

    // A client that publishes its keys at a jwks_uri, and rotates them there.
    let published = Arc::new(Mutex::new(serde_json::json!({"keys": [key.jwk()]})));
    let serve = published.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let serve = serve.clone();
            async move { axum::Json(serve.lock().expect("lock").clone()) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let jwks_uri = format!("http://{}/jwks", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    let by_uri = a
        .create_client(CreateClientRequest {
            name: "Hospital EPR (jwks_uri)".into(),
            grant_types: vec!["client_credentials".into()],
            scopes: vec!["records.read".into()],
            token_endpoint_auth_method: "private_key_jwt".into(),
            jwks_uri: jwks_uri.clone(),
            ..Default::default()
        })
        .await
        .expect("create by uri")
        .into_inner();
    let assert_for = |k: &Signer256, id: &str, jti: &str| {
        let now = chrono::Utc::now().timestamp();
        k.sign(
            "JWT",
            &serde_json::json!({
                "iss": id, "sub": id, "aud": p.http.clone(), "jti": jti, "iat": now, "exp": now + 60,
            }),
        )
        .expect("sign")
    };
    let send = |id: String, a: String| {
        let base = p.http.clone();
        async move {
            http()
                .post(format!("{base}/oauth2/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", a.as_str()),
                    ("client_id", id.as_str()),
                ])
                .send()
                .await
                .expect("POST")
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        send(by_uri.client_id.clone(), assert_for(&key, &by_uri.client_id, "u-1")).await,
        200
    );
    let next = Signer256::generate().expect("key");
    *published.lock().expect("lock") = serde_json::json!({"keys": [next.jwk()]});
    // Identity refetches a client's keys at most once a second: poll until the new kid is
    // accepted (each attempt with a fresh jti, which is single use).
    let attempt = std::sync::atomic::AtomicUsize::new(2);
    eventually(
        Duration::from_secs(10),
        "the new kid to be fetched from jwks_uri",
        || {
            let jti = format!("u-{}", attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            let assertion = assert_for(&next, &by_uri.client_id, &jti);
            let send = &send;
            let id = by_uri.client_id.clone();
            async move { (send(id, assertion).await == 200).then_some(()) }
        },
    )
    .await;
    let both = a
        .create_client(CreateClientRequest {
            name: "both".into(),
            grant_types: vec!["client_credentials".into()],
            token_endpoint_auth_method: "private_key_jwt".into(),
            jwks_uri,
            jwks_json: "{\"keys\":[]}".into(),
            ..Default::default()
        })
        .await
        .expect_err("jwks and jwks_uri");
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    assert!(both.message().starts_with("jwks_uri:"), "{}", both.message());
}

/// Collects back-channel logout tokens posted to a local endpoint.
async fn logout_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/backchannel",
        axum::routing::post(move |axum::Form(f): axum::Form<HashMap<String, String>>| {
            let sink = sink.clone();
            async move {
                if let Some(t) = f.get("logout_token") {
                    sink.lock().expect("lock").push(t.clone());
                }
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/backchannel"), got)
}

#[tokio::test]
async fn second_app_signs_in_without_a_prompt_and_logout_reaches_every_app_over_the_back_channel() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let (hook_a, got_a) = logout_receiver().await;
    let (hook_b, got_b) = logout_receiver().await;
    let (id_a, secret_a) = register_app(&p, "App A", "http://127.0.0.1:9/a", &hook_a).await;
    let (id_b, secret_b) = register_app(&p, "App B", "http://127.0.0.1:9/b", &hook_b).await;
    let rp_a = relying_party(&p.http, &id_a, &secret_a, "http://127.0.0.1:9/a").await;
    let rp_b = relying_party(&p.http, &id_b, &secret_b, "http://127.0.0.1:9/b").await;
    let b = browser();

    // The nurse has TOTP and two role profiles: password, then code, then role choice.
    let (url_a, _, nonce_a) = rp_a
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("selectedrole".into()))
        .add_scope(Scope::new("nationalrbacaccess".into()))
        .url();
    let (at, page, _) = password_login(&b, &p.http, url_a.as_str(), "nurse", "demo-nurse-password").await;
    assert!(at.contains("/oauth2/login/otp"), "second factor asked for: {at}");
    let wrong = submit(&b, &p.http, "/oauth2/login/otp", &page, &[("code", "000000")]).await;
    assert_eq!(wrong.2, 401);
    let code = sharedcare_identity::secrets::totp(
        sharedcare_identity::demo::NURSE_TOTP_SECRET,
        chrono::Utc::now().timestamp(),
    )
    .expect("totp");
    let (at, page, _) = submit(&b, &p.http, "/oauth2/login/otp", &wrong.1, &[("code", &code)]).await;
    assert!(at.contains("/oauth2/select-role"), "role choice: {at}");
    assert!(
        page.contains("Willow House Care Home"),
        "roles listed by organisation name"
    );
    let (back_a, _, _) = submit(&b, &p.http, "/oauth2/select-role", &page, &[("role", "100000000003")]).await;
    let tokens_a = exchange(&rp_a, &back_a).await;
    let id_a_token = tokens_a.id_token().expect("id token").clone();
    id_a_token
        .claims(&rp_a.id_token_verifier(), &nonce_a)
        .expect("verifies");
    let raw = claims_of(&id_a_token.to_string());
    assert_eq!(raw["selected_roleid"], "100000000003");
    assert_eq!(raw["acr"], "AAL2", "password + TOTP is the higher level");
    assert_eq!(raw["amr"], serde_json::json!(["pwd", "otp"]));

    // App B: same browser, no password prompt; prompt=none works too.
    let (url_b, _, _) = rp_b
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_prompt(openidconnect::core::CoreAuthPrompt::None)
        .add_scope(Scope::new("selectedrole".into()))
        .url();
    let (back_b, _, _) = follow(&b, &p.http, url_b.as_str()).await;
    assert!(
        back_b.starts_with("http://127.0.0.1:9/b?code="),
        "signed in silently: {back_b}"
    );
    let tokens_b = exchange(&rp_b, &back_b).await;
    assert_eq!(
        claims_of(&tokens_b.id_token().expect("id").to_string())["selected_roleid"],
        "100000000003"
    );

    // Switching role later: prompt=select_account shows the choice again in the same session.
    let (switch_url, _, _) = rp_b
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_prompt(openidconnect::core::CoreAuthPrompt::SelectAccount)
        .add_scope(Scope::new("selectedrole".into()))
        .url();
    let (at, page, _) = follow(&b, &p.http, switch_url.as_str()).await;
    assert!(at.contains("/oauth2/select-role"), "role choice offered again: {at}");
    let (back_switch, _, _) = submit(&b, &p.http, "/oauth2/select-role", &page, &[("role", "100000000002")]).await;
    let switched = exchange(&rp_b, &back_switch).await;
    assert_eq!(
        claims_of(&switched.id_token().expect("id").to_string())["selected_roleid"],
        "100000000002"
    );
    let (again_b, _, _) = follow(&b, &p.http, url_b.as_str()).await;
    let kept = exchange(&rp_b, &again_b).await;
    assert_eq!(
        claims_of(&kept.id_token().expect("id").to_string())["selected_roleid"],
        "100000000002",
        "the switch holds for the session"
    );

    // The session is visible to administrators.
    let mut a = admin(&p).await;
    let sessions = a
        .list_sessions(ListSessionsRequest {
            subject: "555000000002".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);

    // Logout from app A (RP-initiated, with id_token_hint) reaches both apps.
    let logout = format!(
        "{}/oauth2/logout?id_token_hint={}&post_logout_redirect_uri={}&state=bye",
        p.http,
        id_a_token,
        url::form_urlencoded::byte_serialize(b"http://127.0.0.1:9/a/signed-out").collect::<String>()
    );
    let r = b.get(&logout).send().await.expect("logout");
    assert_eq!(location(&r), "http://127.0.0.1:9/a/signed-out?state=bye");
    let sid = raw["sid"].as_str().expect("sid").to_string();
    let jwks = published_keys(&p.http).await;
    for (got, aud) in [(&got_a, &id_a), (&got_b, &id_b)] {
        let tokens = got.lock().expect("lock").clone();
        assert_eq!(tokens.len(), 1, "{aud} got one logout token");
        let c = jose::verify_with(&tokens[0], &jwks).expect("logout token verifies");
        assert_eq!(jose::header(&tokens[0]).expect("header").typ, "logout+jwt");
        assert_eq!(
            (c["aud"].as_str(), c["sid"].as_str()),
            (Some(aud.as_str()), Some(sid.as_str()))
        );
        assert!(c["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
        assert!(c.get("nonce").is_none(), "logout tokens carry no nonce");
    }
    let refresh_b = rp_b
        .exchange_refresh_token(tokens_b.refresh_token().expect("refresh"))
        .expect("endpoint")
        .request_async(&http())
        .await;
    assert!(
        format!("{refresh_b:?}").contains("invalid_grant"),
        "refresh after logout: {refresh_b:?}"
    );
    let (again, _, _) = follow(&b, &p.http, url_b.as_str()).await;
    assert!(
        again.contains("error=login_required"),
        "prompt=none after logout: {again}"
    );

    // The TOTP code used above cannot be used again; the next time step's code can.
    let b2 = browser();
    let (at, page, _) = password_login(&b2, &p.http, url_a.as_str(), "nurse", "demo-nurse-password").await;
    assert!(at.contains("/oauth2/login/otp"), "{at}");
    let (_, page, status) = submit(&b2, &p.http, "/oauth2/login/otp", &page, &[("code", &code)]).await;
    assert_eq!(status, 401, "a replayed TOTP code is refused");
    let next = sharedcare_identity::secrets::totp(
        sharedcare_identity::demo::NURSE_TOTP_SECRET,
        chrono::Utc::now().timestamp() + 30,
    )
    .expect("totp");
    let (at, _, _) = submit(&b2, &p.http, "/oauth2/login/otp", &page, &[("code", &next)]).await;
    assert!(at.contains("/oauth2/select-role"), "the next step's code works: {at}");
    let revoke_unknown = a
        .revoke_session(RevokeSessionRequest {
            session_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(revoke_unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn patients_get_nhs_login_claims_and_proofing_level_is_enforced_by_vtr() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let redirect = "http://127.0.0.1:9/nhsapp";
    let (id, secret) = register_app(&p, "Patient app", redirect, "").await;
    let rp = relying_party(&p.http, &id, &secret, redirect).await;
    let start = |vtr: &str| {
        rp.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("nhs_number".into()))
        .add_scope(Scope::new("basic_demographics".into()))
        .add_extra_param("vtr", vtr.to_string())
        .url()
    };
    let (url, _, nonce) = start(r#"["P9.Cp.Cd","P9.Cp"]"#);
    let (back, _, _) = password_login(&browser(), &p.http, url.as_str(), "patient1", "demo-patient1-password").await;
    let t = exchange(&rp, &back).await;
    let id_token = t.id_token().expect("id");
    id_token.claims(&rp.id_token_verifier(), &nonce).expect("verifies");
    let raw = claims_of(&id_token.to_string());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo json");
    assert_eq!(raw["nhs_number"], demo["patients"][0]["nhs_number"]);
    assert_eq!(
        (raw["identity_proofing_level"].as_str(), raw["vot"].as_str()),
        (Some("P9"), Some("P9.Cp"))
    );
    assert_ne!(raw["sub"], raw["nhs_number"], "sub is not the NHS number");
    // Pairwise: another app gets another sub for her (a keyed HMAC per client), and this app
    // the same one every time.
    let sub_for = |id: String, secret: String, redirect: &'static str| {
        let p = &p;
        async move {
            let rp = relying_party(&p.http, &id, &secret, redirect).await;
            let (url, _, _) = rp
                .authorize_url(
                    CoreAuthenticationFlow::AuthorizationCode,
                    CsrfToken::new_random,
                    Nonce::new_random,
                )
                .add_scope(Scope::new("nhs_number".into()))
                .url();
            let (back, _, _) =
                password_login(&browser(), &p.http, url.as_str(), "patient1", "demo-patient1-password").await;
            let t = exchange(&rp, &back).await;
            claims_of(&t.id_token().expect("id").to_string())["sub"].clone()
        }
    };
    assert_eq!(
        sub_for(id.clone(), secret.clone(), redirect).await,
        raw["sub"],
        "stable per client"
    );
    let (other_id, other_secret) = register_app(&p, "Another patient app", "http://127.0.0.1:9/other-app", "").await;
    let other_sub = sub_for(other_id, other_secret, "http://127.0.0.1:9/other-app").await;
    assert_ne!(other_sub, raw["sub"], "pairwise: another client sees another sub");
    let kit = Verifier::new(
        p.http.clone(),
        "sharedcare",
        Arc::new(HttpKeys::new(format!("{}/oauth2/jwks", p.http)).expect("keys")),
    );
    assert!(
        matches!(kit.principal(t.access_token().secret()).await, Ok(Principal::Patient { proofing, .. }) if proofing == sharedcare_kit::nhs::ProofingLevel::P9)
    );

    let (url, _, _) = start(r#"["P9.Cp.Cd"]"#);
    let (back, _, _) = password_login(&browser(), &p.http, url.as_str(), "patient4", "demo-patient4-password").await;
    let q = query(&back);
    assert_eq!(q["error"], "access_denied", "a P5 account cannot meet vtr P9: {back}");
}

#[tokio::test]
async fn bad_requests_get_the_standard_oauth_errors() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let base = p.http.clone();
    let redirect = "http://127.0.0.1:9/cb";
    let (id, secret) = register_app(&p, "Negative app", redirect, "").await;
    let rp = relying_party(&base, &id, &secret, redirect).await;
    let auth = |pkce: Option<PkceCodeChallenge>| {
        let mut r = rp.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        if let Some(c) = pkce {
            r = r.set_pkce_challenge(c);
        }
        r.url().0.to_string()
    };

    // Unknown client and wrong redirect_uri: an error page, never a redirect.
    let b = browser();
    let unknown = b
        .get(auth(None).replace(&format!("client_id={id}"), "client_id=nobody"))
        .send()
        .await
        .expect("GET");
    assert_eq!(unknown.status().as_u16(), 400);
    assert!(unknown.text().await.expect("body").contains("invalid_client"));
    let wrong = b
        .get(auth(None).replace("127.0.0.1%3A9%2Fcb", "evil.example%2Fcb"))
        .send()
        .await
        .expect("GET");
    assert_eq!(wrong.status().as_u16(), 400, "wrong redirect_uri is not followed");
    assert!(wrong.headers().get("location").is_none());

    // prompt=none without a session.
    let (none, _, _) = follow(&b, &base, &format!("{}&prompt=none", auth(None))).await;
    assert_eq!(query(&none)["error"], "login_required");

    // Missing CSRF token on the login form.
    let (_, page, _) = follow(&b, &base, &auth(None)).await;
    let no_csrf = b
        .post(format!("{base}/oauth2/login"))
        .form(&[
            ("req", hidden(&page, "req")),
            ("username", "gp".into()),
            ("password", "demo-gp-password".into()),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(no_csrf.status().as_u16(), 403);

    // acr_values asking for a second factor the account has not enrolled (a patient: NHS
    // login accounts here have none).
    let (aal2, _, _) = password_login(
        &browser(),
        &base,
        &format!("{}&acr_values=AAL2", auth(None)),
        "patient1",
        "demo-patient1-password",
    )
    .await;
    assert_eq!(query(&aal2)["error"], "unmet_authentication_requirements");

    // Code reuse and PKCE mismatch.
    let (c1, v1) = PkceCodeChallenge::new_random_sha256();
    let (back, _, _) = sign_in(
        &browser(),
        &base,
        &auth(Some(c1)),
        "careworker",
        "demo-careworker-password",
    )
    .await;
    let code = query(&back)["code"].clone();
    let (_, other_verifier) = PkceCodeChallenge::new_random_sha256();
    let mismatch = rp
        .exchange_code(AuthorizationCode::new(code.clone()))
        .expect("endpoint")
        .set_pkce_verifier(other_verifier)
        .request_async(&http())
        .await;
    assert!(format!("{mismatch:?}").contains("invalid_grant"), "{mismatch:?}");
    let reused = rp
        .exchange_code(AuthorizationCode::new(code))
        .expect("endpoint")
        .set_pkce_verifier(v1)
        .request_async(&http())
        .await;
    assert!(
        format!("{reused:?}").contains("already used"),
        "a code works once: {reused:?}"
    );
    // A verifier for a code whose request had no challenge: a PKCE downgrade, refused.
    let (back, _, _) = sign_in(&browser(), &base, &auth(None), "patient2", "demo-patient2-password").await;
    let (_, stray_verifier) = PkceCodeChallenge::new_random_sha256();
    let downgraded = rp
        .exchange_code(AuthorizationCode::new(query(&back)["code"].clone()))
        .expect("endpoint")
        .set_pkce_verifier(stray_verifier)
        .request_async(&http())
        .await;
    assert!(
        format!("{downgraded:?}").contains("no code_challenge"),
        "no verifier without a challenge: {downgraded:?}"
    );

    // Unknown client and a wrong secret at the token endpoint.
    for (who, pw) in [("nobody", "x"), (id.as_str(), "wrong-secret")] {
        let r = http()
            .post(format!("{base}/oauth2/token"))
            .basic_auth(who, Some(pw))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(r.json::<Value>().await.expect("json")["error"], "invalid_client");
    }

    // A client registered for client_secret_post may not authenticate with HTTP Basic.
    let posting = admin(&p)
        .await
        .create_client(CreateClientRequest {
            name: "Posts its secret".into(),
            redirect_uris: vec![redirect.into()],
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            scopes: vec!["openid".into()],
            token_endpoint_auth_method: "client_secret_post".into(),
            ..Default::default()
        })
        .await
        .expect("a client_secret_post client")
        .into_inner();
    let (sample, sample_secret) = (posting.client_id.as_str(), posting.client_secret.as_str());
    let basic = http()
        .post(format!("{base}/oauth2/token"))
        .basic_auth(sample, Some(sample_secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .expect("POST");
    assert_eq!(basic.status().as_u16(), 401);
    let post = http()
        .post(format!("{base}/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", sample),
            ("client_secret", sample_secret),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(
        post.json::<Value>().await.expect("json")["error"],
        "invalid_grant",
        "authenticated, then the grant is checked"
    );

    // Forged, alg=none, expired and wrong-issuer tokens at userinfo.
    let good = service_token(&base).await;
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let kid = jose::header(&good).expect("header").kid;
    let stranger = Signer256::generate().expect("key");
    let now = chrono::Utc::now().timestamp();
    let forged = [
        format!("{}.{}.", b64(r#"{"alg":"none"}"#), parts[1]),
        format!(
            "{}.{}.{}",
            b64(&format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#)),
            parts[1],
            parts[2]
        ),
        format!("{}.{}.{}", parts[0], b64(r#"{"sub":"admin"}"#), parts[2]),
        stranger
            .sign(
                "at+jwt",
                &serde_json::json!({"iss": base, "aud": "sharedcare", "exp": now + 60}),
            )
            .expect("sign"),
    ];
    for t in forged {
        let r = http()
            .get(format!("{base}/oauth2/userinfo"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 401, "refused: {t}");
    }
    let kit = Verifier::new(
        base.clone(),
        "passport-only",
        Arc::new(HttpKeys::new(format!("{base}/oauth2/jwks")).expect("keys")),
    );
    assert!(
        format!("{:?}", kit.principal(&good).await).contains("aud"),
        "wrong audience refused"
    );

    // Five wrong passwords lock the account; then even the right one is refused.
    for _ in 0..5 {
        let (_, _, s) = password_login(&browser(), &base, &auth(None), "icsadmin", "not-the-password").await;
        assert_eq!(s, 401);
    }
    let (_, page, s) = password_login(&browser(), &base, &auth(None), "icsadmin", "demo-icsadmin-password").await;
    assert_eq!(s, 403);
    assert!(page.contains("locked"));
    // A wrong password on a locked account gets the answer an unknown username gets: nobody
    // but the owner learns that the account exists and is locked.
    let (_, locked_wrong, s) = password_login(&browser(), &base, &auth(None), "icsadmin", "still-not-it").await;
    let (_, unknown, s2) = password_login(&browser(), &base, &auth(None), "nobody-here", "still-not-it").await;
    assert_eq!((s, s2), (401, 401));
    assert!(!locked_wrong.contains("locked") && locked_wrong.contains("Incorrect username or password"));
    assert!(unknown.contains("Incorrect username or password"));
    assert!(!page.contains("demo-icsadmin-password"), "the password is never echoed");
}

#[tokio::test]
async fn records_and_audit_admit_only_valid_tokens_and_record_who_accessed() {
    use sharedcare_proto::audit::v1::ListByPatientRequest;
    use sharedcare_proto::audit::v1::audit_client::AuditClient;
    use sharedcare_proto::records::v1::records_client::RecordsClient;
    use sharedcare_proto::records::v1::{GetRequest, PutRequest};

    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let nhs = demo["patients"][0]["nhs_number"].as_str().expect("nhs").to_string();
    let mut records = RecordsClient::new(p.channel().await);
    let put = || PutRequest {
        resource_json: crate::harness::patient("tok-1", &nhs),
        source_organisation: "A81001".into(),
        ..Default::default()
    };

    let none = records.put(put()).await.expect_err("no token");
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
    let forged = Signer256::generate()
        .expect("key")
        .sign(
            "at+jwt",
            &serde_json::json!({"iss": p.http, "aud": "sharedcare", "exp": 4_000_000_000i64}),
        )
        .expect("sign");
    assert_eq!(
        records
            .put(with_token(put(), &forged))
            .await
            .expect_err("forged")
            .code(),
        tonic::Code::Unauthenticated
    );
    let read_only = service_token_for(&p.http, "records.read").await;
    let denied = records.put(with_token(put(), &read_only)).await.expect_err("scope");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains("records.write"), "{}", denied.message());

    // A GP writes and reads; the audit trail names the GP, their organisation and role.
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    records.put(with_token(put(), &gp)).await.expect("GP put");
    records
        .get(with_token(
            GetRequest {
                resource_type: "Patient".into(),
                id: "tok-1".into(),
                ..Default::default()
            },
            &gp,
        ))
        .await
        .expect("GP get");
    let patient_token = user_token(&p, "patient1", "demo-patient1-password", "nhs_number").await;
    let refused = records
        .get(with_token(
            GetRequest {
                resource_type: "Patient".into(),
                id: "tok-1".into(),
                ..Default::default()
            },
            &patient_token,
        ))
        .await
        .expect_err("patients use the passport");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // The patient (P9) reads who accessed their record; not someone else's.
    let mut audit = AuditClient::new(p.channel().await);
    let trail = crate::harness::eventually(Duration::from_secs(20), "audit entries", || {
        let (mut audit, token, nhs) = (audit.clone(), patient_token.clone(), nhs.clone());
        async move {
            let r = audit
                .list_by_patient(with_token(
                    ListByPatientRequest {
                        nhs_number: nhs,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .ok()?
                .into_inner();
            // The demo's consent events are in the trail too; wait for the two record accesses.
            let mine: Vec<_> = r.entries.into_iter().filter(|e| e.service == "records").collect();
            (mine.len() >= 2).then_some(mine)
        }
    })
    .await;
    assert!(
        trail.iter().all(|e| e.actor == "555000000001"
            && e.actor_organisation == "A81001"
            && e.actor_role == "S8000:G8000:R8000"),
        "{trail:?}"
    );
    let other = demo["patients"][1]["nhs_number"].as_str().expect("nhs").to_string();
    let not_yours = audit
        .list_by_patient(with_token(
            ListByPatientRequest {
                nhs_number: other,
                ..Default::default()
            },
            &patient_token,
        ))
        .await
        .expect_err("another patient's trail");
    assert_eq!(not_yours.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn brokered_sign_in_links_the_upstream_patient_and_the_nhs_app_path_is_silent_or_fails_cleanly() {
    // The upstream plays NHS login: a second identity instance speaking the same protocol.
    let pair = crate::harness::with_nhs_login().await;
    let (upstream, down) = (&pair.nhs_login, &pair.ics);
    let redirect = "http://127.0.0.1:9/passport";
    let (id, secret) = register_app(down, "Passport", redirect, "").await;
    let rp = relying_party(&down.http, &id, &secret, redirect).await;
    let start = |extra: &[(&str, &str)]| {
        let mut r = rp
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("nhs_number".into()));
        for (k, v) in extra {
            r = r.add_extra_param(k.to_string(), v.to_string());
        }
        r.url()
    };

    // 1. kc_idp_hint: straight to the upstream's login page; back signed in as the linked patient.
    let b = browser();
    let (url, _, nonce) = start(&[("kc_idp_hint", "nhslogin")]);
    let (at_upstream, _, _) = follow(&b, &down.http, url.as_str()).await;
    assert!(
        at_upstream.starts_with(&format!("{}/oauth2/authorize", upstream.http)),
        "{at_upstream}"
    );
    let q = query(&at_upstream);
    assert_eq!(
        (q["code_challenge_method"].as_str(), q["client_id"].as_str()),
        ("S256", "downstream-broker")
    );
    assert!(!q["nonce"].is_empty());
    let (back_at_down, _, _) =
        password_login(&b, &upstream.http, &at_upstream, "patient1", "demo-patient1-password").await;
    assert!(
        back_at_down.starts_with(&format!("{}/oauth2/broker/callback", down.http)),
        "{back_at_down}"
    );
    let (back, page, _) = follow(&b, &down.http, &back_at_down).await;
    assert!(back.starts_with(redirect), "back at the app: {back} {page}");
    let t = exchange(&rp, &back).await;
    let id_token = t.id_token().expect("id").clone();
    id_token.claims(&rp.id_token_verifier(), &nonce).expect("verifies");
    let raw = claims_of(&id_token.to_string());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    assert_eq!(raw["nhs_number"], demo["patients"][0]["nhs_number"]);
    assert!(
        raw["amr"].as_array().expect("amr").iter().any(|m| m == "fed"),
        "federated login: {raw}"
    );

    // 2. The NHS App path: signed out here but still signed in upstream → silent sign-in.
    let logout = format!("{}/oauth2/logout?id_token_hint={id_token}", down.http);
    b.get(&logout).send().await.expect("logout here");
    let (url, _, _) = start(&[
        ("assertedLoginIdentity", "eyJhbGciOiJSUzUxMiJ9.e30.c2ln"),
        ("prompt", "none"),
    ]);
    let (at_upstream, _, _) = follow(&b, &down.http, url.as_str()).await;
    assert_eq!(query(&at_upstream)["prompt"], "none");
    assert!(query(&at_upstream).contains_key("asserted_login_identity"));
    let (back_at_down, page, status) = follow(&b, &upstream.http, &at_upstream).await;
    assert!(
        back_at_down.starts_with(&format!("{}/oauth2/broker/callback", down.http)),
        "no login page: {status} {page}"
    );
    let (back, _, _) = follow(&b, &down.http, &back_at_down).await;
    assert!(query(&back).contains_key("code"), "silent sign-in: {back}");
    // Login CSRF: the upstream's callback for a sign-in one browser started (an attacker's,
    // signed in upstream as themselves), carried to another browser, is refused there: the
    // sign-in is bound to the browser that started it by a cookie.
    let attacker = browser();
    let (url, _, _) = start(&[("kc_idp_hint", "nhslogin")]);
    let (at_upstream, _, _) = follow(&attacker, &down.http, url.as_str()).await;
    let (back_at_down, _, _) = password_login(
        &attacker,
        &upstream.http,
        &at_upstream,
        "patient1",
        "demo-patient1-password",
    )
    .await;
    assert!(back_at_down.starts_with(&format!("{}/oauth2/broker/callback", down.http)));
    let (_, page, status) = follow(&browser(), &down.http, &back_at_down).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("not started in this browser"), "{page}");

    // 3. The same from a browser signed in nowhere: login_required comes back to the app.
    let fresh = browser();
    let (url, _, _) = start(&[
        ("assertedLoginIdentity", "eyJhbGciOiJSUzUxMiJ9.e30.c2ln"),
        ("prompt", "none"),
    ]);
    let (at_upstream, _, _) = follow(&fresh, &down.http, url.as_str()).await;
    let (back_at_down, _, _) = follow(&fresh, &upstream.http, &at_upstream).await;
    let (back, _, _) = follow(&fresh, &down.http, &back_at_down).await;
    assert!(back.starts_with(redirect), "{back}");
    assert_eq!(query(&back)["error"], "login_required");

    // An unknown provider hint is refused with the standard error.
    let (url, _, _) = start(&[("kc_idp_hint", "nowhere")]);
    let (back, _, _) = follow(&browser(), &down.http, url.as_str()).await;
    assert_eq!(query(&back)["error"], "invalid_request");
}

#[tokio::test]
async fn a_client_registered_for_rs256_gets_rsa_signed_id_tokens_and_es256_access_tokens() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let redirect = "http://127.0.0.1:9/rsa";
    let c = admin(&p)
        .await
        .create_client(CreateClientRequest {
            name: "Legacy RSA-only app".into(),
            redirect_uris: vec![redirect.into()],
            grant_types: vec!["authorization_code".into()],
            scopes: vec!["openid".into(), "profile".into()],
            id_token_signed_response_alg: "RS256".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let rp = relying_party(&p.http, &c.client_id, &c.client_secret, redirect).await;
    let (url, _, nonce) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .url();
    let (back, _, _) = sign_in(
        &browser(),
        &p.http,
        url.as_str(),
        "careworker",
        "demo-careworker-password",
    )
    .await;
    let t = exchange(&rp, &back).await;
    let id_token = t.id_token().expect("id").clone();
    id_token
        .claims(&rp.id_token_verifier(), &nonce)
        .expect("RS256 ID token verifies with the published RSA key");
    assert_eq!(jose::header(&id_token.to_string()).expect("header").alg, "RS256");
    assert_eq!(jose::header(t.access_token().secret()).expect("header").alg, "ES256");
    let jwks: Value = http()
        .get(format!("{}/oauth2/jwks", p.http))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert!(
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["kty"] == "RSA" && k["alg"] == "RS256")
    );
    let bad = admin(&p)
        .await
        .create_client(CreateClientRequest {
            name: "x".into(),
            redirect_uris: vec![redirect.into()],
            grant_types: vec!["authorization_code".into()],
            id_token_signed_response_alg: "HS256".into(),
            ..Default::default()
        })
        .await
        .expect_err("HS256 refused");
    assert!(
        bad.message().starts_with("id_token_signed_response_alg:"),
        "{}",
        bad.message()
    );
}

#[tokio::test]
async fn idle_sessions_end_and_max_age_or_prompt_login_ask_for_the_password_again() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("path")],
        &[("SHAREDCARE_IDENTITY__SESSION_IDLE_SECS", "2".into())],
    );
    let redirect = "http://127.0.0.1:9/idle";
    let (id, secret) = register_app(&p, "Idle app", redirect, "").await;
    let rp = relying_party(&p.http, &id, &secret, redirect).await;
    let url = |extra: &[(&str, &str)]| {
        let mut r = rp.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for (k, v) in extra {
            r = r.add_extra_param(k.to_string(), v.to_string());
        }
        r.url().0.to_string()
    };
    let b = browser();
    let (back, _, _) = sign_in(&b, &p.http, &url(&[("login_hint", "gp")]), "gp", "demo-gp-password").await;
    assert!(query(&back).contains_key("code"));
    // Within the idle limit: silent; max_age=0 and prompt=login both demand a fresh login.
    let (silent, _, _) = follow(&b, &p.http, &url(&[("prompt", "none")])).await;
    assert!(query(&silent).contains_key("code"), "{silent}");
    // max_age counts whole seconds since the sign-in: poll until one has passed.
    eventually(Duration::from_secs(5), "a second since the sign-in", || async {
        let (at, _, _) = follow(&b, &p.http, &url(&[("max_age", "0")])).await;
        at.contains("/oauth2/login?req=").then_some(())
    })
    .await;
    for extra in [[("max_age", "0")], [("prompt", "login")]] {
        let (at, page, _) = follow(&b, &p.http, &url(&extra)).await;
        assert!(at.contains("/oauth2/login?req="), "{extra:?}: {at}");
        assert!(
            page.contains("value=\"\""),
            "the login page is not prefilled without login_hint"
        );
    }
    let (hinted, page, _) = follow(&b, &p.http, &url(&[("prompt", "login"), ("login_hint", "gp")])).await;
    assert!(
        hinted.contains("/oauth2/login?req=") && page.contains("value=\"gp\""),
        "login_hint prefills"
    );
    // Idle past the limit: the session is over. Polled on a page that reads the session
    // without touching it (a silent sign-in would keep it alive).
    eventually(Duration::from_secs(10), "the session to go idle", || async {
        let status = b
            .get(format!("{}/account/totp", p.http))
            .send()
            .await
            .expect("GET")
            .status();
        (status == reqwest::StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let (idle, _, _) = follow(&b, &p.http, &url(&[("prompt", "none")])).await;
    assert_eq!(query(&idle)["error"], "login_required", "{idle}");
}

#[tokio::test]
async fn the_admin_api_manages_organisations_people_and_patients_and_names_bad_fields() {
    use sharedcare_proto::identity::v1::{
        CreatePatientRequest, CreatePersonRequest, GetOrganisationRequest, ListOrganisationsRequest, Organisation,
        RoleProfile,
    };
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let mut a = admin(&p).await;
    let org = |code: &str, kind: &str| Organisation {
        ods_code: code.into(),
        name: "Eastfield Surgery".into(),
        kind: kind.into(),
        ..Default::default()
    };
    let created = a
        .create_organisation(org("b82005", "gp_practice"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.ods_code, "B82005", "ODS codes are stored upper-case");
    let got = a
        .get_organisation(GetOrganisationRequest {
            ods_code: "B82005".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.name, "Eastfield Surgery");
    let missing = a
        .get_organisation(GetOrganisationRequest {
            ods_code: "ZZZ99".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let dup = a
        .create_organisation(org("B82005", "gp_practice"))
        .await
        .expect_err("duplicate");
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    for (bad, field) in [
        (org("B 1", "gp_practice"), "ods_code:"),
        (org("B82006", "pharmacy"), "kind:"),
    ] {
        let e = a.create_organisation(bad).await.expect_err("invalid");
        assert!(
            e.code() == tonic::Code::InvalidArgument && e.message().starts_with(field),
            "{}",
            e.message()
        );
    }
    // Paging visits every organisation once (the demo's + 1).
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = a
            .list_organisations(ListOrganisationsRequest {
                page_size: 3,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        seen.extend(page.organisations.into_iter().map(|o| o.ods_code));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen.len(),
        sharedcare_identity::demo::organisations().len() + 1,
        "{seen:?}"
    );

    let person = a
        .create_person(CreatePersonRequest {
            username: "locum".into(),
            given_name: "Lee".into(),
            family_name: "Cole".into(),
            password: "a-long-locum-password".into(),
            role_profiles: vec![RoleProfile {
                ods_code: "b82005".into(),
                role_code: "R8000".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("person")
        .into_inner();
    assert_eq!(
        (person.uid.len(), person.role_profiles[0].ods_code.as_str()),
        (12, "B82005")
    );
    let unknown_org = a
        .create_person(CreatePersonRequest {
            username: "x".into(),
            given_name: "X".into(),
            family_name: "Y".into(),
            password: "a-long-enough-password".into(),
            role_profiles: vec![RoleProfile {
                ods_code: "QQQ01".into(),
                role_code: "R8000".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("unknown organisation");
    assert!(
        unknown_org.message().starts_with("role_profiles[0].ods_code:"),
        "{}",
        unknown_org.message()
    );
    let patient = |nhs: &str, born: &str, level: &str, pw: &str| CreatePatientRequest {
        nhs_number: nhs.into(),
        username: format!("p{nhs}"),
        given_name: "Ann".into(),
        family_name: "Lee".into(),
        birthdate: born.into(),
        identity_proofing_level: level.into(),
        password: pw.into(),
    };
    a.create_patient(patient("9000000009", "1970-05-01", "P9", "a-long-patient-password"))
        .await
        .expect("patient");
    for (bad, field) in [
        (
            patient("9000000008", "1970-05-01", "P9", "a-long-patient-password"),
            "nhs_number:",
        ),
        (
            patient("9434765919", "01/05/1970", "P9", "a-long-patient-password"),
            "birthdate:",
        ),
        (
            patient("9434765919", "1970-05-01", "P7", "a-long-patient-password"),
            "identity_proofing_level:",
        ),
        (patient("9434765919", "1970-05-01", "P9", "short"), "password:"),
    ] {
        let e = a.create_patient(bad).await.expect_err("invalid");
        assert!(
            e.code() == tonic::Code::InvalidArgument && e.message().starts_with(field),
            "{}",
            e.message()
        );
    }
    // The new accounts can sign in.
    let (back, _, _) = password_login(
        &browser(),
        &p.http,
        &{
            let redirect = "http://127.0.0.1:9/admin-test";
            let (id, secret) = register_app(&p, "Admin test", redirect, "").await;
            let rp = relying_party(&p.http, &id, &secret, redirect).await;
            rp.authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .url()
            .0
            .to_string()
        },
        "locum",
        "a-long-locum-password",
    )
    .await;
    assert!(query(&back).contains_key("code"), "{back}");
}

#[tokio::test]
async fn clients_and_organisations_are_read_updated_deactivated_and_deleted_through_the_admin_api() {
    use sharedcare_proto::identity::v1::{
        CreateClientRequest, DeactivateOrganisationRequest, DeleteClientRequest, GetClientRequest, Organisation,
        UpdateClientRequest,
    };
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let mut a = admin(&p).await;
    let token = |id: String, secret: String| {
        let base = p.http.clone();
        async move {
            http()
                .post(format!("{base}/oauth2/token"))
                .basic_auth(id, Some(secret))
                .form(&[("grant_type", "client_credentials"), ("scope", "openid")])
                .send()
                .await
                .expect("token")
                .status()
                .as_u16()
        }
    };
    let org = Organisation {
        ods_code: "VLX10".into(),
        name: "Larch House".into(),
        kind: "care_home".into(),
        parent_ods_code: "QN1".into(),
        active: false, // ignored on create
    };
    let created = a.create_organisation(org.clone()).await.expect("create").into_inner();
    assert!(created.active && created.parent_ods_code == "QN1");
    let registration = CreateClientRequest {
        client_id: "larch-rota".into(),
        name: "Larch House rota".into(),
        grant_types: vec!["client_credentials".into()],
        scopes: vec!["openid".into()],
        organisation: "VLX10".into(),
        ..Default::default()
    };
    let secret = a
        .create_client(registration.clone())
        .await
        .expect("create")
        .into_inner()
        .client_secret;
    assert_eq!(token("larch-rota".into(), secret.clone()).await, 200);

    // Read back as registered, never the secret.
    let got = a
        .get_client(GetClientRequest {
            client_id: "larch-rota".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let stored = got.client.expect("registration");
    assert!(
        got.has_secret && stored.organisation == "VLX10" && stored.token_endpoint_auth_method == "client_secret_basic"
    );

    // An update keeps the secret unless asked to rotate it.
    let mut renamed = registration.clone();
    renamed.name = "Larch House rota (v2)".into();
    let kept = a
        .update_client(UpdateClientRequest {
            client: Some(renamed.clone()),
            rotate_secret: false,
        })
        .await
        .expect("update")
        .into_inner();
    assert!(kept.client_secret.is_empty());
    assert_eq!(token("larch-rota".into(), secret.clone()).await, 200);
    let rotated = a
        .update_client(UpdateClientRequest {
            client: Some(renamed),
            rotate_secret: true,
        })
        .await
        .expect("rotate")
        .into_inner()
        .client_secret;
    assert_eq!(token("larch-rota".into(), secret).await, 401);
    assert_eq!(token("larch-rota".into(), rotated.clone()).await, 200);

    // Bad updates are refused naming the field, and change nothing.
    let mut bad = registration.clone();
    bad.grant_types = vec!["password".into()];
    let e = a
        .update_client(UpdateClientRequest {
            client: Some(bad),
            rotate_secret: false,
        })
        .await
        .expect_err("bad grant");
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().starts_with("grant_types[0]"),
        "{}",
        e.message()
    );
    let mut elsewhere = registration.clone();
    elsewhere.organisation = "ZZZ99".into();
    let e = a
        .update_client(UpdateClientRequest {
            client: Some(elsewhere),
            rotate_secret: false,
        })
        .await
        .expect_err("unknown organisation");
    assert!(e.message().starts_with("organisation"), "{}", e.message());
    assert_eq!(token("larch-rota".into(), rotated.clone()).await, 200);

    // A deactivated organisation's clients get no tokens; reactivated, they do again.
    let off = a
        .deactivate_organisation(DeactivateOrganisationRequest {
            ods_code: "VLX10".into(),
        })
        .await
        .expect("deactivate")
        .into_inner();
    assert!(!off.active);
    assert_eq!(token("larch-rota".into(), rotated.clone()).await, 401);
    let mut on = org.clone();
    on.active = true;
    on.name = "Larch House Care Home".into();
    let updated = a.update_organisation(on).await.expect("update").into_inner();
    assert!(updated.active && updated.name == "Larch House Care Home");
    assert_eq!(token("larch-rota".into(), rotated.clone()).await, 200);
    let mut own_parent = org.clone();
    own_parent.parent_ods_code = "VLX10".into();
    let e = a.update_organisation(own_parent).await.expect_err("own parent");
    assert!(e.message().starts_with("parent_ods_code"), "{}", e.message());

    // Deleted: gone, and its tokens are no longer issued.
    a.delete_client(DeleteClientRequest {
        client_id: "larch-rota".into(),
    })
    .await
    .expect("delete");
    assert_eq!(token("larch-rota".into(), rotated).await, 401);
    let gone = a
        .get_client(GetClientRequest {
            client_id: "larch-rota".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let again = a
        .delete_client(DeleteClientRequest {
            client_id: "larch-rota".into(),
        })
        .await
        .expect_err("twice");
    assert_eq!(again.code(), tonic::Code::NotFound);

    // The new calls need identity.admin like the others.
    let mut anon = IdentityAdminClient::new(p.channel().await);
    let e = anon
        .delete_client(DeleteClientRequest {
            client_id: "ics-integration".into(),
        })
        .await
        .expect_err("anonymous");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let weak = service_token_for(&p.http, "records.read").await;
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {weak}").parse().expect("md");
    let mut w = IdentityAdminClient::with_interceptor(p.channel().await, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", value.clone());
        Ok(r)
    });
    for e in [
        w.get_client(GetClientRequest {
            client_id: "ics-integration".into(),
        })
        .await
        .expect_err("get"),
        w.deactivate_organisation(DeactivateOrganisationRequest { ods_code: "QN1".into() })
            .await
            .expect_err("deactivate"),
    ] {
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }
}
