//! Event destinations created through the API (`/v2/core/event_destinations`, type
//! `webhook_endpoint`, thin payloads), kept in the store's engine state
//! (`destination/<id>`) and delivered to by [`supervise`], beside the endpoints of
//! the configuration.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use offsession_core::Store;
use serde_json::{json, Map, Value};

use crate::errors::{self, invalid};
use crate::idempotency::{fingerprint, idempotency_key, idempotent};
use crate::webhooks::WebhookEndpoint;
use crate::AppState;

mod delivery;
mod params;

pub(crate) use delivery::enabled;
pub use delivery::supervise;
use params::{description_of, enabled_events, endpoint_url, include_of, metadata_of};

pub(crate) const PREFIX: &str = "destination/";
fn new_secret() -> String {
    format!(
        "whsec_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The API object, without the secret unless `with_secret`.
fn object(stored: &Value, with_secret: bool) -> Value {
    let mut out = stored.clone();
    if let Some(map) = out.as_object_mut() {
        let secret = map.remove("signing_secret");
        if with_secret {
            if let Some(endpoint) = map
                .get_mut("webhook_endpoint")
                .and_then(Value::as_object_mut)
            {
                endpoint.insert("signing_secret".into(), secret.unwrap_or(Value::Null));
            }
        }
    }
    out
}

/// The endpoint a stored destination delivers to.
pub(crate) fn endpoint_of(d: &Value) -> WebhookEndpoint {
    WebhookEndpoint {
        id: d["id"].as_str().unwrap_or_default().to_owned(),
        url: d["webhook_endpoint"]["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        secret: d["signing_secret"].as_str().unwrap_or_default().to_owned(),
        enabled_events: d["enabled_events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The destinations created through the API and not deleted.
pub(crate) async fn stored(store: &dyn Store) -> Result<Vec<Value>, Response> {
    match store.list_state(PREFIX).await {
        Ok(all) => Ok(all
            .iter()
            .filter_map(|(_, text)| serde_json::from_str::<Value>(text).ok())
            .filter(|d| d["status"] != "deleted")
            .collect()),
        Err(err) => Err(errors::internal(err)),
    }
}

/// Where a ping event is kept: a receiver of thin events fetches each one by id
/// (`GET /v2/core/events/{id}`), the ping included. Pings are not in the outbox,
/// which every destination is fed from.
pub(crate) fn ping_key(event_id: &str) -> String {
    format!("{PING_PREFIX}{event_id}")
}

/// The engine-state prefix of kept ping events (they expire with the delivery logs,
/// `server.webhook_log_retention`).
pub(crate) const PING_PREFIX: &str = "ping_event/";

/// The kept ping event `event_id`, if there is one.
pub(crate) async fn stored_ping(
    store: &dyn Store,
    event_id: &str,
) -> Result<Option<Value>, Response> {
    match store.load_state(&ping_key(event_id)).await {
        Ok(Some(text)) => serde_json::from_str(&text)
            .map(Some)
            .map_err(errors::internal),
        Ok(None) => Ok(None),
        Err(err) => Err(errors::internal(err)),
    }
}

async fn load(store: &dyn Store, id: &str) -> Result<Option<Value>, Response> {
    Ok(load_as_stored(store, id).await?.map(|(value, _)| value))
}

/// A destination and its stored text, which a change saves over (`save_over`).
async fn load_as_stored(store: &dyn Store, id: &str) -> Result<Option<(Value, String)>, Response> {
    match store.load_state(&format!("{PREFIX}{id}")).await {
        Ok(Some(text)) => Ok(serde_json::from_str(&text).ok().map(|value| (value, text))),
        Ok(None) => Ok(None),
        Err(err) => Err(errors::internal(err)),
    }
}

/// Saves a changed destination over `was`, the text it was read as: a change made
/// meanwhile by another request (a delete, a disable, another update) is not
/// overwritten, and this one is refused with 409 instead.
async fn save_over(store: &dyn Store, stored: &Value, was: &str) -> Result<(), Response> {
    let id = stored["id"].as_str().unwrap_or_default();
    match store
        .swap_state(&format!("{PREFIX}{id}"), Some(was), &stored.to_string())
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(errors::error(
            409,
            "invalid_request_error",
            "event_destination_concurrent_update",
            format!("Event destination `{id}` was changed by another request meanwhile; retry."),
        )),
        Err(err) => Err(errors::internal(err)),
    }
}

async fn save(store: &dyn Store, stored: &Value) -> Result<(), Response> {
    let id = stored["id"].as_str().unwrap_or_default();
    store
        .save_state(&format!("{PREFIX}{id}"), &stored.to_string())
        .await
        .map_err(errors::internal)
}

/// Where a new (or re-enabled) destination's delivery starts: after `newest`, the
/// outbox position read before it was saved, so every event committed once it
/// exists is delivered, from its first moment (its deliverer starts within a
/// second) — and none from before it, or from while it was disabled. Written before
/// the destination (or its status), so its deliverer never starts without it.
/// `replacing` is the cursor as read before (re-enabling); a cursor that changed
/// since (another enable's), or one already there for a new destination (a keyed
/// create run again), stays.
async fn start_after(store: &dyn Store, id: &str, newest: u64, replacing: Option<&str>) {
    let key = crate::webhooks::cursor_key(id);
    let saved = store
        .swap_state(&key, replacing, &newest.to_string())
        .await
        .map(|_| ());
    if let Err(err) = saved {
        // The deliverer then starts from the outbox's end when it first runs.
        tracing::warn!(destination = %id, error = %err, "saving a destination's first cursor failed");
    }
}

pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const KNOWN: &[&str] = &[
        "name",
        "type",
        "event_payload",
        "enabled_events",
        "webhook_endpoint",
        "description",
        "metadata",
        "include",
    ];
    let (body, params) = match crate::api::json_object(&headers, body, false, KNOWN) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let name = match params.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        None | Some(Value::Null) => return invalid("`name` is required"),
        Some(_) => return invalid("`name` must be a non-empty string"),
    };
    if params.get("type").and_then(Value::as_str) != Some("webhook_endpoint") {
        return invalid(
            "`type` must be `webhook_endpoint` (the only destination this server delivers to)",
        );
    }
    if params.get("event_payload").and_then(Value::as_str) != Some("thin") {
        return invalid("`event_payload` must be `thin`");
    }
    let enabled = match enabled_events(params.get("enabled_events")) {
        Ok(enabled) => enabled,
        Err(why) => return invalid(why),
    };
    let url = match endpoint_url(params.get("webhook_endpoint")) {
        Ok(url) => url.to_owned(),
        Err(why) => return invalid(why),
    };
    let with_secret = match include_of(params.get("include"), "webhook_endpoint.signing_secret") {
        Ok(with_secret) => with_secret,
        Err(why) => return invalid(why),
    };
    let description = match description_of(params.get("description")) {
        Ok(description) => description,
        Err(why) => return invalid(why),
    };
    let metadata = match metadata_of(params.get("metadata"), Map::new()) {
        Ok(metadata) => metadata,
        Err(why) => return invalid(why),
    };
    let request = fingerprint("POST", "/v2/core/event_destinations", &body);
    // Under an idempotency key the id comes from the key and the request, so that a
    // create run again after its server stopped before keeping the answer finds the
    // destination the first run made instead of making a second.
    let keyed_id = match idempotency_key(&headers) {
        Ok(Some(key)) => Some(format!(
            "ed_{}",
            &crate::auth::hash_key(&format!("{key}\n{request}"))[..32]
        )),
        _ => None,
    };
    let run = async {
        let now = state.engine.now();
        let newest = match state.store.newest_event_sequence().await {
            Ok(newest) => newest,
            Err(err) => return errors::internal(err),
        };
        let id = keyed_id
            .clone()
            .unwrap_or_else(|| format!("ed_{}", uuid::Uuid::new_v4().simple()));
        let stored = json!({
            "id": id,
            "object": "v2.core.event_destination",
            "created": now,
            "updated": now,
            "name": name,
            "description": description,
            "metadata": metadata,
            "type": "webhook_endpoint",
            "event_payload": "thin",
            "enabled_events": enabled,
            "livemode": state.engine.config().livemode,
            "status": "enabled",
            "status_details": null,
            "webhook_endpoint": {"url": url},
            "signing_secret": new_secret(),
        });
        start_after(state.store.as_ref(), &id, newest, None).await;
        if keyed_id.is_some() {
            let key = format!("{PREFIX}{id}");
            match state
                .store
                .swap_state(&key, None, &stored.to_string())
                .await
            {
                Ok(true) => {}
                // Made by an earlier run of this request: answer it, unless it was
                // deleted since (the key had expired): then make a new one.
                Ok(false) => match load(state.store.as_ref(), &id).await {
                    Ok(Some(made)) if made["status"] != "deleted" => {
                        return Json(object(&made, with_secret)).into_response()
                    }
                    Ok(_) => {
                        let mut fresh = stored.clone();
                        let fresh_id = format!("ed_{}", uuid::Uuid::new_v4().simple());
                        start_after(state.store.as_ref(), &fresh_id, newest, None).await;
                        fresh["id"] = json!(fresh_id);
                        if let Err(response) = save(state.store.as_ref(), &fresh).await {
                            return response;
                        }
                        return Json(object(&fresh, with_secret)).into_response();
                    }
                    Err(response) => return response,
                },
                Err(err) => return errors::internal(err),
            }
        } else if let Err(response) = save(state.store.as_ref(), &stored).await {
            return response;
        }
        Json(object(&stored, with_secret)).into_response()
    };
    idempotent(&state, &headers, request, run).await
}

pub(crate) async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match load(state.store.as_ref(), &id).await {
        Ok(Some(stored)) if stored["status"] != "deleted" => {
            Json(object(&stored, false)).into_response()
        }
        Ok(_) => errors::not_found(&format!("No such event destination: `{id}`")),
        Err(response) => response,
    }
}

pub(crate) async fn list(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(response) = crate::api::query_value(&query, &["limit"]) {
        return response;
    }
    let limit = match crate::api::limit_of(&query) {
        Ok(limit) => limit,
        Err(response) => return response,
    };
    match stored(state.store.as_ref()).await {
        Ok(mut all) => {
            // Newest first, as the other lists.
            all.sort_by(|a, b| {
                (b["created"].as_str(), b["id"].as_str())
                    .cmp(&(a["created"].as_str(), a["id"].as_str()))
            });
            let data: Vec<Value> = all.iter().take(limit).map(|d| object(d, false)).collect();
            Json(json!({"data": data, "next_page_url": null, "previous_page_url": null}))
                .into_response()
        }
        Err(response) => response,
    }
}

/// `POST /v2/core/event_destinations/{id}`: a new name, description, metadata, event
/// types or URL. The deliverer picks the change up within a second (see
/// [`supervise`]); the secret stays.
pub(crate) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const KNOWN: &[&str] = &[
        "name",
        "description",
        "metadata",
        "enabled_events",
        "webhook_endpoint",
        "include",
    ];
    let (body, params) = match crate::api::json_object(&headers, body, true, KNOWN) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    if let Err(why) = include_of(params.get("include"), "webhook_endpoint.url") {
        return invalid(why);
    }
    let request = fingerprint("POST", &format!("/v2/core/event_destinations/{id}"), &body);
    let run = async {
        let (mut stored, was) = match load_as_stored(state.store.as_ref(), &id).await {
            Ok(Some((stored, was))) if stored["status"] != "deleted" => (stored, was),
            Ok(_) => return errors::not_found(&format!("No such event destination: `{id}`")),
            Err(response) => return response,
        };
        if let Some(name) = params.get("name") {
            match name.as_str() {
                Some(name) if !name.is_empty() => stored["name"] = json!(name),
                _ => return invalid("`name` must be a non-empty string"),
            }
        }
        if params.contains_key("description") {
            match description_of(params.get("description")) {
                Ok(description) => stored["description"] = description,
                Err(why) => return invalid(why),
            }
        }
        if params.contains_key("metadata") {
            let base = stored["metadata"].as_object().cloned().unwrap_or_default();
            match metadata_of(params.get("metadata"), base) {
                Ok(metadata) => stored["metadata"] = metadata,
                Err(why) => return invalid(why),
            }
        }
        if params.contains_key("enabled_events") {
            match enabled_events(params.get("enabled_events")) {
                Ok(enabled) => stored["enabled_events"] = json!(enabled),
                Err(why) => return invalid(why),
            }
        }
        if params.contains_key("webhook_endpoint") {
            match endpoint_url(params.get("webhook_endpoint")) {
                Ok(url) => stored["webhook_endpoint"] = json!({"url": url}),
                Err(why) => return invalid(why),
            }
        }
        stored["updated"] = json!(state.engine.now());
        if let Err(response) = save_over(state.store.as_ref(), &stored, &was).await {
            return response;
        }
        Json(object(&stored, false)).into_response()
    };
    idempotent(&state, &headers, request, run).await
}

/// `POST /v2/core/event_destinations/{id}/ping`: sends a `v2.core.event_destination.ping`
/// event to the destination now, signed with its secret, and answers the event. The
/// attempt is in the destination's delivery log under the event's id.
async fn ping(state: &AppState, id: &str) -> Response {
    let stored = match load(state.store.as_ref(), id).await {
        Ok(Some(stored)) if stored["status"] == "enabled" => stored,
        Ok(Some(stored)) if stored["status"] == "disabled" => {
            return invalid(format!(
                "event destination `{id}` is disabled: enable it to ping it"
            ))
        }
        Ok(_) => return errors::not_found(&format!("No such event destination: `{id}`")),
        Err(response) => return response,
    };
    let endpoint = endpoint_of(&stored);
    let event = json!({
        "id": format!(
            "evt_{}_{}",
            if stored["livemode"] == true { "live" } else { "test" },
            uuid::Uuid::new_v4().simple()
        ),
        "object": "v2.core.event",
        "type": "v2.core.event_destination.ping",
        "created": state.engine.now(),
        "livemode": stored["livemode"],
        "related_object": {
            "id": id,
            "type": "v2.core.event_destination",
            "url": format!("/v2/core/event_destinations/{id}"),
        },
    });
    let client = match crate::webhooks::client(Duration::from_secs(10)) {
        Ok(client) => client,
        Err(err) => return errors::internal(err),
    };
    let event_id = event["id"].as_str().unwrap_or_default();
    let full = crate::api::with_full_fields(event.clone());
    // Kept before it is sent: the receiver may fetch it as soon as it arrives.
    if let Err(err) = state
        .store
        .save_state(&ping_key(event_id), &full.to_string())
        .await
    {
        return errors::internal(err);
    }
    let answer = crate::webhooks::send_once(&client, &endpoint, &event.to_string()).await;
    crate::webhooks::record_attempt(
        state.store.as_ref(),
        id,
        event_id,
        answer.as_ref().ok().copied(),
    )
    .await;
    Json(full).into_response()
}

/// `enable`, `disable` and `DELETE`.
async fn set_status(state: &AppState, id: &str, status: &str) -> Response {
    let (mut stored, was) = match load_as_stored(state.store.as_ref(), id).await {
        Ok(Some((stored, was))) if stored["status"] != "deleted" => (stored, was),
        Ok(_) => return errors::not_found(&format!("No such event destination: `{id}`")),
        Err(response) => return response,
    };
    if status == "enabled" && stored["status"] == "disabled" {
        // Events of the disabled time are not sent (they show as `not_sent`).
        let cursor = state
            .store
            .load_state(&crate::webhooks::cursor_key(id))
            .await;
        match (cursor, state.store.newest_event_sequence().await) {
            (Ok(cursor), Ok(newest)) => {
                start_after(state.store.as_ref(), id, newest, cursor.as_deref()).await
            }
            (Err(err), _) | (_, Err(err)) => return errors::internal(err),
        }
    }
    stored["status"] = json!(status);
    stored["updated"] = json!(state.engine.now());
    if let Err(response) = save_over(state.store.as_ref(), &stored, &was).await {
        return response;
    }
    if status == "deleted" {
        return Json(json!({"id": id, "object": "v2.core.event_destination", "deleted": true}))
            .into_response();
    }
    Json(object(&stored, false)).into_response()
}

/// `enable`, `disable` and `ping`, each under its `Idempotency-Key`; none takes
/// parameters.
pub(crate) async fn action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !matches!(action.as_str(), "enable" | "disable" | "ping") {
        return errors::not_found("Unrecognized request URL.");
    }
    let body = match crate::api::json_object(&headers, body, true, &[]) {
        Ok((body, _)) => body,
        Err(response) => return response,
    };
    let request = fingerprint(
        "POST",
        &format!("/v2/core/event_destinations/{id}/{action}"),
        &body,
    );
    let run = async {
        match action.as_str() {
            "enable" => set_status(&state, &id, "enabled").await,
            "disable" => set_status(&state, &id, "disabled").await,
            _ => ping(&state, &id).await,
        }
    };
    idempotent(&state, &headers, request, run).await
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request = fingerprint("DELETE", &format!("/v2/core/event_destinations/{id}"), b"");
    idempotent(
        &state,
        &headers,
        request,
        set_status(&state, &id, "deleted"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change saved over what it read does not undo a change made meanwhile: an
    /// update racing a delete is refused, and the destination stays deleted.
    #[tokio::test]
    async fn a_change_made_meanwhile_is_not_overwritten() {
        let store = offsession_store::MemoryStore::new();
        let made = json!({"id": "ed_1", "status": "enabled", "name": "a"});
        save(&store, &made).await.unwrap();
        let (mut updating, was) = load_as_stored(&store, "ed_1").await.unwrap().unwrap();
        // Deleted by another request after the update read it.
        let mut deleted = made.clone();
        deleted["status"] = json!("deleted");
        save(&store, &deleted).await.unwrap();
        updating["name"] = json!("b");
        let refused = save_over(&store, &updating, &was).await.unwrap_err();
        assert_eq!(refused.status(), 409);
        let now = load(&store, "ed_1").await.unwrap().unwrap();
        assert_eq!(now["status"], "deleted");
        // Read again, the same change is saved.
        let (mut again, was) = load_as_stored(&store, "ed_1").await.unwrap().unwrap();
        again["name"] = json!("b");
        save_over(&store, &again, &was).await.unwrap();
        assert_eq!(load(&store, "ed_1").await.unwrap().unwrap()["name"], "b");
    }
}
