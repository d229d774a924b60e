//! JWT parsing and verification (every bearer token and client assertion that arrives). No
//! input is accepted under a key it was not signed with: the only tokens that verify are the
//! one signed here and its exact text.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sharedcare_kit::jose::{self, JwkSet, Signer256};

struct Keys {
    set: JwkSet,
    signed: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signer = Signer256::generate().expect("a key");
        let signed = signer
            .sign(
                "JWT",
                &serde_json::json!({"iss": "https://fuzz", "sub": "x", "exp": 4_000_000_000u64}),
            )
            .expect("signed");
        Keys {
            set: JwkSet {
                keys: vec![serde_json::to_value(signer.jwk()).expect("jwk")],
            },
            signed,
        }
    })
}

fuzz_target!(|token: &str| {
    let k = keys();
    let _ = jose::header(token);
    if jose::verify_with(token, &k.set).is_ok() {
        assert_eq!(token, k.signed, "only the token signed with the key verifies");
    }
    // A mutation of the real token: never verifies unless it is the real token.
    let spliced = format!("{}{token}", &k.signed[..k.signed.len() / 2]);
    if jose::verify_with(&spliced, &k.set).is_ok() {
        assert_eq!(spliced, k.signed);
    }
});
