//! Pending authorization requests, codes, refresh token families and revoked token ids.

use sqlx::Row;

use super::{Store, json};
use crate::error::Result;
use crate::model::Grant;

impl Store {
    /// Parks an authorization request while the user signs in.
    pub async fn put_auth_request(&self, id: &str, params: &str, expires_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO auth_requests (id, params, expires_at) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(params.to_string())
            .bind(expires_at)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// A parked authorization request, if it has not expired.
    pub async fn auth_request(&self, id: &str, now: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT params FROM auth_requests WHERE id = $1 AND expires_at > $2")
            .bind(id.to_string())
            .bind(now)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Takes a parked request for single use: it is deleted as it is read, in one statement,
    /// so of two concurrent callers (a replayed redirect) only one gets it.
    pub async fn take_auth_request(&self, id: &str, now: i64) -> Result<Option<String>> {
        let row = sqlx::query("DELETE FROM auth_requests WHERE id = $1 RETURNING params, expires_at")
            .bind(id.to_string())
            .fetch_optional(self.db.writer())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: i64 = row.try_get(1)?;
        Ok((expires_at > now).then(|| row.try_get(0)).transpose()?)
    }

    /// Forgets a parked request (it has been answered) and any that expired.
    pub async fn delete_auth_request(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("DELETE FROM auth_requests WHERE id = $1 OR expires_at < $2")
            .bind(id.to_string())
            .bind(now)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Stores an authorization code (by hash) for `grant`, and notes the session's client.
    pub async fn put_code(&self, code_hash: &str, grant: &Grant, expires_at: i64) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("INSERT INTO codes (code_hash, grant_data, expires_at) VALUES ($1, $2, $3)")
            .bind(code_hash.to_string())
            .bind(serde_json::to_string(grant).unwrap_or_default())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO session_clients (session_id, client_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(grant.session_id.clone())
            .bind(grant.client_id.clone())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Redeems a code once. `Err(true)` = it was already used (a replay), `Err(false)` = unknown
    /// or expired. The redemption is one conditional UPDATE (`AND used = 0`), so of any number
    /// of concurrent redemptions exactly one succeeds on either back end.
    pub async fn take_code(&self, code_hash: &str, now: i64) -> Result<Result<Grant, bool>> {
        let taken = sqlx::query(
            "UPDATE codes SET used = 1 WHERE code_hash = $1 AND used = 0 AND expires_at > $2 RETURNING grant_data",
        )
        .bind(code_hash.to_string())
        .bind(now)
        .fetch_optional(self.db.writer())
        .await?;
        if let Some(row) = taken {
            return Ok(Ok(json(&row.try_get::<String, _>(0)?, "grant_data")?));
        }
        let used = sqlx::query("SELECT used FROM codes WHERE code_hash = $1")
            .bind(code_hash.to_string())
            .fetch_optional(self.db.pool())
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?;
        Ok(Err(used.is_some_and(|u| u != 0)))
    }

    /// Stores a refresh token (by hash) in `family`.
    pub async fn put_refresh(&self, token_hash: &str, family: &str, grant: &Grant, expires_at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family, session_id, grant_data, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash.to_string())
        .bind(family.to_string())
        .bind(grant.session_id.clone())
        .bind(serde_json::to_string(grant).unwrap_or_default())
        .bind(expires_at)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Rotates a refresh token: marks it used and returns its family and grant. A token that
    /// was already used revokes its whole family (RFC 9700 §4.14.2) and returns `Err(true)`;
    /// unknown, expired or revoked returns `Err(false)`. The rotation is one conditional UPDATE
    /// (`AND used = 0`): of concurrent presentations one rotates and the others are replays.
    pub async fn use_refresh(&self, token_hash: &str, now: i64) -> Result<Result<(String, Grant), bool>> {
        let mut tx = self.db.begin_write().await?;
        let rotated = sqlx::query(
            "UPDATE refresh_tokens SET used = 1 WHERE token_hash = $1 AND used = 0 AND expires_at > $2 \
             AND family NOT IN (SELECT family FROM revoked_families) RETURNING family, grant_data",
        )
        .bind(token_hash.to_string())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = rotated {
            let family: String = row.try_get(0)?;
            let data: String = row.try_get(1)?;
            tx.commit().await?;
            return Ok(Ok((family, json(&data, "grant_data")?)));
        }
        let Some(row) = sqlx::query(
            "SELECT family, expires_at, used, \
             (SELECT COUNT(*) FROM revoked_families f WHERE f.family = refresh_tokens.family) \
             FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash.to_string())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(false));
        };
        let family: String = row.try_get(0)?;
        let (expires, used, revoked): (i64, i64, i64) = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        if revoked > 0 || expires <= now || used == 0 {
            return Ok(Err(false));
        }
        revoke_family_in(&mut tx, &family, now).await?;
        tx.commit().await?;
        Ok(Err(true))
    }

    /// The family and client of a refresh token, for revocation.
    pub async fn refresh_family(&self, token_hash: &str) -> Result<Option<(String, Grant)>> {
        let row = sqlx::query("SELECT family, grant_data FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((r.try_get(0)?, json(&r.try_get::<String, _>(1)?, "grant_data")?))),
        }
    }

    /// Revokes a refresh token family.
    pub async fn revoke_family(&self, family: &str, now: i64) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        revoke_family_in(&mut tx, family, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether a refresh token is live (for introspection).
    pub async fn refresh_active(&self, token_hash: &str, now: i64) -> Result<Option<Grant>> {
        let row = sqlx::query(
            "SELECT grant_data FROM refresh_tokens WHERE token_hash = $1 AND used = 0 AND expires_at > $2 \
             AND family NOT IN (SELECT family FROM revoked_families)",
        )
        .bind(token_hash.to_string())
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| json(&r.try_get::<String, _>(0)?, "grant_data")).transpose()
    }

    /// Revokes an access token by `jti` until it would have expired anyway.
    pub async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(jti.to_string())
            .bind(expires_at)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Whether an access token was revoked.
    pub async fn jti_revoked(&self, jti: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Records a client assertion id; false when it was seen before (a replay).
    pub async fn first_use_of_assertion(&self, jti: &str, expires_at: i64) -> Result<bool> {
        let done = sqlx::query("INSERT INTO assertion_ids (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(jti.to_string())
            .bind(expires_at)
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes what has expired (codes, requests, tokens, assertion ids).
    pub async fn purge(&self, now: i64) -> Result<()> {
        for table in [
            "codes",
            "auth_requests",
            "refresh_tokens",
            "revoked_tokens",
            "assertion_ids",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE expires_at < $1"
            )))
            .bind(now)
            .execute(self.db.writer())
            .await?;
        }
        sqlx::query("DELETE FROM address_attempts WHERE minute < $1")
            .bind(now / 60 - 1)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }
}

pub(super) async fn revoke_family_in(tx: &mut sharedcare_kit::db::Tx, family: &str, now: i64) -> Result<()> {
    sqlx::query("INSERT INTO revoked_families (family, revoked_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(family.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
