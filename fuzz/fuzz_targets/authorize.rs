//! Authorization-request parameters, as a browser sends them (a form-encoded query): checked
//! for a public and a confidential client. What is accepted is within what the client may
//! have; an error's way back to the app (the redirect with `error`, `error_description`,
//! `state`) stays on the registered address and carries the values exactly.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use sharedcare_identity::http::with_query;
use sharedcare_identity::model::{AuthMethod, Client, ClientSettings};
use sharedcare_identity::oauth::{AuthzParams, check_authorization, needs_second_factor, vtr_satisfied};
use sharedcare_kit::nhs::ProofingLevel;

const REDIRECT: &str = "https://app.example/cb?tenant=1";

fn client(auth_method: AuthMethod) -> Client {
    Client {
        id: "app".into(),
        name: "App".into(),
        secret_hash: String::new(),
        settings: ClientSettings {
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: String::new(),
            grant_types: vec!["authorization_code".into()],
            scopes: vec!["openid".into(), "profile".into(), "records.read".into()],
            auth_method,
            jwks: None,
            jwks_uri: String::new(),
            id_token_alg: String::new(),
            organisation: String::new(),
        },
    }
}

fuzz_target!(|query: &[u8]| {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query).into_owned().collect();
    let f = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let p = AuthzParams {
        response_type: f("response_type"),
        scope: f("scope"),
        code_challenge: f("code_challenge"),
        code_challenge_method: f("code_challenge_method"),
        max_age: f("max_age"),
        prompt: f("prompt"),
    };
    for method in [AuthMethod::None, AuthMethod::ClientSecretBasic] {
        let c = client(method);
        let public = method == AuthMethod::None;
        match check_authorization(&c, &p) {
            Ok(ok) => {
                assert_eq!(p.response_type, "code");
                let granted: Vec<&str> = ok.scope.split(' ').collect();
                assert!(granted.contains(&"openid"), "openid granted: {:?}", ok.scope);
                for s in &granted {
                    assert!(c.settings.scopes.iter().any(|a| a == s), "{s:?} is not the client's");
                }
                assert!(
                    ok.code_challenge.len() == 43 || (!public && ok.code_challenge.is_empty()),
                    "PKCE: {:?} for a {} client",
                    ok.code_challenge,
                    if public { "public" } else { "confidential" }
                );
                assert_eq!(ok.max_age.is_some(), !p.max_age.is_empty());
                assert!(ok.max_age.is_none_or(|m| m >= 0));
            }
            Err(e) => {
                let back = with_query(
                    REDIRECT,
                    &[
                        ("error", e.code.as_str()),
                        ("error_description", &e.description),
                        ("state", f("state")),
                        ("iss", "https://id.example"),
                    ],
                );
                let url = url::Url::parse(&back).expect("the way back is a URL");
                assert_eq!(url.host_str(), Some("app.example"), "{back}");
                assert_eq!(url.path(), "/cb");
                assert!(url.fragment().is_none());
                let got: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                let state: Vec<&str> = got.iter().filter(|(k, _)| k == "state").map(|(_, v)| v.as_str()).collect();
                let sent = f("state");
                assert_eq!(state, if sent.is_empty() { vec![] } else { vec![sent] }, "{back}");
                assert_eq!(got.iter().filter(|(k, _)| k == "tenant").count(), 1, "{back}");
                assert_eq!(got.iter().filter(|(k, _)| k == "error").count(), 1, "{back}");
            }
        }
    }
    // A vector satisfied at a lower proofing level is satisfied at every higher one.
    let vtr = f("vtr");
    let at = [ProofingLevel::P0, ProofingLevel::P5, ProofingLevel::P9].map(|l| vtr_satisfied(vtr, l));
    assert!(!(at[0] && !at[1]) && !(at[1] && !at[2]), "vtr {vtr:?}: {at:?}");
    let amr: Vec<String> = f("amr").split(' ').map(str::to_string).collect();
    let _ = needs_second_factor(f("acr_values"), &amr);
});
