//! Test clocks over HTTP, in Stripe's v1 form encoding: create, retrieve, advance.
// As in `api`: helpers return the error `Response` itself.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use offsession_core::Timestamp;
use offsession_orchestrator::TestClock;
use serde_json::{json, Value};

use crate::errors::{self, invalid};
use crate::idempotency::{fingerprint, idempotent};
use crate::AppState;

fn clock_object(state: &AppState, clock: &TestClock, advancing: bool) -> Value {
    // A clock stored before its creation time was kept shows the time of the request.
    let created = clock
        .created
        .unwrap_or_else(|| state.engine.now())
        .as_millis()
        / 1000;
    json!({
        "id": clock.id,
        "object": "test_helpers.test_clock",
        "created": created,
        "deletes_after": created + 30 * 86_400,
        "frozen_time": clock.frozen_time.as_millis() / 1000,
        "livemode": false,
        "name": clock.name,
        "status": if advancing { "advancing" } else { "ready" },
        "status_details": {},
    })
}

fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn frozen_time(form: &[(String, String)]) -> Result<Timestamp, Response> {
    let Some(text) = form_value(form, "frozen_time") else {
        return Err(invalid("`frozen_time` is required (Unix seconds)"));
    };
    match text.parse::<i64>() {
        Ok(secs) if secs > 0 && secs < 253_402_300_800 => Ok(Timestamp::from_millis(secs * 1000)),
        _ => Err(invalid(format!(
            "`frozen_time` must be Unix seconds (got `{text}`)"
        ))),
    }
}

/// The test clocks' path (Stripe's v1 test helpers).
const CLOCKS: &str = "/v1/test_helpers/test_clocks";

/// The body, or a 400 saying it could not be read.
fn readable(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|r| invalid(format!("the request body could not be read: {r}")))
}

/// Decodes `application/x-www-form-urlencoded` pairs.
fn serde_urlencoded_pairs(body: &[u8]) -> Result<Vec<(String, String)>, Response> {
    let text =
        std::str::from_utf8(body).map_err(|_| invalid("the form body is not valid UTF-8"))?;
    let decode = |s: &str| -> Result<String, Response> {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| invalid("the form body has a bad `%` escape"))?;
                out.push(hex);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).map_err(|_| invalid("the form body is not valid UTF-8"))
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

pub(crate) async fn create_clock(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match readable(body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = fingerprint("POST", CLOCKS, &body);
    let run = create_clock_now(state.clone(), body);
    idempotent(&state, &headers, request, run).await
}

async fn create_clock_now(state: AppState, body: Bytes) -> Response {
    let form = match serde_urlencoded_pairs(&body) {
        Ok(form) => form,
        Err(response) => return response,
    };
    if let Some((unknown, _)) = form
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "frozen_time" | "name"))
    {
        return invalid(format!("`{unknown}`: unknown parameter"));
    }
    let at = match frozen_time(&form) {
        Ok(at) => at,
        Err(response) => return response,
    };
    match state
        .engine
        .create_named_test_clock(at, form_value(&form, "name"))
        .await
    {
        Ok(clock) => Json(clock_object(&state, &clock, false)).into_response(),
        Err(err) => errors::api(err),
    }
}

pub(crate) async fn retrieve_clock(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let clock = match state.engine.retrieve_test_clock(&id).await {
        Ok(clock) => clock,
        Err(err) => return errors::api(err),
    };
    match state.engine.test_clock_advancing(&id).await {
        Ok(advancing) => Json(clock_object(&state, &clock, advancing)).into_response(),
        Err(err) => errors::api(err),
    }
}

/// Moves the clock to `frozen_time` and runs the attempts due in between, in order,
/// in the background; the clock shows `advancing` until they have run.
pub(crate) async fn advance_clock(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match readable(body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = fingerprint("POST", &format!("{CLOCKS}/{id}/advance"), &body);
    let run = advance_clock_now(state.clone(), id, body);
    idempotent(&state, &headers, request, run).await
}

async fn advance_clock_now(state: AppState, id: String, body: Bytes) -> Response {
    let form = match serde_urlencoded_pairs(&body) {
        Ok(form) => form,
        Err(response) => return response,
    };
    if let Some((unknown, _)) = form.iter().find(|(k, _)| k != "frozen_time") {
        return invalid(format!("`{unknown}`: unknown parameter"));
    }
    let to = match frozen_time(&form) {
        Ok(at) => at,
        Err(response) => return response,
    };
    // One advance of a clock at a time, across every instance sharing the store. The
    // claim comes first, so that the clock's time checked below is not moved by an
    // advance finishing meanwhile.
    let holder = match state.engine.claim_test_clock_advance(&id).await {
        Ok(Some(holder)) => holder,
        Ok(None) => {
            return errors::error(
                400,
                "invalid_request_error",
                "test_clock_advancing",
                "The test clock is already advancing; wait until its status is `ready`.",
            )
        }
        Err(err) => return errors::api(err),
    };
    let (refused, clock) = match state.engine.retrieve_test_clock(&id).await {
        Ok(clock) if to <= clock.frozen_time => (
            Some(invalid(
                "`frozen_time` must be later than the clock's current time",
            )),
            None,
        ),
        Ok(clock) => (None, Some(clock)),
        Err(err) => (Some(errors::api(err)), None),
    };
    if let Some(response) = refused {
        if let Err(err) = state.engine.release_test_clock_advance(&id, &holder).await {
            tracing::warn!(clock = %id, error = %err, "could not end a test clock's advance; it lapses within a minute");
        }
        return response;
    }
    let engine = state.engine.clone();
    let clock_id = id.clone();
    tokio::spawn(async move {
        // The claim is renewed while the advance runs, however long a step takes; an
        // advance that lost its claim (it lapsed, and another instance took it) stops
        // before its next step (a step is not cut short: its attempts finish).
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewal = {
            let (engine, clock_id, lost, holder) = (
                engine.clone(),
                clock_id.clone(),
                lost.clone(),
                holder.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(offsession_orchestrator::ADVANCE_LEASE / 3).await;
                    match engine.renew_test_clock_advance(&clock_id, &holder).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, std::sync::atomic::Ordering::Release);
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(clock = %clock_id, error = %err, "renewing a test clock's advance failed");
                        }
                    }
                }
            })
        };
        if let Err(err) = engine.advance_test_clock_unless(&clock_id, to, &lost).await {
            tracing::warn!(clock = %clock_id, error = %err, "advancing a test clock failed");
        }
        renewal.abort();
        // Let a caller polling right after see `advancing` at least once.
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Err(err) = engine.release_test_clock_advance(&clock_id, &holder).await {
            tracing::warn!(clock = %clock_id, error = %err, "could not end a test clock's advance; it lapses within a minute");
        }
    });
    let moving = TestClock {
        frozen_time: to,
        ..clock.unwrap_or(TestClock {
            id: id.clone(),
            frozen_time: to,
            created: None,
            name: None,
        })
    };
    Json(clock_object(&state, &moving, true)).into_response()
}
