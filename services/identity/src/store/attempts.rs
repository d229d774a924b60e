//! Failed sign-ins counted per account and per address, and the lock that follows.

use sqlx::Row;

use super::Store;
use crate::error::Result;
use crate::model::SubjectKind;

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

impl Store {
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
}

/// The table and key column of an account kind.
pub(super) fn account_table(kind: SubjectKind) -> (&'static str, &'static str) {
    match kind {
        SubjectKind::Staff => ("people", "uid"),
        SubjectKind::Patient => ("patients", "nhs_number"),
    }
}
