//! Webhook delivery from the outbox: each endpoint has its own task and its own
//! cursor in the store (`webhook/<endpoint id>/cursor`, the last event sequence it
//! answered 2xx to), so delivery survives restarts and kill -9 (at least once: an
//! event whose 2xx was not recorded is sent again) and a slow or dead endpoint delays
//! no payment and no other endpoint.
//!
//! Each delivery is the thin event as JSON with `Stripe-Signature: t=<unix
//! seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the endpoint's secret>`,
//! exactly as Stripe signs, so Stripe's SDKs verify it. A non-2xx answer or a timeout
//! is retried with exponential backoff (1 s doubling to 1 h) for up to
//! `give_up_after` (3 days by default), then skipped with a warning. Events go out in
//! commit order, `concurrency` at a time per endpoint (1 by default: one after
//! another; more: a slow answer no longer holds back the next events, which may then
//! arrive out of order). Each attempt is recorded in
//! `webhook/<endpoint id>/log/<event id>` (attempts, last status, when), which
//! `GET /v2/core/events/{id}/deliveries` reads; `POST /v2/core/events/{id}/resend`
//! sends an event again (see `deliveries`). Logs of events older than `keep_logs`
//! (30 days by default, as long as Stripe keeps events) are removed hourly, once the
//! deliverer is past them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use offsession_core::{OutboxEvent, Store};
use sha2::Sha256;

/// A webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Stable name of the endpoint (its cursor and log are kept under it).
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// `whsec_…`: the HMAC key.
    pub secret: String,
    /// Event types to send (`*`: all).
    pub enabled_events: Vec<String>,
}

impl WebhookEndpoint {
    pub(crate) fn wants(&self, event_type: &str) -> bool {
        self.enabled_events
            .iter()
            .any(|e| e == "*" || e == event_type)
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<payload>")>`.
pub fn sign(secret: &str, timestamp: i64, payload: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("t={timestamp},v1={hex}")
}

/// How a deliverer behaves.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// Per request.
    pub timeout: Duration,
    /// The first retry's wait (doubling up to `max_backoff`).
    pub first_backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
    /// Stop retrying one event after this long.
    pub give_up_after: Duration,
    /// How often the outbox is read when there is nothing to send.
    pub poll: Duration,
    /// Deliveries in flight to one endpoint at most (1: one at a time; first tries in
    /// commit order, retries by their due time).
    pub concurrency: usize,
    /// How long an event's delivery log is kept, counted from the event's `created`.
    pub keep_logs: Duration,
    /// How often the logs past `keep_logs` are removed.
    pub sweep_every: Duration,
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings {
            timeout: Duration::from_secs(10),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3_600),
            give_up_after: Duration::from_secs(3 * 86_400),
            poll: Duration::from_millis(200),
            concurrency: 1,
            keep_logs: Duration::from_secs(30 * 86_400),
            sweep_every: Duration::from_secs(3_600),
        }
    }
}

/// Where an endpoint's cursor is kept: the last event sequence its deliverer is done
/// with.
pub(crate) fn cursor_key(endpoint_id: &str) -> String {
    format!("webhook/{endpoint_id}/cursor")
}

/// Where an endpoint's log sweep keeps how far it has gone: the last event sequence
/// whose delivery log it removed (or passed).
pub(crate) fn swept_key(endpoint_id: &str) -> String {
    format!("webhook/{endpoint_id}/swept")
}

/// Where instances that deliver webhooks beat (`deliverer/<instance id>`).
pub const DELIVERER_PREFIX: &str = "deliverer/";

/// Which endpoints this instance delivers to, when several instances share a store:
/// each endpoint is delivered to by one live instance, chosen by rendezvous hashing of
/// the endpoint's id with the ids of the instances that deliver webhooks (their beats
/// under [`DELIVERER_PREFIX`]), so an instance that joins or dies moves only the
/// endpoints it gains or held. The cursor of an endpoint is in the store, so the next
/// owner resumes where the last one acknowledged. While ownership moves (within one
/// refresh), two instances may both send an event: deliveries are at least once.
#[derive(Debug, Clone)]
pub struct Owners {
    me: String,
    live: tokio::sync::watch::Receiver<Vec<String>>,
}

impl Owners {
    /// A lone instance: it delivers to every endpoint.
    pub fn alone(me: &str) -> Owners {
        let (_, live) = tokio::sync::watch::channel(vec![me.to_owned()]);
        Owners {
            me: me.to_owned(),
            live,
        }
    }

    /// Tracks the instances that deliver webhooks (`serve`s; a plain `worker` sharing
    /// the store delivers nothing, so it must own no endpoint): each beats under
    /// [`DELIVERER_PREFIX`] every `every`, and counts while its beat is at most
    /// `live_within` old. Beats first; when others deliver too, waits 1.5 × `every`
    /// and beats again before answering, so that they have seen this one before it
    /// takes endpoints from them.
    pub async fn track(
        engine: offsession_orchestrator::Engine,
        live_within: Duration,
        every: Duration,
    ) -> Owners {
        let me = engine.config().instance_id.clone();
        let heartbeat = |engine: offsession_orchestrator::Engine| {
            let me = me.clone();
            async move {
                match engine.heartbeat_as(DELIVERER_PREFIX, live_within).await {
                    Ok(live) => Some(live),
                    Err(err) => {
                        tracing::warn!(error = %err, "a deliverer's heartbeat failed");
                        None
                    }
                }
                .unwrap_or_else(|| vec![me])
            }
        };
        let mut first = heartbeat(engine.clone()).await;
        if first.len() > 1 {
            tokio::time::sleep(every.mul_f64(1.5)).await;
            first = heartbeat(engine.clone()).await;
        }
        let (tell, live) = tokio::sync::watch::channel(first);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if tell.is_closed() {
                    return;
                }
                let Ok(now) = engine.heartbeat_as(DELIVERER_PREFIX, live_within).await else {
                    // The store is out of reach: keep the last list.
                    continue;
                };
                if tell.send_if_modified(|live| {
                    let changed = *live != now;
                    *live = now;
                    changed
                }) {
                    tracing::info!(instances = ?*tell.borrow(), "webhook deliverers alive changed");
                }
            }
        });
        Owners { me, live }
    }

    /// Whether this instance delivers to `endpoint_id` now.
    pub fn owns(&self, endpoint_id: &str) -> bool {
        let live = self.live.borrow();
        owner_of(endpoint_id, &live).is_none_or(|owner| owner == self.me)
    }

    /// Waits until `owns(endpoint_id)` is `want`.
    async fn until(&mut self, endpoint_id: &str, want: bool) {
        while self.owns(endpoint_id) != want {
            if self.live.changed().await.is_err() {
                // The tracker stopped: keep the last answer.
                if self.owns(endpoint_id) != want {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The instance among `live` that delivers to `endpoint_id`: the highest SHA-256 of
/// `"<endpoint>/<instance>"` (rendezvous hashing).
#[doc(hidden)]
pub fn owner_of<'a>(endpoint_id: &str, live: &'a [String]) -> Option<&'a str> {
    use sha2::Digest;
    live.iter()
        .max_by_key(|instance| {
            let digest = Sha256::digest(format!("{endpoint_id}/{instance}").as_bytes());
            let mut top = [0u8; 8];
            top.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(top)
        })
        .map(String::as_str)
}

/// Delivers the outbox to `endpoint` while this instance owns it (see [`Owners`]),
/// until `stop` completes.
pub async fn deliver(
    store: Arc<dyn Store>,
    endpoint: WebhookEndpoint,
    settings: DeliverySettings,
    mut owners: Owners,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = owners.until(&endpoint.id, true) => {}
            () = &mut stop => return,
        }
        let mut watching = owners.clone();
        tokio::select! {
            () = run(&store, &endpoint, settings) => return,
            () = watching.until(&endpoint.id, false) => {
                tracing::info!(endpoint = %endpoint.id, "another instance delivers to this endpoint now");
            }
            () = &mut stop => return,
        }
    }
}

async fn run(store: &Arc<dyn Store>, endpoint: &WebhookEndpoint, settings: DeliverySettings) {
    let client = match client(settings.timeout) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(endpoint = %endpoint.id, error = %err, "cannot build the webhook client");
            return;
        }
    };
    let mut cursor = loop {
        match store.load_state(&cursor_key(&endpoint.id)).await {
            Ok(Some(saved)) => break saved.parse::<u64>().unwrap_or(0),
            // A new endpoint receives the events committed after it was configured,
            // as Stripe's destinations do.
            Ok(None) => match store.newest_event_sequence().await {
                Ok(newest) => {
                    if store
                        .save_state(&cursor_key(&endpoint.id), &newest.to_string())
                        .await
                        .is_ok()
                    {
                        break newest;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "reading the outbox failed"),
            },
            Err(err) => tracing::warn!(error = %err, "reading the webhook cursor failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut swept_at: Option<Instant> = None;
    loop {
        if swept_at.is_none_or(|at| at.elapsed() >= settings.sweep_every) {
            swept_at = Some(Instant::now());
            if let Err(err) =
                sweep_logs(store.as_ref(), &endpoint.id, cursor, settings.keep_logs).await
            {
                tracing::warn!(endpoint = %endpoint.id, error = %err, "removing old delivery logs failed");
            }
            if let Err(err) = sweep_pings(store.as_ref(), settings.keep_logs).await {
                tracing::warn!(error = %err, "removing old ping events failed");
            }
        }
        let page = match store.events_after(cursor, 100).await {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(endpoint = %endpoint.id, error = %err, "reading the outbox failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Retries due now go first; they do not hold up the events after them.
        let retried = crate::retries::send_due(store.as_ref(), &client, endpoint, &settings).await;
        if page.is_empty() {
            if retried == 0 {
                tokio::time::sleep(settings.poll).await;
            }
            continue;
        }
        // Up to `concurrency` first tries in flight; the cursor moves in commit order,
        // past an event once it was accepted or its retry was filed.
        let mut answered = futures::stream::iter(page)
            .map(|event| {
                let client = &client;
                async move {
                    if endpoint.wants(event.event.event_type.as_str()) {
                        first_try(store, client, endpoint, &event, settings).await;
                    }
                    event.sequence
                }
            })
            .buffered(settings.concurrency.max(1));
        while let Some(sequence) = answered.next().await {
            cursor = sequence;
            while let Err(err) = store
                .save_state(&cursor_key(&endpoint.id), &cursor.to_string())
                .await
            {
                tracing::warn!(endpoint = %endpoint.id, error = %err, "saving the webhook cursor failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Sends `event` once; not accepted, files its retry (see [`crate::retries`]).
async fn first_try(
    store: &Arc<dyn Store>,
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    event: &OutboxEvent,
    settings: DeliverySettings,
) {
    let payload = match serde_json::to_string(&event.event) {
        Ok(payload) => payload,
        Err(err) => {
            tracing::error!(event = %event.event.id, error = %err, "cannot encode an event");
            return;
        }
    };
    let answer = send_once(client, endpoint, &payload).await;
    record_attempt(
        store.as_ref(),
        &endpoint.id,
        &event.event.id,
        answer.as_ref().ok().copied(),
    )
    .await;
    match answer {
        Ok(status) if (200..300).contains(&status) => {
            metrics_delivered(endpoint, "delivered");
            return;
        }
        Ok(status) => {
            tracing::info!(endpoint = %endpoint.id, event = %event.event.id, status, "webhook not accepted; retrying later");
        }
        Err(err) => {
            tracing::info!(endpoint = %endpoint.id, event = %event.event.id, error = %err, "webhook not delivered; retrying later");
        }
    }
    metrics_delivered(endpoint, "retried");
    let pending = crate::retries::Pending {
        event_id: event.event.id.clone(),
        sequence: event.sequence,
        event_type: event.event.event_type.as_str().to_owned(),
        payload,
        first_at: crate::retries::now_ms(),
        tries: 1,
    };
    crate::retries::file_first_retry(store.as_ref(), &endpoint.id, pending, &settings).await;
}

/// A client for deliveries: `timeout` per request, redirects not followed.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// POSTs `payload` to `endpoint` once, signed with its secret now; the HTTP status,
/// or why there was none (refused, timed out).
pub(crate) async fn send_once(
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    payload: &str,
) -> Result<u16, String> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            sign(&endpoint.secret, timestamp, payload),
        )
        .header("user-agent", "offsession-webhooks")
        .body(payload.to_owned())
        .send()
        .await
        .map(|response| response.status().as_u16())
        .map_err(|err| err.to_string())
}

/// The delivery log of `event_id` at endpoint `endpoint_id`: `{attempts, last_status,
/// last_attempt_at}` (`last_status` null when no answer came).
pub(crate) fn log_key(endpoint_id: &str, event_id: &str) -> String {
    format!("webhook/{endpoint_id}/log/{event_id}")
}

/// Unix milliseconds of the oldest delivery log or ping kept with retention `keep`
/// (the wall clock: logs are written on it).
fn oldest_kept(keep: Duration) -> i64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now_ms.saturating_sub(keep.as_millis().min(i64::MAX as u128) as i64)
}

/// Removes the delivery logs at `endpoint_id` of the events up to `cursor` (those its
/// deliverer is done with) created more than `keep` ago, in commit order from where
/// the last sweep stopped (`webhook/<endpoint id>/swept`). Returns how many events it
/// passed.
pub(crate) async fn sweep_logs(
    store: &dyn Store,
    endpoint_id: &str,
    cursor: u64,
    keep: Duration,
) -> Result<u64, offsession_core::StoreError> {
    let swept_key = swept_key(endpoint_id);
    let mut after: u64 = store
        .load_state(&swept_key)
        .await?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let oldest_kept = oldest_kept(keep);
    let now_ms = oldest_kept.saturating_add(keep.as_millis().min(i64::MAX as u128) as i64);
    let mut passed = 0;
    let mut done = false;
    while !done && after < cursor {
        let page = store.events_after(after, 500).await?;
        let from = after;
        done = page.is_empty();
        for event in page {
            // An event dated ahead of the wall clock (a test clock's) is judged by its
            // log's last attempt instead: by its date it would hold up the sweep of
            // every later event until that date came.
            let created = event.event.created.as_millis();
            let age_from = if created <= now_ms {
                created
            } else {
                last_attempt_ms(store, endpoint_id, &event.event.id).await?
            };
            if event.sequence > cursor || age_from >= oldest_kept {
                done = true;
                break;
            }
            store
                .delete_state(&log_key(endpoint_id, &event.event.id))
                .await?;
            after = event.sequence;
            passed += 1;
        }
        if after != from {
            store.save_state(&swept_key, &after.to_string()).await?;
        }
    }
    Ok(passed)
}

/// When the delivery log of `event_id` at `endpoint_id` was last written (wall clock,
/// Unix ms); the epoch when there is none (nothing to keep).
async fn last_attempt_ms(
    store: &dyn Store,
    endpoint_id: &str,
    event_id: &str,
) -> Result<i64, offsession_core::StoreError> {
    Ok(store
        .load_state(&log_key(endpoint_id, event_id))
        .await?
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|log| log["last_attempt_at"].as_i64())
        .map_or(0, |secs| secs.saturating_mul(1_000)))
}

/// Removes ping events (and their delivery logs) made more than `keep` ago, of every
/// destination, deleted ones included; returns how many. Every deliverer runs it with
/// its own sweep, so pings expire while any endpoint is configured.
pub(crate) async fn sweep_pings(
    store: &dyn Store,
    keep: Duration,
) -> Result<usize, offsession_core::StoreError> {
    let oldest_kept = oldest_kept(keep);
    let mut removed = 0;
    for (key, text) in store.list_state(crate::destinations::PING_PREFIX).await? {
        let Ok(ping) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let created = serde_json::from_value::<offsession_core::Timestamp>(ping["created"].clone())
            .map_or(i64::MAX, |t| t.as_millis());
        if created >= oldest_kept {
            continue;
        }
        let destination = ping["related_object"]["id"].as_str().unwrap_or_default();
        let event_id = ping["id"].as_str().unwrap_or_default();
        store.delete_state(&log_key(destination, event_id)).await?;
        store.delete_state(&key).await?;
        removed += 1;
    }
    Ok(removed)
}

/// Counts one delivery attempt in the log; returns the attempts so far. (A resend
/// and a scheduled retry of the same event to the same endpoint at the same moment
/// may count as one.)
pub(crate) async fn record_attempt(
    store: &dyn Store,
    endpoint_id: &str,
    event_id: &str,
    status: Option<u16>,
) -> u64 {
    let key = log_key(endpoint_id, event_id);
    let before = match store.load_state(&key).await {
        Ok(Some(text)) => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|log| log["attempts"].as_u64())
            .unwrap_or(0),
        _ => 0,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let log = serde_json::json!({
        "attempts": before + 1,
        "last_status": status,
        "last_attempt_at": now,
    });
    if let Err(err) = store.save_state(&key, &log.to_string()).await {
        tracing::warn!(endpoint = %endpoint_id, event = %event_id, error = %err, "could not write the delivery log");
    }
    before + 1
}

pub(crate) fn metrics_delivered(endpoint: &WebhookEndpoint, outcome: &'static str) {
    tracing::debug!(endpoint = %endpoint.id, outcome, "webhook attempt");
}

#[cfg(test)]
#[path = "webhooks_tests.rs"]
mod tests;
