//! The `patients` table: NHS login's people, by NHS number.

use sharedcare_kit::nhs::ProofingLevel;
use sqlx::Row;

use super::attempts::Lock;
use super::{Store, conflict};
use crate::error::{IdentityError, Result};
use crate::model::Patient;

impl Store {
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
}
