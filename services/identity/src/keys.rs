//! Signing keys: one active ES256 key signs every token; older keys stay in the published JWK
//! Set until every token they signed has expired, then leave it. A new key is made every
//! `key_rotation_hours` (and on demand through the admin API). An RS256 key is made only when
//! a client registered for RS256 ID tokens needs one, and rotates on the same schedule.
//!
//! Keys live in identity's own tables so every replica signs with the same key; replicas
//! reload them every minute and whenever they meet an unknown `kid`.

use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use sharedcare_kit::auth::KeySource;
use sharedcare_kit::jose::{JwkSet, Signer256, SignerRs256};

use crate::error::{IdentityError, Result};
use crate::store::{KeyKind, Store};

/// The active keys and the published set.
#[derive(Clone)]
pub struct KeyRing {
    store: Store,
    rotate_after: i64,
    keep_after_retire: i64,
    inner: Arc<RwLock<Ring>>,
}

struct Ring {
    active: Arc<Signer256>,
    created_at: i64,
    rsa: Option<(Arc<SignerRs256>, i64)>,
    published: JwkSet,
}

fn rsa_signer(pkcs8: &[u8]) -> Result<SignerRs256> {
    let bad = |e: String| IdentityError::invalid("rsa_signing_keys.secret", e);
    let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|e| bad(e.to_string()))?;
    SignerRs256::from_parts(pkcs8, &key.n().to_bytes_be(), &key.e().to_bytes_be()).map_err(|e| bad(e.to_string()))
}

impl KeyRing {
    /// Loads the keys, making the first one (or a new one when the active key is due).
    /// `token_secs` is the longest lifetime of a token a key signs.
    pub async fn load(store: Store, rotate_after_secs: i64, token_secs: i64) -> Result<KeyRing> {
        let ring = KeyRing {
            store,
            rotate_after: rotate_after_secs,
            keep_after_retire: token_secs + sharedcare_kit::auth::LEEWAY_SECS,
            inner: Arc::new(RwLock::new(Ring {
                active: Arc::new(Signer256::generate()),
                created_at: 0,
                rsa: None,
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
        self.rotate_rsa(chrono::Utc::now().timestamp()).await?;
        self.read(|r| r.rsa.clone())
            .map(|(k, _)| k)
            .ok_or_else(|| IdentityError::invalid("rsa_signing_keys", "no RS256 key after making one"))
    }

    /// The published JWK Set.
    pub fn jwks(&self) -> JwkSet {
        self.read(|r| r.published.clone())
    }

    /// Makes a new active ES256 key now (and RS256 key, when there is one); the previous ones
    /// stay published until their tokens expire.
    pub async fn rotate(&self, now: i64) -> Result<String> {
        let key = Signer256::generate();
        self.store
            .rotate_key(
                KeyKind::Es256,
                key.kid(),
                &B64.encode(key.secret_bytes()),
                now,
                now + self.keep_after_retire,
            )
            .await?;
        if self.read(|r| r.rsa.is_some()) {
            self.rotate_rsa(now).await?;
        }
        self.reload(now).await?;
        Ok(key.kid().to_string())
    }

    async fn rotate_rsa(&self, now: i64) -> Result<()> {
        // RSA key generation takes a noticeable amount of CPU: keep it off the runtime.
        let der = tokio::task::spawn_blocking(|| -> std::result::Result<Vec<u8>, String> {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| e.to_string())?;
            Ok(key.to_pkcs8_der().map_err(|e| e.to_string())?.as_bytes().to_vec())
        })
        .await
        .map_err(|e| IdentityError::invalid("rsa_signing_keys", e.to_string()))?
        .map_err(|e| IdentityError::invalid("rsa_signing_keys", e))?;
        let signer = rsa_signer(&der)?;
        self.store
            .rotate_key(
                KeyKind::Rs256,
                signer.kid(),
                &B64.encode(&der),
                now,
                now + self.keep_after_retire,
            )
            .await?;
        self.reload(now).await
    }

    /// Reloads from storage, rotating first when the active key is due (or there is none).
    pub async fn maintain(&self, now: i64) -> Result<()> {
        self.reload(now).await?;
        let due = self.read(|r| r.created_at == 0 || now - r.created_at >= self.rotate_after);
        if due {
            self.rotate(now).await?;
        } else if self.read(|r| r.rsa.as_ref().is_some_and(|(_, at)| now - at >= self.rotate_after)) {
            self.rotate_rsa(now).await?;
        }
        Ok(())
    }

    async fn reload(&self, now: i64) -> Result<()> {
        let mut published = Vec::new();
        let mut active: Option<(Signer256, i64)> = None;
        for (kid, secret, created_at, retire_at) in self.store.keys(KeyKind::Es256).await? {
            let bytes = B64
                .decode(&secret)
                .map_err(|_| IdentityError::invalid("signing_keys.secret", format!("key {kid} is not base64url")))?;
            let key = Signer256::from_secret(&bytes)
                .map_err(|e| IdentityError::invalid("signing_keys.secret", format!("key {kid}: {e}")))?;
            if retire_at != 0 && retire_at < now {
                continue;
            }
            published.push(serde_json::to_value(key.jwk()).unwrap_or_default());
            if retire_at == 0 && active.is_none() {
                active = Some((key, created_at));
            }
        }
        let mut rsa: Option<(Arc<SignerRs256>, i64)> = None;
        for (kid, secret, created_at, retire_at) in self.store.keys(KeyKind::Rs256).await? {
            if retire_at != 0 && retire_at < now {
                continue;
            }
            let bytes = B64.decode(&secret).map_err(|_| {
                IdentityError::invalid("rsa_signing_keys.secret", format!("key {kid} is not base64url"))
            })?;
            let key = rsa_signer(&bytes)?;
            published.push(key.jwk());
            if retire_at == 0 && rsa.is_none() {
                rsa = Some((Arc::new(key), created_at));
            }
        }
        if let Some((key, created_at)) = active
            && let Ok(mut r) = self.inner.write()
        {
            r.active = Arc::new(key);
            r.created_at = created_at;
            r.rsa = rsa;
            r.published = JwkSet { keys: published };
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl KeySource for KeyRing {
    async fn fetch(&self) -> Result<JwkSet, String> {
        self.reload(chrono::Utc::now().timestamp())
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.jwks())
    }
}
