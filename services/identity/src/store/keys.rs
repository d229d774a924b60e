//! Signing keys (ES256, RS256) with their publish, active and retire times, and the keys identity
//! signs its own client assertions to upstream providers with.

use sqlx::Row;

use super::Store;
use crate::error::Result;

/// Which signing keys: ES256 (every token) or RS256 (ID tokens for clients that ask).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// P-256 keys in `signing_keys`.
    Es256,
    /// RSA-2048 keys in `rsa_signing_keys`.
    Rs256,
}

impl KeyKind {
    fn table(self) -> &'static str {
        match self {
            KeyKind::Es256 => "signing_keys",
            KeyKind::Rs256 => "rsa_signing_keys",
        }
    }
}

/// A stored signing key.
#[derive(Clone, Debug)]
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// PKCS#8, base64url.
    pub secret: String,
    /// When it was made.
    pub created_at: i64,
    /// When it leaves the published set (0 = not scheduled).
    pub retire_at: i64,
    /// When it starts signing.
    pub active_from: i64,
}

impl Store {
    /// Stored keys of `kind`, newest first: (kid, secret, created_at, retire_at).
    pub async fn keys(&self, kind: KeyKind) -> Result<Vec<StoredKey>> {
        let sql = format!(
            "SELECT kid, secret, created_at, retire_at, active_from FROM {} ORDER BY active_from DESC, seq DESC",
            kind.table()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: r.try_get(0)?,
                    secret: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    retire_at: r.try_get(3)?,
                    active_from: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Adds a key of `kind` that signs from `active_from` (published at once) and schedules the
    /// previous ones to leave the key set at `retire_at`.
    pub async fn rotate_key(
        &self,
        kind: KeyKind,
        kid: &str,
        secret: &str,
        now: i64,
        active_from: i64,
        retire_at: i64,
    ) -> Result<()> {
        let table = kind.table();
        let mut tx = self.db.begin_write().await?;
        // Keys still live retire at `retire_at`: the current one, and in an emergency
        // (`retire_at` in the past) also those already due to retire later.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET retire_at = $1 WHERE retire_at = 0 OR retire_at > $2"
        )))
        .bind(retire_at)
        .bind(retire_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (kid, secret, created_at, retire_at, active_from, seq) \
             SELECT $1, $2, $3, 0, $4, COALESCE(MAX(seq), 0) + 1 FROM {table}"
        )))
        .bind(kid.to_string())
        .bind(secret.to_string())
        .bind(now)
        .bind(active_from)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE retire_at <> 0 AND retire_at < $1"
        )))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Our relying-party key for `upstream` (PKCS#8, base64url), if made.
    pub async fn rp_key(&self, upstream: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT secret FROM rp_keys WHERE upstream = $1")
            .bind(upstream.to_string())
            .fetch_optional(self.db.writer())
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Stores a relying-party key unless one exists already.
    pub async fn put_rp_key(&self, upstream: &str, secret: &str) -> Result<()> {
        sqlx::query("INSERT INTO rp_keys (upstream, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(upstream.to_string())
            .bind(secret.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }
}
