//! What a long-running server removes as it ages: saved idempotency answers past
//! their key's lifetime, and outbox events past the event retention.
//!
//! Events are removed by position, not by their `created` time (an event made on a
//! test clock carries the clock's time, which may be years in the past): each sweep
//! marks the newest event's position with the real time, and removes the events at or
//! before the newest mark older than the retention.

use std::sync::Arc;
use std::time::Duration;

use offsession_core::{Store, StoreError};

use crate::idempotency::sweep_answers;

/// Where the marks are kept: `[[real time ms, newest position], …]`, oldest first.
const MARKS_KEY: &str = "outbox/marks";

/// How long what a server keeps lasts.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Saved answers of the POSTs other than a create (the idempotency keys' life).
    pub answers: Duration,
    /// Outbox events, from when they were stored.
    pub events: Duration,
    /// Time between sweeps.
    pub every: Duration,
}

/// Marks the outbox's newest position at `now` (real time, ms) and removes the events
/// at or before the newest mark at least `keep` old; returns how many were removed.
/// Instances sweeping at once may each skip saving the marks (a compare-and-set);
/// the next sweep marks again.
pub(crate) async fn sweep_events(
    store: &dyn Store,
    now: i64,
    keep: Duration,
) -> Result<u64, StoreError> {
    let saved = store.load_state(MARKS_KEY).await?;
    let mut marks: Vec<(i64, u64)> = saved
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let newest = store.newest_event_sequence().await?;
    if marks.last().is_none_or(|&(_, position)| position < newest) {
        marks.push((now, newest));
    }
    let cutoff = now.saturating_sub(keep.as_millis() as i64);
    let through = marks
        .iter()
        .rev()
        .find(|&&(at, _)| at <= cutoff)
        .map(|&(_, position)| position);
    let mut removed = 0;
    if let Some(through) = through {
        removed = store.remove_events_through(through).await?;
        marks.retain(|&(_, position)| position > through);
    }
    let text = serde_json::to_string(&marks).unwrap_or_else(|_| "[]".into());
    store.swap_state(MARKS_KEY, saved.as_deref(), &text).await?;
    Ok(removed)
}

/// Sweeps every `retention.every` until `stop`; each `serve` instance runs it.
pub async fn sweep_forever(
    store: Arc<dyn Store>,
    engine: offsession_orchestrator::Engine,
    retention: Retention,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let now = engine.now().as_millis();
        match sweep_answers(store.as_ref(), now, retention.answers).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "expired idempotency answers removed"),
            Err(err) => tracing::warn!(error = %err, "removing expired idempotency answers failed"),
        }
        match sweep_events(store.as_ref(), now, retention.events).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, "events past the retention removed from the outbox")
            }
            Err(err) => tracing::warn!(error = %err, "removing old events failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(retention.every) => {}
            () = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsession_store::conformance::{sample_event, sample_record};

    #[tokio::test]
    async fn events_go_a_retention_after_they_were_stored_whatever_their_created_time() {
        let store = offsession_store::MemoryStore::with_outbox();
        let hour: i64 = 3_600_000;
        let keep = Duration::from_secs(24 * 3_600);
        let create = |i: usize| {
            let record = sample_record(&format!("osp_{i}"), 1_000, None);
            let event = sample_event(
                &record,
                &format!("evt_{i}"),
                offsession_core::EventType::Created,
            );
            (record, event)
        };
        // Two events stored at hour 0 (their `created` is whatever the sample says),
        // one at hour 10.
        for i in 0..2 {
            let (record, event) = create(i);
            store.create(&record, None, &[event]).await.unwrap();
        }
        assert_eq!(sweep_events(&store, 0, keep).await.unwrap(), 0);
        let (record, event) = create(2);
        store.create(&record, None, &[event]).await.unwrap();
        assert_eq!(sweep_events(&store, 10 * hour, keep).await.unwrap(), 0);
        // A day after the first mark, not yet: 23 h 59 min.
        assert_eq!(
            sweep_events(&store, 24 * hour - 60_000, keep)
                .await
                .unwrap(),
            0
        );
        // A day after: the two events of hour 0 go, the third stays.
        assert_eq!(sweep_events(&store, 24 * hour, keep).await.unwrap(), 2);
        let kept = store.events_after(0, 10).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].event.id, "evt_2");
        // A day after hour 10: the third goes.
        assert_eq!(sweep_events(&store, 34 * hour, keep).await.unwrap(), 1);
        assert!(store.events_after(0, 10).await.unwrap().is_empty());
        assert_eq!(sweep_events(&store, 60 * hour, keep).await.unwrap(), 0);
    }
}
