//! Members of staff (`people`), their role profiles, second factors (TOTP, recovery codes,
//! security keys) and WebAuthn ceremonies.

use sharedcare_kit::auth::RoleProfile;
use sqlx::Row;

use super::attempts::Lock;
use super::{Store, conflict, json};
use crate::error::Result;
use crate::model::Person;

/// A WebAuthn credential of a member of staff.
#[derive(Clone, Debug)]
pub struct SecurityKey {
    /// The credential id, base64url.
    pub cred_id: String,
    /// The name its owner gave it.
    pub name: String,
    /// webauthn-rs's `Passkey`, as JSON (public key, algorithm, counter).
    pub passkey: String,
    /// When it was added (unix seconds).
    pub created_at: i64,
    /// When it last signed someone in (0 = never).
    pub last_used: i64,
}

impl Store {
    /// Adds a person with their role profiles, in one transaction.
    pub async fn insert_person(&self, p: &Person, password_hash: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO people (uid, username, given_name, family_name, email, password_hash, totp_secret) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(p.uid.clone())
        .bind(p.username.clone())
        .bind(p.given_name.clone())
        .bind(p.family_name.clone())
        .bind(p.email.clone())
        .bind(password_hash.to_string())
        .bind(p.totp_secret.clone())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, format!("person {}", p.username)))?;
        for r in &p.roles {
            sqlx::query(
                "INSERT INTO role_profiles (id, person_uid, ods_code, role_code, role_name, activity_codes) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(r.person_roleid.clone())
            .bind(p.uid.clone())
            .bind(r.org_code.clone())
            .bind(r.role_code.clone())
            .bind(r.role_name.clone())
            .bind(serde_json::to_string(&r.activity_codes).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, format!("role profile {}", r.person_roleid)))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A person's role profiles at active organisations: a role at a deactivated organisation
    /// can no longer be chosen, nor carried by a token.
    pub(super) async fn roles(&self, uid: &str) -> Result<Vec<RoleProfile>> {
        let rows = sqlx::query(
            "SELECT r.id, r.ods_code, r.role_code, r.role_name, r.activity_codes FROM role_profiles r \
             JOIN organisations o ON o.ods_code = r.ods_code \
             WHERE r.person_uid = $1 AND o.active = 1 ORDER BY r.id",
        )
        .bind(uid.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let acts: String = r.try_get(4)?;
                Ok(RoleProfile {
                    person_roleid: r.try_get(0)?,
                    org_code: r.try_get(1)?,
                    role_code: r.try_get(2)?,
                    role_name: r.try_get(3)?,
                    activity_codes: json(&acts, "activity_codes")?,
                    person_orgid: String::new(),
                })
            })
            .collect()
    }

    /// A person by uid or username, with their password hash and lock state.
    pub async fn person(&self, by: &str, value: &str) -> Result<Option<(Person, String, Lock)>> {
        let column = if by == "uid" { "uid" } else { "username" };
        let sql = format!(
            "SELECT uid, username, given_name, family_name, email, totp_secret, password_hash, failed_logins, \
             locked_until, (SELECT COUNT(*) FROM webauthn_credentials w WHERE w.uid = people.uid) \
             FROM people WHERE {column} = $1"
        );
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value.to_string())
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let uid: String = r.try_get(0)?;
        let roles = self.roles(&uid).await?;
        let person = Person {
            uid,
            username: r.try_get(1)?,
            given_name: r.try_get(2)?,
            family_name: r.try_get(3)?,
            email: r.try_get(4)?,
            totp_secret: r.try_get(5)?,
            security_keys: r.try_get(9)?,
            roles,
        };
        let lock = Lock {
            failed: r.try_get(7)?,
            until: r.try_get(8)?,
        };
        Ok(Some((person, r.try_get(6)?, lock)))
    }

    /// Sets a person's TOTP secret and recovery-code hashes.
    /// `used_step` is the time step of the code that proved the enrolment (it cannot be reused).
    pub async fn set_totp(&self, uid: &str, secret: &str, recovery_hashes: &[String], used_step: i64) -> Result<()> {
        sqlx::query("UPDATE people SET totp_secret = $1, recovery_codes = $2, totp_last_step = $3 WHERE uid = $4")
            .bind(secret.to_string())
            .bind(serde_json::to_string(recovery_hashes).unwrap_or_else(|_| "[]".into()))
            .bind(used_step)
            .bind(uid.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Keeps an enrolment code (by hash) for `uid`, replacing any earlier one; false when there
    /// is no such person.
    pub async fn set_enrolment(&self, uid: &str, code_hash: &str, expires_at: i64) -> Result<bool> {
        let done = sqlx::query("UPDATE people SET enrolment_hash = $1, enrolment_expires = $2 WHERE uid = $3")
            .bind(code_hash.to_string())
            .bind(expires_at)
            .bind(uid.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Uses up `uid`'s enrolment code if `code_hash` is it and it has not expired: one
    /// conditional UPDATE, so a code enrols once however many try it at once.
    pub async fn take_enrolment(&self, uid: &str, code_hash: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE people SET enrolment_hash = '', enrolment_expires = 0 \
             WHERE uid = $1 AND enrolment_hash = $2 AND enrolment_hash <> '' AND enrolment_expires > $3",
        )
        .bind(uid.to_string())
        .bind(code_hash.to_string())
        .bind(now)
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that TOTP time step `step` was used; false when it (or a later one) was already.
    pub async fn use_totp_step(&self, uid: &str, step: i64) -> Result<bool> {
        let done = sqlx::query("UPDATE people SET totp_last_step = $1 WHERE uid = $2 AND totp_last_step < $3")
            .bind(step)
            .bind(uid.to_string())
            .bind(step)
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Uses up a recovery code (by hash); true when it was valid and unused. The list is
    /// replaced only if it is still the one read (compare and swap), so two concurrent uses of
    /// one code cannot both succeed.
    pub async fn use_recovery_code(&self, uid: &str, code_hash: &str) -> Result<bool> {
        loop {
            let Some(row) = sqlx::query("SELECT recovery_codes FROM people WHERE uid = $1")
                .bind(uid.to_string())
                .fetch_optional(self.db.writer())
                .await?
            else {
                return Ok(false);
            };
            let stored: String = row.try_get(0)?;
            let mut codes: Vec<String> = json(&stored, "recovery_codes")?;
            let before = codes.len();
            codes.retain(|c| c != code_hash);
            if codes.len() == before {
                return Ok(false);
            }
            let swapped = sqlx::query("UPDATE people SET recovery_codes = $1 WHERE uid = $2 AND recovery_codes = $3")
                .bind(serde_json::to_string(&codes).unwrap_or_else(|_| "[]".into()))
                .bind(uid.to_string())
                .bind(stored)
                .execute(self.db.writer())
                .await?;
            if swapped.rows_affected() == 1 {
                return Ok(true);
            }
            // Another code was used meanwhile: read again.
        }
    }

    /// Replaces a person's recovery codes (hashes): a first security key comes with them, as a
    /// first authenticator app does.
    pub async fn set_recovery_codes(&self, uid: &str, recovery_hashes: &[String]) -> Result<()> {
        sqlx::query("UPDATE people SET recovery_codes = $1 WHERE uid = $2")
            .bind(serde_json::to_string(recovery_hashes).unwrap_or_else(|_| "[]".into()))
            .bind(uid.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// A person's WebAuthn credentials (passkeys and security keys).
    pub async fn security_keys(&self, uid: &str) -> Result<Vec<SecurityKey>> {
        let rows = sqlx::query(
            "SELECT cred_id, name, passkey, created_at, last_used FROM webauthn_credentials \
             WHERE uid = $1 ORDER BY created_at, cred_id",
        )
        .bind(uid.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecurityKey {
                    cred_id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    passkey: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    last_used: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Adds a credential to a person; false (nothing stored) when its id is registered already,
    /// to them or to anyone else (WebAuthn §7.1 step 22).
    pub async fn add_security_key(&self, uid: &str, key: &SecurityKey) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO webauthn_credentials (cred_id, uid, name, passkey, created_at, last_used) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (cred_id) DO NOTHING",
        )
        .bind(key.cred_id.clone())
        .bind(uid.to_string())
        .bind(key.name.clone())
        .bind(key.passkey.clone())
        .bind(key.created_at)
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a credential's state after a sign-in (its signature counter) and when it was used.
    pub async fn used_security_key(&self, uid: &str, cred_id: &str, passkey: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE webauthn_credentials SET passkey = $1, last_used = $2 WHERE cred_id = $3 AND uid = $4")
            .bind(passkey.to_string())
            .bind(at)
            .bind(cred_id.to_string())
            .bind(uid.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Parks a ceremony's server-side state under `id` (one per session and kind: a new one
    /// replaces the last), until `expires_at`.
    pub async fn put_ceremony(&self, id: &str, uid: &str, state: &str, expires_at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (id, uid, state, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET uid = excluded.uid, state = excluded.state, expires_at = excluded.expires_at",
        )
        .bind(id.to_string())
        .bind(uid.to_string())
        .bind(state.to_string())
        .bind(expires_at)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Takes a ceremony's state for `uid` once: a second take (a replayed response) finds
    /// nothing, and neither does an expired one.
    pub async fn take_ceremony(&self, id: &str, uid: &str, now: i64) -> Result<Option<String>> {
        let row = sqlx::query("DELETE FROM webauthn_ceremonies WHERE id = $1 RETURNING uid, state, expires_at")
            .bind(id.to_string())
            .fetch_optional(self.db.writer())
            .await?;
        let Some(r) = row else { return Ok(None) };
        let (owner, state, expires): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        Ok((owner == uid && expires > now).then_some(state))
    }
}
