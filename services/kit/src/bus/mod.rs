//! The event bus: one trait, two implementations.
//!
//! - [`kafka::KafkaBus`]: Apache Kafka through rdkafka — idempotent producer with `acks=all`,
//!   consumer groups that commit an offset only after the handler has stored what it derived.
//! - [`embedded::EmbeddedBus`]: an append-only log in a SQLite file under the data directory,
//!   for `sharedcare up`; the same contract in one process.
//!
//! The contract: at-least-once, nothing lost, order kept per key (the patient's NHS number).
//! Producers never call [`Bus::publish`] directly: they write to the [`crate::outbox`] in the
//! transaction that changes their state, and its relay publishes. Consumers deduplicate by
//! event id with [`crate::inbox`].

pub mod embedded;
pub mod kafka;
pub mod measured;

use std::sync::Arc;

use prost::Message;
use tokio_util::sync::CancellationToken;

pub use sharedcare_proto::events::v1::Envelope;

use crate::{Error, Result};

/// The topic a service produces to: `sharedcare.<service>.v1`.
pub fn topic(service: &str) -> String {
    format!("sharedcare.{service}.v1")
}

/// Whether `topic` is a state-transfer topic (`sharedcare.<service>.state.v1`): the state
/// read models are built from, so kept for as long as the bus runs (a rebuild replays it
/// whole), where other topics are kept for the configured retention.
pub fn is_state_topic(topic: &str) -> bool {
    topic.ends_with(STATE_TOPIC_SUFFIX)
}

/// How every state-transfer topic's name ends.
pub const STATE_TOPIC_SUFFIX: &str = ".state.v1";

/// An encoded envelope ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The envelope's event id.
    pub id: String,
    /// Destination topic.
    pub topic: String,
    /// Partition key (NHS number where there is one).
    pub key: String,
    /// W3C trace context, also sent as a Kafka header.
    pub traceparent: String,
    /// The protobuf-encoded [`Envelope`].
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// Encodes `envelope` for `topic`.
    pub fn new(topic: &str, envelope: &Envelope) -> Self {
        Outgoing {
            id: envelope.id.clone(),
            topic: topic.to_string(),
            key: envelope.key.clone(),
            traceparent: envelope.traceparent.clone(),
            payload: envelope.encode_to_vec(),
        }
    }
}

/// A message handed to a consumer, with where it came from.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The decoded envelope.
    pub envelope: Envelope,
    /// The topic it was read from.
    pub topic: String,
    /// Kafka partition (0 on the embedded bus).
    pub partition: i32,
    /// Offset within the partition (log sequence on the embedded bus).
    pub offset: i64,
}

/// Builds an envelope for `message` of protobuf type `type_name`, stamped with a new id,
/// the current time and the current trace context.
pub fn envelope<M: Message>(type_name: &str, source: &str, subject: &str, key: &str, message: &M) -> Envelope {
    Envelope {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: type_name.to_string(),
        source: source.to_string(),
        time: Some(crate::db::timestamp(crate::db::now_us())),
        subject: subject.to_string(),
        traceparent: crate::telemetry::current_traceparent(),
        data: message.encode_to_vec(),
        key: key.to_string(),
    }
}

/// Applies delivered events. Returning `Err` means "not applied": the bus retries the same
/// message (with back-off) and does not move the consumer's position past it.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies one delivery; must be idempotent by `delivery.envelope.id`.
    async fn handle(&self, delivery: &Delivery) -> Result<()>;

    /// Applies deliveries in order. The default applies them one by one; a handler that can
    /// store a batch in one transaction should override it.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<()> {
        for d in deliveries {
            self.handle(d).await?;
        }
        Ok(())
    }
}

/// One partition's retained range: messages at offsets `first..next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Partition (0 on the embedded bus).
    pub partition: i32,
    /// The oldest retained message's offset.
    pub first: i64,
    /// The offset the next message will get.
    pub next: i64,
}

impl Extent {
    /// The partition holds no message.
    pub fn is_empty(&self) -> bool {
        self.next <= self.first
    }
}

/// Publishes and consumes events. See the module docs for the delivery contract.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `batch`, keeping order per key; returns `Ok` only once every message is
    /// durably accepted (Kafka: acknowledged by all in-sync replicas).
    async fn publish(&self, batch: &[Outgoing]) -> Result<()>;

    /// Consumes `topic` as consumer group `group` until `shutdown`, calling `handler` for each
    /// message and recording the position only after it returns `Ok`.
    async fn consume(
        &self,
        group: &str,
        topic: &str,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<()>;

    /// Where each partition of `topic` starts and ends now: `(partition, first retained offset,
    /// next offset)`; equal when the partition holds nothing. Replays (a read model's rebuild)
    /// use it to know when they have caught up.
    async fn extent(&self, topic: &str) -> Result<Vec<Extent>>;

    /// How many events of `topic` consumer group `group` has not yet applied: each
    /// partition's end against the group's committed position (the whole retained partition
    /// when the group has committed nothing there). For the consumer-lag metric.
    async fn lag(&self, group: &str, topic: &str) -> Result<i64>;

    /// Checks the bus can be reached (for start-up and `/readyz`).
    async fn health(&self) -> Result<()>;

    /// A short description for logs, e.g. "kafka 127.0.0.1:9092".
    fn describe(&self) -> String;
}

/// Calls `handler` with `batch` until it succeeds or `shutdown` fires, backing off between
/// attempts. Returns `false` when shutdown interrupted it (the batch stays unacknowledged).
///
/// Each message gets a `"<topic> process"` span that continues its producer's trace (from the
/// envelope's `traceparent`) and covers the time its batch was being applied.
pub(crate) async fn handle_with_retry(handler: &dyn Handler, batch: &[Delivery], shutdown: &CancellationToken) -> bool {
    use tracing::Instrument;
    let spans: Vec<tracing::Span> = batch
        .iter()
        .map(|d| {
            let span = tracing::info_span!(
                "consume",
                otel.name = %format!("{} process", d.topic),
                otel.kind = "consumer",
                messaging.system = "sharedcare",
                messaging.destination.name = %d.topic,
                messaging.message.id = %d.envelope.id,
                event.r#type = %d.envelope.r#type,
            );
            crate::telemetry::set_parent(&span, &d.envelope.traceparent);
            span
        })
        .collect();
    let work = tracing::info_span!("apply batch", messages = batch.len());
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        match handler.handle_batch(batch).instrument(work.clone()).await {
            Ok(()) => {
                drop(spans);
                return true;
            }
            Err(e) => {
                tracing::warn!(parent: &work, error = %e, "handler failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Decodes a payload into an envelope, naming the topic and offset on failure.
pub(crate) fn decode(payload: &[u8], topic: &str, offset: i64) -> Result<Envelope> {
    Envelope::decode(payload).map_err(|e| Error::Bus(format!("undecodable event at {topic}@{offset}: {e}")))
}
