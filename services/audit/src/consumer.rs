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
        if delivery.envelope.r#type != ACCESS_RECORDED {
            return Ok(());
        }
        let event = match AccessRecorded::decode(delivery.envelope.data.as_slice()) {
            Ok(e) => e,
            Err(e) => {
                // A malformed event can never be applied; retrying would block the partition.
                tracing::error!(event_id = %delivery.envelope.id, error = %e, "undecodable AccessRecorded skipped");
                return Ok(());
            }
        };
        let appended = self.store.append(delivery, &event).await?;
        tracing::debug!(event_id = %delivery.envelope.id, appended, "audit entry");
        Ok(())
    }
}
