//! Signing keys (ES256, RS256) with their publish, active and retire times, and the keys identity
//! signs its own client assertions to upstream providers with. Every private key is sealed
//! under the key-encryption key ([`sharedcare_kit::sealing`]) before it is written, bound to
//! its table and row; what reaches the rest of identity is the opened key.

use sharedcare_kit::sealing::{self, SealError};
use sqlx::Row;

use super::Store;
use crate::error::{IdentityError, Result};

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
    /// PKCS#8, base64url (opened: never what is stored).
    pub secret: String,
    /// When it was made.
    pub created_at: i64,
    /// When it leaves the published set (0 = not scheduled).
    pub retire_at: i64,
    /// When it starts signing.
    pub active_from: i64,
}

impl Store {
    /// Stored keys of `kind`, newest first, opened.
    pub async fn keys(&self, kind: KeyKind) -> Result<Vec<StoredKey>> {
        let sql = format!(
            "SELECT kid, secret, created_at, retire_at, active_from FROM {} ORDER BY active_from DESC, seq DESC",
            kind.table()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.db.pool()).await?;
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let kid: String = r.try_get(0)?;
            let stored: String = r.try_get(1)?;
            let secret = self.open(kind.table(), &kid, &stored).await?;
            keys.push(StoredKey {
                kid,
                secret,
                created_at: r.try_get(2)?,
                retire_at: r.try_get(3)?,
                active_from: r.try_get(4)?,
            });
        }
        Ok(keys)
    }

    /// Where a key is stored, as the sealed value is bound to it.
    fn context(table: &str, row: &str) -> String {
        format!("identity/{table}/{row}")
    }

    async fn open(&self, table: &str, row: &str, stored: &str) -> Result<String> {
        let bad = |e: SealError| IdentityError::Internal(format!("{table}.secret: key {row} {e}"));
        let opened = sealing::open_stored(self.sealer.as_ref(), stored, &Self::context(table, row))
            .await
            .map_err(bad)?;
        String::from_utf8(opened).map_err(|_| bad(SealError::Corrupt(self.sealer.current())))
    }

    async fn seal(&self, table: &str, row: &str, secret: &str) -> Result<String> {
        self.sealer
            .seal(secret.as_bytes(), &Self::context(table, row))
            .await
            .map_err(|e| IdentityError::Internal(format!("sealing {table} {row}: {e}")))
    }

    /// Re-seals every private key not yet sealed under the current key-encryption key (keys
    /// stored in the clear by an older release, or under a previous KEK). Returns how many.
    /// Run at every start and by `sharedcare keys rewrap`.
    pub async fn reseal_keys(&self) -> Result<u64> {
        let mut resealed = 0;
        for (table, row) in [
            ("signing_keys", "kid"),
            ("rsa_signing_keys", "kid"),
            ("rp_keys", "upstream"),
        ] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {row}, secret FROM {table}")))
                .fetch_all(self.db.writer())
                .await?;
            for r in rows {
                let (id, stored): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let context = Self::context(table, &id);
                let bad = |e: SealError| IdentityError::Internal(format!("{table}.secret: key {id} {e}"));
                let Some(sealed) = sealing::reseal(self.sealer.as_ref(), &stored, &context)
                    .await
                    .map_err(bad)?
                else {
                    continue;
                };
                // Only if unchanged meanwhile (another replica may have re-sealed it first).
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET secret = $1 WHERE {row} = $2 AND secret = $3"
                )))
                .bind(sealed)
                .bind(id.clone())
                .bind(stored)
                .execute(self.db.writer())
                .await?;
                resealed += 1;
            }
        }
        Ok(resealed)
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
        let sealed = self.seal(table, kid, secret).await?;
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
        .bind(sealed)
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

    /// Our relying-party key for `upstream` (PKCS#8, base64url), if made, opened.
    pub async fn rp_key(&self, upstream: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT secret FROM rp_keys WHERE upstream = $1")
            .bind(upstream.to_string())
            .fetch_optional(self.db.writer())
            .await?;
        match row {
            Some(r) => Ok(Some(self.open("rp_keys", upstream, &r.try_get::<String, _>(0)?).await?)),
            None => Ok(None),
        }
    }

    /// Stores a relying-party key unless one exists already.
    pub async fn put_rp_key(&self, upstream: &str, secret: &str) -> Result<()> {
        let sealed = self.seal("rp_keys", upstream, secret).await?;
        sqlx::query("INSERT INTO rp_keys (upstream, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(upstream.to_string())
            .bind(sealed)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }
}
