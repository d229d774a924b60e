//! Keys at rest. The private keys a service keeps in its database (identity's token signing
//! keys, audit's log key) are sealed under a key-encryption key (KEK) that is not in the
//! database: a copy of the database alone cannot sign anything.
//!
//! [`KeyEncryption`] is what a cloud KMS would implement (its `seal`/`open` are async for
//! that); [`LocalKek`] is the one shipped: AES-256-GCM (ring) under a 32-byte key read from a
//! file (a mounted Kubernetes Secret) or an environment variable. Each sealed value names the
//! KEK that sealed it (a fingerprint, never the key) and is bound to where it is stored (the
//! table and row, as associated data), so a sealed key moved to another row does not open.
//!
//! A sealed value reads `kek:v1:<fingerprint>:<base64url(nonce ‖ ciphertext ‖ tag)>`.
//! Rotation: configure the new KEK as current and the old one under `previous_*`, run
//! `sharedcare keys rewrap` (every value is re-sealed under the current KEK), then drop the
//! old one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// What seals the keys a service stores.
pub type Sealer = Arc<dyn KeyEncryption>;

/// Why a key could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The stored value was sealed under a KEK this process does not have.
    #[error(
        "sealed under key-encryption key {0}, which this process does not have (set key_encryption.key_file to it, or list it under key_encryption.previous_key_files while rotating)"
    )]
    UnknownKek(String),
    /// The value did not open under its KEK: altered, or moved from another row.
    #[error("does not open under key-encryption key {0}: altered, or stored for another row")]
    Corrupt(String),
    /// Not a sealed value at all.
    #[error("is not a sealed value (kek:v1:…)")]
    NotSealed,
    /// The KEK itself is unusable.
    #[error("{0}")]
    Kek(String),
}

/// Seals and opens secrets stored at rest. `context` names where the value is stored (e.g.
/// `identity/signing_keys/<kid>`); a value opens only under the context it was sealed for.
#[async_trait::async_trait]
pub trait KeyEncryption: Send + Sync + 'static {
    /// `secret` sealed under the current KEK.
    async fn seal(&self, secret: &[u8], context: &str) -> Result<String, SealError>;
    /// The secret in `sealed`, under whichever configured KEK sealed it.
    async fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SealError>;
    /// Whether `sealed` is already sealed under the current KEK (rewrap skips it).
    fn is_current(&self, sealed: &str) -> bool;
    /// The current KEK's fingerprint, for messages.
    fn current(&self) -> String;
}

/// Whether a stored value is sealed (older releases stored keys in the clear).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// Opens `stored`, or takes it as it is when it predates sealing. The caller re-seals a
/// clear value at once ([`reseal`]).
pub async fn open_stored(sealer: &dyn KeyEncryption, stored: &str, context: &str) -> Result<Vec<u8>, SealError> {
    if is_sealed(stored) {
        sealer.open(stored, context).await
    } else {
        Ok(stored.as_bytes().to_vec())
    }
}

/// `stored` sealed under the current KEK, or `None` when it already is: what
/// `sharedcare keys rewrap`, and a start over keys stored in the clear, write back.
pub async fn reseal(sealer: &dyn KeyEncryption, stored: &str, context: &str) -> Result<Option<String>, SealError> {
    if sealer.is_current(stored) {
        return Ok(None);
    }
    let secret = open_stored(sealer, stored, context).await?;
    sealer.seal(&secret, context).await.map(Some)
}

const PREFIX: &str = "kek:v1:";

/// Where the key-encryption key comes from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeyEncryptionConfig {
    /// A file holding the KEK: 32 random bytes, base64url (e.g. a mounted Kubernetes Secret;
    /// make one with `head -c 32 /dev/urandom | basenc --base64url`).
    pub key_file: String,
    /// The KEK itself, base64url, for an environment variable
    /// (`SHAREDCARE_KEY_ENCRYPTION__KEY`). Use one of `key` and `key_file`.
    pub key: String,
    /// Earlier KEKs (files), still opened while `sharedcare keys rewrap` re-seals under the
    /// current one.
    pub previous_key_files: Vec<String>,
    /// Earlier KEKs themselves, base64url.
    pub previous_keys: Vec<String>,
}

impl KeyEncryptionConfig {
    /// Whether a KEK is configured.
    pub fn configured(&self) -> bool {
        !(self.key.is_empty() && self.key_file.is_empty())
    }

    /// The configured KEK, or — when none is and `fallback` is given — the one kept in that
    /// file, made there (mode 0600) on first use: the embedded default, where the key sits
    /// beside the data it protects and protects only a database copied without it.
    pub fn sealer(&self, fallback: Option<&Path>) -> crate::Result<Sealer> {
        let bad = |key: &str, why: String| crate::Error::Config(format!("`key_encryption.{key}`: {why}"));
        if !self.key.is_empty() && !self.key_file.is_empty() {
            return Err(bad("key", "set key or key_file, not both".into()));
        }
        let current = if !self.key.is_empty() {
            parse_kek(&self.key).map_err(|e| bad("key", e))?
        } else if !self.key_file.is_empty() {
            read_kek(Path::new(&self.key_file)).map_err(|e| bad("key_file", e))?
        } else if let Some(path) = fallback {
            kept_kek(path).map_err(|e| bad("key_file", e))?
        } else {
            return Err(bad(
                "key_file",
                "no key-encryption key: signing keys kept in a shared database must be sealed under one (a mounted Secret, or key_encryption.key)".into(),
            ));
        };
        let mut previous = Vec::new();
        for f in &self.previous_key_files {
            previous.push(read_kek(Path::new(f)).map_err(|e| bad("previous_key_files", e))?);
        }
        for k in &self.previous_keys {
            previous.push(parse_kek(k).map_err(|e| bad("previous_keys", e))?);
        }
        Ok(Arc::new(LocalKek::new(current, previous)))
    }
}

fn parse_kek(text: &str) -> Result<[u8; 32], String> {
    let bytes = B64
        .decode(text.trim().trim_end_matches('='))
        .map_err(|_| "not base64url".to_string())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes; a key-encryption key is 32", b.len()))
}

fn read_kek(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_kek(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn kept_kek(path: &Path) -> Result<[u8; 32], String> {
    if path.exists() {
        return read_kek(path);
    }
    let key = random_kek().map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_private(path, &B64.encode(key)).map_err(|e| format!("{}: {e}", path.display()))?;
    // Two processes starting at once on one directory: both read back the one kept.
    read_kek(path)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => f.write_all(text.as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// 32 random bytes.
pub fn random_kek() -> Result<[u8; 32], SealError> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SealError::Kek("the random number generator failed".into()))?;
    Ok(key)
}

/// A KEK's fingerprint: the first 8 hex digits of its SHA-256.
fn fingerprint(key: &[u8; 32]) -> String {
    sha2::Sha256::digest(key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// AES-256-GCM under a local 32-byte key, opening values sealed under earlier keys too.
pub struct LocalKek {
    current: (String, LessSafeKey),
    previous: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl LocalKek {
    /// `current` seals; `current` and `previous` open.
    pub fn new(current: [u8; 32], previous: Vec<[u8; 32]>) -> LocalKek {
        let key = |k: &[u8; 32]| {
            // A 32-byte key is always a valid AES-256 key.
            #[allow(clippy::expect_used)]
            let unbound = UnboundKey::new(&AES_256_GCM, k).expect("32 bytes is an AES-256 key");
            (fingerprint(k), LessSafeKey::new(unbound))
        };
        LocalKek {
            current: key(&current),
            previous: previous.iter().map(key).collect(),
            random: SystemRandom::new(),
        }
    }

    /// A KEK of fresh random bytes (tests, and tools that seal for one run).
    pub fn random() -> Result<LocalKek, SealError> {
        Ok(LocalKek::new(random_kek()?, Vec::new()))
    }
}

#[async_trait::async_trait]
impl KeyEncryption for LocalKek {
    async fn seal(&self, secret: &[u8], context: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Kek("the random number generator failed".into()))?;
        let mut sealed = secret.to_vec();
        self.current
            .1
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SealError::Kek("AES-GCM sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}:{}", self.current.0, B64.encode(out)))
    }

    async fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(PREFIX).ok_or(SealError::NotSealed)?;
        let (id, body) = rest.split_once(':').ok_or(SealError::NotSealed)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(k, _)| k == id)
            .ok_or_else(|| SealError::UnknownKek(id.to_string()))?;
        let corrupt = || SealError::Corrupt(id.to_string());
        let bytes = B64.decode(body).map_err(|_| corrupt())?;
        if bytes.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt())?;
        let mut sealed = sealed.to_vec();
        let opened = key
            .1
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| corrupt())?;
        Ok(opened.to_vec())
    }

    fn is_current(&self, sealed: &str) -> bool {
        sealed
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(id, _)| id == self.current.0)
    }

    fn current(&self) -> String {
        self.current.0.clone()
    }
}

/// Where `up` keeps its KEK when none is configured: beside the data.
pub fn default_kek_path(data_dir: &Path) -> PathBuf {
    data_dir.join("key-encryption-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    #[tokio::test]
    async fn sealed_opens_only_under_its_kek_and_its_context() -> anyhow::Result<()> {
        let a = LocalKek::new(kek(1), Vec::new());
        let sealed = a.seal(b"pkcs8 bytes", "identity/signing_keys/k1").await?;
        assert!(sealed.starts_with("kek:v1:") && !sealed.contains("pkcs8"), "{sealed}");
        assert_eq!(a.open(&sealed, "identity/signing_keys/k1").await?, b"pkcs8 bytes");
        assert!(a.is_current(&sealed));

        // Moved to another row: refused.
        let moved = a.open(&sealed, "identity/signing_keys/k2").await;
        assert!(matches!(moved, Err(SealError::Corrupt(_))), "{moved:?}");
        // Altered: refused.
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered)?;
        assert!(a.open(&altered, "identity/signing_keys/k1").await.is_err());

        // Another KEK cannot open it, and says which KEK it needs.
        let b = LocalKek::new(kek(2), Vec::new());
        let err = b.open(&sealed, "identity/signing_keys/k1").await.expect_err("refused");
        assert!(err.to_string().contains(&a.current()), "{err}");

        // Rotation: b with a as previous opens it, and reseal moves it under b.
        let rotating = LocalKek::new(kek(2), vec![kek(1)]);
        assert!(!rotating.is_current(&sealed));
        let moved = reseal(&rotating, &sealed, "identity/signing_keys/k1")
            .await?
            .expect("re-sealed");
        assert!(rotating.is_current(&moved));
        assert_eq!(b.open(&moved, "identity/signing_keys/k1").await?, b"pkcs8 bytes");
        assert_eq!(reseal(&rotating, &moved, "identity/signing_keys/k1").await?, None);

        // A value stored in the clear by an older release is sealed by reseal.
        let clear = reseal(&b, "clear-base64", "audit/log_keys/1").await?.expect("sealed");
        assert_eq!(b.open(&clear, "audit/log_keys/1").await?, b"clear-base64");
        Ok(())
    }

    #[test]
    fn config_names_what_is_wrong() {
        let both = KeyEncryptionConfig {
            key: B64.encode(kek(1)),
            key_file: "/nonexistent".into(),
            ..Default::default()
        };
        let err = both.sealer(None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("key_encryption.key"), "{err}");
        let short = KeyEncryptionConfig {
            key: B64.encode([1u8; 16]),
            ..Default::default()
        };
        let err = short.sealer(None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("16 bytes; a key-encryption key is 32"), "{err}");
        let none = KeyEncryptionConfig::default();
        let err = none.sealer(None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("key_encryption.key_file"), "{err}");
    }

    #[test]
    fn the_embedded_default_is_made_once_and_private() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = default_kek_path(dir.path());
        let first = KeyEncryptionConfig::default().sealer(Some(&path))?;
        let again = KeyEncryptionConfig::default().sealer(Some(&path))?;
        assert_eq!(first.current(), again.current());
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }
}
