//! What consent learns from other services' events: an Encounter or EpisodeOfCare stored by
//! records (`RecordChanged` with `care_kind`) is a legitimate relationship between its
//! organisation and the patient, from its start until it ends. Applied idempotently: the
//! relationship's id is the resource's, so a new version updates it. A Patient merged into
//! another (`merged_into`) joins the two NHS numbers into one person for every decision.

use prost::Message;
use sharedcare_kit::bus::{Delivery, Handler};
use sharedcare_proto::events::v1::RecordChanged;

use crate::store::Store;

/// The protobuf type of the events consumed.
pub const RECORD_CHANGED: &str = "sharedcare.events.v1.RecordChanged";

/// Records relationships from record events.
pub struct CareConsumer {
    store: Store,
}

impl CareConsumer {
    /// Applies into `store`.
    pub fn new(store: Store) -> Self {
        CareConsumer { store }
    }
}

fn decode(d: &Delivery) -> Option<(&Delivery, RecordChanged)> {
    if d.envelope.r#type != RECORD_CHANGED {
        return None;
    }
    match RecordChanged::decode(d.envelope.data.as_slice()) {
        Ok(e) if e.nhs_number.is_empty() => None,
        Ok(e) if !e.merged_into.is_empty() => Some((d, e)),
        Ok(e) if !e.care_kind.is_empty() && !e.care_organisation.is_empty() => Some((d, e)),
        Ok(_) => None,
        Err(e) => {
            tracing::error!(event_id = %d.envelope.id, error = %e, "undecodable RecordChanged skipped");
            None
        }
    }
}

#[async_trait::async_trait]
impl Handler for CareConsumer {
    async fn handle(&self, delivery: &Delivery) -> sharedcare_kit::Result<()> {
        self.handle_batch(std::slice::from_ref(delivery)).await
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> sharedcare_kit::Result<()> {
        let events: Vec<(&Delivery, RecordChanged)> = deliveries.iter().filter_map(decode).collect();
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .apply_care_events(&events)
            .await
            .map_err(sharedcare_kit::Error::apply(crate::NAME))?;
        Ok(())
    }
}
