//! The routes and their handlers.
// Helpers return the error `Response` itself, ready to answer with; boxing it would
// only add an allocation on the error path.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use offsession_core::OutboxEvent;
use serde_json::{json, Map, Value};

use crate::clocks::{advance_clock, create_clock, retrieve_clock};
use crate::errors::{self, invalid};
use crate::idempotency::{fingerprint, idempotency_key, idempotent};
use crate::AppState;

const PAYMENTS: &str = "/v2/payments/off_session_payments";

/// Every route of the API on `state`.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let api = Router::new()
        .route(PAYMENTS, post(create).get(list))
        .route("/v2/payments/off_session_payments/{id}", get(retrieve))
        .route(
            "/v2/payments/off_session_payments/{id}/{action}",
            post(action),
        )
        .route("/v2/core/events", get(list_events))
        .route("/v2/core/events/{id}", get(retrieve_event))
        .route(
            "/v2/core/events/{id}/deliveries",
            get(crate::deliveries::deliveries),
        )
        .route(
            "/v2/core/events/{id}/resend",
            post(crate::deliveries::resend),
        )
        .route(
            "/v2/core/event_destinations",
            post(crate::destinations::create).get(crate::destinations::list),
        )
        .route(
            "/v2/core/event_destinations/{id}",
            get(crate::destinations::retrieve)
                .post(crate::destinations::update)
                .delete(crate::destinations::delete),
        )
        .route(
            "/v2/core/event_destinations/{id}/{action}",
            post(crate::destinations::action),
        )
        .route("/v1/test_helpers/test_clocks", post(create_clock))
        .route("/v1/test_helpers/test_clocks/{id}", get(retrieve_clock))
        .route(
            "/v1/test_helpers/test_clocks/{id}/advance",
            post(advance_clock),
        )
        .route_layer(middleware::from_fn(refuse_control_characters))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [("content-type", "application/json")],
                    include_str!("../openapi.json"),
                )
            }),
        )
        .fallback(|| async { errors::not_found("Unrecognized request URL.") })
        .method_not_allowed_fallback(|| async {
            errors::error(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "This method is not allowed on this URL.",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A path or query holding a percent-encoded control character (`%00`–`%1F`,
/// `%7F`) names nothing: no id has one (they are letters, digits, `_` and `-`), and
/// Postgres refuses a NUL in text, which would answer 500. 404 for a path, 400 for a
/// query, after the key is checked.
async fn refuse_control_characters(request: Request, next: Next) -> Response {
    fn encoded_control(text: &str) -> bool {
        text.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && ((matches!(w[1], b'0' | b'1') && w[2].is_ascii_hexdigit())
                    || (w[1] == b'7' && matches!(w[2], b'f' | b'F')))
        })
    }
    if encoded_control(request.uri().path()) {
        return errors::not_found("No such object: the URL holds a control character.");
    }
    if request.uri().query().is_some_and(encoded_control) {
        return invalid("query parameters must not hold control characters (%00-%1F, %7F)");
    }
    next.run(request).await
}

/// `Authorization: Bearer <key>`, the key's mode, and its rate limit. The key is never
/// logged.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = presented.filter(|k| !k.is_empty()) else {
        return errors::error(
            401,
            "invalid_request_error",
            "api_key_missing",
            "No API key provided: send `Authorization: Bearer <secret key>`.",
        );
    };
    if !state.settings.keys.accepts(key) {
        return errors::error(
            401,
            "invalid_request_error",
            "api_key_invalid",
            "Invalid API key provided.",
        );
    }
    let live = key.starts_with("sk_live_") || key.starts_with("rk_live_");
    if live != state.engine.config().livemode {
        return errors::error(
            401,
            "invalid_request_error",
            "api_key_wrong_mode",
            if live {
                "A live-mode key was sent to a server in test mode."
            } else {
                "A test-mode key was sent to a server in live mode."
            },
        );
    }
    if let Err(wait) = state.limiter.check(&crate::auth::hash_key(key)) {
        return errors::rate_limited(wait);
    }
    tracing::info!(method = %request.method(), path = %request.uri().path(), "request");
    next.run(request).await
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.load_state("readyz").await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "store unreachable");
            errors::error(
                503,
                "api_error",
                "store_unavailable",
                "The store cannot be reached.",
            )
        }
    }
}

/// A JSON body: `Content-Type: application/json` when there is one; an empty body
/// is `{}` where `empty_ok`.
/// A JSON object body whose keys are all in `known` (an empty body is `{}` when
/// `empty_ok`): the raw bytes (for idempotency fingerprints) and the object.
pub(crate) fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
    known: &[&str],
) -> Result<(Bytes, Map<String, Value>), Response> {
    let body = json_body(headers, body, empty_ok)?;
    let params: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(invalid("the body must be a JSON object")),
        Err(err) => return Err(invalid(format!("the body is not valid JSON: {err}"))),
    };
    if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(format!("unknown parameter `{unknown}`")));
    }
    Ok((body, params))
}

pub(crate) fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
) -> Result<Bytes, Response> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            errors::error(
                413,
                "invalid_request_error",
                "request_too_large",
                "The request body is larger than this server accepts.",
            )
        } else {
            invalid(format!("the request body could not be read: {rejection}"))
        }
    })?;
    if body.is_empty() {
        return if empty_ok {
            Ok(Bytes::from_static(b"{}"))
        } else {
            Err(invalid("a JSON body is required"))
        };
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(errors::error(
            415,
            "invalid_request_error",
            "unsupported_media_type",
            format!("the body must be `application/json` (got `{mime}`)"),
        ));
    }
    Ok(body)
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match json_body(&headers, body, false) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(response) => return response,
    };
    match state
        .engine
        .create_json_replayed(&body, key.as_deref())
        .await
    {
        Ok((payment, replayed)) => {
            let mut response = Json(payment).into_response();
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Err(err) => errors::api(err),
    }
}

async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.engine.retrieve(&id).await {
        Ok(payment) => Json(payment).into_response(),
        Err(err) => errors::api(err),
    }
}

pub(crate) fn query_value(query: &[(String, String)], allowed: &[&str]) -> Result<(), Response> {
    for (name, _) in query {
        if !allowed.contains(&name.as_str()) {
            return Err(invalid(format!(
                "unknown query parameter `{name}` (allowed: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

pub(crate) fn limit_of(query: &[(String, String)]) -> Result<usize, Response> {
    match query.iter().find(|(k, _)| k == "limit") {
        None => Ok(20),
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(invalid(format!(
                "`limit` must be an integer from 1 to 100 (got `{v}`)"
            ))),
        },
    }
}

async fn list(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(response) = query_value(&query, &["limit", "page"]) {
        return response;
    }
    let limit = match limit_of(&query) {
        Ok(limit) => limit,
        Err(response) => return response,
    };
    let page = query
        .iter()
        .find(|(k, _)| k == "page")
        .map(|(_, v)| v.as_str());
    if let Some(page) = page {
        if !page.starts_with("osp_") {
            return invalid(format!("`page` `{page}` is not a page token of this list"));
        }
        // A token names the last payment of the previous page. One this server does
        // not hold (never made, or forgotten by `memory_keep_settled`) would read as
        // the end of the list: refuse it, as the events list does.
        match state.store.get(page).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return invalid(format!(
                    "`page` `{page}` is not a page token of this list (no such payment)"
                ))
            }
            Err(err) => return errors::internal(err),
        }
    }
    let mut payments = match state.engine.list(limit + 1, page).await {
        Ok(payments) => payments,
        Err(err) => return errors::api(err),
    };
    let more = payments.len() > limit;
    payments.truncate(limit);
    let next = match payments.last() {
        Some(last) if more => Value::String(format!("{PAYMENTS}?limit={limit}&page={}", last.id)),
        _ => Value::Null,
    };
    Json(json!({"data": payments, "next_page_url": next, "previous_page_url": null}))
        .into_response()
}

async fn action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !matches!(action.as_str(), "cancel" | "pause" | "resume" | "capture") {
        return errors::not_found("Unrecognized request URL.");
    }
    let allowed: &[&str] = if action == "capture" {
        &["amount_to_capture"]
    } else {
        &[]
    };
    let (body, params) = match json_object(&headers, body, true, allowed) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let amount = match params.get("amount_to_capture") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(n),
            None => return invalid("`amount_to_capture` must be an integer"),
        },
    };
    let request = fingerprint("POST", &format!("{PAYMENTS}/{id}/{action}"), &body);
    let engine = state.engine.clone();
    // The key goes with the operation into the payment's record, so that a run again
    // after a lost answer finds the operation done (`Engine::cancel_keyed`).
    let key = idempotency_key(&headers).ok().flatten();
    idempotent(&state, &headers, request, async move {
        let key = key.as_deref();
        let result = match action.as_str() {
            "cancel" => engine.cancel_keyed(&id, key).await,
            "pause" => engine.pause_keyed(&id, key).await,
            "resume" => engine.resume_keyed(&id, key).await,
            _ => engine.capture_keyed(&id, amount, key).await,
        };
        match result {
            Ok(payment) => Json(payment).into_response(),
            Err(err) => errors::api(err),
        }
    })
    .await
}

/// The full event of a thin notification.
fn full_event(event: &OutboxEvent) -> Value {
    with_full_fields(serde_json::to_value(&event.event).unwrap_or(Value::Null))
}

/// A thin event (notification) with the full event's fields it does not carry:
/// `context`, `reason` and `changes`, none of which this server records.
pub(crate) fn with_full_fields(mut event: Value) -> Value {
    if let Value::Object(map) = &mut event {
        map.insert("context".into(), Value::Null);
        map.insert("reason".into(), Value::Null);
        map.insert("changes".into(), Value::Null);
    }
    event
}

async fn retrieve_event(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.store.event(&id).await {
        Ok(Some(event)) => Json(full_event(&event)).into_response(),
        Ok(None) => match crate::destinations::stored_ping(state.store.as_ref(), &id).await {
            Ok(Some(ping)) => Json(ping).into_response(),
            Ok(None) => errors::not_found(&format!("No such event: `{id}`")),
            Err(response) => response,
        },
        Err(err) => errors::internal(err),
    }
}

async fn list_events(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(response) = query_value(&query, &["object_id", "limit", "page"]) {
        return response;
    }
    let limit = match limit_of(&query) {
        Ok(limit) => limit,
        Err(response) => return response,
    };
    let Some((_, object_id)) = query.iter().find(|(k, _)| k == "object_id") else {
        return invalid("`object_id` is required: events are listed per object");
    };
    match state.store.events_for(object_id, 10_000).await {
        Ok(events) => {
            // Newest first; `page` is the id of the last event of the previous page.
            let newest_first: Vec<&OutboxEvent> = events.iter().rev().collect();
            let start = match query.iter().find(|(k, _)| k == "page") {
                None => 0,
                Some((_, after)) => match newest_first.iter().position(|e| e.event.id == *after) {
                    Some(index) => index + 1,
                    None => {
                        return invalid(format!(
                            "`page`: `{after}` is not an event of `{object_id}`"
                        ))
                    }
                },
            };
            let page: Vec<&OutboxEvent> = newest_first
                .iter()
                .skip(start)
                .take(limit)
                .copied()
                .collect();
            let next = match page.last() {
                Some(last) if start + page.len() < newest_first.len() => Value::String(format!(
                    "/v2/core/events?object_id={object_id}&limit={limit}&page={}",
                    last.event.id
                )),
                _ => Value::Null,
            };
            let data: Vec<Value> = page.into_iter().map(full_event).collect();
            Json(json!({"data": data, "next_page_url": next, "previous_page_url": null}))
                .into_response()
        }
        Err(err) => errors::internal(err),
    }
}
