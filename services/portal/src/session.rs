//! Signed-in browsers and sign-ins under way, in the portal's own tables (so any replica
//! serves any request, and a back-channel logout reaching one replica ends the session on all).
//! The cookie holds a random token and only its SHA-256 is stored.

use sharedcare_kit::json::Fields;
use sharedcare_kit::nhs::ProofingLevel;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::jose;
use sqlx::Row;

use crate::error::PortalError;
use crate::oidc::{Pending, Tokens};

/// A session ends after this long unused.
pub const IDLE_SECS: i64 = 30 * 60;
/// A sign-in must come back within this long.
const LOGIN_SECS: i64 = 10 * 60;
/// Last use is written at most this often (not on every page).
const TOUCH_SECS: i64 = 60;
/// How long one replica's claim to refresh a session's tokens holds; another replica waits
/// for its result meanwhile, and takes over if it never comes (the claimant died).
pub const REFRESH_CLAIM_MS: i64 = 10_000;

/// Who is signed in, from their tokens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Who {
    /// A member of staff in their selected role.
    Staff {
        /// Their name.
        name: String,
        /// The role they act in, e.g. "Clinical Practitioner Access Role".
        role_name: String,
        /// Its organisation's ODS code.
        org: String,
        /// National RBAC activities of the role.
        activities: Vec<String>,
    },
    /// A patient (or a representative signing in as themselves).
    Patient {
        /// Their name.
        name: String,
        /// Their NHS number.
        nhs_number: String,
        /// How strongly NHS login proved who they are.
        proofing: ProofingLevel,
    },
}

/// One signed-in browser.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// Who.
    pub who: Who,
    /// Their tokens from identity.
    pub tokens: Tokens,
    /// The token every form of this session carries.
    pub csrf: String,
    /// Key for the opaque patient handles in this session's URLs.
    pub key: String,
    /// Patients this member of staff broke the glass for in this session (views use ETREAT).
    #[serde(default)]
    pub glass: Vec<String>,
    /// Opaque handles of the patients opened in this session (handle → NHS number), so no
    /// NHS number goes in a URL.
    #[serde(default)]
    pub patients: std::collections::HashMap<String, String>,
}

impl Session {
    /// Identity's session id (the ID token's `sid`), by which a back-channel logout finds it.
    pub fn sid(&self) -> &str {
        self.tokens.claims.at("sid").as_str().unwrap_or_default()
    }

    /// A new session for `tokens`.
    pub fn new(who: Who, tokens: Tokens) -> Session {
        Session {
            who,
            tokens,
            csrf: jose::random_token(24),
            key: jose::random_token(24),
            glass: Vec::new(),
            patients: Default::default(),
        }
    }
}

/// The portal's session storage. Every page reads its session from the table, so a logout on
/// any replica (or a back-channel logout) ends it on every replica at once.
#[derive(Clone)]
pub struct Sessions {
    db: Db,
}

fn hash(token: &str) -> String {
    jose::sha256_b64(token)
}

fn decode<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, PortalError> {
    serde_json::from_str(body).map_err(|e| PortalError::Internal(format!("stored session: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<String, PortalError> {
    serde_json::to_string(v).map_err(|e| PortalError::Internal(format!("session: {e}")))
}

impl Sessions {
    /// Sessions in `db` (the portal's migrated store).
    pub fn new(db: Db) -> Sessions {
        Sessions { db }
    }

    /// Stores `s` and returns the cookie's token.
    pub async fn create(&self, s: &Session) -> Result<String, PortalError> {
        let token = jose::random_token(32);
        let now = db::now_us();
        sqlx::query("INSERT INTO sessions (id_hash, sid, body, created_us, seen_us) VALUES ($1, $2, $3, $4, $5)")
            .bind(hash(&token))
            .bind(s.sid().to_string())
            .bind(encode(s)?)
            .bind(now)
            .bind(now)
            .execute(self.db.writer())
            .await?;
        Ok(token)
    }

    /// The live session whose cookie token is `token`; an idle one is ended.
    pub async fn get(&self, token: &str) -> Result<Option<Session>, PortalError> {
        self.reload(token).await
    }

    /// The live session whose cookie token is `token`, read from the table (not from this
    /// replica's memory of it).
    pub async fn reload(&self, token: &str) -> Result<Option<Session>, PortalError> {
        let id = hash(token);
        let Some(row) = sqlx::query("SELECT body, seen_us FROM sessions WHERE id_hash = $1")
            .bind(id.clone())
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let seen: i64 = row.try_get("seen_us")?;
        let now = db::now_us();
        if now - seen > IDLE_SECS * 1_000_000 {
            self.end(token).await?;
            return Ok(None);
        }
        if now - seen > TOUCH_SECS * 1_000_000 {
            sqlx::query("UPDATE sessions SET seen_us = $1 WHERE id_hash = $2")
                .bind(now)
                .bind(id.clone())
                .execute(self.db.writer())
                .await?;
        }
        Ok(Some(decode(&row.try_get::<String, _>("body")?)?))
    }

    /// Replaces the stored session (new tokens, a break-glass patient), releasing any claim
    /// to refresh it.
    pub async fn save(&self, token: &str, s: &Session) -> Result<(), PortalError> {
        sqlx::query("UPDATE sessions SET body = $1, seen_us = $2, refresh_claim_us = 0 WHERE id_hash = $3")
            .bind(encode(s)?)
            .bind(db::now_us())
            .bind(hash(token))
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Claims the refresh of `token`'s session for this replica: `true` if no other replica
    /// holds a live claim ([`REFRESH_CLAIM_MS`]). Identity rotates refresh tokens and revokes
    /// the whole family when an old one is presented again, so two replicas refreshing one
    /// session at the same instant would sign the person out: the claim is a compare-and-set
    /// on the session's row, and [`Sessions::save`] releases it.
    pub async fn claim_refresh(&self, token: &str) -> Result<bool, PortalError> {
        let now = db::now_us();
        let r = sqlx::query("UPDATE sessions SET refresh_claim_us = $1 WHERE id_hash = $2 AND refresh_claim_us < $3")
            .bind(now)
            .bind(hash(token))
            .bind(now - REFRESH_CLAIM_MS * 1000)
            .execute(self.db.writer())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends the session with cookie token `token`.
    pub async fn end(&self, token: &str) -> Result<(), PortalError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(hash(token))
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Ends every session of identity session `sid` (back-channel logout); how many.
    pub async fn end_sid(&self, sid: &str) -> Result<u64, PortalError> {
        let r = sqlx::query("DELETE FROM sessions WHERE sid = $1")
            .bind(sid.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(r.rows_affected())
    }

    /// Remembers a sign-in under way by its `state`.
    pub async fn park(&self, state: &str, p: &Pending) -> Result<(), PortalError> {
        let now = db::now_us();
        sqlx::query("DELETE FROM logins WHERE created_us < $1")
            .bind(now - LOGIN_SECS * 1_000_000)
            .execute(self.db.writer())
            .await?;
        sqlx::query("INSERT INTO logins (state, body, created_us) VALUES ($1, $2, $3)")
            .bind(state.to_string())
            .bind(encode(p)?)
            .bind(now)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Takes (reads and deletes, in one statement) the sign-in parked under `state`, if it is
    /// there and recent: a replayed callback finds nothing.
    pub async fn take(&self, state: &str) -> Result<Option<Pending>, PortalError> {
        let row = sqlx::query("DELETE FROM logins WHERE state = $1 RETURNING body, created_us")
            .bind(state.to_string())
            .fetch_optional(self.db.writer())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let created: i64 = row.try_get("created_us")?;
        if db::now_us() - created > LOGIN_SECS * 1_000_000 {
            return Ok(None);
        }
        Ok(Some(decode(&row.try_get::<String, _>("body")?)?))
    }

    /// Deletes sessions unused for longer than the idle limit and sign-ins never completed
    /// (a browser that just goes away leaves its row behind); how many sessions went.
    pub async fn sweep(&self) -> Result<u64, PortalError> {
        let now = db::now_us();
        let r = sqlx::query("DELETE FROM sessions WHERE seen_us < $1")
            .bind(now - IDLE_SECS * 1_000_000)
            .execute(self.db.writer())
            .await?;
        sqlx::query("DELETE FROM logins WHERE created_us < $1")
            .bind(now - LOGIN_SECS * 1_000_000)
            .execute(self.db.writer())
            .await?;
        Ok(r.rows_affected())
    }

    /// Sweeps every `every` until `stop`.
    pub async fn sweep_every(self, every: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "idle portal sessions ended"),
                Err(e) => tracing::warn!(error = %e, "sweeping idle portal sessions failed"),
            }
        }
    }

    /// The break-glass notices `nhs` has seen.
    pub async fn notices_seen(&self, nhs: &str) -> Result<HashSet<String>, PortalError> {
        let rows = sqlx::query("SELECT notice FROM notices_seen WHERE nhs_number = $1")
            .bind(nhs.to_string())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("notice").map_err(PortalError::from))
            .collect()
    }

    /// Records that `nhs` has seen `notice`.
    pub async fn notice_seen(&self, nhs: &str, notice: &str) -> Result<(), PortalError> {
        sqlx::query(
            "INSERT INTO notices_seen (nhs_number, notice, seen_us) VALUES ($1, $2, $3) \
             ON CONFLICT (nhs_number, notice) DO NOTHING",
        )
        .bind(nhs.to_string())
        .bind(notice.to_string())
        .bind(db::now_us())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }
}
