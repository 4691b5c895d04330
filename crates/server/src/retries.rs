//! Webhook deliveries waiting for another try, kept in the store: an event its
//! endpoint refused does not hold up the endpoint's later events (the cursor moves
//! past it once its retry is filed), and its retries and give-up clock survive
//! restarts and the endpoint moving to another instance.
//!
//! A retry is engine state `webhook/<endpoint>/retry/<next try, Unix ms>/<sequence>`,
//! so the due ones come first in key order.

use std::time::Duration;

use futures::StreamExt;
use offsession_core::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::webhooks::{
    metrics_delivered, record_attempt, send_once, DeliverySettings, WebhookEndpoint,
};

/// Retries read (and at most sent) per pass.
const PASS: usize = 100;

/// A delivery waiting for its next try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// The event, and its place in the outbox.
    pub event_id: String,
    pub sequence: u64,
    /// The thin event as sent (signed afresh at each try).
    pub payload: String,
    /// Its type, checked against the endpoint's `enabled_events` at each try.
    #[serde(default)]
    pub event_type: String,
    /// The first try, Unix milliseconds: the give-up clock.
    pub first_at: i64,
    /// Tries so far.
    pub tries: u64,
}

pub(crate) fn prefix(endpoint_id: &str) -> String {
    format!("webhook/{endpoint_id}/retry/")
}

/// Whether the endpoint has a retry filed for the event at `sequence`.
pub(crate) async fn is_filed(
    store: &dyn Store,
    endpoint_id: &str,
    sequence: u64,
) -> Result<bool, StoreError> {
    let suffix = format!("/{sequence:020}");
    Ok(store
        .list_state(&prefix(endpoint_id))
        .await?
        .iter()
        .any(|(key, _)| key.ends_with(&suffix)))
}

fn key(endpoint_id: &str, next_at: i64, sequence: u64) -> String {
    format!(
        "{}{:020}/{sequence:020}",
        prefix(endpoint_id),
        next_at.max(0)
    )
}

/// The next try's time in a retry's key.
fn next_at_of(key: &str, prefix: &str) -> Option<i64> {
    key.strip_prefix(prefix)?.split('/').next()?.parse().ok()
}

/// The wall clock, Unix milliseconds: retries are timed on it (as the delivery logs
/// are), so that instances sharing the store agree on them.
pub(crate) fn now_ms() -> i64 {
    use offsession_core::Clock;
    offsession_core::SystemClock.now().as_millis()
}

/// The wait after `tries` tries: `first_backoff`, doubling, at most `max_backoff`.
pub(crate) fn backoff(settings: &DeliverySettings, tries: u64) -> Duration {
    let doublings = tries.saturating_sub(1).min(30) as u32;
    settings
        .first_backoff
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(settings.max_backoff)
}

/// Files `pending`'s next try, then removes its previous entry `old` (key and text)
/// if it is still as read. When it is not (another instance sharing the endpoint
/// during a change of owner moved it first), the new entry is removed again, so an
/// event keeps one entry; a stop between the two leaves it filed twice, sent twice at
/// worst (deliveries are at least once).
async fn file(
    store: &dyn Store,
    endpoint_id: &str,
    pending: &Pending,
    next_at: i64,
    old: Option<(&str, &str)>,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(pending).unwrap_or_default();
    let new = key(endpoint_id, next_at, pending.sequence);
    if old.is_some_and(|(old, _)| old == new) {
        return Ok(());
    }
    // Only where nothing is filed. Another instance may have filed the same next try
    // a moment ago (the same millisecond): that entry is then the event's one, and
    // that instance removes the old entry.
    if !store.swap_state(&new, None, &text).await? {
        return Ok(());
    }
    if let Some((old, old_text)) = old {
        if !store.remove_state_if(old, old_text).await? {
            store.remove_state_if(&new, &text).await?;
        }
    }
    Ok(())
}

/// A first try was not accepted: files the event's retry, trying until it is saved
/// (the caller moves the cursor past the event next).
pub(crate) async fn file_first_retry(
    store: &dyn Store,
    endpoint_id: &str,
    pending: Pending,
    settings: &DeliverySettings,
) {
    let next_at = now_ms().saturating_add(backoff(settings, 1).as_millis() as i64);
    while let Err(err) = file(store, endpoint_id, &pending, next_at, None).await {
        tracing::warn!(endpoint = %endpoint_id, error = %err, "filing a webhook retry failed");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sends the retries due now, `concurrency` at a time, up to [`PASS`] of them;
/// returns how many it settled (removed or filed again): a store that cannot be
/// written leaves them due, and the caller then waits before the next pass.
pub(crate) async fn send_due(
    store: &dyn Store,
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    settings: &DeliverySettings,
) -> usize {
    let prefix = prefix(&endpoint.id);
    let page = match store.list_state_page(&prefix, None, PASS).await {
        Ok(page) => page,
        Err(err) => {
            tracing::warn!(endpoint = %endpoint.id, error = %err, "reading webhook retries failed");
            return 0;
        }
    };
    let now = now_ms();
    let due: Vec<(String, String)> = page
        .into_iter()
        .take_while(|(key, _)| next_at_of(key, &prefix).is_none_or(|at| at <= now))
        .collect();
    futures::stream::iter(due)
        .map(|(key, text)| async move {
            match serde_json::from_str::<Pending>(&text) {
                Ok(pending) => {
                    retry_once(store, client, endpoint, (&key, &text), pending, settings).await
                }
                // Not a retry this binary can read: nothing to send.
                Err(_) => store.delete_state(&key).await.is_ok(),
            }
        })
        .buffer_unordered(settings.concurrency.max(1))
        .filter(|settled| std::future::ready(*settled))
        .count()
        .await
}

/// One more try of the retry filed at `entry` (key, text); whether it was settled.
async fn retry_once(
    store: &dyn Store,
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    entry: (&str, &str),
    mut pending: Pending,
    settings: &DeliverySettings,
) -> bool {
    let (key, text) = entry;
    let expired =
        now_ms().saturating_sub(pending.first_at) >= settings.give_up_after.as_millis() as i64;
    // Past its time (an endpoint disabled for longer), or no longer wanted: dropped
    // without a send.
    if expired || (!pending.event_type.is_empty() && !endpoint.wants(&pending.event_type)) {
        if expired {
            tracing::warn!(endpoint = %endpoint.id, event = %pending.event_id, tries = pending.tries, "gave up delivering an event");
            metrics_delivered(endpoint, "abandoned");
        }
        return store.remove_state_if(key, text).await.is_ok();
    }
    let answer = send_once(client, endpoint, &pending.payload).await;
    record_attempt(
        store,
        &endpoint.id,
        &pending.event_id,
        answer.as_ref().ok().copied(),
    )
    .await;
    pending.tries += 1;
    let result = match answer {
        Ok(status) if (200..300).contains(&status) => {
            metrics_delivered(endpoint, "delivered");
            store.remove_state_if(key, text).await.map(|_| ())
        }
        answer => {
            let now = now_ms();
            if now.saturating_sub(pending.first_at) >= settings.give_up_after.as_millis() as i64 {
                tracing::warn!(endpoint = %endpoint.id, event = %pending.event_id, tries = pending.tries, "gave up delivering an event");
                metrics_delivered(endpoint, "abandoned");
                store.remove_state_if(key, text).await.map(|_| ())
            } else {
                tracing::info!(endpoint = %endpoint.id, event = %pending.event_id, answer = ?answer, "webhook not accepted; retrying later");
                metrics_delivered(endpoint, "retried");
                let next_at =
                    now.saturating_add(backoff(settings, pending.tries).as_millis() as i64);
                file(store, &endpoint.id, &pending, next_at, Some((key, text))).await
            }
        }
    };
    match result {
        Ok(()) => true,
        Err(err) => {
            // The entry stays as it was: tried again at a later pass.
            tracing::warn!(endpoint = %endpoint.id, error = %err, "updating a webhook retry failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_longest() {
        let settings = DeliverySettings {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ..DeliverySettings::default()
        };
        let waits: Vec<u64> = (1..=8).map(|t| backoff(&settings, t).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(&settings, u64::MAX), Duration::from_secs(60));
    }

    fn pending(first_at: i64) -> Pending {
        Pending {
            event_id: "evt_1".into(),
            sequence: 7,
            payload: "{}".into(),
            event_type: "v2.payments.off_session_payment.created".into(),
            first_at,
            tries: 1,
        }
    }

    /// Two instances sharing an endpoint while its owner changes both move one retry:
    /// the one that finds the entry already moved removes its own, so one is left.
    #[tokio::test]
    async fn a_retry_moved_by_two_instances_stays_one_entry() {
        let store = offsession_store::MemoryStore::new();
        let entry = pending(1_000);
        let text = serde_json::to_string(&entry).unwrap();
        let old = key("we_1", 2_000, 7);
        store.save_state(&old, &text).await.unwrap();
        // The first instance moves it to 5,000; the second, from the same read, to 6,000.
        file(&store, "we_1", &entry, 5_000, Some((&old, &text)))
            .await
            .unwrap();
        file(&store, "we_1", &entry, 6_000, Some((&old, &text)))
            .await
            .unwrap();
        let left = store.list_state(&prefix("we_1")).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].0, key("we_1", 5_000, 7));
        // The same millisecond on both: still one entry, not none.
        store.save_state(&old, &text).await.unwrap();
        store.delete_state(&key("we_1", 5_000, 7)).await.unwrap();
        for _ in 0..2 {
            file(&store, "we_1", &entry, 9_000, Some((&old, &text)))
                .await
                .unwrap();
        }
        let left = store.list_state(&prefix("we_1")).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].0, key("we_1", 9_000, 7));
        // Overlapping: A files the new entry, B files the same one whole, then A removes
        // the old entry (as `file` does, dropping its own if the old one moved).
        store.save_state(&old, &text).await.unwrap();
        store.delete_state(&key("we_1", 9_000, 7)).await.unwrap();
        let new = key("we_1", 12_000, 7);
        assert!(store.swap_state(&new, None, &text).await.unwrap());
        file(&store, "we_1", &entry, 12_000, Some((&old, &text)))
            .await
            .unwrap();
        if !store.remove_state_if(&old, &text).await.unwrap() {
            store.remove_state_if(&new, &text).await.unwrap();
        }
        let left = store.list_state(&prefix("we_1")).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].0, new);
    }

    /// A retry past its give-up time (its endpoint was disabled for longer) is dropped
    /// without a send.
    #[tokio::test]
    async fn an_expired_retry_is_dropped_unsent() {
        let store = offsession_store::MemoryStore::new();
        let settings = DeliverySettings::default();
        let old = now_ms() - settings.give_up_after.as_millis() as i64 - 1;
        let entry = pending(old);
        store
            .save_state(&key("we_1", 0, 7), &serde_json::to_string(&entry).unwrap())
            .await
            .unwrap();
        let endpoint = WebhookEndpoint {
            id: "we_1".into(),
            // Nothing listens here: a send would be logged as a failed try.
            url: "http://127.0.0.1:9/hook".into(),
            secret: "whsec_test_secret".into(),
            enabled_events: vec!["*".into()],
        };
        let client = crate::webhooks::client(Duration::from_secs(1)).unwrap();
        assert_eq!(send_due(&store, &client, &endpoint, &settings).await, 1);
        assert!(store.list_state(&prefix("we_1")).await.unwrap().is_empty());
        let log = crate::webhooks::log_key("we_1", "evt_1");
        assert_eq!(store.load_state(&log).await.unwrap(), None, "not sent");
    }

    #[test]
    fn keys_sort_by_the_next_try() {
        let early = key("we_1", 5_000, 99);
        let late = key("we_1", 40_000, 1);
        assert!(early < late);
        assert_eq!(next_at_of(&late, &prefix("we_1")), Some(40_000));
    }
}
