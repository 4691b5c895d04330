//! A fake Stripe API on loopback (axum), shaped by Stripe's own fixtures
//! (`tests/data/fixtures.json`, extracted from Stripe's `fixtures3.json` by
//! `scripts/extract_stripe_data.py`): PaymentIntents with idempotency, payment
//! methods, setup intents, and scripted answers per payment method.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use offsession_stripe::{SecretKey, StripeConfig, StripeProcessor};
use serde_json::{json, Value};

pub const KEY: &str = "sk_test_fake_0123456789";

/// What the fake answers to the next confirmation of a payment method.
#[derive(Debug, Clone)]
pub enum Script {
    Succeed,
    RequiresCapture,
    Processing,
    /// HTTP status, error object, and an optional `Stripe-Should-Retry`.
    Error(u16, Value, Option<bool>),
    /// Charges, then fails with this status (an `api_error`) after execution started:
    /// Stripe stores that answer under the key and replays it to every retry.
    ChargeThenFail(u16),
    /// Executes (and stores) the charge, then answers only after this delay.
    Hang(Duration, Box<Script>),
    // ----- misbehaviours: the charge is made and stored under the idempotency key as
    // usual (a replay gets the real PaymentIntent); only this answer is mangled, as a
    // proxy, a partial deploy or a broken connection would.
    /// HTTP 200 with this raw body (not a PaymentIntent).
    Garbage(String),
    /// HTTP 200 with the PaymentIntent lacking `status`.
    MissingStatus,
    /// HTTP 200 with the PaymentIntent's `status` set to this string.
    UnknownStatus(String),
    /// HTTP 200 with `object` set to this (`None`: removed); `"charge"` also gets a
    /// charge id.
    WrongObject(Option<String>),
    /// HTTP 200 with the PaymentIntent lacking `id`.
    MissingId,
    /// This status with a body of this many bytes: on 200, a real PaymentIntent padded
    /// with a huge `description` (the charge is made); otherwise an error whose message
    /// is that long (nothing charged).
    Huge(u16, usize),
    // ----- refusals that never reach the payment API: nothing charged or stored.
    /// This 3xx with this `Location`.
    Redirect(u16, String),
}

/// The garbage a proxy may answer with a 200.
pub fn garbage_bodies() -> Vec<String> {
    vec![
        "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
        String::new(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        "{\"id\": \"pi_fake_1\", \"object\": \"payment_intent\", \"status\": \"succ".into(),
        "\u{0}\u{1}binary\u{7f}".into(),
        "{\"error\": {\"type\": \"card_error\", \"code\": \"card_declined\"}}".into(),
    ]
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The route's path with ids percent-decoded (as the handler saw them).
    pub path: String,
    /// The path and query exactly as they arrived (still percent-encoded).
    pub raw_uri: String,
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    pub authorization: Option<String>,
}

/// What an idempotency key was first sent with, and what was answered.
pub type StoredReply = (Vec<(String, String)>, u16, Value);

#[derive(Default)]
pub struct FakeState {
    pub scripts: HashMap<String, VecDeque<Script>>,
    pub stored: HashMap<String, StoredReply>,
    pub requests: Vec<Recorded>,
    pub intents: HashMap<String, Value>,
    pub payment_methods: HashMap<String, Value>,
    pub setup_intents: Vec<Value>,
    pub charges_created: u32,
    /// Requests that reached the redirect target (`/elsewhere/...`): each would have
    /// been a second charge.
    pub redirect_hits: u32,
    /// Answers for the next payment-intent creations, given before the idempotency
    /// key is looked at, as Stripe's rate limiter answers: `None` lets one request
    /// through; a status and error object answer it with nothing executed or stored.
    pub gate: VecDeque<Option<(u16, Value)>>,
    counter: u32,
}

#[derive(Clone)]
pub struct Fake {
    pub state: Arc<Mutex<FakeState>>,
    pub addr: SocketAddr,
}

/// Stripe's fixtures, trimmed to the resources used here by
/// `scripts/extract_stripe_data.py` (from `fixtures3.json`); inside the crate.
fn fixtures() -> &'static Value {
    static FIXTURES: OnceLock<Value> = OnceLock::new();
    FIXTURES.get_or_init(|| serde_json::from_str(include_str!("../data/fixtures.json")).unwrap())
}

pub fn fixture(name: &str) -> Value {
    let value = fixtures()["resources"][name].clone();
    assert!(
        value.is_object(),
        "no fixture `{name}` in tests/data/fixtures.json"
    );
    value
}

fn error_response(status: u16, error: Value, should_retry: Option<bool>) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "error": error })),
    )
        .into_response();
    if let Some(retry) = should_retry {
        response.headers_mut().insert(
            "Stripe-Should-Retry",
            if retry { "true" } else { "false" }.parse().unwrap(),
        );
    }
    response
}

fn record(
    state: &mut FakeState,
    method: &str,
    path: &str,
    uri: &Uri,
    headers: &HeaderMap,
    form: Vec<(String, String)>,
) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    state.requests.push(Recorded {
        method: method.into(),
        path: path.into(),
        raw_uri: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        form,
        idempotency_key: header("idempotency-key"),
        stripe_version: header("stripe-version"),
        authorization: header("authorization"),
    });
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"))
}

async fn create_intent(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (delay, response) = {
        let mut state = fake.state.lock().unwrap();
        record(
            &mut state,
            "POST",
            "/v1/payment_intents",
            &uri,
            &headers,
            form.clone(),
        );
        if !authorized(&headers) {
            return error_response(
                401,
                json!({"type": "invalid_request_error", "message": "Invalid API Key provided"}),
                None,
            );
        }
        if let Some(Some((status, error))) = state.gate.pop_front() {
            // A string is a proxy's page, sent as it is; an object is Stripe's error.
            if let Value::String(page) = error {
                return (StatusCode::from_u16(status).unwrap(), page).into_response();
            }
            return error_response(status, error, None);
        }
        if let Some(key) = &key {
            if let Some((original, status, body)) = state.stored.get(key).cloned() {
                if original != form {
                    return error_response(
                        400,
                        json!({"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."}),
                        None,
                    );
                }
                let mut response =
                    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
                response
                    .headers_mut()
                    .insert("Idempotent-Replayed", "true".parse().unwrap());
                return response;
            }
        }
        let get = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let pm = get("payment_method");
        let mut script = state
            .scripts
            .get_mut(&pm)
            .and_then(|q| q.pop_front())
            .unwrap_or(Script::Succeed);
        let mut delay = None;
        if let Script::Hang(d, inner) = script {
            delay = Some(d);
            script = *inner;
        }
        state.counter += 1;
        let n = state.counter;
        let mut intent = fixture("payment_intent");
        intent["id"] = json!(format!("pi_fake_{n}"));
        intent["amount"] = json!(get("amount").parse::<i64>().unwrap_or(0));
        intent["currency"] = json!(get("currency"));
        intent["customer"] = json!(get("customer"));
        intent["payment_method"] = json!(pm);
        intent["last_payment_error"] = Value::Null;
        intent["created"] = json!(1_767_225_600 + i64::from(n));
        intent["metadata"] = form
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
                Some((key.to_owned(), json!(v)))
            })
            .collect::<serde_json::Map<String, Value>>()
            .into();
        if let Script::Redirect(status, location) = &script {
            // A proxy's answer: Stripe never saw the request; nothing is stored.
            let mut response = StatusCode::from_u16(*status).unwrap().into_response();
            response
                .headers_mut()
                .insert("location", location.parse().unwrap());
            return response;
        }
        let (status, body) = match &script {
            Script::Error(status, error, _) => {
                let mut error = error.clone();
                if *status == 402 {
                    intent["status"] = json!("requires_payment_method");
                    error["payment_intent"] = intent.clone();
                    error["charge"] = json!(format!("ch_fake_declined_{n}"));
                }
                (*status, json!({ "error": error }))
            }
            Script::Huge(status, bytes) if *status != 200 => (
                *status,
                json!({"error": {"type": "api_error", "message": "x".repeat(*bytes)}}),
            ),
            Script::ChargeThenFail(status) => {
                intent["status"] = json!("succeeded");
                state.charges_created += 1;
                intent["latest_charge"] = json!(format!("ch_fake_{n}"));
                state.intents.insert(format!("pi_fake_{n}"), intent.clone());
                (
                    *status,
                    json!({"error": {"type": "api_error", "message": "An unknown error occurred."}}),
                )
            }
            Script::Hang(..) | Script::Redirect(..) => unreachable!(),
            _ => {
                let status_name = match script {
                    Script::RequiresCapture => "requires_capture",
                    Script::Processing => "processing",
                    _ => "succeeded",
                };
                intent["status"] = json!(status_name);
                if !matches!(script, Script::Processing) {
                    state.charges_created += 1;
                    intent["latest_charge"] = json!(format!("ch_fake_{n}"));
                }
                state.intents.insert(format!("pi_fake_{n}"), intent.clone());
                (200, intent)
            }
        };
        // Stripe stores results once execution starts, except rate limits.
        if let Some(key) = &key {
            if status != 429 {
                state
                    .stored
                    .insert(key.clone(), (form.clone(), status, body.clone()));
            }
        }
        let response = match &script {
            Script::Error(status, _, retry) => {
                error_response(*status, body["error"].clone(), *retry)
            }
            Script::Huge(status, _) if *status != 200 => {
                error_response(*status, body["error"].clone(), None)
            }
            Script::ChargeThenFail(status) => error_response(*status, body["error"].clone(), None),
            Script::Huge(_, bytes) => {
                let mut huge = body.clone();
                huge["description"] = json!("x".repeat(*bytes));
                (StatusCode::OK, Json(huge)).into_response()
            }
            Script::Garbage(raw) => (
                StatusCode::OK,
                [("content-type", "application/json")],
                raw.clone(),
            )
                .into_response(),
            Script::MissingStatus | Script::MissingId => {
                let mut mangled = body.clone();
                let field = if matches!(script, Script::MissingStatus) {
                    "status"
                } else {
                    "id"
                };
                mangled.as_object_mut().unwrap().remove(field);
                (StatusCode::OK, Json(mangled)).into_response()
            }
            Script::UnknownStatus(status) => {
                let mut mangled = body.clone();
                mangled["status"] = json!(status);
                (StatusCode::OK, Json(mangled)).into_response()
            }
            Script::WrongObject(object) => {
                let mut mangled = body.clone();
                match object {
                    Some(object) => {
                        mangled["object"] = json!(object);
                        if object == "charge" {
                            mangled["id"] = json!(format!("ch_fake_{n}"));
                        }
                    }
                    None => {
                        mangled.as_object_mut().unwrap().remove("object");
                    }
                }
                (StatusCode::OK, Json(mangled)).into_response()
            }
            _ => (StatusCode::OK, Json(body)).into_response(),
        };
        (delay, response)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    response
}

/// Where redirects point: anything arriving here would be a second charge.
async fn redirect_target(State(fake): State<Fake>, uri: Uri, headers: HeaderMap) -> Response {
    let mut state = fake.state.lock().unwrap();
    record(&mut state, "ANY", uri.path(), &uri, &headers, Vec::new());
    state.redirect_hits += 1;
    state.charges_created += 1;
    (
        StatusCode::OK,
        Json(json!({"id": "pi_elsewhere", "object": "payment_intent", "status": "succeeded"})),
    )
        .into_response()
}

async fn get_intent(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = fake.state.lock().unwrap();
    record(
        &mut state,
        "GET",
        &format!("/v1/payment_intents/{id}"),
        &uri,
        &headers,
        Vec::new(),
    );
    match state.intents.get_mut(&id) {
        Some(intent) => {
            // A processing debit settles by the time it is looked up.
            if intent["status"] == "processing" {
                intent["status"] = json!("succeeded");
                intent["latest_charge"] = json!(format!("ch_for_{id}"));
            }
            (StatusCode::OK, Json(intent.clone())).into_response()
        }
        None => error_response(
            404,
            json!({"type": "invalid_request_error", "code": "resource_missing"}),
            None,
        ),
    }
}

async fn capture_intent(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut state = fake.state.lock().unwrap();
    record(
        &mut state,
        "POST",
        &format!("/v1/payment_intents/{id}/capture"),
        &uri,
        &headers,
        form,
    );
    match state.intents.get_mut(&id) {
        Some(intent) if intent["status"] == "requires_capture" => {
            intent["status"] = json!("succeeded");
            (StatusCode::OK, Json(intent.clone())).into_response()
        }
        _ => error_response(
            400,
            json!({"type": "invalid_request_error", "code": "payment_intent_unexpected_state"}),
            None,
        ),
    }
}

async fn cancel_intent(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut state = fake.state.lock().unwrap();
    record(
        &mut state,
        "POST",
        &format!("/v1/payment_intents/{id}/cancel"),
        &uri,
        &headers,
        form,
    );
    match state.intents.get_mut(&id) {
        Some(intent) => {
            intent["status"] = json!("canceled");
            (StatusCode::OK, Json(intent.clone())).into_response()
        }
        None => error_response(
            404,
            json!({"type": "invalid_request_error", "code": "resource_missing"}),
            None,
        ),
    }
}

async fn get_payment_method(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = fake.state.lock().unwrap();
    record(
        &mut state,
        "GET",
        &format!("/v1/payment_methods/{id}"),
        &uri,
        &headers,
        Vec::new(),
    );
    match state.payment_methods.get(&id) {
        Some(pm) => (StatusCode::OK, Json(pm.clone())).into_response(),
        None => error_response(
            404,
            json!({"type": "invalid_request_error", "code": "resource_missing"}),
            None,
        ),
    }
}

/// `GET /v1/payment_intents`: newest first, by `customer` and `created[gte]`, paged by
/// `limit` and `starting_after`.
async fn list_intents(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let mut state = fake.state.lock().unwrap();
    record(
        &mut state,
        "GET",
        "/v1/payment_intents",
        &uri,
        &headers,
        query.clone(),
    );
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let since: i64 = param("created[gte]")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = param("limit").and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut all: Vec<Value> = state
        .intents
        .values()
        .filter(|pi| param("customer").is_none_or(|c| pi["customer"] == json!(c)))
        .filter(|pi| pi["created"].as_i64().unwrap_or(0) >= since)
        .cloned()
        .collect();
    all.sort_by_key(|pi| std::cmp::Reverse(pi["created"].as_i64().unwrap_or(0)));
    if let Some(after) = param("starting_after") {
        if let Some(at) = all.iter().position(|pi| pi["id"] == json!(after)) {
            all.drain(..=at);
        }
    }
    let has_more = all.len() > limit;
    all.truncate(limit);
    Json(json!({"object": "list", "data": all, "has_more": has_more, "url": "/v1/payment_intents"}))
        .into_response()
}

async fn list_setup_intents(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let mut state = fake.state.lock().unwrap();
    record(
        &mut state,
        "GET",
        "/v1/setup_intents",
        &uri,
        &headers,
        query.clone(),
    );
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let data: Vec<Value> = state
        .setup_intents
        .iter()
        .filter(|si| param("payment_method").is_none_or(|pm| si["payment_method"] == json!(pm)))
        .filter(|si| param("customer").is_none_or(|c| si["customer"] == json!(c)))
        .cloned()
        .collect();
    (
        StatusCode::OK,
        Json(
            json!({"object": "list", "data": data, "has_more": false, "url": "/v1/setup_intents"}),
        ),
    )
        .into_response()
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Fake {
            state: Arc::new(Mutex::new(FakeState::default())),
            addr: listener.local_addr().unwrap(),
        };
        let app = Router::new()
            .route("/v1/payment_intents", post(create_intent).get(list_intents))
            .route("/v1/payment_intents/{id}", get(get_intent))
            .route("/v1/payment_intents/{id}/capture", post(capture_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/payment_methods/{id}", get(get_payment_method))
            .route("/v1/setup_intents", get(list_setup_intents))
            .route("/elsewhere/{*rest}", any(redirect_target))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub fn config(&self) -> StripeConfig {
        Fake::config_for(self.addr)
    }

    /// The test settings for a Stripe at `addr`.
    pub fn config_for(addr: SocketAddr) -> StripeConfig {
        let mut config = StripeConfig::new("stripe", SecretKey::new(KEY));
        config.api_base = format!("http://{addr}");
        config.request_timeout = Duration::from_millis(400);
        config.retry_base = Duration::from_millis(5);
        config.retry_cap = Duration::from_millis(20);
        config
    }

    pub fn processor(&self) -> StripeProcessor {
        StripeProcessor::new(self.config()).unwrap()
    }

    pub fn script(&self, payment_method: &str, scripts: Vec<Script>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(payment_method.into(), scripts.into());
    }

    /// A card payment method attached to `customer`, set up off-session for `setups`
    /// (`None` = on the platform, `Some(acct)` = for a connected account).
    pub fn add_card(&self, id: &str, customer: &str, brand: &str, setups: &[Option<&str>]) {
        let mut pm = fixture("payment_method");
        pm["id"] = json!(id);
        pm["type"] = json!("card");
        pm["customer"] = json!(customer);
        pm["card"]["brand"] = json!(brand);
        pm["card"]["wallet"] = Value::Null;
        let mut state = self.state.lock().unwrap();
        state.payment_methods.insert(id.into(), pm);
        for (i, account) in setups.iter().enumerate() {
            let mut si = fixture("setup_intent");
            si["id"] = json!(format!("seti_{id}_{i}"));
            si["payment_method"] = json!(id);
            si["customer"] = json!(customer);
            si["status"] = json!("succeeded");
            si["usage"] = json!("off_session");
            si["on_behalf_of"] = account.map_or(Value::Null, |a| json!(a));
            state.setup_intents.push(si);
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn charges_created(&self) -> u32 {
        self.state.lock().unwrap().charges_created
    }

    pub fn redirect_hits(&self) -> u32 {
        self.state.lock().unwrap().redirect_hits
    }
}

pub fn card_error(code: &str, decline_code: Option<&str>) -> Value {
    let mut error = json!({
        "type": "card_error",
        "code": code,
        "message": "Your card was declined.",
        "doc_url": format!("https://stripe.com/docs/error-codes/{code}"),
    });
    if let Some(decline) = decline_code {
        error["decline_code"] = json!(decline);
    }
    error
}
