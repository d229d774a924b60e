//! Resource versions in the records tables, and the events each change or access produces,
//! written to the outbox in the same transaction.

use sharedcare_kit::bus::{self, Envelope};
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::outbox::{self, Outbox};
use sharedcare_proto::events::v1::{AccessRecorded, RecordChanged};
use sqlx::Row;

use crate::fhir::{self, Resource};
use crate::{NAME, RecordsError};

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// `resourceType`.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// `meta.versionId`, from 1.
    pub version: i64,
    /// `meta.lastUpdated`, microseconds since the epoch.
    pub last_updated_us: i64,
    /// The patient's NHS number ("" when not known).
    pub nhs_number: String,
    /// The resource JSON with `meta` stamped.
    pub body: String,
}

/// Who is accessing, for audit events (filled from the token once identity lands).
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// Person or client id.
    pub id: String,
    /// ODS code of the actor's organisation.
    pub organisation: String,
    /// Selected role.
    pub role: String,
}

/// The records store.
#[derive(Clone)]
pub struct Store {
    db: Db,
    outbox: Outbox,
    topic: String,
}

const RECORD_CHANGED: &str = "sharedcare.events.v1.RecordChanged";
const ACCESS_RECORDED: &str = "sharedcare.events.v1.AccessRecorded";

impl Store {
    /// The store on `db`, emitting through `outbox`.
    pub fn new(db: Db, outbox: Outbox) -> Self {
        Store {
            db,
            outbox,
            topic: bus::topic(NAME),
        }
    }

    /// Stores `resource` as its next version, with its events, atomically.
    pub async fn put(
        &self,
        mut resource: Resource,
        source_organisation: &str,
        actor: &Actor,
    ) -> Result<Stored, RecordsError> {
        let mut tx = self.db.begin_write().await?;
        let current: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM resources WHERE resource_type = $1 AND id = $2")
                .bind(&resource.resource_type)
                .bind(&resource.id)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
        let version = current + 1;
        let now = db::now_us();
        let nhs_number = match (&resource.nhs_number, &resource.patient_ref) {
            (Some(n), _) => n.to_string(),
            (None, Some(pid)) => sqlx::query("SELECT nhs_number FROM patients WHERE id = $1")
                .bind(pid)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get::<String, _>(0))
                .unwrap_or_default(),
            (None, None) => String::new(),
        };
        let reference = format!("{}/{}", resource.resource_type, resource.id);
        let key = if nhs_number.is_empty() {
            reference.clone()
        } else {
            nhs_number.clone()
        };
        outbox::lock_key(&mut tx, &key).await?;
        fhir::stamp(&mut resource.body, &resource.id, version, now);
        let body = serde_json::Value::Object(resource.body).to_string();
        let inserted = sqlx::query(
            "INSERT INTO resources (resource_type, id, version, last_updated_us, nhs_number, source_organisation, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&resource.resource_type)
        .bind(&resource.id)
        .bind(version)
        .bind(now)
        .bind(&nhs_number)
        .bind(source_organisation)
        .bind(&body)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(RecordsError::Conflict(reference)),
            other => other?,
        };
        if resource.resource_type == "Patient" && !nhs_number.is_empty() {
            sqlx::query(
                "INSERT INTO patients (id, nhs_number) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET nhs_number = excluded.nhs_number",
            )
            .bind(&resource.id)
            .bind(&nhs_number)
            .execute(&mut *tx)
            .await?;
        }
        let changed = RecordChanged {
            resource_type: resource.resource_type.clone(),
            id: resource.id.clone(),
            version,
            nhs_number: nhs_number.clone(),
            source_organisation: source_organisation.to_string(),
            last_updated: Some(db::timestamp(now)),
        };
        let env = bus::envelope(RECORD_CHANGED, NAME, &reference, &key, &changed);
        let action = if version == 1 { "create" } else { "update" };
        let access = self.access(
            actor,
            action,
            &format!("{reference}/_history/{version}"),
            &nhs_number,
            "success",
        );
        outbox::enqueue_all(&mut tx, &[(&self.topic, &env), (&self.topic, &access)]).await?;
        tx.commit().await?;
        self.outbox.notify();
        Ok(Stored {
            resource_type: resource.resource_type,
            id: resource.id,
            version,
            last_updated_us: now,
            nhs_number,
            body,
        })
    }

    /// Reads the current version of `resource_type/id`. The access is recorded in the outbox
    /// (durably) before the resource is returned; if that fails, the caller gets the error.
    pub async fn get(&self, resource_type: &str, id: &str, actor: &Actor) -> Result<Stored, RecordsError> {
        let reference = format!("{resource_type}/{id}");
        let row = sqlx::query(
            "SELECT version, last_updated_us, nhs_number, body FROM resources
             WHERE resource_type = $1 AND id = $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(resource_type)
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else {
            self.record(actor, "read", &reference, "", "not-found").await?;
            return Err(RecordsError::NotFound(reference));
        };
        let stored = Stored {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version: row.get(0),
            last_updated_us: row.get(1),
            nhs_number: row.get(2),
            body: row.get(3),
        };
        let versioned = format!("{reference}/_history/{}", stored.version);
        self.record(actor, "read", &versioned, &stored.nhs_number, "success")
            .await?;
        Ok(stored)
    }

    /// Records an access durably (group commit) before the caller may answer.
    async fn record(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
        nhs_number: &str,
        outcome: &str,
    ) -> Result<(), RecordsError> {
        let env = self.access(actor, action, resource, nhs_number, outcome);
        self.outbox
            .record(&self.topic, env)
            .await
            .map_err(|e| RecordsError::Audit(e.to_string()))
    }

    fn access(&self, actor: &Actor, action: &str, resource: &str, nhs_number: &str, outcome: &str) -> Envelope {
        let event = AccessRecorded {
            actor: if actor.id.is_empty() {
                "unauthenticated".into()
            } else {
                actor.id.clone()
            },
            actor_organisation: actor.organisation.clone(),
            actor_role: actor.role.clone(),
            action: action.to_string(),
            resources: vec![resource.to_string()],
            nhs_number: nhs_number.to_string(),
            purpose: "TREAT".into(),
            reason: String::new(),
            outcome: outcome.to_string(),
            time: Some(db::timestamp(db::now_us())),
            trace_id: sharedcare_kit::telemetry::current_trace_id(),
            service: NAME.into(),
        };
        let key = if nhs_number.is_empty() {
            resource.to_string()
        } else {
            nhs_number.to_string()
        };
        bus::envelope(ACCESS_RECORDED, NAME, resource, &key, &event)
    }
}
