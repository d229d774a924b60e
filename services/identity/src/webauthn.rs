//! WebAuthn second factors (passkeys and security keys) with `webauthn-rs`: the relying party
//! is identity's issuer, so a credential works on its login pages only.
//!
//! WebAuthn needs a domain name: browsers refuse an IP address as the relying party id, so an
//! issuer such as `http://127.0.0.1:8080` offers no security keys (TOTP still works) and a
//! laptop uses `http://localhost:8080` (a secure context without TLS).

use sharedcare_kit::json::Fields;
use std::sync::Arc;

use serde_json::Value;
use webauthn_rs::prelude::{Url, Uuid, Webauthn, WebauthnBuilder};

/// How long a ceremony may take, from its options to the browser's answer.
pub const CEREMONY_SECS: i64 = 300;

/// The relying party for `issuer`, or `None` when its host is not a domain name.
pub fn relying_party(issuer: &str) -> Option<Arc<Webauthn>> {
    let origin = Url::parse(issuer).ok()?;
    let rp_id = origin.domain()?.to_string();
    let built = WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|b| b.rp_name("Sharedcare").build())
        .ok()?;
    Some(Arc::new(built))
}

/// The WebAuthn user handle for member of staff `uid`: the first 16 bytes of a SHA-256 of
/// it, so it is stable and says nothing about the person.
pub fn user_handle(uid: &str) -> Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("sharedcare-webauthn-user:{uid}").as_bytes());
    let digest: [u8; 32] = digest.into();
    let (first, _) = digest.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
    Uuid::from_bytes(*first)
}

/// The RFC 8176 `amr` value for a credential as stored: `swk` when it may be synced between
/// devices (backup eligible, a passkey in a password manager), else `hwk` (bound to one
/// authenticator).
pub fn amr_for(passkey_json: &str) -> &'static str {
    let synced = serde_json::from_str::<Value>(passkey_json)
        .ok()
        .and_then(|v| v.at("cred").at("backup_eligible").as_bool())
        .unwrap_or(false);
    if synced { "swk" } else { "hwk" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_domain_name_can_be_a_relying_party() {
        assert!(relying_party("https://id.example-ics.nhs.uk").is_some());
        assert!(relying_party("http://localhost:8080").is_some());
        assert!(
            relying_party("http://127.0.0.1:8080").is_none(),
            "browsers refuse IP addresses"
        );
        assert!(relying_party("not a url").is_none());
    }

    #[test]
    fn the_user_handle_is_stable_and_differs_per_person() {
        assert_eq!(user_handle("555000000001"), user_handle("555000000001"));
        assert_ne!(user_handle("555000000001"), user_handle("555000000002"));
    }

    #[test]
    fn a_synced_passkey_is_a_software_key() {
        assert_eq!(amr_for(r#"{"cred":{"backup_eligible":true}}"#), "swk");
        assert_eq!(amr_for(r#"{"cred":{"backup_eligible":false}}"#), "hwk");
        assert_eq!(amr_for("{}"), "hwk");
    }
}
