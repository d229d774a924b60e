//! Shared helpers: real back ends from the environment.

use std::time::Duration;

use sharedcare_kit::bus::kafka::{KafkaBus, KafkaConfig};
use sharedcare_kit::db::Db;

/// The Postgres URL the test command exported.
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("TEST_POSTGRES_URL is not set: run `infra/postgres.sh start` and export TEST_POSTGRES_URL=$(infra/postgres.sh url), or use the README's test command")
    })
}

/// The Kafka bootstrap servers the test command exported.
pub fn kafka_brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("TEST_KAFKA_BROKERS is not set: run `infra/kafka.sh start` and export TEST_KAFKA_BROKERS=127.0.0.1:19092, or use the README's test command")
    })
}

/// A unique lowercase name for schemas, topics and groups.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap_or("x"))
}

/// A fresh SQLite database in a temporary directory (kept alive by the returned guard).
pub async fn sqlite_db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sharedcare_kit::db::sqlite_url(dir.path(), "kit_test");
    let db = Db::connect(&url, "kit_test", 4, Duration::from_secs(5)).await.expect("sqlite");
    (db, dir)
}

/// A fresh Postgres schema of its own on the test server.
pub async fn postgres_db() -> Db {
    let schema = unique("kit_test");
    Db::connect(&postgres_url(), &schema, 4, Duration::from_secs(5)).await.expect("postgres (is infra/postgres.sh running?)")
}

/// A Kafka bus on the test broker, namespaced so tests never see each other's topics.
pub fn kafka_bus() -> (KafkaBus, KafkaConfig) {
    let config = KafkaConfig { brokers: kafka_brokers(), namespace: format!("{}.", unique("t")), ..KafkaConfig::default() };
    (KafkaBus::new(&config, "kit-tests").expect("kafka producer"), config)
}

/// Waits until `cond` holds, polling, or panics with `what` after `timeout`.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
