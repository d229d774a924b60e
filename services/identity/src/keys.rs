//! Signing keys: one active ES256 key signs; older keys stay in the published JWK Set until
//! every token they signed has expired, then leave it. A new key is made every
//! `key_rotation_hours` (and on demand through the admin API).
//!
//! Keys live in identity's own table so every replica signs with the same key; replicas
//! reload it every minute and whenever they meet an unknown `kid`.

use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sharedcare_kit::auth::KeySource;
use sharedcare_kit::jose::{JwkSet, Signer256};

use crate::error::{IdentityError, Result};
use crate::store::Store;

/// The active key and the published set.
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
    published: JwkSet,
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
                published: JwkSet::default(),
            })),
        };
        ring.maintain(chrono::Utc::now().timestamp()).await?;
        Ok(ring)
    }

    /// The key to sign with now.
    pub fn active(&self) -> Arc<Signer256> {
        self.inner
            .read()
            .map(|r| r.active.clone())
            .unwrap_or_else(|p| p.into_inner().active.clone())
    }

    /// The published JWK Set.
    pub fn jwks(&self) -> JwkSet {
        self.inner
            .read()
            .map(|r| r.published.clone())
            .unwrap_or_else(|p| p.into_inner().published.clone())
    }

    /// Makes a new active key now; the previous one stays published until its tokens expire.
    pub async fn rotate(&self, now: i64) -> Result<String> {
        let key = Signer256::generate();
        self.store
            .rotate_key(
                key.kid(),
                &B64.encode(key.secret_bytes()),
                now,
                now + self.keep_after_retire,
            )
            .await?;
        self.reload(now).await?;
        Ok(key.kid().to_string())
    }

    /// Reloads from storage, rotating first when the active key is due (or there is none).
    pub async fn maintain(&self, now: i64) -> Result<()> {
        self.reload(now).await?;
        let due = {
            let r = self
                .inner
                .read()
                .map_err(|_| IdentityError::Forbidden("key ring poisoned".into()))?;
            r.created_at == 0 || now - r.created_at >= self.rotate_after
        };
        if due {
            self.rotate(now).await?;
        }
        Ok(())
    }

    async fn reload(&self, now: i64) -> Result<()> {
        let rows = self.store.keys().await?;
        let mut published = Vec::new();
        let mut active: Option<(Signer256, i64)> = None;
        for (kid, secret, created_at, retire_at) in rows {
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
        if let Some((key, created_at)) = active
            && let Ok(mut r) = self.inner.write()
        {
            r.active = Arc::new(key);
            r.created_at = created_at;
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
