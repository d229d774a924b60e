//! Checkpoints ([C2SP tlog-checkpoint]) signed as notes ([C2SP signed-note]) with the log's
//! Ed25519 key, readable by Go's `sumdb/note` and every other tlog client:
//!
//! ```text
//! sharedcare.<issuer host>/audit
//! <tree size>
//! <base64 root hash>
//!
//! — sharedcare.<issuer host>/audit <base64(key id ‖ Ed25519 signature)>
//! ```
//!
//! Hand-written over `ring` (which already signs the log's heads): the `signed_note` crate
//! would bring a second Ed25519 stack (ed25519-dalek) and older base64 and thiserror versions
//! for about a hundred lines.
//!
//! [C2SP tlog-checkpoint]: https://c2sp.org/tlog-checkpoint
//! [C2SP signed-note]: https://c2sp.org/signed-note

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The signature type byte of Ed25519 note keys.
const ED25519_TYPE: u8 = 0x01;
/// A signature line's prefix: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// The log's origin line: `sharedcare.<host>/audit`, the host (and port) of `issuer`.
pub fn origin(issuer: &str) -> String {
    let host = issuer
        .split_once("://")
        .map_or(issuer, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    format!("sharedcare.{host}/audit")
}

/// The key id of an Ed25519 key named `name`: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4].
pub fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_TYPE]);
    h.update(public_key);
    let d: [u8; 32] = h.finalize().into();
    let [a, b, c, e, ..] = d;
    [a, b, c, e]
}

/// The verifier key a client pins: `<name>+<key id hex>+<base64(0x01 ‖ key)>`.
pub fn verifier_key(name: &str, public_key: &[u8]) -> String {
    let mut typed = vec![ED25519_TYPE];
    typed.extend_from_slice(public_key);
    format!(
        "{name}+{:08x}+{}",
        u32::from_be_bytes(key_id(name, public_key)),
        B64.encode(typed)
    )
}

/// A checkpoint's body (the signed text).
pub fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// The note: `body`, a blank line, and the signature line of key `name`.
pub fn signed(body: &str, name: &str, public_key: &[u8], signature: &[u8]) -> String {
    let mut sig = key_id(name, public_key).to_vec();
    sig.extend_from_slice(signature);
    format!("{body}\n{SIG_PREFIX}{name} {}\n", B64.encode(sig))
}

/// Why a key or a signed checkpoint was refused (the message says which part, and why).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoteError(String);

impl From<&str> for NoteError {
    fn from(why: &str) -> Self {
        NoteError(why.into())
    }
}

impl From<String> for NoteError {
    fn from(why: String) -> Self {
        NoteError(why)
    }
}

/// A pinned verifier key, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    /// The key's name (the log's origin).
    pub name: String,
    /// Its id.
    pub id: [u8; 4],
    /// The Ed25519 public key.
    pub key: Vec<u8>,
}

impl VerifierKey {
    /// Parses `<name>+<hex id>+<base64(0x01 ‖ key)>`, checking the id matches the key.
    pub fn parse(s: &str) -> Result<VerifierKey, NoteError> {
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected <name>+<key id>+<base64 key>".into());
        };
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err("the name is empty or has a space".into());
        }
        let id = u32::from_str_radix(id, 16)
            .ok()
            .filter(|_| id.len() == 8)
            .ok_or("the key id is not 8 hex digits")?
            .to_be_bytes();
        let typed = B64.decode(key).map_err(|_| "the key is not base64")?;
        let key = match typed.split_first() {
            Some((&ED25519_TYPE, k)) if k.len() == 32 => k.to_vec(),
            _ => return Err("the key is not an Ed25519 key (type 0x01, 32 bytes)".into()),
        };
        if key_id(name, &key) != id {
            return Err("the key id does not match the name and key".into());
        }
        Ok(VerifierKey {
            name: name.to_string(),
            id,
            key,
        })
    }
}

/// A verified checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
}

/// Opens a checkpoint note signed by `key`: the signature must verify, the origin must be the
/// key's name, and the body must be a checkpoint. Errors say which.
pub fn open_checkpoint(note: &str, key: &VerifierKey) -> Result<Checkpoint, NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or("not a signed note: no blank line before the signatures")?;
    let (body, sigs) = (&note[..split + 1], &note[split + 2..]);
    let mut verified = false;
    for line in sigs.lines() {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| format!("signature line {line:?} does not start with an em dash"))?;
        let (name, sig) = rest
            .split_once(' ')
            .ok_or_else(|| format!("signature line {line:?} has no signature"))?;
        let sig = B64
            .decode(sig)
            .map_err(|_| format!("the signature of {name} is not base64"))?;
        let (id, sig) = sig.split_at_checked(4).unwrap_or_default();
        if name != key.name || id != key.id {
            continue; // another key's signature (a witness, say): ignored
        }
        UnparsedPublicKey::new(&ED25519, &key.key)
            .verify(body.as_bytes(), sig)
            .map_err(|_| {
                format!("the signature of {name} does not verify: the checkpoint was altered or not signed by this key")
            })?;
        verified = true;
    }
    if !verified {
        return Err(NoteError(format!(
            "no signature by the pinned key {}+{:08x}: an unknown key signed it",
            key.name,
            u32::from_be_bytes(key.id)
        )));
    }
    let lines: Vec<&str> = body.split('\n').collect();
    let [origin, size, root, ..] = lines[..] else {
        return Err("the checkpoint has fewer than three lines".into());
    };
    if origin != key.name {
        return Err(NoteError(format!(
            "the origin {origin:?} is not the key's name {:?}",
            key.name
        )));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| format!("tree size {size:?} is not a number"))?;
    let root: Hash = B64
        .decode(root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or("the root is not a base64 SHA-256 hash")?;
    Ok(Checkpoint {
        origin: origin.to_string(),
        size,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    #[test]
    fn the_signed_note_spec_example_verifies() {
        // The example key and note of C2SP signed-note and Go's sumdb/note.
        let key = VerifierKey::parse("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
            .expect("the spec's key parses");
        let note = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        // Not a checkpoint, but the signature is what is checked first.
        let e = open_checkpoint(note, &key).expect_err("refused");
        assert!(e.to_string().contains("fewer than three lines"), "{e}");
        let altered = note.replace("example message", "exemplary message");
        let e = open_checkpoint(&altered, &key).expect_err("refused");
        assert!(e.to_string().contains("does not verify"), "{e}");
    }

    #[test]
    fn a_checkpoint_round_trips_and_a_wrong_key_or_change_is_refused() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ok");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ok");
        let name = origin("https://sharedcare.example.nhs.uk:8443/path");
        assert_eq!(name, "sharedcare.sharedcare.example.nhs.uk:8443/audit");
        let root = [7u8; 32];
        let body = checkpoint_body(&name, 42, &root);
        let note = signed(
            &body,
            &name,
            pair.public_key().as_ref(),
            pair.sign(body.as_bytes()).as_ref(),
        );
        let vkey = VerifierKey::parse(&verifier_key(&name, pair.public_key().as_ref())).expect("ok");
        assert_eq!(
            open_checkpoint(&note, &vkey),
            Ok(Checkpoint {
                origin: name.clone(),
                size: 42,
                root
            })
        );
        let e = open_checkpoint(&note.replace("\n42\n", "\n43\n"), &vkey).expect_err("refused");
        assert!(e.to_string().contains("does not verify"), "{e}");
        let other = Ed25519KeyPair::from_pkcs8(
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .expect("ok")
                .as_ref(),
        )
        .expect("ok");
        let stranger = VerifierKey::parse(&verifier_key(&name, other.public_key().as_ref())).expect("ok");
        let e = open_checkpoint(&note, &stranger).expect_err("refused");
        assert!(e.to_string().contains("unknown key"), "{e}");
        for bad in [
            "x",
            "a+b+c",
            "n+0000000z+AA==",
            &verifier_key(&name, &[0; 32]).replace(&name, "other"),
        ] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad}");
        }
    }
}
