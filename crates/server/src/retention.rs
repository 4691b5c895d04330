//! What a long-running server removes as it ages: saved idempotency answers past
//! their key's lifetime, and outbox events past the event retention.
//!
//! Events are removed by position, not by their `created` time (an event made on a
//! test clock carries the clock's time, which may be years in the past): each sweep
//! marks the newest event's position with the real time, and removes the events at or
//! before the newest mark older than the retention — but none that a webhook endpoint
//! still needs: nothing past the point up to which every enabled endpoint's deliverer
//! is done with its events and has removed their delivery logs
//! (`webhook/<endpoint>/swept`), unless the events are twice the retention old.

use std::sync::Arc;
use std::time::Duration;

use offsession_core::{Store, StoreError};

use crate::idempotency::sweep_answers;

/// Where the marks are kept: `[[real time ms, newest position], …]`, oldest first.
const MARKS_KEY: &str = "outbox/marks";

/// How long what a server keeps lasts.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Saved answers of the POSTs other than a create (the idempotency keys' life).
    pub answers: Duration,
    /// Outbox events, from when they were stored.
    pub events: Duration,
    /// Time between sweeps.
    pub every: Duration,
    /// The webhook endpoints of the configuration (those made through the API are read
    /// from the store at each sweep).
    pub endpoints: Vec<String>,
}

/// The ids of the enabled webhook endpoints: the configuration's and the API's.
async fn live_endpoints(
    store: &dyn Store,
    configured: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut ids = configured.to_vec();
    ids.extend(
        crate::destinations::enabled(store)
            .await?
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_owned)),
    );
    Ok(ids)
}

/// The position up to which every one of `endpoints` has been swept (`u64::MAX` when
/// there are none), and the endpoint furthest behind.
async fn swept_by_all(
    store: &dyn Store,
    endpoints: &[String],
) -> Result<(u64, Option<String>), StoreError> {
    let mut lowest = (u64::MAX, None);
    for id in endpoints {
        let swept = store
            .load_state(&crate::webhooks::swept_key(id))
            .await?
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0);
        if swept < lowest.0 {
            lowest = (swept, Some(id.clone()));
        }
    }
    Ok(lowest)
}

/// Marks the outbox's newest position at `now` (real time, ms) and removes the events
/// at or before the newest mark at least `keep` old that every one of `endpoints` is
/// done with (or that are `2 × keep` old); returns how many were removed. Instances
/// sweeping at once may each skip saving the marks (a compare-and-set); the next sweep
/// marks again.
pub(crate) async fn sweep_events(
    store: &dyn Store,
    now: i64,
    keep: Duration,
    endpoints: &[String],
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
    let through_at = |age: i64| {
        let cutoff = now.saturating_sub(age);
        marks
            .iter()
            .rev()
            .find(|&&(at, _)| at <= cutoff)
            .map(|&(_, position)| position)
    };
    let keep_ms = keep.as_millis() as i64;
    let (swept, lagging) = swept_by_all(store, endpoints).await?;
    let hard = through_at(2 * keep_ms);
    let through = match through_at(keep_ms) {
        Some(due) if due > swept => match (hard.filter(|&h| h > swept), &lagging) {
            (Some(hard), Some(endpoint)) => {
                tracing::warn!(endpoint = %endpoint, "events twice the retention old are removed although this webhook endpoint has not been sent them");
                Some(hard)
            }
            _ => Some(swept).filter(|&s| s > 0),
        },
        due => due,
    };
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
        let events = async {
            let endpoints = live_endpoints(store.as_ref(), &retention.endpoints).await?;
            // Read after the endpoints, so that a mark is not stamped earlier than the
            // newest event it marks was stored.
            let now = engine.now().as_millis();
            sweep_events(store.as_ref(), now, retention.events, &endpoints).await
        };
        match events.await {
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
        assert_eq!(sweep_events(&store, 0, keep, &[]).await.unwrap(), 0);
        let (record, event) = create(2);
        store.create(&record, None, &[event]).await.unwrap();
        assert_eq!(sweep_events(&store, 10 * hour, keep, &[]).await.unwrap(), 0);
        // A day after the first mark, not yet: 23 h 59 min.
        assert_eq!(
            sweep_events(&store, 24 * hour - 60_000, keep, &[])
                .await
                .unwrap(),
            0
        );
        // A day after: the two events of hour 0 go, the third stays.
        assert_eq!(sweep_events(&store, 24 * hour, keep, &[]).await.unwrap(), 2);
        let kept = store.events_after(0, 10).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].event.id, "evt_2");
        // A day after hour 10: the third goes.
        assert_eq!(sweep_events(&store, 34 * hour, keep, &[]).await.unwrap(), 1);
        assert!(store.events_after(0, 10).await.unwrap().is_empty());
        assert_eq!(sweep_events(&store, 60 * hour, keep, &[]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn events_an_endpoint_still_needs_stay_until_twice_the_retention() {
        let store = offsession_store::MemoryStore::with_outbox();
        let hour: i64 = 3_600_000;
        let keep = Duration::from_secs(24 * 3_600);
        for i in 0..3 {
            let record = sample_record(&format!("osp_{i}"), 1_000, None);
            let event = sample_event(
                &record,
                &format!("evt_{i}"),
                offsession_core::EventType::Created,
            );
            store.create(&record, None, &[event]).await.unwrap();
        }
        let all = store.events_after(0, 10).await.unwrap();
        let endpoints = ["we_1".to_owned()];
        assert_eq!(sweep_events(&store, 0, keep, &endpoints).await.unwrap(), 0);
        // A day on: the endpoint has swept nothing yet, so nothing goes.
        assert_eq!(
            sweep_events(&store, 25 * hour, keep, &endpoints)
                .await
                .unwrap(),
            0
        );
        // Its sweep passed the first event: that one goes.
        store
            .save_state("webhook/we_1/swept", &all[0].sequence.to_string())
            .await
            .unwrap();
        assert_eq!(
            sweep_events(&store, 26 * hour, keep, &endpoints)
                .await
                .unwrap(),
            1
        );
        // Twice the retention on, the rest go although the endpoint lags.
        assert_eq!(
            sweep_events(&store, 48 * hour, keep, &endpoints)
                .await
                .unwrap(),
            2
        );
        assert!(store.events_after(0, 10).await.unwrap().is_empty());
    }
}
