//! A webhook endpoint that records and checks what `offsession serve` delivers, and
//! `serve` started on a store with one configured endpoint.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{offsession, wait_for_listener, Proc, Scratch};
pub const HOOK_KEY: &str = "sk_test_hooks_0123456789";
pub const SECRET: &str = "whsec_kill_test_secret";

#[derive(Default)]
pub struct Received {
    pub ids: HashSet<String>,
    /// Every delivery's event id, type, `Stripe-Signature` and body, in arrival order.
    pub arrivals: Vec<(String, String, String, String)>,
    pub deliveries: u64,
    pub refused: u64,
    pub bad_signatures: u64,
}

/// A webhook endpoint on `port`: checks each signature against `secret`, records
/// event ids, answers 500 to its first `refuse` deliveries and 200 after.
pub fn endpoint(port: u16, refuse: u64, secret: &'static str) -> Arc<Mutex<Received>> {
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let shared = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // One connection at a time: one that never sends must not stall the rest.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut signature = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("stripe-signature:") {
                    signature = line["stripe-signature:".len()..].trim().to_owned();
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            let status = {
                let mut received = shared.lock().unwrap();
                received.deliveries += 1;
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&body) {
                    let id = event["id"].as_str().unwrap_or_default().to_owned();
                    let kind = event["type"].as_str().unwrap_or_default().to_owned();
                    received
                        .arrivals
                        .push((id, kind, signature.clone(), body.clone()));
                }
                let t: i64 = signature
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if offsession_server::sign(secret, t, &body) != signature {
                    received.bad_signatures += 1;
                }
                if received.deliveries <= refuse {
                    received.refused += 1;
                    500
                } else {
                    // A request cut short (its server killed mid-send) has no event:
                    // refused, as a receiver would.
                    match serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|event| event["id"].as_str().map(str::to_owned))
                    {
                        Some(id) => {
                            received.ids.insert(id);
                            200
                        }
                        None => 400,
                    }
                }
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    received
}

/// The ids of every event in `store`'s outbox.
pub async fn outbox_ids(store: &dyn offsession::core::Store) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.sequence;
        ids.extend(page.into_iter().map(|e| e.event.id));
    }
    ids
}

pub fn serve(dir: &Scratch, port: u16, hook_port: u16) -> Proc {
    let store = format!("sqlite://{}", dir.path("hooks.db").display());
    serve_on(dir, port, hook_port, &store, "offsession")
}

pub fn serve_on(dir: &Scratch, port: u16, hook_port: u16, store: &str, schema: &str) -> Proc {
    serve_with(dir, port, hook_port, store, schema, &[])
}

/// `serve_on` with more environment (`OFFSESSION_…` overrides).
pub fn serve_with(
    dir: &Scratch,
    port: u16,
    hook_port: u16,
    store: &str,
    schema: &str,
    env: &[(&str, &str)],
) -> Proc {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/worker.toml");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path("serve.log"))
        .unwrap();
    let child = Command::new(offsession())
        .args(["serve", "--config", config])
        .env("OFFSESSION_API_KEY", HOOK_KEY)
        .env("OFFSESSION_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("OFFSESSION_STORE__URL", store)
        .env("OFFSESSION_STORE__SCHEMA", schema)
        .env(
            "OFFSESSION_WEBHOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook"),
        )
        .env("OFFSESSION_WEBHOOK_SECRET", SECRET)
        .env("OFFSESSION_WORKER__POLL_INTERVAL", "50ms")
        .env("OFFSESSION_ENGINE__LEASE", "2s")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_listener(port);
    Proc {
        child: Some(child),
        name: "serve".into(),
    }
}

/// `api` for a GET without a body or an idempotency key.
pub async fn get(
    client: &reqwest::Client,
    port: u16,
    path: &str,
) -> (u16, serde_json::Value, bool) {
    api(client, port, reqwest::Method::GET, path, None, None).await
}

/// `api` for a POST without a body or an idempotency key.
pub async fn post(
    client: &reqwest::Client,
    port: u16,
    path: &str,
) -> (u16, serde_json::Value, bool) {
    api(client, port, reqwest::Method::POST, path, None, None).await
}

pub async fn api(
    client: &reqwest::Client,
    port: u16,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    key: Option<&str>,
) -> (u16, serde_json::Value, bool) {
    let mut request = client
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(HOOK_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (status, response.json().await.unwrap_or_default(), replayed)
}

pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a delivery's `Stripe-Signature` is `secret`'s signature of its body.
pub fn signed_with(secret: &str, signature: &str, body: &str) -> bool {
    let t: i64 = signature
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    offsession_server::sign(secret, t, body) == signature
}

/// Creates a card payment for `customer` (its own card) through `serve` on `port`;
/// returns its id.
pub async fn create_payment(client: &reqwest::Client, port: u16, customer: &str) -> String {
    let (status, payment, _) = api(
        client,
        port,
        reqwest::Method::POST,
        "/v2/payments/off_session_payments",
        Some(
            serde_json::json!({"amount": {"value": 1000, "currency": "usd"},
            "cadence": "recurring", "customer": customer,
            "payment_method": format!("pm_card_visa__{customer}")}),
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{payment}");
    payment["id"].as_str().unwrap().to_owned()
}

/// The id of `payment`'s `created` event, as the events list shows it.
pub async fn created_event(client: &reqwest::Client, port: u16, payment: &str) -> String {
    let (_, events, _) = get(
        client,
        port,
        &format!("/v2/core/events?object_id={payment}"),
    )
    .await;
    events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "v2.payments.off_session_payment.created")
        .unwrap_or_else(|| panic!("no created event listed: {events}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}
