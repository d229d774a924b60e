//! The consumer inbox: idempotent consumption by event id.
//!
//! A consumer calls [`claim`] inside the transaction that stores what it derives from an
//! event. The claim and the derived state commit together, so an event redelivered after a
//! crash (or a rebalance) is recognised and skipped, and the stored topic/partition/offset
//! records how far the consumer's state goes.

use crate::bus::Delivery;
use crate::db::Tx;

/// Records that `consumer` applied `delivery`; `false` when it already had (skip it).
pub async fn claim(tx: &mut Tx, consumer: &str, delivery: &Delivery) -> Result<bool, sqlx::Error> {
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
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims a batch of deliveries in as few statements as it takes; returns the positions in
/// `deliveries` of those new for `consumer`, in order, **each event once**: a batch can hold
/// one event twice (a producer that resent it after an acknowledgement was lost, both copies
/// landing in one fetch), and only its first copy is to be applied. The rest were applied
/// before (or are such second copies): skip them.
pub async fn claim_fresh(tx: &mut Tx, consumer: &str, deliveries: &[&Delivery]) -> Result<Vec<usize>, sqlx::Error> {
    let mut out = Vec::new();
    for (c, chunk) in deliveries.chunks(crate::db::MAX_ROWS_PER_INSERT).enumerate() {
        let mut fresh = claim_chunk(tx, consumer, chunk).await?;
        let base = c * crate::db::MAX_ROWS_PER_INSERT;
        // `remove`, not `contains`: a second copy in the batch finds its id taken.
        out.extend(
            chunk
                .iter()
                .enumerate()
                .filter(|(_, d)| fresh.remove(&d.envelope.id))
                .map(|(i, _)| base + i),
        );
    }
    Ok(out)
}

/// Claims at most [`crate::db::MAX_ROWS_PER_INSERT`] in one statement; the event ids new for
/// `consumer`.
async fn claim_chunk(
    tx: &mut Tx,
    consumer: &str,
    deliveries: &[&Delivery],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    if deliveries.is_empty() {
        return Ok(Default::default());
    }
    let sql = tx.backend().insert_rows(
        "kit_inbox (consumer, event_id, topic, partition_no, event_offset, applied_us)",
        6,
        deliveries.len(),
        "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
    );
    let now = crate::db::now_us();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for d in deliveries {
        q = q
            .bind(consumer.to_string())
            .bind(d.envelope.id.clone())
            .bind(d.topic.clone())
            .bind(d.partition)
            .bind(d.offset)
            .bind(now);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    rows.into_iter()
        .map(|r| sqlx::Row::try_get::<String, _>(&r, 0))
        .collect()
}
