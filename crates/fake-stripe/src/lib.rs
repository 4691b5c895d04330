//! A fake Stripe PaymentIntents API on loopback, for tests that kill the engine: it
//! runs in its own process, so its ledger of charges outlives every engine crash.
//!
//! It answers what the offsession Stripe adapter sends:
//! - `POST /v1/payment_intents` (confirm, off-session) with Stripe's idempotency: a
//!   key seen before gets the stored answer (`Idempotent-Replayed: true`), a key
//!   reused with other parameters gets `idempotency_error`;
//! - `GET /v1/payment_intents/{id}`, `POST …/{id}/capture`, `POST …/{id}/cancel`;
//! - `GET /v1/payment_methods/{id}` and `GET /v1/setup_intents`: every `pm_X` is a
//!   card attached to customer `cus_X` and set up off-session (brand `mastercard` when
//!   the id contains `mastercard`, else `visa`);
//! - `GET /ledger`: every charge made, by idempotency key and by
//!   `metadata[offsession_payment_id]`, and what was injected.
//!
//! Faults are injected by [`FakeConfig`], decided from the seed, so a run repeats:
//! - declines: the first attempt of a payment declines (`insufficient_funds`) with
//!   `decline_rate`; a later attempt succeeds with `recover_rate`;
//! - `fault_5xx_rate`: a 500 before anything is executed (nothing charged or stored,
//!   as Stripe answers when a request failed before it ran);
//! - `timeout_rate`: the charge is made and stored, and the answer is held for
//!   `hang` (longer than the client waits), as when a connection drops after Stripe
//!   charged;
//! - `rate_limit`: creates above this many per second are refused with 429 (nothing
//!   stored, as Stripe does for rate limits);
//! - `latency`: every answer waits this long.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

mod lookups;

use lookups::*;

/// What the fake injects.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeConfig {
    /// Seeds every decision.
    pub seed: u64,
    /// The secret key requests must carry (`Authorization: Bearer …`).
    pub api_key: String,
    /// Share of payments whose first attempt declines.
    pub decline_rate: f64,
    /// Share of later attempts that succeed.
    pub recover_rate: f64,
    /// Share of creates answered 500 before anything runs.
    pub fault_5xx_rate: f64,
    /// Share of creates charged and then held for `hang`.
    pub timeout_rate: f64,
    /// How long a timed-out answer is held.
    pub hang: Duration,
    /// Creates per second above which 429 is answered (`None`: no limit).
    pub rate_limit: Option<u32>,
    /// Every answer waits this long.
    pub latency: Duration,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            seed: 1,
            api_key: "sk_test_fake_0123456789".into(),
            decline_rate: 0.0,
            recover_rate: 1.0,
            fault_5xx_rate: 0.0,
            timeout_rate: 0.0,
            hang: Duration::from_secs(5),
            rate_limit: None,
            latency: Duration::ZERO,
        }
    }
}

/// A charge the fake made (a PaymentIntent that succeeded or awaits capture).
#[derive(Debug, Clone, Serialize)]
pub struct Charge {
    /// `pi_…`.
    pub payment_intent: String,
    /// The idempotency key it was made under.
    pub idempotency_key: String,
    /// `metadata[offsession_payment_id]`.
    pub payment_id: String,
    /// `metadata[offsession_attempt]`.
    pub attempt: String,
    /// Minor units.
    pub amount: i64,
    /// ISO currency, lowercase.
    pub currency: String,
    /// `succeeded` or `requires_capture`.
    pub status: String,
}

/// What was injected and answered, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Every request.
    pub requests: u64,
    /// `POST /v1/payment_intents`.
    pub creates: u64,
    /// Creates answered from the idempotency store.
    pub replays: u64,
    /// Creates refused with 429.
    pub rate_limited: u64,
    /// Creates refused with 500 before running.
    pub faults_5xx: u64,
    /// Creates charged whose answer was held.
    pub timeouts: u64,
    /// Creates declined.
    pub declines: u64,
    /// Creates that made a charge.
    pub charged: u64,
    /// Creates refused for a key reused with other parameters.
    pub idempotency_errors: u64,
}

/// The ledger `GET /ledger` answers.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerView {
    /// Every charge, in the order made.
    pub charges: Vec<Charge>,
    /// Counts.
    pub counters: Counters,
    /// Creates not refused with 429 (new and replayed), and the seconds between the
    /// first and the last of them: the rate a client used.
    pub accepted_creates: u64,
    /// Seconds from the first to the last accepted create.
    pub accepted_span_seconds: f64,
    /// The configured limit.
    pub rate_limit: Option<u32>,
}

type StoredReply = (Vec<(String, String)>, u16, Value);

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Default)]
struct Ledger {
    stored: HashMap<String, StoredReply>,
    intents: HashMap<String, Value>,
    charges: Vec<Charge>,
    seen_keys: HashMap<String, u64>,
    counters: Counters,
    bucket: Option<Bucket>,
    first_accepted: Option<Instant>,
    last_accepted: Option<Instant>,
    accepted: u64,
    next_id: u64,
}

/// A running fake.
#[derive(Clone)]
pub struct Fake {
    config: Arc<FakeConfig>,
    ledger: Arc<Mutex<Ledger>>,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fake")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A number in [0, 1) from the seed and the parts, the same every run.
fn uniform(seed: u64, parts: &[&str], n: u64) -> f64 {
    // FNV-1a over the parts, then splitmix64.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let mut z = h ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn error(status: u16, error: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({ "error": error })),
    )
        .into_response()
}

fn missing(what: &str, id: &str) -> Response {
    error(
        404,
        json!({"type": "invalid_request_error", "code": "resource_missing",
               "message": format!("No such {what}: '{id}'")}),
    )
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

impl Fake {
    /// A fake with `config`, not yet listening.
    pub fn new(config: FakeConfig) -> Fake {
        let bucket = config.rate_limit.map(|limit| Bucket {
            tokens: f64::from(limit),
            refilled: Instant::now(),
        });
        Fake {
            config: Arc::new(config),
            ledger: Arc::new(Mutex::new(Ledger {
                bucket,
                ..Ledger::default()
            })),
        }
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/{id}", get(get_intent))
            .route("/v1/payment_intents/{id}/capture", post(capture_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/payment_methods/{id}", get(get_payment_method))
            .route("/v1/setup_intents", get(list_setup_intents))
            .route("/ledger", get(ledger))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` and serves in the background; returns the bound address.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(self.serve(listener, std::future::pending()));
        Ok(bound)
    }

    /// The ledger now.
    pub fn ledger(&self) -> LedgerView {
        let ledger = self.lock();
        LedgerView {
            charges: ledger.charges.clone(),
            counters: ledger.counters.clone(),
            accepted_creates: ledger.accepted,
            accepted_span_seconds: match (ledger.first_accepted, ledger.last_accepted) {
                (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
                _ => 0.0,
            },
            rate_limit: self.config.rate_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ledger for one request, the request counted; `None` (answer 401) unless it
    /// carries the secret key.
    fn ledger_for(&self, headers: &HeaderMap) -> Option<std::sync::MutexGuard<'_, Ledger>> {
        let mut ledger = self.lock();
        ledger.counters.requests += 1;
        self.authorized(headers).then_some(ledger)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(self.config.api_key.as_str())
    }

    /// Takes a token from the rate-limit bucket (capacity: one second of the limit).
    fn admit(&self, ledger: &mut Ledger) -> bool {
        let Some(limit) = self.config.rate_limit else {
            return true;
        };
        let Some(bucket) = ledger.bucket.as_mut() else {
            return true;
        };
        let now = Instant::now();
        let rate = f64::from(limit);
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn unauthorized() -> Response {
    error(
        401,
        json!({"type": "invalid_request_error", "message": "Invalid API Key provided"}),
    )
}

async fn create_intent(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let latency = fake.config.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (hold, response) = {
        let mut ledger = fake.lock();
        ledger.counters.requests += 1;
        ledger.counters.creates += 1;
        if !fake.authorized(&headers) {
            return unauthorized();
        }
        if !fake.admit(&mut ledger) {
            ledger.counters.rate_limited += 1;
            return error(
                429,
                json!({"type": "invalid_request_error", "code": "rate_limit",
                       "message": "Too many requests hit the API too quickly."}),
            );
        }
        let now = Instant::now();
        ledger.first_accepted.get_or_insert(now);
        ledger.last_accepted = Some(now);
        ledger.accepted += 1;
        let Some(key) = key else {
            return error(
                400,
                json!({"type": "invalid_request_error",
                       "message": "this fake requires an Idempotency-Key on every create"}),
            );
        };
        if let Some((original, status, body)) = ledger.stored.get(&key).cloned() {
            if original != form {
                ledger.counters.idempotency_errors += 1;
                return error(
                    400,
                    json!({"type": "idempotency_error",
                           "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."}),
                );
            }
            ledger.counters.replays += 1;
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                Json(body),
            )
                .into_response();
            response
                .headers_mut()
                .insert("Idempotent-Replayed", "true".parse().expect("header value"));
            return response;
        }
        let seen = {
            let seen = ledger.seen_keys.entry(key.clone()).or_insert(0);
            *seen += 1;
            *seen
        };
        let seed = fake.config.seed;
        if uniform(seed, &["5xx", &key], seen) < fake.config.fault_5xx_rate {
            ledger.counters.faults_5xx += 1;
            return error(
                500,
                json!({"type": "api_error", "message": "An unknown error occurred (injected)."}),
            );
        }
        let payment_id = field(&form, "metadata[offsession_payment_id]").to_owned();
        let attempt = field(&form, "metadata[offsession_attempt]").to_owned();
        let attempt_number: u64 = attempt.parse().unwrap_or(1);
        let approve = if attempt_number <= 1 {
            uniform(seed, &["decline", &payment_id], 1) >= fake.config.decline_rate
        } else {
            uniform(seed, &["recover", &payment_id], attempt_number) < fake.config.recover_rate
        };
        ledger.next_id += 1;
        let n = ledger.next_id;
        let id = format!("pi_fake{n:010}");
        let capture_manual = field(&form, "capture_method") == "manual";
        let mut intent = json!({
            "id": id,
            "object": "payment_intent",
            "amount": field(&form, "amount").parse::<i64>().unwrap_or(0),
            "currency": field(&form, "currency"),
            "customer": field(&form, "customer"),
            "payment_method": field(&form, "payment_method"),
            "capture_method": if capture_manual { "manual" } else { "automatic" },
            "livemode": false,
            "latest_charge": null,
            "last_payment_error": null,
            "metadata": {"offsession_payment_id": payment_id, "offsession_attempt": attempt},
        });
        let (status, body) = if approve {
            let status = if capture_manual {
                "requires_capture"
            } else {
                "succeeded"
            };
            intent["status"] = json!(status);
            intent["latest_charge"] = json!(format!("ch_fake{n:010}"));
            ledger.counters.charged += 1;
            ledger.charges.push(Charge {
                payment_intent: id.clone(),
                idempotency_key: key.clone(),
                payment_id,
                attempt,
                amount: intent["amount"].as_i64().unwrap_or(0),
                currency: field(&form, "currency").to_owned(),
                status: status.to_owned(),
            });
            ledger.intents.insert(id, intent.clone());
            (200, intent)
        } else {
            ledger.counters.declines += 1;
            let error = json!({
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "charge": format!("ch_fake{n:010}"),
                "payment_intent": {
                    "id": id, "object": "payment_intent", "status": "requires_payment_method",
                },
            });
            (402, json!({ "error": error }))
        };
        ledger
            .stored
            .insert(key.clone(), (form.clone(), status, body.clone()));
        let hold = uniform(seed, &["timeout", &key], seen) < fake.config.timeout_rate;
        if hold {
            ledger.counters.timeouts += 1;
        }
        let response = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            Json(body),
        )
            .into_response();
        (hold, response)
    };
    if hold {
        tokio::time::sleep(fake.config.hang).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_repeatable_and_spread() {
        assert_eq!(uniform(7, &["a", "b"], 1), uniform(7, &["a", "b"], 1));
        assert_ne!(uniform(7, &["a", "b"], 1), uniform(7, &["a", "b"], 2));
        assert_ne!(uniform(7, &["ab"], 1), uniform(7, &["a", "b"], 1));
        let below = (0..10_000)
            .filter(|n| uniform(3, &["x"], *n) < 0.25)
            .count();
        assert!((2_300..2_700).contains(&below), "{below}");
    }

    #[test]
    fn the_bucket_admits_one_second_of_the_limit_then_refuses() {
        let fake = Fake::new(FakeConfig {
            rate_limit: Some(10),
            ..FakeConfig::default()
        });
        let mut ledger = fake.lock();
        let admitted = (0..20).filter(|_| fake.admit(&mut ledger)).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn payment_methods_belong_to_their_customer() {
        assert_eq!(customer_of("pm_42").as_deref(), Some("cus_42"));
        assert_eq!(customer_of("pm_"), None);
        assert_eq!(customer_of("card_1"), None);
    }
}
