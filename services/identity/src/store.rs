//! Identity's tables (see `migrations/`): plain SQL that runs on Postgres and SQLite alike
//! (`$n` placeholders each used once, in order).

use sharedcare_kit::auth::RoleProfile;
use sharedcare_kit::db::Db;
use sharedcare_kit::nhs::ProofingLevel;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::{IdentityError, Result};
use crate::model::{Client, ClientSettings, Grant, Organisation, Patient, Person, SubjectKind};

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

/// Identity's storage.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

/// A stored identity session.
#[derive(Clone, Debug)]
pub struct Session {
    /// Session id (`sid` in tokens).
    pub id: String,
    /// Staff or patient.
    pub subject_kind: SubjectKind,
    /// uid or NHS number.
    pub subject: String,
    /// When they authenticated (unix seconds).
    pub auth_time: i64,
    /// Last use (unix seconds).
    pub last_seen: i64,
    /// Absolute end (unix seconds).
    pub expires_at: i64,
    /// Authentication methods so far.
    pub amr: Vec<String>,
    /// A second factor is still owed.
    pub mfa_pending: bool,
    /// Selected role profile id, empty when none chosen.
    pub selected_role: String,
    /// Ended by logout or an administrator.
    pub revoked: bool,
}

/// Failed-login state of an account.
#[derive(Clone, Copy, Debug)]
pub struct Lock {
    /// Failures in a row.
    pub failed: i64,
    /// Locked until (unix seconds), 0 when not locked.
    pub until: i64,
}

/// When failed sign-ins lock an account, and for how long: every `after` failures in a row lock
/// it, for `base_secs` the first time and twice as long each further time, never longer than
/// `max_secs` (a growing delay, not a days-long lock anyone knowing the username could keep
/// renewing).
#[derive(Clone, Copy, Debug)]
pub struct LockPolicy {
    /// Failures in a row that lock the account.
    pub after: i64,
    /// The first lock's length (seconds).
    pub base_secs: i64,
    /// The longest lock (seconds).
    pub max_secs: i64,
}

impl LockPolicy {
    /// The lock a count of `failed` failures in a row sets at `now` (0 = none).
    pub fn lock_until(&self, failed: i64, now: i64) -> i64 {
        if self.after < 1 || failed < self.after || failed % self.after != 0 {
            return 0;
        }
        let doublings = u32::try_from((failed / self.after - 1).min(20)).unwrap_or(20);
        now + self.base_secs.saturating_mul(1i64 << doublings).min(self.max_secs)
    }
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| IdentityError::invalid(what, format!("stored value is not valid: {e}")))
}

fn session(r: &AnyRow) -> Result<Session> {
    let kind: String = r.try_get("subject_kind")?;
    let amr: String = r.try_get("amr")?;
    Ok(Session {
        id: r.try_get("id")?,
        subject_kind: SubjectKind::parse(&kind).ok_or_else(|| IdentityError::invalid("subject_kind", kind))?,
        subject: r.try_get("subject")?,
        auth_time: r.try_get("auth_time")?,
        last_seen: r.try_get("last_seen")?,
        expires_at: r.try_get("expires_at")?,
        amr: json(&amr, "amr")?,
        mfa_pending: r.try_get::<i64, _>("mfa_pending")? != 0,
        selected_role: r.try_get("selected_role")?,
        revoked: r.try_get::<i64, _>("revoked")? != 0,
    })
}

/// An organisation from a row of `ods_code, name, kind, parent, active`.
fn organisation_row(r: &AnyRow) -> Result<Organisation> {
    Ok(Organisation {
        ods_code: r.try_get(0)?,
        name: r.try_get(1)?,
        kind: r.try_get(2)?,
        parent: r.try_get(3)?,
        active: r.try_get::<i64, _>(4)? != 0,
    })
}

const SESSION_COLUMNS: &str =
    "id, subject_kind, subject, auth_time, last_seen, expires_at, amr, mfa_pending, selected_role, revoked";

impl Store {
    /// Identity's store on `db`.
    pub fn new(db: Db) -> Store {
        Store { db }
    }

    // ---- organisations ------------------------------------------------------------------

    /// Adds an organisation; `Conflict` when the ODS code exists.
    pub async fn insert_organisation(&self, o: &Organisation) -> Result<()> {
        sqlx::query("INSERT INTO organisations (ods_code, name, kind, parent, active) VALUES ($1, $2, $3, $4, $5)")
            .bind(o.ods_code.clone())
            .bind(o.name.clone())
            .bind(o.kind.clone())
            .bind(o.parent.clone())
            .bind(i64::from(o.active))
            .execute(self.db.writer())
            .await
            .map_err(|e| conflict(e, format!("organisation {}", o.ods_code)))?;
        Ok(())
    }

    /// Replaces an organisation's name, kind, parent and active flag; false when there is none.
    pub async fn update_organisation(&self, o: &Organisation) -> Result<bool> {
        let done =
            sqlx::query("UPDATE organisations SET name = $1, kind = $2, parent = $3, active = $4 WHERE ods_code = $5")
                .bind(o.name.clone())
                .bind(o.kind.clone())
                .bind(o.parent.clone())
                .bind(i64::from(o.active))
                .bind(o.ods_code.clone())
                .execute(self.db.writer())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// One organisation by ODS code.
    pub async fn organisation(&self, code: &str) -> Result<Option<Organisation>> {
        let row = sqlx::query("SELECT ods_code, name, kind, parent, active FROM organisations WHERE ods_code = $1")
            .bind(code.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| organisation_row(&r)).transpose()
    }

    /// `(ODS code, name)` of the organisations among `codes` that exist.
    pub async fn organisation_names(&self, codes: &[&str]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for code in codes {
            if let Some(r) = sqlx::query("SELECT ods_code, name FROM organisations WHERE ods_code = $1")
                .bind(code.to_string())
                .fetch_optional(self.db.pool())
                .await?
            {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        Ok(out)
    }

    /// Organisations ordered by ODS code, after `after`, at most `limit`.
    pub async fn organisations(&self, after: &str, limit: i64) -> Result<Vec<Organisation>> {
        let rows = sqlx::query(
            "SELECT ods_code, name, kind, parent, active FROM organisations WHERE ods_code > $1 ORDER BY ods_code LIMIT $2",
        )
        .bind(after.to_string())
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(organisation_row).collect()
    }

    // ---- staff --------------------------------------------------------------------------

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
    async fn roles(&self, uid: &str) -> Result<Vec<RoleProfile>> {
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

    // ---- WebAuthn ---------------------------------------------------------------------------

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

    // ---- patients -----------------------------------------------------------------------

    /// Adds a patient account.
    pub async fn insert_patient(&self, p: &Patient, password_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO patients (nhs_number, username, given_name, family_name, birthdate, proofing_level, \
             password_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(p.nhs_number.clone())
        .bind(p.username.clone())
        .bind(p.given_name.clone())
        .bind(p.family_name.clone())
        .bind(p.birthdate.clone())
        .bind(p.proofing_level.as_str())
        .bind(password_hash.to_string())
        .execute(self.db.writer())
        .await
        .map_err(|e| conflict(e, format!("patient {}", p.nhs_number)))?;
        Ok(())
    }

    /// A patient by NHS number or username, with password hash and lock state.
    pub async fn patient(&self, by: &str, value: &str) -> Result<Option<(Patient, String, Lock)>> {
        let column = if by == "nhs_number" { "nhs_number" } else { "username" };
        let sql = format!(
            "SELECT nhs_number, username, given_name, family_name, birthdate, proofing_level, password_hash, \
             failed_logins, locked_until FROM patients WHERE {column} = $1"
        );
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value.to_string())
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let p = Patient {
            nhs_number: r.try_get(0)?,
            username: r.try_get(1)?,
            given_name: r.try_get(2)?,
            family_name: r.try_get(3)?,
            birthdate: r.try_get(4)?,
            proofing_level: {
                let level: String = r.try_get(5)?;
                ProofingLevel::parse(&level)
                    .ok_or_else(|| IdentityError::Corrupt(format!("patient proofing level {level:?}")))?
            },
        };
        let lock = Lock {
            failed: r.try_get(7)?,
            until: r.try_get(8)?,
        };
        Ok(Some((p, r.try_get(6)?, lock)))
    }

    /// Counts a sign-in attempt on an account before its factor is checked, in the database
    /// shared by every replica: the count goes up by one atomically, and the attempt that
    /// reaches a multiple of `policy.after` locks the account (`policy.lock_secs`). A locked
    /// account is not counted and gets `None`, so however many guesses arrive at once, at most
    /// `after` are checked before the lock. A right answer then calls [`Store::clear_failures`].
    pub async fn count_attempt(
        &self,
        kind: SubjectKind,
        subject: &str,
        now: i64,
        policy: &LockPolicy,
    ) -> Result<Option<Lock>> {
        let (table, key) = account_table(kind);
        let mut tx = self.db.begin_write().await?;
        let counted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET failed_logins = failed_logins + 1 WHERE {key} = $1 AND locked_until <= $2 \
             RETURNING failed_logins"
        )))
        .bind(subject.to_string())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = counted else {
            return Ok(None);
        };
        let failed: i64 = row.try_get(0)?;
        let until = policy.lock_until(failed, now);
        if until > 0 {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET locked_until = $1 WHERE {key} = $2"
            )))
            .bind(until)
            .bind(subject.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(Lock { failed, until }))
    }

    /// A right answer: the account's failure count and lock are cleared.
    pub async fn clear_failures(&self, kind: SubjectKind, subject: &str) -> Result<()> {
        let (table, key) = account_table(kind);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET failed_logins = 0, locked_until = 0 WHERE {key} = $1"
        )))
        .bind(subject.to_string())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Counts an attempt from a source address in the current minute, in the database shared
    /// by every replica (one atomic upsert); returns the count including this one. A right
    /// answer takes it back with [`Store::uncount_address`], so only failures stay counted.
    pub async fn count_address(&self, address: &str, minute: i64) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO address_attempts (address, minute, attempts) VALUES ($1, $2, 1) \
             ON CONFLICT (address, minute) DO UPDATE SET attempts = address_attempts.attempts + 1 \
             RETURNING attempts",
        )
        .bind(address.to_string())
        .bind(minute)
        .fetch_one(self.db.writer())
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Takes back an attempt [`Store::count_address`] counted (it succeeded).
    pub async fn uncount_address(&self, address: &str, minute: i64) -> Result<()> {
        sqlx::query("UPDATE address_attempts SET attempts = attempts - 1 WHERE address = $1 AND minute = $2")
            .bind(address.to_string())
            .bind(minute)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    // ---- clients ------------------------------------------------------------------------

    /// Registers a client.
    pub async fn insert_client(&self, c: &Client) -> Result<()> {
        let settings =
            serde_json::to_string(&c.settings).map_err(|e| IdentityError::invalid("settings", e.to_string()))?;
        sqlx::query("INSERT INTO clients (id, name, secret_hash, settings) VALUES ($1, $2, $3, $4)")
            .bind(c.id.clone())
            .bind(c.name.clone())
            .bind(c.secret_hash.clone())
            .bind(settings)
            .execute(self.db.writer())
            .await
            .map_err(|e| conflict(e, format!("client {}", c.id)))?;
        Ok(())
    }

    /// Registers `c`, replacing any client with its id (the platform's internal client, whose
    /// secret changes at every start).
    pub async fn replace_client(&self, c: &Client) -> Result<()> {
        let settings =
            serde_json::to_string(&c.settings).map_err(|e| IdentityError::invalid("settings", e.to_string()))?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM clients WHERE id = $1")
            .bind(c.id.clone())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO clients (id, name, secret_hash, settings) VALUES ($1, $2, $3, $4)")
            .bind(c.id.clone())
            .bind(c.name.clone())
            .bind(c.secret_hash.clone())
            .bind(settings)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a registered client's name, secret hash and settings; false when there is none.
    pub async fn update_client(&self, c: &Client) -> Result<bool> {
        let settings =
            serde_json::to_string(&c.settings).map_err(|e| IdentityError::invalid("settings", e.to_string()))?;
        let done = sqlx::query("UPDATE clients SET name = $1, secret_hash = $2, settings = $3 WHERE id = $4")
            .bind(c.name.clone())
            .bind(c.secret_hash.clone())
            .bind(settings)
            .bind(c.id.clone())
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a client (its refresh tokens stop working: nothing can present them any more);
    /// false when there was none.
    pub async fn delete_client(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM clients WHERE id = $1")
            .bind(id.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A client by id.
    pub async fn client(&self, id: &str) -> Result<Option<Client>> {
        let Some(r) = sqlx::query("SELECT id, name, secret_hash, settings FROM clients WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let settings: String = r.try_get(3)?;
        Ok(Some(Client {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            secret_hash: r.try_get(2)?,
            settings: json::<ClientSettings>(&settings, "settings")?,
        }))
    }

    // ---- sessions -----------------------------------------------------------------------

    /// Stores a new session under the hash of its cookie.
    pub async fn insert_session(&self, s: &Session, cookie_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id, cookie_hash, subject_kind, subject, auth_time, last_seen, expires_at, amr, \
             mfa_pending, selected_role, revoked) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(s.id.clone())
        .bind(cookie_hash.to_string())
        .bind(s.subject_kind.as_str())
        .bind(s.subject.clone())
        .bind(s.auth_time)
        .bind(s.last_seen)
        .bind(s.expires_at)
        .bind(serde_json::to_string(&s.amr).unwrap_or_else(|_| "[]".into()))
        .bind(i64::from(s.mfa_pending))
        .bind(s.selected_role.clone())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// The session whose cookie hashes to `cookie_hash`.
    pub async fn session_by_cookie(&self, cookie_hash: &str) -> Result<Option<Session>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE cookie_hash = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cookie_hash.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(session).transpose()
    }

    /// A session by id.
    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(session).transpose()
    }

    /// Live sessions of `subject` (all subjects when empty), newest first.
    pub async fn sessions(&self, subject: &str, now: i64) -> Result<Vec<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE revoked = 0 AND expires_at > $1 \
             AND ($2 = '' OR subject = $3) ORDER BY auth_time DESC LIMIT 1000"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(subject.to_string())
            .bind(subject.to_string())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(session).collect()
    }

    /// Updates what a session has proven and chosen, and its last use.
    pub async fn update_session(&self, s: &Session) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen = $1, amr = $2, mfa_pending = $3, selected_role = $4 WHERE id = $5")
            .bind(s.last_seen)
            .bind(serde_json::to_string(&s.amr).unwrap_or_else(|_| "[]".into()))
            .bind(i64::from(s.mfa_pending))
            .bind(s.selected_role.clone())
            .bind(s.id.clone())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Ends a session and every refresh token family issued from it; returns the clients that
    /// signed in through it (for back-channel logout). Empty when it was already ended.
    pub async fn revoke_session(&self, id: &str, now: i64) -> Result<Vec<String>> {
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query("UPDATE sessions SET revoked = 1 WHERE id = $1 AND revoked = 0")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT client_id FROM session_clients WHERE session_id = $1 ORDER BY client_id")
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        let fams = sqlx::query("SELECT DISTINCT family FROM refresh_tokens WHERE session_id = $1")
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        for f in fams {
            let family: String = f.try_get(0)?;
            revoke_family_in(&mut tx, &family, now).await?;
        }
        tx.commit().await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Notes that `client_id` signed in through session `id`.
    pub async fn add_session_client(&self, id: &str, client_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO session_clients (session_id, client_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id.to_string())
            .bind(client_id.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    // ---- authorization requests, codes, refresh tokens ----------------------------------

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

    // ---- signing keys -------------------------------------------------------------------

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

    /// Whether the identity database has been seeded (any organisation exists).
    pub async fn is_empty(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM organisations")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get::<i64, _>(0)? == 0)
    }
}

/// The table and key column of an account kind.
fn account_table(kind: SubjectKind) -> (&'static str, &'static str) {
    match kind {
        SubjectKind::Staff => ("people", "uid"),
        SubjectKind::Patient => ("patients", "nhs_number"),
    }
}

async fn revoke_family_in(tx: &mut sharedcare_kit::db::Tx, family: &str, now: i64) -> Result<()> {
    sqlx::query("INSERT INTO revoked_families (family, revoked_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(family.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Unique violations (Postgres 23505, SQLite 2067/1555) become `Conflict`.
fn conflict(e: sqlx::Error, what: String) -> IdentityError {
    if let sqlx::Error::Database(d) = &e
        && matches!(d.code().as_deref(), Some("23505" | "2067" | "1555"))
    {
        return IdentityError::Conflict(what);
    }
    IdentityError::Storage(e)
}
