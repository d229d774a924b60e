//! SSO sessions (`sessions`) and the clients each has signed in to.

use sharedcare_kit::edge::Refuse;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::grants::revoke_family_in;
use super::{Store, json};
use crate::error::{IdentityError, Result};
use crate::model::SubjectKind;

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

pub(super) fn session(r: &AnyRow) -> Result<Session> {
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

pub(super) const SESSION_COLUMNS: &str =
    "id, subject_kind, subject, auth_time, last_seen, expires_at, amr, mfa_pending, selected_role, revoked";

impl Store {
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
}
