//! Signing keys: one active ES256 key signs every token; older keys stay in the published JWK
//! Set until every token they signed has expired, then leave it. A new key is made every
//! `key_rotation_hours` and published `key_prepublish_secs` before it starts signing, so relying
//! parties that cache the JWK Set already hold it; the admin API rotates at once (a suspected
//! compromise). An RS256 key is made only when a client registered for RS256 ID tokens needs
//! one, and rotates on the same schedule.
//!
//! Keys live in identity's own tables so every replica signs with the same key; replicas
//! reload them every minute and whenever they meet an unknown `kid`.

use sharedcare_kit::edge::Refuse;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use sharedcare_kit::auth::KeySource;
use sharedcare_kit::jose::{JwkSet, Signer256, SignerRs256};

use crate::error::{IdentityError, Result};
use crate::store::{KeyKind, Store, StoredKey};

/// The active keys and the published set.
#[derive(Clone)]
pub struct KeyRing {
    store: Store,
    rotate_after: i64,
    prepublish: i64,
    keep_after_retire: i64,
    inner: Arc<RwLock<Ring>>,
}

struct Ring {
    active: Arc<Signer256>,
    /// When the active key started signing (0 = there is no key yet).
    since: i64,
    /// A published ES256 key has not started signing yet.
    pending: bool,
    rsa: Option<(Arc<SignerRs256>, i64)>,
    rsa_pending: bool,
    published: JwkSet,
}

fn rsa_signer(pkcs8: &[u8]) -> Result<SignerRs256> {
    let bad = |e: String| IdentityError::invalid("rsa_signing_keys.secret", e);
    let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|e| bad(e.to_string()))?;
    SignerRs256::from_parts(pkcs8, &key.n().to_bytes_be(), &key.e().to_bytes_be()).map_err(|e| bad(e.to_string()))
}

fn secret_of(k: &StoredKey, table: &str) -> Result<Vec<u8>> {
    B64.decode(&k.secret)
        .map_err(|_| IdentityError::invalid(format!("{table}.secret"), format!("key {} is not base64url", k.kid)))
}

/// Stored keys sorted out: the published JWKs, the key signing now (with when it started) and
/// whether a later one is waiting.
type Sorted<K> = (Vec<serde_json::Value>, Option<(K, i64)>, bool);

/// Splits stored keys (newest activation first) into the published ones, the one signing now
/// and whether a later one is waiting.
fn sort<K>(
    keys: Vec<StoredKey>,
    now: i64,
    parse: impl Fn(&StoredKey) -> Result<K>,
    jwk: impl Fn(&K) -> serde_json::Value,
) -> Result<Sorted<K>> {
    let mut published = Vec::new();
    let mut active = None;
    let mut pending = false;
    for k in keys {
        if k.retire_at != 0 && k.retire_at < now {
            continue;
        }
        let key = parse(&k)?;
        published.push(jwk(&key));
        if k.active_from > now {
            pending = true;
        } else if active.is_none() {
            active = Some((key, k.active_from.max(1)));
        }
    }
    Ok((published, active, pending))
}

impl KeyRing {
    /// Loads the keys, making the first one when there is none. `token_secs` is the longest
    /// lifetime of a token a key signs; `prepublish_secs` how long a scheduled key is published
    /// before it signs (at most half the rotation period).
    pub async fn load(store: Store, rotate_after_secs: i64, token_secs: i64, prepublish_secs: i64) -> Result<KeyRing> {
        let ring = KeyRing {
            store,
            rotate_after: rotate_after_secs,
            prepublish: prepublish_secs.clamp(0, rotate_after_secs / 2),
            keep_after_retire: token_secs + sharedcare_kit::auth::LEEWAY_SECS,
            inner: Arc::new(RwLock::new(Ring {
                active: Arc::new(Signer256::generate()?),
                since: 0,
                pending: false,
                rsa: None,
                rsa_pending: false,
                published: JwkSet::default(),
            })),
        };
        ring.maintain(chrono::Utc::now().timestamp()).await?;
        Ok(ring)
    }

    fn read<T>(&self, f: impl FnOnce(&Ring) -> T) -> T {
        match self.inner.read() {
            Ok(r) => f(&r),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// The ES256 key to sign with now.
    pub fn active(&self) -> Arc<Signer256> {
        self.read(|r| r.active.clone())
    }

    /// The RS256 key to sign ID tokens with, made (and stored) on first use.
    pub async fn rsa(&self) -> Result<Arc<SignerRs256>> {
        if let Some((k, _)) = self.read(|r| r.rsa.clone()) {
            return Ok(k);
        }
        let now = chrono::Utc::now().timestamp();
        self.rotate_rsa(now, 0, now + self.keep_after_retire).await?;
        self.read(|r| r.rsa.clone())
            .map(|(k, _)| k)
            .ok_or_else(|| IdentityError::invalid("rsa_signing_keys", "no RS256 key after making one"))
    }

    /// The published JWK Set (keys signing now, keys waiting to sign, keys whose tokens may
    /// still be live).
    pub fn jwks(&self) -> JwkSet {
        self.read(|r| r.published.clone())
    }

    /// Makes a new ES256 key (and RS256 key, when there is one) active now; the previous ones
    /// stay published until their tokens expire. Returns the new `kid`.
    pub async fn rotate(&self, now: i64) -> Result<String> {
        self.rotate_from(now, 0, false).await
    }

    /// An emergency rotation (a key may have leaked): a new key signs at once and every earlier
    /// key leaves the published set now, so tokens they signed stop being accepted as soon as
    /// each relying party fetches the set again (within its `auth.jwks_max_age_secs`).
    pub async fn rotate_emergency(&self, now: i64) -> Result<String> {
        self.rotate_from(now, 0, true).await
    }

    /// A new ES256 (and RS256) key, published now, signing from `now + delay`; earlier keys
    /// retire once the tokens they signed have expired, or at once in an emergency.
    async fn rotate_from(&self, now: i64, delay: i64, emergency: bool) -> Result<String> {
        let key = Signer256::generate()?;
        let from = now + delay;
        let retire_old = if emergency {
            now - 1
        } else {
            from + self.keep_after_retire
        };
        let secret = B64.encode(key.secret_bytes());
        self.store
            .rotate_key(KeyKind::Es256, key.kid(), &secret, now, from, retire_old)
            .await?;
        if self.read(|r| r.rsa.is_some()) {
            self.rotate_rsa(now, delay, retire_old).await?;
        }
        self.reload(now).await?;
        Ok(key.kid().to_string())
    }

    async fn rotate_rsa(&self, now: i64, delay: i64, retire_old: i64) -> Result<()> {
        // RSA key generation takes a noticeable amount of CPU: keep it off the runtime.
        let der = tokio::task::spawn_blocking(|| -> std::result::Result<Vec<u8>, RsaKeyError> {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
            Ok(key.to_pkcs8_der()?.as_bytes().to_vec())
        })
        .await
        .map_err(|e| IdentityError::Internal(format!("RSA key generation stopped: {e}")))?
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let signer = rsa_signer(&der)?;
        let from = now + delay;
        self.store
            .rotate_key(KeyKind::Rs256, signer.kid(), &B64.encode(&der), now, from, retire_old)
            .await?;
        self.reload(now).await
    }

    /// Reloads from storage; makes the first key at once, and the next one `prepublish` before
    /// the active key is due.
    pub async fn maintain(&self, now: i64) -> Result<()> {
        self.reload(now).await?;
        if self.read(|r| r.since == 0 && !r.pending) {
            self.rotate(now).await?;
            return Ok(());
        }
        let soon = now + self.prepublish;
        if self.read(|r| !r.pending && soon - r.since >= self.rotate_after) {
            self.rotate_from(now, self.prepublish, false).await?;
        } else if self.read(|r| {
            !r.rsa_pending
                && r.rsa
                    .as_ref()
                    .is_some_and(|(_, since)| soon - since >= self.rotate_after)
        }) {
            let from = now + self.prepublish;
            self.rotate_rsa(now, self.prepublish, from + self.keep_after_retire)
                .await?;
        }
        Ok(())
    }

    async fn reload(&self, now: i64) -> Result<()> {
        let (mut published, active, pending) = sort(
            self.store.keys(KeyKind::Es256).await?,
            now,
            |k| {
                Signer256::from_secret(&secret_of(k, "signing_keys")?)
                    .map_err(|e| IdentityError::invalid("signing_keys.secret", format!("key {}: {e}", k.kid)))
            },
            |k: &Signer256| serde_json::to_value(k.jwk()).unwrap_or_default(),
        )?;
        let (rsa_published, rsa, rsa_pending) = sort(
            self.store.keys(KeyKind::Rs256).await?,
            now,
            |k| rsa_signer(&secret_of(k, "rsa_signing_keys")?),
            |k: &SignerRs256| k.jwk(),
        )?;
        published.extend(rsa_published);
        if let Ok(mut r) = self.inner.write() {
            if let Some((key, since)) = active {
                r.active = Arc::new(key);
                r.since = since;
            }
            r.pending = pending;
            r.rsa = rsa.map(|(k, since)| (Arc::new(k), since));
            r.rsa_pending = rsa_pending;
            r.published = JwkSet { keys: published };
        }
        Ok(())
    }
}

/// Why a new RSA signing key could not be made (a fault here, never the caller's).
#[derive(Debug, thiserror::Error)]
enum RsaKeyError {
    /// Generation failed.
    #[error("generating an RSA key: {0}")]
    Generate(#[from] rsa::Error),
    /// PKCS#8 encoding failed.
    #[error("encoding an RSA key: {0}")]
    Encode(#[from] rsa::pkcs8::Error),
}

#[async_trait::async_trait]
impl KeySource for KeyRing {
    async fn fetch(&self) -> Result<JwkSet, sharedcare_kit::auth::KeysError> {
        self.reload(chrono::Utc::now().timestamp())
            .await
            .map_err(|e| sharedcare_kit::auth::KeysError::Store(e.to_string()))?;
        Ok(self.jwks())
    }
}
