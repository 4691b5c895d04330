//! `Idempotency-Key` on the POSTs other than a payment create (a create's key is
//! registered with its payment by the store: `Store::create`).
// Helpers return the error `Response` itself, ready to answer with.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use offsession_core::Store;
use serde_json::{json, Value};

use crate::errors::{self, invalid};
use crate::AppState;

/// How long a claimed idempotency key whose request has not finished keeps others
/// out (a request that long has been lost with its server). A capture running longer
/// is still protected by its hold on the payment (409 to a second one).
const IN_FLIGHT: Duration = Duration::from_secs(60);

/// The status kept while a claimed key's request runs.
const RUNNING: u64 = 0;

/// The status kept for a claimed key whose request ended without its answer kept.
const ENDED: u64 = 499;

/// The request's `Idempotency-Key`, if it carries one.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
            _ => Err(invalid(
                "`Idempotency-Key` must be 1 to 255 visible ASCII characters",
            )),
        },
    }
}

/// What identifies a request under its key: method, path and a hash of the body.
pub(crate) fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    format!(
        "{method} {path} {}",
        crate::auth::hash_key(&String::from_utf8_lossy(body))
    )
}

/// A POST other than a create, under its `Idempotency-Key`.
///
/// - The key is claimed before the operation runs (`Store::swap_state`): of two
///   requests with one key at once, on one instance or two, one runs and the other
///   gets 409 `idempotency_key_in_use` (retry).
/// - A repeat with the same request answers what the first answered
///   (`Idempotent-Replayed: true`) when that succeeded, and runs again when it was
///   refused or failed (as Stripe's v2 does: a refusal such as "retry once the payment
///   leaves processing" may not hold later, and a replayed refusal could never be
///   retried).
/// - The same key with another request is an `idempotency_error`.
/// - Answers are kept for `idempotency_ttl`. A claim whose request never finished (its
///   server stopped) is taken over after [`IN_FLIGHT`].
pub(crate) async fn idempotent<F>(
    state: &AppState,
    headers: &HeaderMap,
    request: String,
    run: F,
) -> Response
where
    F: std::future::Future<Output = Response>,
{
    let key = match idempotency_key(headers) {
        Ok(Some(key)) => key,
        Ok(None) => return run.await,
        Err(response) => return response,
    };
    let state_key = format!("{PREFIX}{key}");
    let now = state.engine.now().as_millis();
    let ttl = state.settings.idempotency_ttl.as_millis() as i64;
    let claim = json!({"request": request, "status": RUNNING, "at": now}).to_string();
    for _ in 0..3 {
        let saved = match state.store.load_state(&state_key).await {
            Ok(saved) => saved,
            Err(err) => return errors::internal(err),
        };
        if let Some(text) = &saved {
            if let Some(answer) = answer_from(text, &request, now, ttl) {
                return answer;
            }
        }
        // Free, expired, refused, or claimed by a request that never finished.
        match state
            .store
            .swap_state(&state_key, saved.as_deref(), &claim)
            .await
        {
            Ok(true) => {
                // Should the request end before its answer is kept (the client went
                // away and the handler was dropped, or it panicked), the claim is
                // handed back as a failure, so a retry runs at once instead of
                // finding the key in use.
                let mut guard = ClaimGuard {
                    store: state.store.clone(),
                    key: state_key.clone(),
                    claim: Some(claim),
                    request: request.clone(),
                    at: now,
                };
                let (response, kept) = remember(state, &state_key, request, now, run.await).await;
                if kept {
                    guard.claim = None;
                }
                return response;
            }
            // Another request changed the key meanwhile: look again.
            Ok(false) => continue,
            Err(err) => return errors::internal(err),
        }
    }
    key_in_use()
}

/// The answer a kept entry gives a request under its key: another request's key is an
/// `idempotency_error`, a running one is in use, a success is replayed. `None`: the
/// request runs (the entry expired, was refused or failed, or its request was lost).
fn answer_from(saved: &str, request: &str, now: i64, ttl: i64) -> Option<Response> {
    let saved: Value = serde_json::from_str(saved).unwrap_or(Value::Null);
    let age = now.saturating_sub(saved["at"].as_i64().unwrap_or(i64::MIN));
    if age >= ttl {
        return None;
    }
    if saved["request"].as_str() != Some(request) {
        return Some(errors::error(
            400,
            "idempotency_error",
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
        ));
    }
    let status = saved["status"].as_u64().unwrap_or(RUNNING);
    if status == RUNNING && age < IN_FLIGHT.as_millis() as i64 {
        return Some(key_in_use());
    }
    if !(200..300).contains(&status) {
        return None;
    }
    let mut response = (
        StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
        Json(saved["body"].clone()),
    )
        .into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", "true".parse().expect("header"));
    Some(response)
}

fn key_in_use() -> Response {
    errors::error(
        409,
        "idempotency_error",
        "idempotency_key_in_use",
        "Another request with this idempotency key is in progress; retry shortly.",
    )
}

/// A claimed key whose request has not kept its answer yet; dropped while it still
/// holds the claim, it replaces the claim with a failure ([`ENDED`]), which a retry
/// runs again.
struct ClaimGuard {
    store: Arc<dyn Store>,
    key: String,
    claim: Option<String>,
    request: String,
    at: i64,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let ended = json!({"request": self.request, "status": ENDED, "body": null, "at": self.at})
            .to_string();
        let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = store.swap_state(&key, Some(&claim), &ended).await {
                    tracing::warn!(error = %err, "could not hand back an idempotency key; it is free again after a minute");
                }
            });
        }
    }
}

/// Keeps an answer under its idempotency key (in place of the claim) and returns it,
/// with whether it was kept. Every answer replaces the claim, a failure too: a retry
/// then runs again instead of finding the key in use.
async fn remember(
    state: &AppState,
    state_key: &str,
    request: String,
    now: i64,
    response: Response,
) -> (Response, bool) {
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let saved = json!({"request": request, "status": status, "body": body, "at": now});
    let kept = match state.store.save_state(state_key, &saved.to_string()).await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, "could not keep an idempotent answer");
            false
        }
    };
    (
        Response::from_parts(parts, axum::body::Body::from(bytes)),
        kept,
    )
}

/// Where a POST's saved answer is kept under its key.
const PREFIX: &str = "idempotency/";

/// Saved answers the retention sweep reads at a time.
pub(crate) const SWEEP_PAGE: usize = 500;

/// Removes the saved answers (and abandoned claims) of keys older than `ttl` at `now`
/// (milliseconds); returns how many. An entry that a request claimed again meanwhile
/// is left alone (the removal is conditional on the value the sweep read).
pub(crate) async fn sweep_answers(
    store: &dyn Store,
    now: i64,
    ttl: Duration,
) -> Result<usize, offsession_core::StoreError> {
    let ttl = ttl.as_millis() as i64;
    let mut removed = 0;
    // A page at a time: a month of saved answers (each a whole payment object) is not
    // read into memory at once, nor, on SQLite, in one call of the writer.
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_state_page(PREFIX, after.as_deref(), SWEEP_PAGE)
            .await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (key, text) in page {
            let at = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|saved| saved["at"].as_i64());
            // Unreadable entries are no answer anyone can be given: removed too.
            if at.is_none_or(|at| now.saturating_sub(at) >= ttl)
                && store.remove_state_if(&key, &text).await?
            {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_answers_are_removed_and_live_ones_kept() {
        let store = offsession_store::MemoryStore::new();
        let day = Duration::from_secs(86_400);
        let now = 100 * 86_400_000;
        let entry = |at: i64, status: u64| {
            json!({"request": "POST /x h", "status": status, "body": {}, "at": at}).to_string()
        };
        let old = entry(now - 2 * 86_400_000, 200);
        store.save_state("idempotency/old", &old).await.unwrap();
        store
            .save_state("idempotency/running-old", &entry(now - 86_400_000, RUNNING))
            .await
            .unwrap();
        store
            .save_state("idempotency/new", &entry(now - 1_000, 200))
            .await
            .unwrap();
        store
            .save_state("idempotency/junk", "not json")
            .await
            .unwrap();
        store.save_state("smart", "{}").await.unwrap();
        assert_eq!(sweep_answers(&store, now, day).await.unwrap(), 3);
        let left: Vec<String> = store
            .list_state("")
            .await
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(left, ["idempotency/new", "smart"]);
        // An entry claimed again after the sweep read it stays.
        store.save_state("idempotency/old", &old).await.unwrap();
        let fresh = entry(now, RUNNING);
        assert!(store
            .swap_state("idempotency/old", Some(&old), &fresh)
            .await
            .unwrap());
        assert!(!store
            .remove_state_if("idempotency/old", &old)
            .await
            .unwrap());
        assert_eq!(sweep_answers(&store, now, day).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_sweep_reads_page_after_page_and_removes_every_expired_answer() {
        let store = offsession_store::MemoryStore::new();
        let day = Duration::from_secs(86_400);
        let now = 100 * 86_400_000;
        let total = 2 * SWEEP_PAGE + 3;
        for i in 0..total {
            let at = if i % 2 == 0 {
                now - 2 * 86_400_000
            } else {
                now
            };
            let entry = json!({"request": "POST /x h", "status": 200, "body": {}, "at": at});
            store
                .save_state(&format!("idempotency/{i:05}"), &entry.to_string())
                .await
                .unwrap();
        }
        assert_eq!(
            sweep_answers(&store, now, day).await.unwrap(),
            total.div_ceil(2)
        );
        let left = store.list_state("idempotency/").await.unwrap();
        assert_eq!(left.len(), total / 2);
        assert!(left
            .iter()
            .all(|(_, text)| text.contains(&format!("\"at\":{now}"))));
    }
}
