//! What the audit log parses from outside: tile paths (`/audit/log/tile/…`, from any monitor)
//! and, in `sharedcare audit monitor`, verifier keys and signed checkpoint notes fetched from
//! a log that may be hostile.
//! - A tile path it accepts is canonical: written back, it is the same path.
//! - A note opens only with a signature that verifies under the pinned key, so nothing the
//!   fuzzer makes (it cannot sign) opens.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sharedcare_audit::{note, tiles};

/// A fixed Ed25519 public key (its private half is not here: nothing can sign for it).
fn pinned() -> &'static note::VerifierKey {
    static KEY: OnceLock<note::VerifierKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let public = [7u8; 32];
        note::VerifierKey::parse(&note::verifier_key("fuzz.example/log", &public)).expect("a well-formed verifier key")
    })
}

fuzz_target!(|text: &str| {
    if let Ok((id, width)) = tiles::parse_path(text) {
        assert_eq!(tiles::path(id, width), format!("tile/{text}"), "accepted paths are canonical");
    }
    if let Ok(k) = note::VerifierKey::parse(text) {
        assert_eq!(note::VerifierKey::parse(&note::verifier_key(&k.name, &k.key)), Ok(k));
    }
    if let Ok(c) = note::open_checkpoint(text, pinned()) {
        panic!("a note no one signed opened: {c:?}");
    }
});
