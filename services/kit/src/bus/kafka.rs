//! The Kafka bus (rdkafka / librdkafka).
//!
//! Producer: `enable.idempotence=true` (which implies `acks=all` and ordered retries per
//! partition), keyed by the patient's NHS number so a patient's events stay in order.
//! Consumer: a consumer group with auto-commit off; an offset is committed only after the
//! handler returned `Ok`, i.e. after the consumer stored what it derived (with the event id in
//! its inbox, so a redelivery is recognised). Kafka transactions are not used.

use crate::config::Invalid;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Bus, Delivery, Handler, Outgoing};
use crate::{Error, Result};

/// Most messages handed to a handler at once.
const MAX_BATCH: usize = 256;

/// Kafka connection settings (`[kafka]` in the config file, `SHAREDCARE_KAFKA__*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port,host:port`). Empty = embedded bus.
    pub brokers: String,
    /// Prefix for every topic and consumer group name, so several environments can share a
    /// cluster: `staging` gives `staging.sharedcare.records.v1`. Letters, digits, `_` and `-`
    /// (the `.` separator is added). Empty by default.
    pub namespace: String,
    /// Partitions for topics this process creates.
    pub partitions: i32,
    /// Replication factor for topics this process creates (3 in production).
    pub replication_factor: i32,
    /// How long a message may wait for the broker before the outbox relay retries it.
    pub message_timeout_ms: u64,
    /// Producer batching delay (lower = lower latency, higher = more throughput).
    pub linger_ms: u64,
    /// Consumer group session timeout.
    pub session_timeout_ms: u64,
    /// How to reach the brokers: `plaintext`, `ssl` (TLS, with a client certificate for
    /// mTLS), `sasl_plaintext` or `sasl_ssl` (SASL over TLS: Strimzi's `scram-sha-512` listener).
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism: `SCRAM-SHA-512` (Strimzi's), `SCRAM-SHA-256` or `PLAIN`.
    pub sasl_mechanism: String,
    /// SASL user (Strimzi: the KafkaUser's name).
    pub sasl_username: String,
    /// SASL password (Strimzi: `password` in the KafkaUser's Secret). Keep it in a Secret and
    /// pass it as `SHAREDCARE_KAFKA__SASL_PASSWORD`.
    pub sasl_password: String,
    /// PEM file of the CA that signed the brokers' certificates (Strimzi: `ca.crt` of the
    /// `<cluster>-cluster-ca-cert` Secret). Empty = the system's CAs.
    pub ssl_ca_location: String,
    /// PEM client certificate and key for mTLS (Strimzi `tls` authentication: `user.crt` and
    /// `user.key` of the KafkaUser's Secret). Both or neither.
    pub ssl_certificate_location: String,
    /// See `ssl_certificate_location`.
    pub ssl_key_location: String,
}

/// How a client reaches the brokers (librdkafka's `security.protocol`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (a local broker).
    #[default]
    Plaintext,
    /// TLS; mutual TLS when a client certificate is set.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// The SASL mechanisms librdkafka is built with here.
const SASL_MECHANISMS: [&str; 3] = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            namespace: String::new(),
            partitions: 6,
            replication_factor: 1,
            message_timeout_ms: 30_000,
            linger_ms: 2,
            session_timeout_ms: 10_000,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            ssl_ca_location: String::new(),
            ssl_certificate_location: String::new(),
            ssl_key_location: String::new(),
        }
    }
}

impl KafkaConfig {
    /// The physical name of a topic or group: `namespace.name`, or `name` with no namespace.
    pub fn physical(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.namespace)
        }
    }

    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        let ns = &self.namespace;
        // Kafka topic names allow [a-zA-Z0-9._-] up to 249 characters; the `.` is ours.
        if !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') || ns.len() > 100 {
            return Err(Invalid::new(
                "kafka.namespace",
                format!(
                    "{ns:?}: expected up to 100 letters, digits, `_` or `-` (e.g. staging); topics are named namespace.sharedcare.<service>.v1"
                ),
            ));
        }
        if self.partitions < 1 {
            return Err(Invalid::new("kafka.partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            return Err(Invalid::new("kafka.replication_factor", "must be at least 1"));
        }
        Ok(())
    }

    /// Checks the SASL and TLS settings against `security_protocol`, naming the key of the
    /// first bad one. Run when a process connects ([`KafkaBus::new`]), not when the config is
    /// read: `sharedcare migrate` shares the config file but has no Kafka credentials.
    pub fn validate_security(&self) -> std::result::Result<(), Invalid> {
        let protocol = self.security_protocol;
        if protocol.sasl() {
            if !SASL_MECHANISMS.contains(&self.sasl_mechanism.as_str()) {
                return Err(Invalid::new(
                    "kafka.sasl_mechanism",
                    format!(
                        "{:?}: expected one of {}",
                        self.sasl_mechanism,
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            for (key, value) in [
                ("sasl_username", &self.sasl_username),
                ("sasl_password", &self.sasl_password),
            ] {
                if value.is_empty() {
                    return Err(Invalid::new(
                        format!("kafka.{key}"),
                        format!("is required when kafka.security_protocol is {}", protocol.as_str()),
                    ));
                }
            }
        } else if !self.sasl_username.is_empty() || !self.sasl_password.is_empty() {
            return Err(Invalid::new(
                "kafka.security_protocol",
                format!(
                    "is {}, which sends no SASL credentials: set sasl_plaintext or sasl_ssl to use kafka.sasl_username",
                    protocol.as_str()
                ),
            ));
        }
        let files = [
            ("ssl_ca_location", &self.ssl_ca_location),
            ("ssl_certificate_location", &self.ssl_certificate_location),
            ("ssl_key_location", &self.ssl_key_location),
        ];
        for (key, path) in files {
            if path.is_empty() {
                continue;
            }
            if !protocol.tls() {
                return Err(Invalid::new(
                    format!("kafka.{key}"),
                    format!(
                        "is set but kafka.security_protocol is {}, which uses no TLS",
                        protocol.as_str()
                    ),
                ));
            }
            if let Err(e) = std::fs::metadata(path) {
                return Err(Invalid::new(format!("kafka.{key}"), format!("{path}: {e}")));
            }
        }
        if self.ssl_certificate_location.is_empty() != self.ssl_key_location.is_empty() {
            return Err(Invalid::new(
                "kafka.ssl_key_location",
                "a client certificate and its key go together: set both ssl_certificate_location and ssl_key_location, or neither",
            ));
        }
        Ok(())
    }

    /// A librdkafka configuration with the brokers and the security settings.
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.security_protocol.as_str());
        if self.security_protocol.sasl() {
            c.set("sasl.mechanism", &self.sasl_mechanism)
                .set("sasl.username", &self.sasl_username)
                .set("sasl.password", &self.sasl_password);
        }
        for (key, value) in [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ] {
            if !value.is_empty() {
                c.set(key, value);
            }
        }
        c
    }
}

/// The producer's context: librdkafka reports a refused login only as a global error, and a
/// metadata request then fails as a transport failure. The context keeps the refusal so that
/// the health check can say why.
#[derive(Clone, Default)]
struct BusContext {
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl ClientContext for BusContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(error = %error, "librdkafka: {reason}");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
    }
}

impl BusContext {
    /// The last refused login, taken (a later success should not keep reporting it).
    fn take_refusal(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The bus on Apache Kafka.
#[derive(Clone)]
pub struct KafkaBus {
    config: KafkaConfig,
    client_id: String,
    producer: FutureProducer<BusContext>,
    context: BusContext,
}

impl KafkaBus {
    /// Creates the producer. Nothing is contacted yet: call [`Bus::health`] to check.
    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self> {
        config
            .validate_security()
            .map_err(|Invalid { key, reason }| Error::Config(format!("`{key}`: {reason}")))?;
        let context = BusContext::default();
        let producer: FutureProducer<BusContext> = config
            .client()
            .set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .set("partitioner", "murmur2_random")
            .create_with_context(context.clone())
            .map_err(|e| Error::Bus(format!("kafka producer for {}: {e}", config.brokers)))?;
        Ok(KafkaBus {
            config: config.clone(),
            client_id: client_id.to_string(),
            producer,
            context,
        })
    }

    /// The physical name of a topic or group: `namespace.name`, or the logical name alone.
    fn physical(&self, name: &str) -> String {
        self.config.physical(name)
    }

    /// Creates `topics` when they do not exist, with the configured partitions and replication.
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .config
            .client()
            .create()
            .map_err(|e| Error::Bus(format!("kafka admin client: {e}")))?;
        let topics: Vec<String> = topics.iter().map(|t| self.physical(t)).collect();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                let topic = NewTopic::new(
                    t,
                    self.config.partitions,
                    TopicReplication::Fixed(self.config.replication_factor),
                );
                // Read models are rebuilt from state topics: keep them whole.
                if super::is_state_topic(t) {
                    topic.set("retention.ms", "-1")
                } else {
                    topic
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(&new, &opts)
            .await
            .map_err(|e| Error::Bus(format!("create topics on {}: {e}", self.config.brokers)))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(Error::Bus(format!("create topic {topic}: {code}"))),
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, batch: &[Outgoing]) -> Result<()> {
        let mut pending = Vec::with_capacity(batch.len());
        let topics: Vec<String> = batch.iter().map(|m| self.physical(&m.topic)).collect();
        for (m, topic) in batch.iter().zip(&topics) {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "traceparent",
                    value: Some(m.traceparent.as_bytes()),
                })
                .insert(Header {
                    key: "ce_id",
                    value: Some(m.id.as_bytes()),
                });
            let mut record = FutureRecord::to(topic).key(&m.key).payload(&m.payload).headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(fut) => {
                        pending.push(fut);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(Error::Bus(format!("enqueue to {}: {e}", m.topic))),
                }
            }
        }
        for fut in pending {
            match fut.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Error::Bus(format!("kafka {}: {e}", self.config.brokers))),
                Err(_) => return Err(Error::Bus("kafka producer dropped a delivery".into())),
            }
        }
        Ok(())
    }

    async fn consume(
        &self,
        group: &str,
        topic: &str,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let (group, physical_topic) = (self.physical(group), self.physical(topic));
        let (group, topic) = (group.as_str(), physical_topic.as_str());
        let consumer: StreamConsumer = self
            .config
            .client()
            .set("client.id", &self.client_id)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.config.session_timeout_ms.to_string())
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| Error::Bus(format!("kafka consumer {group}: {e}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| Error::Bus(format!("subscribe {group} to {topic}: {e}")))?;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            let first = match first {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Take whatever else is already fetched, without waiting, as one batch.
            let mut messages = vec![first];
            while messages.len() < MAX_BATCH {
                match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                    Ok(Ok(m)) => messages.push(m),
                    _ => break,
                }
            }
            let mut batch = Vec::with_capacity(messages.len());
            let mut next: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
            for msg in &messages {
                let offset = msg.offset();
                next.insert(msg.partition(), offset + 1);
                match super::decode(msg.payload().unwrap_or_default(), topic, offset) {
                    Ok(mut envelope) => {
                        if envelope.traceparent.is_empty()
                            && let Some(h) = msg.headers().and_then(|h| h.iter().find(|h| h.key == "traceparent"))
                        {
                            envelope.traceparent = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                        }
                        batch.push(Delivery {
                            envelope,
                            topic: topic.to_string(),
                            partition: msg.partition(),
                            offset,
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "skipping undecodable event"),
                }
            }
            if !super::handle_with_retry(handler.as_ref(), &batch, &shutdown).await {
                break;
            }
            let mut positions = TopicPartitionList::new();
            for (partition, offset) in next {
                if let Err(e) = positions.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                    tracing::warn!(error = %e, topic, partition, "cannot record the offset to commit");
                }
            }
            if let Err(e) = consumer.commit(&positions, CommitMode::Async) {
                tracing::warn!(error = %e, topic, "offset commit failed; events may be redelivered");
            }
        }
        // Best effort: make the last positions durable before leaving the group.
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
        Ok(())
    }

    async fn extent(&self, topic: &str) -> Result<Vec<super::Extent>> {
        let producer = self.producer.clone();
        let physical = self.physical(topic);
        tokio::task::spawn_blocking(move || {
            let client = producer.client();
            let timeout = Duration::from_secs(10);
            let metadata = client
                .fetch_metadata(Some(&physical), timeout)
                .map_err(|e| Error::Bus(format!("metadata of {physical}: {e}")))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == physical)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            partitions
                .into_iter()
                .map(|partition| {
                    let (first, next) = client
                        .fetch_watermarks(&physical, partition, timeout)
                        .map_err(|e| Error::Bus(format!("watermarks of {physical}[{partition}]: {e}")))?;
                    Ok(super::Extent { partition, first, next })
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Bus(format!("kafka extent: {e}")))?
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<i64> {
        let (group, topic) = (self.physical(group), self.physical(topic));
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            // A client of its own that reads the group's committed offsets (OffsetFetch)
            // without joining the group.
            let reader: rdkafka::consumer::BaseConsumer = config
                .client()
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| Error::Bus(format!("kafka offsets reader for {group}: {e}")))?;
            let metadata = reader
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| Error::Bus(format!("metadata of {topic}: {e}")))?;
            let mut wanted = TopicPartitionList::new();
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    wanted.add_partition(&topic, p.id());
                }
            }
            let committed = reader
                .committed_offsets(wanted, timeout)
                .map_err(|e| Error::Bus(format!("committed offsets of {group} on {topic}: {e}")))?;
            let mut lag = 0;
            for e in committed.elements() {
                let (low, high) = reader
                    .fetch_watermarks(&topic, e.partition(), timeout)
                    .map_err(|err| Error::Bus(format!("watermarks of {topic}[{}]: {err}", e.partition())))?;
                let position = match e.offset() {
                    Offset::Offset(n) => n.max(low),
                    _ => low,
                };
                lag += (high - position).max(0);
            }
            Ok(lag)
        })
        .await
        .map_err(|e| Error::Bus(format!("kafka lag: {e}")))?
    }

    async fn health(&self) -> Result<()> {
        let (producer, context) = (self.producer.clone(), self.context.clone());
        let (brokers, user) = (self.config.brokers.clone(), self.config.sasl_username.clone());
        tokio::task::spawn_blocking(move || {
            let result = producer.client().fetch_metadata(None, Duration::from_secs(5));
            let refused = context.take_refusal();
            match (result, refused) {
                (Ok(_), _) => Ok(()),
                (Err(_), Some(reason)) => Err(Error::Bus(format!(
                    "kafka at {brokers} refused the login of kafka.sasl_username {user:?}: {reason}"
                ))),
                (Err(e), None) => Err(Error::Bus(format!("kafka at {brokers} is unreachable: {e}"))),
            }
        })
        .await
        .map_err(|e| Error::Bus(format!("kafka health check: {e}")))?
    }

    fn describe(&self) -> String {
        format!("kafka {}", self.config.brokers)
    }
}

#[cfg(test)]
mod tests {
    use super::{KafkaConfig, SecurityProtocol};

    #[test]
    fn a_namespace_is_joined_to_topic_names_with_a_dot() {
        let mut c = KafkaConfig::default();
        assert_eq!(c.physical("sharedcare.records.v1"), "sharedcare.records.v1");
        c.namespace = "chaos1".into();
        assert_eq!(c.physical("sharedcare.records.v1"), "chaos1.sharedcare.records.v1");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_namespace_kafka_could_not_name_a_topic_with_is_refused_by_key() {
        for bad in ["staging.", "a b", "env/1", "ünïcode"] {
            let c = KafkaConfig {
                namespace: bad.into(),
                ..KafkaConfig::default()
            };
            let invalid = c.validate().expect_err(bad);
            let (key, reason) = (invalid.key, invalid.reason);
            assert_eq!(key, "kafka.namespace");
            assert!(reason.contains("letters, digits"), "{reason}");
        }
    }

    #[test]
    fn sasl_and_tls_settings_are_checked_against_the_protocol_by_key() {
        let scram = KafkaConfig {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_username: "records".into(),
            sasl_password: "s3cret".into(),
            ..KafkaConfig::default()
        };
        assert_eq!(scram.validate_security(), Ok(()));
        let cases: [(KafkaConfig, &str, &str); 6] = [
            (
                KafkaConfig {
                    sasl_password: String::new(),
                    ..scram.clone()
                },
                "kafka.sasl_password",
                "required when kafka.security_protocol is sasl_ssl",
            ),
            (
                KafkaConfig {
                    sasl_mechanism: "GSSAPI".into(),
                    ..scram.clone()
                },
                "kafka.sasl_mechanism",
                "SCRAM-SHA-512",
            ),
            (
                KafkaConfig {
                    security_protocol: SecurityProtocol::Plaintext,
                    ..scram.clone()
                },
                "kafka.security_protocol",
                "sends no SASL credentials",
            ),
            (
                KafkaConfig {
                    security_protocol: SecurityProtocol::SaslPlaintext,
                    ssl_ca_location: "/etc/ssl/certs/ca-certificates.crt".into(),
                    ..scram.clone()
                },
                "kafka.ssl_ca_location",
                "uses no TLS",
            ),
            (
                KafkaConfig {
                    ssl_ca_location: "/nonexistent/ca.crt".into(),
                    ..scram.clone()
                },
                "kafka.ssl_ca_location",
                "/nonexistent/ca.crt",
            ),
            (
                KafkaConfig {
                    security_protocol: SecurityProtocol::Ssl,
                    sasl_username: String::new(),
                    sasl_password: String::new(),
                    ssl_certificate_location: "/proc/self/status".into(),
                    ..KafkaConfig::default()
                },
                "kafka.ssl_key_location",
                "go together",
            ),
        ];
        for (config, key, why) in cases {
            let crate::config::Invalid { key: k, reason } = config.validate_security().expect_err(key);
            assert_eq!(k, key, "{reason}");
            assert!(reason.contains(why), "{key}: {reason}");
        }
    }
}
