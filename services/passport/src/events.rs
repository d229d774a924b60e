//! The consumer that keeps the read model: records' `RecordState` and consent's
//! `SharingState` events, applied in batches. An event that cannot be decoded is set aside
//! (logged and counted), never allowed to stop the consumer or hold back its neighbours.

use prost::Message;
use sharedcare_kit::bus::{Delivery, Handler};
use sharedcare_proto::events::v1::{RecordState, SharingState};

use crate::store::Store;

/// The `type` of records' state events.
pub const RECORD_STATE: &str = "sharedcare.events.v1.RecordState";
/// The `type` of consent's state events.
pub const SHARING_STATE: &str = "sharedcare.events.v1.SharingState";

/// Applies state events to the read model (one handler for both topics).
pub struct StateConsumer {
    store: Store,
    poison: prometheus_client::metrics::counter::Counter,
}

impl StateConsumer {
    /// The consumer writing to `store`, counting undecodable events on `poison`.
    pub fn new(store: Store, poison: prometheus_client::metrics::counter::Counter) -> Self {
        StateConsumer { store, poison }
    }

    fn decode<'a, M: Message + Default>(&self, d: &'a Delivery, kind: &str) -> Option<(&'a Delivery, M)> {
        if d.envelope.r#type != kind {
            return None;
        }
        match M::decode(d.envelope.data.as_slice()) {
            Ok(s) => Some((d, s)),
            Err(e) => {
                self.poison.inc();
                tracing::error!(event = %d.envelope.id, topic = %d.topic, offset = d.offset, error = %e, "undecodable {kind} set aside");
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
        let records: Vec<(&Delivery, RecordState)> =
            deliveries.iter().filter_map(|d| self.decode(d, RECORD_STATE)).collect();
        let sharing: Vec<(&Delivery, SharingState)> = deliveries
            .iter()
            .filter_map(|d| self.decode(d, SHARING_STATE))
            .collect();
        let apply = || sharedcare_kit::Error::apply(crate::NAME);
        self.store.apply(&records).await.map_err(apply())?;
        self.store.apply_sharing(&sharing).await.map_err(apply())?;
        Ok(())
    }
}
