//! The consumer inbox: idempotent consumption by event id.
//!
//! A consumer calls [`claim`] inside the transaction that stores what it derives from an
//! event. The claim and the derived state commit together, so an event redelivered after a
//! crash (or a rebalance) is recognised and skipped, and the stored topic/partition/offset
//! records how far the consumer's state goes.

use sqlx::AnyConnection;

use crate::bus::Delivery;

/// Records that `consumer` applied `delivery`; `false` when it already had (skip it).
pub async fn claim(conn: &mut AnyConnection, consumer: &str, delivery: &Delivery) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO kit_inbox (consumer, event_id, topic, partition_no, event_offset, applied_us)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(&delivery.envelope.id)
    .bind(&delivery.topic)
    .bind(delivery.partition)
    .bind(delivery.offset)
    .bind(crate::db::now_us())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
