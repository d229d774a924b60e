//! Identity's tables (see `migrations/`): plain SQL that runs on Postgres and SQLite alike
//! (`$n` placeholders each used once, in order).

use sharedcare_kit::db::Db;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::sealing::Sealer;
use sqlx::Row;

use crate::error::{IdentityError, Result};

mod attempts;
mod clients;
mod grants;
mod keys;
mod organisations;
mod patients;
mod sessions;
mod staff;

pub use self::attempts::{Lock, LockPolicy};
pub use self::keys::{KeyKind, StoredKey};
pub use self::sessions::Session;
pub use self::staff::SecurityKey;

/// Identity's storage.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Seals the private keys kept here (signing keys, relying-party keys).
    sealer: Sealer,
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| IdentityError::invalid(what, format!("stored value is not valid: {e}")))
}

impl Store {
    /// Identity's store on `db`, its private keys sealed by `sealer`.
    pub fn new(db: Db, sealer: Sealer) -> Store {
        Store { db, sealer }
    }

    /// Whether the identity database has been seeded (any organisation exists).
    pub async fn is_empty(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM organisations")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get::<i64, _>(0)? == 0)
    }
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
