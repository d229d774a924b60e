//! The kit's conformance suites, each run against every back end:
//! storage (outbox + inbox) on SQLite and Postgres, the bus on the embedded log and Kafka.
//!
//! Postgres and Kafka come from `infra/` (the README's test command starts them) through
//! `TEST_POSTGRES_URL` and `TEST_KAFKA_BROKERS`; without them these tests fail and say how to
//! start them.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

mod bus_suite;
mod store_suite;
