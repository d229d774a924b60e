//! Applies `AccessRecorded` events to the log, and consent's `ConsentEvent`s (break-glass
//! grants, directive, flag and relationship changes) as entries of their own, so a patient's
//! trail shows who broke the glass and who changed their sharing. A patient merge in records
//! joins the two trails under the survivor. Other event types on audited topics are
//! acknowledged and ignored.

use prost::Message;
use sharedcare_kit::access::Outcome;
use sharedcare_kit::bus::{Delivery, Handler};
use sharedcare_proto::events::v1::{AccessRecorded, ConsentEvent, RecordChanged};

use crate::store::Store;

/// The protobuf type name of the events this consumer appends.
pub const ACCESS_RECORDED: &str = "sharedcare.events.v1.AccessRecorded";
/// Records' changes: only a merge (`merged_into`) matters here.
pub const RECORD_CHANGED: &str = "sharedcare.events.v1.RecordChanged";
/// Consent's events, appended as entries of their own.
pub const CONSENT_EVENT: &str = "sharedcare.events.v1.ConsentEvent";

/// The audit consumer.
pub struct AccessConsumer {
    store: Store,
}

impl AccessConsumer {
    /// Appends into `store`.
    pub fn new(store: Store) -> Self {
        AccessConsumer { store }
    }
}

#[async_trait::async_trait]
impl Handler for AccessConsumer {
    async fn handle(&self, delivery: &Delivery) -> sharedcare_kit::Result<()> {
        self.handle_batch(std::slice::from_ref(delivery)).await
    }

    /// Appends every `AccessRecorded` in the batch in one transaction.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> sharedcare_kit::Result<()> {
        for (merged, survivor) in deliveries.iter().filter_map(merge) {
            self.store
                .merge(&merged, &survivor)
                .await
                .map_err(sharedcare_kit::Error::apply(crate::NAME))?;
        }
        let events: Vec<(&Delivery, AccessRecorded)> = deliveries.iter().filter_map(decode).collect();
        let appended = self
            .store
            .append_all(&events)
            .await
            .map_err(sharedcare_kit::Error::apply(crate::NAME))?;
        tracing::debug!(received = deliveries.len(), appended, "audit entries");
        Ok(())
    }
}

/// A merge records made (a `RecordChanged` with `merged_into`): (merged, survivor).
fn merge(delivery: &Delivery) -> Option<(String, String)> {
    if delivery.envelope.r#type != RECORD_CHANGED {
        return None;
    }
    let e = RecordChanged::decode(delivery.envelope.data.as_slice()).ok()?;
    (!e.merged_into.is_empty() && !e.nhs_number.is_empty()).then_some((e.nhs_number, e.merged_into))
}

/// The `AccessRecorded` in a delivery; other event types are acknowledged and ignored, and a
/// malformed event is skipped with an error log (it can never be applied; retrying would
/// block the partition).
fn decode(delivery: &Delivery) -> Option<(&Delivery, AccessRecorded)> {
    if delivery.envelope.r#type == CONSENT_EVENT {
        return match ConsentEvent::decode(delivery.envelope.data.as_slice()) {
            Ok(e) => Some((delivery, from_consent(e, &delivery.envelope.traceparent))),
            Err(e) => {
                tracing::error!(event_id = %delivery.envelope.id, error = %e, "undecodable ConsentEvent skipped");
                None
            }
        };
    }
    if delivery.envelope.r#type != ACCESS_RECORDED {
        return None;
    }
    match AccessRecorded::decode(delivery.envelope.data.as_slice()) {
        Ok(e) => Some((delivery, e)),
        Err(e) => {
            tracing::error!(event_id = %delivery.envelope.id, error = %e, "undecodable AccessRecorded skipped");
            None
        }
    }
}

/// A consent event as an audit entry: break-glass is recorded with purpose BTG and its stated
/// reason; other changes with their kind as the action. The entry carries the trace of the
/// request that made the change (from the event's `traceparent`), as records' entries do.
fn from_consent(e: ConsentEvent, traceparent: &str) -> AccessRecorded {
    let glass = e.kind == "break_glass_granted";
    AccessRecorded {
        actor: e.actor,
        actor_organisation: e.actor_organisation,
        action: if glass { "break-glass".into() } else { e.kind },
        nhs_number: e.nhs_number,
        purpose: if glass { "BTG".into() } else { String::new() },
        reason: if e.reason_code.is_empty() {
            e.detail
        } else {
            format!("{}: {}", e.reason_code, e.detail)
        },
        outcome: if glass { Outcome::Granted } else { Outcome::Success }.as_str().into(),
        time: e.time,
        service: "consent".into(),
        trace_id: sharedcare_kit::telemetry::trace_id_of(traceparent),
        ..AccessRecorded::default()
    }
}
