//! The delivery log of an event and resending it:
//! `GET /v2/core/events/{id}/deliveries` and `POST /v2/core/events/{id}/resend`
//! (this server's own paths; Stripe offers these in its Dashboard).
//!
//! An event's delivery to one endpoint is, from the endpoint's log entry and cursor
//! (see `webhooks`): `delivered` (the last attempt was answered 2xx), `retrying`
//! (attempted, not yet accepted, still being retried), `pending` (not attempted yet),
//! `failed` (not accepted and not retried any more: retried until `give_up_after`, or
//! a resend of an event the scheduled deliveries had passed) or `not_sent` (committed
//! before the endpoint existed, or while it was disabled, and never resent).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use offsession_core::{OutboxEvent, Timestamp};
use serde_json::{json, Value};

use crate::errors::{self, invalid};
use crate::idempotency::{fingerprint, idempotent};
use crate::webhooks::{self, WebhookEndpoint};
use crate::AppState;

/// Every endpoint that takes events: the configuration's, and the enabled
/// destinations made through the API (with whether each is enabled).
async fn endpoints(state: &AppState) -> Result<Vec<(WebhookEndpoint, bool)>, Response> {
    let mut all: Vec<(WebhookEndpoint, bool)> =
        state.endpoints.iter().map(|e| (e.clone(), true)).collect();
    for d in crate::destinations::stored(state.store.as_ref()).await? {
        all.push((
            crate::destinations::endpoint_of(&d),
            d["status"] == "enabled",
        ));
    }
    Ok(all)
}

/// An event of the outbox, or a ping (kept apart: it went to one destination).
enum Found {
    Outbox(OutboxEvent),
    Ping(Value),
}

async fn event(state: &AppState, id: &str) -> Result<Found, Response> {
    match state.store.event(id).await {
        Ok(Some(event)) => Ok(Found::Outbox(event)),
        Ok(None) => match crate::destinations::stored_ping(state.store.as_ref(), id).await? {
            Some(ping) => Ok(Found::Ping(ping)),
            None => Err(errors::not_found(&format!("No such event: `{id}`"))),
        },
        Err(err) => Err(errors::internal(err)),
    }
}

/// An endpoint's delivery log entry for an event (`Null` when never attempted).
async fn log_of(state: &AppState, endpoint_id: &str, event_id: &str) -> Value {
    match state
        .store
        .load_state(&webhooks::log_key(endpoint_id, event_id))
        .await
    {
        Ok(Some(text)) => serde_json::from_str(&text).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// A ping's delivery: to its one destination, sent once when it was made (a ping is
/// neither retried nor resent), so `delivered`, `failed`, `pending` while that one
/// send has no answer yet or, if the destination has been deleted since, no entry.
async fn ping_deliveries(state: &AppState, ping: &Value) -> Result<Value, Response> {
    let destination = ping["related_object"]["id"].as_str().unwrap_or_default();
    let event_id = ping["id"].as_str().unwrap_or_default();
    let mut data = Vec::new();
    if let Some((endpoint, _)) = endpoints(state)
        .await?
        .into_iter()
        .find(|(e, _)| e.id == destination)
    {
        data.push(delivery(state, &endpoint, event_id, None).await);
    }
    Ok(json!({"data": data, "next_page_url": null, "previous_page_url": null}))
}

/// One endpoint's delivery of event `event_id`, at outbox position `sequence` (`None`:
/// a ping, sent once and never scheduled).
async fn delivery(
    state: &AppState,
    endpoint: &WebhookEndpoint,
    event_id: &str,
    sequence: Option<u64>,
) -> Value {
    let store = state.store.as_ref();
    let log = log_of(state, &endpoint.id, event_id).await;
    // A ping is never scheduled: before its one answer it is being sent (`pending`),
    // after it `delivered` or `failed`.
    // Still to be sent: ahead of the cursor, or past it with a retry filed.
    let ahead = match sequence {
        Some(sequence) => {
            let cursor: Option<u64> =
                match store.load_state(&webhooks::cursor_key(&endpoint.id)).await {
                    Ok(Some(text)) => text.parse().ok(),
                    _ => None,
                };
            cursor.is_none_or(|c| sequence > c)
                || crate::retries::is_filed(store, &endpoint.id, sequence)
                    .await
                    .unwrap_or(false)
        }
        None => log.is_null(),
    };
    let attempts = log["attempts"].as_u64().unwrap_or(0);
    let accepted = log["last_status"]
        .as_u64()
        .is_some_and(|s| (200..300).contains(&s));
    let status = match (accepted, ahead, attempts) {
        (true, _, _) => "delivered",
        (false, true, 0) => "pending",
        (false, true, _) => "retrying",
        (false, false, 0) => "not_sent",
        (false, false, _) => "failed",
    };
    json!({
        "object": "event_delivery",
        "destination": endpoint.id,
        "url": endpoint.url,
        "status": status,
        "attempts": attempts,
        "last_status": log["last_status"],
        // Kept as Unix seconds in the log; answered as the API's other times are.
        "last_attempt_at": log["last_attempt_at"]
            .as_i64()
            .map(|seconds| Timestamp::from_millis(seconds.saturating_mul(1_000)).to_string()),
    })
}

async fn list(state: &AppState, event: &OutboxEvent) -> Result<Value, Response> {
    let mut data = Vec::new();
    for (endpoint, _) in endpoints(state).await? {
        if endpoint.wants(event.event.event_type.as_str()) {
            data.push(delivery(state, &endpoint, &event.event.id, Some(event.sequence)).await);
        }
    }
    Ok(json!({"data": data, "next_page_url": null, "previous_page_url": null}))
}

/// `GET /v2/core/events/{id}/deliveries`: the event's delivery to every endpoint that
/// takes its type.
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    if let Err(response) = crate::api::query_value(&query, &[]) {
        return response;
    }
    let listed = match event(&state, &id).await {
        Ok(Found::Outbox(event)) => list(&state, &event).await,
        Ok(Found::Ping(ping)) => ping_deliveries(&state, &ping).await,
        Err(response) => return response,
    };
    match listed {
        Ok(list) => Json(list).into_response(),
        Err(response) => response,
    }
}

/// `POST /v2/core/events/{id}/resend`, optionally `{"destination": "<id>"}`: sends the
/// event once more, now, to that endpoint or to every enabled endpoint that takes its
/// type, whatever earlier deliveries did; answers the deliveries afterwards. A failed
/// resend is not retried (scheduled deliveries are, as before).
pub(crate) async fn resend(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (body, params) = match crate::api::json_object(&headers, body, true, &["destination"]) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let named = match params.get("destination") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return invalid("`destination` must be a string"),
    };
    let request = fingerprint("POST", &format!("/v2/core/events/{id}/resend"), &body);
    let run = async {
        let event = match event(&state, &id).await {
            Ok(Found::Outbox(event)) => event,
            Ok(Found::Ping(ping)) => {
                let destination = ping["related_object"]["id"].as_str().unwrap_or_default();
                return invalid(format!(
                    "event `{id}` is a ping: it is not resent; ping the destination again (`POST /v2/core/event_destinations/{destination}/ping`)"
                ));
            }
            Err(response) => return response,
        };
        let all = match endpoints(&state).await {
            Ok(all) => all,
            Err(response) => return response,
        };
        let event_type = event.event.event_type.as_str();
        let targets: Vec<WebhookEndpoint> = match &named {
            Some(named) => match all.into_iter().find(|(e, _)| &e.id == named) {
                Some((endpoint, true)) if endpoint.wants(event_type) => vec![endpoint],
                Some((_, true)) => {
                    return invalid(format!(
                        "`destination`: `{named}` does not take `{event_type}` events"
                    ))
                }
                Some((_, false)) => {
                    return invalid(format!("`destination`: `{named}` is disabled"))
                }
                None => return invalid(format!("`destination`: no endpoint `{named}`")),
            },
            None => all
                .into_iter()
                .filter(|(e, enabled)| *enabled && e.wants(event_type))
                .map(|(e, _)| e)
                .collect(),
        };
        let payload = match serde_json::to_string(&event.event) {
            Ok(payload) => payload,
            Err(err) => return invalid(format!("the event cannot be encoded: {err}")),
        };
        let client = match webhooks::client(std::time::Duration::from_secs(10)) {
            Ok(client) => client,
            Err(err) => return errors::internal(err),
        };
        for endpoint in &targets {
            let answer = webhooks::send_once(&client, endpoint, &payload).await;
            tracing::info!(endpoint = %endpoint.id, event = %event.event.id, answer = ?answer, "event resent");
            webhooks::record_attempt(
                state.store.as_ref(),
                &endpoint.id,
                &event.event.id,
                answer.ok(),
            )
            .await;
        }
        match list(&state, &event).await {
            Ok(list) => Json(list).into_response(),
            Err(response) => response,
        }
    };
    idempotent(&state, &headers, request, run).await
}
