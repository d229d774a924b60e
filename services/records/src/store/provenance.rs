//! Provenance: who wrote each version (the writing organisation and the author), when, and
//! whether it created, updated or deleted the resource. Each version has the id of its
//! Provenance resource (`resources.provenance_id`); the facts are read only after the version
//! itself was decided and audited as a read.

use sharedcare_kit::db::Backend;
use sharedcare_kit::edge::Refuse;
use sqlx::Row as _;

use super::{Actor, Store, Stored};
use crate::RecordsError;

/// What the Provenance of one version says, with the version it describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The Provenance resource's id.
    pub provenance_id: String,
    /// `Type`.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// The version it describes.
    pub version: i64,
    /// When it was stored (µs).
    pub recorded_us: i64,
    /// The author: a person's id or a system's client id.
    pub author: String,
    /// The ODS code of the organisation it was written for ("" when none was named).
    pub organisation: String,
    /// The version deleted the resource.
    pub deleted: bool,
    /// What the writer took it from (a feed's message), "" when not said.
    pub source_document: String,
}

impl Store {
    /// Gives every version stored before Provenance a Provenance id; returns how many. Run at
    /// start-up (one statement).
    pub async fn provenance_ids(&self) -> Result<u64, RecordsError> {
        let db = &self.engine.db;
        let sql = match db.backend() {
            Backend::Sqlite => {
                "UPDATE resources SET provenance_id = lower(hex(randomblob(16))) WHERE provenance_id = ''"
            }
            Backend::Postgres => {
                "UPDATE resources SET provenance_id = md5(resource_type || '/' || id || '/' || version::text) WHERE provenance_id = ''"
            }
        };
        Ok(sqlx::query(sql).execute(db.pool()).await?.rows_affected())
    }

    /// The Provenance of `resource_type/id` — every version, newest first, or only `version` —
    /// as `actor` may see it: the versions are read through history (decided by consent and
    /// audited, withheld versions left out) first.
    pub async fn provenance_of(
        &self,
        resource_type: &str,
        id: &str,
        version: Option<i64>,
        actor: &Actor,
    ) -> Result<Vec<Written>, RecordsError> {
        // Through history, so that the Provenance of a delete can be read too.
        let mut seen: Vec<Stored> = Vec::new();
        let mut cursor = version.map(|v| (v + 1).to_string()).unwrap_or_default();
        loop {
            let size = if version.is_some() { 1 } else { super::MAX_PAGE };
            let page = self.history(resource_type, id, size, &cursor, actor).await?;
            seen.extend(page.items);
            if page.next_cursor.is_empty() || version.is_some() {
                break;
            }
            cursor = page.next_cursor;
        }
        if let Some(v) = version
            && !seen.iter().any(|s| s.version == v)
        {
            return Err(RecordsError::not_found(format!("{resource_type}/{id}/_history/{v}")));
        }
        self.written(&seen).await
    }

    /// The Provenance of versions already read (so already decided and audited): one query per
    /// chunk, newest version of each resource first. A search's `_revinclude` passes its page.
    pub async fn written(&self, seen: &[Stored]) -> Result<Vec<Written>, RecordsError> {
        let mut out = Vec::new();
        for chunk in seen.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let mut pairs: Vec<(&str, &str)> = chunk
                .iter()
                .map(|s| (s.resource_type.as_str(), s.id.as_str()))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            let sql = format!(
                "SELECT resource_type, id, version, provenance_id, author, source_organisation, last_updated_us, deleted, source_document \
                 FROM resources WHERE {} ORDER BY resource_type, id, version DESC",
                self.engine.any_of("", pairs.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (t, id) in &pairs {
                q = q.bind(t.to_string()).bind(id.to_string());
            }
            for r in q.fetch_all(self.engine.db.pool()).await? {
                let w = Written {
                    resource_type: r.try_get(0)?,
                    id: r.try_get(1)?,
                    version: r.try_get(2)?,
                    provenance_id: r.try_get(3)?,
                    author: r.try_get(4)?,
                    organisation: r.try_get(5)?,
                    recorded_us: r.try_get(6)?,
                    deleted: r.try_get::<i64, _>(7)? != 0,
                    source_document: r.try_get(8)?,
                };
                let was_read = chunk
                    .iter()
                    .any(|s| s.resource_type == w.resource_type && s.id == w.id && s.version == w.version);
                if was_read {
                    out.push(w);
                }
            }
        }
        Ok(out)
    }

    /// The version Provenance `provenance_id` describes (type, id, version), if any.
    pub async fn provenance_target(&self, provenance_id: &str) -> Result<Option<(String, String, i64)>, RecordsError> {
        let row = sqlx::query("SELECT resource_type, id, version FROM resources WHERE provenance_id = $1")
            .bind(provenance_id.to_string())
            .fetch_optional(self.engine.db.pool())
            .await?;
        Ok(row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()?)
    }
}
