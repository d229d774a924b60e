//! Helpers for tests against the real back ends the test command starts (`infra/test.sh`):
//! Postgres through `TEST_POSTGRES_URL`, Kafka through `TEST_KAFKA_BROKERS`. Without them the
//! helpers panic with the command that starts them — tests never skip silently. Built only with
//! the `testing` feature, which services enable for their tests alone.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::time::Duration;

use crate::bus::kafka::{KafkaBus, KafkaConfig};
use crate::db::Db;

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
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// A fresh SQLite database in a temporary directory (kept alive by the returned guard).
pub async fn sqlite_db(service: &str) -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = crate::db::sqlite_url(dir.path(), service);
    let db = Db::connect(&url, service, 4, Duration::from_secs(5))
        .await
        .expect("sqlite");
    (db, dir)
}

/// A fresh Postgres schema of its own on the test server.
pub async fn postgres_db(service: &str) -> Db {
    let schema = unique(service);
    Db::connect(&postgres_url(), &schema, 4, Duration::from_secs(5))
        .await
        .expect("postgres (is infra/postgres.sh running?)")
}

/// A Kafka bus on the test broker, namespaced so tests never see each other's topics.
pub fn kafka_bus() -> (KafkaBus, KafkaConfig) {
    let config = KafkaConfig {
        brokers: kafka_brokers(),
        namespace: unique("t"),
        ..KafkaConfig::default()
    };
    (KafkaBus::new(&config, "tests").expect("kafka producer"), config)
}

/// Waits until `cond` holds, polling, or panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Instantiates a storage suite: each `async fn name(db: Db)` becomes a test on SQLite and
/// a test on Postgres (modules `sqlite` and `postgres`), each on a fresh database.
#[macro_export]
macro_rules! store_suite {
    ($service:expr; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (db, _dir) = $crate::testing::sqlite_db($service).await;
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::testing::postgres_db($service).await).await;
                }
            )*
        }
    };
}
