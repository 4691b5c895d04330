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
    /// The first try, Unix milliseconds: the give-up clock.
    pub first_at: i64,
    /// Tries so far.
    pub tries: u64,
}

pub(crate) fn prefix(endpoint_id: &str) -> String {
    format!("webhook/{endpoint_id}/retry/")
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

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The wait after `tries` tries: `first_backoff`, doubling, at most `max_backoff`.
pub(crate) fn backoff(settings: &DeliverySettings, tries: u64) -> Duration {
    let doublings = tries.saturating_sub(1).min(30) as u32;
    settings
        .first_backoff
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(settings.max_backoff)
}

/// Files `pending`'s next try, then removes its previous entry `old`: a stop between
/// the two leaves it filed twice, sent twice at worst (deliveries are at least once).
async fn file(
    store: &dyn Store,
    endpoint_id: &str,
    pending: &Pending,
    next_at: i64,
    old: Option<&str>,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(pending).unwrap_or_default();
    store
        .save_state(&key(endpoint_id, next_at, pending.sequence), &text)
        .await?;
    if let Some(old) = old {
        store.delete_state(old).await?;
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
/// returns how many were due.
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
    let count = due.len();
    futures::stream::iter(due)
        .map(|(key, text)| async move {
            match serde_json::from_str::<Pending>(&text) {
                Ok(pending) => retry_once(store, client, endpoint, &key, pending, settings).await,
                // Not a retry this binary can read: nothing to send.
                Err(_) => {
                    let _ = store.delete_state(&key).await;
                }
            }
        })
        .buffer_unordered(settings.concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    count
}

async fn retry_once(
    store: &dyn Store,
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    key: &str,
    mut pending: Pending,
    settings: &DeliverySettings,
) {
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
            store.delete_state(key).await
        }
        answer => {
            let now = now_ms();
            if now.saturating_sub(pending.first_at) >= settings.give_up_after.as_millis() as i64 {
                tracing::warn!(endpoint = %endpoint.id, event = %pending.event_id, tries = pending.tries, "gave up delivering an event");
                metrics_delivered(endpoint, "abandoned");
                store.delete_state(key).await
            } else {
                tracing::info!(endpoint = %endpoint.id, event = %pending.event_id, answer = ?answer, "webhook not accepted; retrying later");
                metrics_delivered(endpoint, "retried");
                let next_at =
                    now.saturating_add(backoff(settings, pending.tries).as_millis() as i64);
                file(store, &endpoint.id, &pending, next_at, Some(key)).await
            }
        }
    };
    if let Err(err) = result {
        // The entry stays as it was: tried again at the next pass.
        tracing::warn!(endpoint = %endpoint.id, error = %err, "updating a webhook retry failed");
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

    #[test]
    fn keys_sort_by_the_next_try() {
        let early = key("we_1", 5_000, 99);
        let late = key("we_1", 40_000, 1);
        assert!(early < late);
        assert_eq!(next_at_of(&late, &prefix("we_1")), Some(40_000));
    }
}
