//! The `organisations` table: the ICS's organisations (ODS codes), their kind and parent.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, conflict};
use crate::error::Result;
use crate::model::Organisation;

/// An organisation from a row of `ods_code, name, kind, parent, active`.
pub(super) fn organisation_row(r: &AnyRow) -> Result<Organisation> {
    Ok(Organisation {
        ods_code: r.try_get(0)?,
        name: r.try_get(1)?,
        kind: r.try_get(2)?,
        parent: r.try_get(3)?,
        active: r.try_get::<i64, _>(4)? != 0,
    })
}

impl Store {
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
}
