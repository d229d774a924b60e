//! Applies `AccessRecorded` events to the log. Other event types on audited topics are
//! acknowledged and ignored.

use prost::Message;
use sharedcare_kit::bus::{Delivery, Handler};
use sharedcare_proto::events::v1::AccessRecorded;

use crate::store::Store;

/// The protobuf type name of the events this consumer appends.
pub const ACCESS_RECORDED: &str = "sharedcare.events.v1.AccessRecorded";

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
        let events: Vec<(&Delivery, AccessRecorded)> = deliveries.iter().filter_map(decode).collect();
        let appended = self.store.append_all(&events).await?;
        tracing::debug!(received = deliveries.len(), appended, "audit entries");
        Ok(())
    }
}

/// The `AccessRecorded` in a delivery; other event types are acknowledged and ignored, and a
/// malformed event is skipped with an error log (it can never be applied; retrying would
/// block the partition).
fn decode(delivery: &Delivery) -> Option<(&Delivery, AccessRecorded)> {
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
