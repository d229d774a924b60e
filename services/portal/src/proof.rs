//! Checking an access-log page as the patient's browser is shown it: each entry's leaf hash
//! (SHA-256 of its leaf data), its audit path to the signed root (RFC 9162 §2.1.3.2), the tree
//! head's Ed25519 signature against the audit log's key as **audit** publishes it (fetched by
//! the portal from audit, not taken from the page the passport served), and that the fields
//! shown are the fields logged. Pure: no I/O.

use ring::signature::{ED25519, UnparsedPublicKey};
use sharedcare_audit::{log, merkle};
use sharedcare_proto::passport::v1::{AccessLog, AccessLogEntry};

/// Whether each entry of `page` is proven in the signed log, in order; all false when the
/// tree head itself fails (wrong key or signature).
pub fn verify(page: &AccessLog, audit_key: &[u8]) -> Vec<bool> {
    let Some(head) = page.tree_head.as_ref() else {
        return vec![false; page.entries.len()];
    };
    let Ok(root) = <merkle::Hash>::try_from(head.root_hash.as_slice()) else {
        return vec![false; page.entries.len()];
    };
    let signed = log::signed_bytes(head.tree_size, head.timestamp_us, &root);
    let head_ok = head.public_key == audit_key
        && UnparsedPublicKey::new(&ED25519, audit_key)
            .verify(&signed, &head.signature)
            .is_ok();
    page.entries
        .iter()
        .map(|e| head_ok && entry_ok(e, head.tree_size, &root))
        .collect()
}

fn entry_ok(e: &AccessLogEntry, size: u64, root: &merkle::Hash) -> bool {
    let leaf = merkle::leaf_hash(e.leaf_data.as_bytes());
    if e.leaf_hash != leaf {
        return false;
    }
    let path: Option<Vec<merkle::Hash>> = e.audit_path.iter().map(|p| p.as_slice().try_into().ok()).collect();
    let Some(path) = path else { return false };
    if !merkle::verify_inclusion(e.leaf_index, size, &leaf, &path, root) {
        return false;
    }
    // The leaf: [leaf_index, event_id, nhs_number, actor, organisation, role, action,
    // resources, purpose, reason, outcome, time_us, trace_id, service].
    let Ok(serde_json::Value::Array(logged)) = serde_json::from_str(&e.leaf_data) else {
        return false;
    };
    let at = |i: usize| logged.get(i).and_then(|v| v.as_str()).unwrap_or("\u{0}");
    logged.first().and_then(|v| v.as_u64()) == Some(e.leaf_index)
        && at(3) == e.actor
        && at(4) == e.organisation
        && at(5) == e.role
        && at(6) == e.action
        && at(8) == e.purpose
        && at(10) == e.outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use sharedcare_proto::passport::v1::TreeHead;

    fn leaf(i: u64, org: &str) -> String {
        serde_json::json!([
            i,
            "e",
            "9434765919",
            "p1",
            org,
            "R8000",
            "read",
            ["Passport/x"],
            "TREAT",
            "",
            "success",
            1,
            "",
            "passport"
        ])
        .to_string()
    }

    /// A signed two-entry log and the page showing both, with the key that signed it.
    fn signed_page() -> (AccessLog, Vec<u8>) {
        let leaves: Vec<String> = vec![leaf(0, "A81001"), leaf(1, "VN1C4")];
        let hashes: Vec<merkle::Hash> = leaves.iter().map(|l| merkle::leaf_hash(l.as_bytes())).collect();
        let mut h = sha2::Sha256::default();
        sha2::Digest::update(&mut h, [1u8]);
        sha2::Digest::update(&mut h, hashes[0]);
        sha2::Digest::update(&mut h, hashes[1]);
        let root: merkle::Hash = sha2::Digest::finalize(h).into();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let signature = key.sign(&log::signed_bytes(2, 7, &root)).as_ref().to_vec();
        let public = key.public_key().as_ref().to_vec();
        let entries = leaves
            .iter()
            .enumerate()
            .map(|(i, l)| AccessLogEntry {
                leaf_index: i as u64,
                leaf_data: l.clone(),
                leaf_hash: hashes[i].to_vec(),
                audit_path: vec![hashes[1 - i].to_vec()],
                actor: "p1".into(),
                organisation: if i == 0 { "A81001" } else { "VN1C4" }.into(),
                role: "R8000".into(),
                action: "read".into(),
                purpose: "TREAT".into(),
                outcome: "success".into(),
                ..Default::default()
            })
            .collect();
        let page = AccessLog {
            entries,
            next_before_sequence: 0,
            tree_head: Some(TreeHead {
                tree_size: 2,
                root_hash: root.to_vec(),
                timestamp_us: 7,
                signature,
                public_key: public.clone(),
            }),
        };
        (page, public)
    }

    #[test]
    fn a_page_proven_in_the_signed_log_is_verified_entry_by_entry() {
        let (page, key) = signed_page();
        assert_eq!(verify(&page, &key), [true, true]);
    }

    #[test]
    fn an_entry_shown_otherwise_than_logged_is_not_verified() {
        let (mut page, key) = signed_page();
        page.entries[1].organisation = "A81001".into();
        assert_eq!(verify(&page, &key), [true, false]);
        let (mut page, key) = signed_page();
        page.entries[0].leaf_data = leaf(0, "RX1");
        assert_eq!(
            verify(&page, &key),
            [false, true],
            "leaf data that is not the hashed leaf"
        );
    }

    #[test]
    fn a_head_signed_by_another_key_than_audits_proves_nothing() {
        let (page, _) = signed_page();
        let (_, other) = signed_page();
        assert_eq!(verify(&page, &other), [false, false]);
        let (mut page, key) = signed_page();
        page.tree_head.as_mut().expect("head").timestamp_us = 8;
        assert_eq!(verify(&page, &key), [false, false], "a head changed after signing");
    }
}
