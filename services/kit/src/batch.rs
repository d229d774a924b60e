//! Group commit's one primitive: take what is waiting as one batch.

use tokio::sync::mpsc;

/// Waits for the first item, then takes whatever else is already queued, up to `max` in all.
/// `None` once every sender is gone and the queue is empty.
pub async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// [`next_batch`] for items of different sizes: waits for the first item, then takes what
/// is already queued while the sizes (`weight`) taken add up to less than `max`. The last item
/// taken may carry the total past `max` (an item is never split or put back); one item larger
/// than `max` is a batch of its own.
pub async fn next_batch_weighed<T>(
    rx: &mut mpsc::Receiver<T>,
    max: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut total = weight(&first);
    let mut batch = vec![first];
    while total < max {
        match rx.try_recv() {
            Ok(item) => {
                total += weight(&item);
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn weighed_batches_stop_once_the_sizes_reach_the_limit() {
        let (tx, mut rx) = mpsc::channel(16);
        for n in [3usize, 2, 4, 10, 1] {
            tx.send(n).await.expect("send");
        }
        let size = |n: &usize| *n;
        // 3 + 2 < 8, so the 4 is taken too (9): an item is never put back.
        assert_eq!(next_batch_weighed(&mut rx, 8, size).await, Some(vec![3, 2, 4]));
        // Larger than the limit alone: a batch of its own.
        assert_eq!(next_batch_weighed(&mut rx, 8, size).await, Some(vec![10]));
        assert_eq!(next_batch_weighed(&mut rx, 8, size).await, Some(vec![1]));
        drop(tx);
        assert_eq!(next_batch_weighed(&mut rx, 8, size).await, None);
    }

    #[tokio::test]
    async fn takes_what_is_queued_up_to_the_limit_then_ends_when_closed() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.send(i).await.expect("send");
        }
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![3, 4]));
        drop(tx);
        assert_eq!(next_batch(&mut rx, 3).await, None);
    }
}
