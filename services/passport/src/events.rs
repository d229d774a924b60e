//! The consumer that keeps the read model: records' `RecordState` events, applied in batches.
//! An event that cannot be decoded is set aside (logged and counted), never allowed to stop
//! the consumer or hold back its neighbours.

use prost::Message;
use sharedcare_kit::bus::{Delivery, Handler};
use sharedcare_proto::events::v1::RecordState;

use crate::store::Store;

/// The `type` of the events this consumer applies.
pub const RECORD_STATE: &str = "sharedcare.events.v1.RecordState";

/// Applies `RecordState` events to the read model.
pub struct StateConsumer {
    store: Store,
    poison: prometheus_client::metrics::counter::Counter,
}

impl StateConsumer {
    /// The consumer writing to `store`, counting undecodable events on `poison`.
    pub fn new(store: Store, poison: prometheus_client::metrics::counter::Counter) -> Self {
        StateConsumer { store, poison }
    }

    fn decode<'a>(&self, d: &'a Delivery) -> Option<(&'a Delivery, RecordState)> {
        if d.envelope.r#type != RECORD_STATE {
            return None;
        }
        match RecordState::decode(d.envelope.data.as_slice()) {
            Ok(s) => Some((d, s)),
            Err(e) => {
                self.poison.inc();
                tracing::error!(event = %d.envelope.id, offset = d.offset, error = %e, "undecodable RecordState set aside");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for StateConsumer {
    async fn handle(&self, delivery: &Delivery) -> sharedcare_kit::Result<()> {
        self.handle_batch(std::slice::from_ref(delivery)).await
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> sharedcare_kit::Result<()> {
        let events: Vec<(&Delivery, RecordState)> = deliveries.iter().filter_map(|d| self.decode(d)).collect();
        self.store
            .apply(&events)
            .await
            .map_err(sharedcare_kit::Error::apply(crate::NAME))?;
        Ok(())
    }
}
