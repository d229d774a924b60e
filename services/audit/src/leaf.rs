//! What one leaf of the log is: an entry's canonical bytes, which its leaf hash covers.
//! Below the store and the log, which both hash entries.

use sharedcare_kit::db;
use sharedcare_proto::audit::v1::AuditEntry;

/// The canonical leaf of an entry: a JSON array of its fields in this fixed order —
/// `[leaf_index, event_id, nhs_number, actor, actor_organisation, actor_role, action,
/// resources, purpose, reason, outcome, time_us, trace_id, service]`. Anyone holding the entry
/// (the patient, an auditor) can rebuild it and check it against a signed tree head.
pub fn leaf_data(e: &AuditEntry) -> String {
    let time_us = e.time.as_ref().map(db::micros).unwrap_or_default();
    serde_json::json!([
        e.leaf_index,
        e.event_id,
        e.nhs_number,
        e.actor,
        e.actor_organisation,
        e.actor_role,
        e.action,
        e.resources,
        e.purpose,
        e.reason,
        e.outcome,
        time_us,
        e.trace_id,
        e.service
    ])
    .to_string()
}
