//! Webhook delivery survives kill -9: `offsession serve` is killed with SIGKILL three
//! times while it delivers, and restarted; at the end every event in the outbox has
//! reached the endpoint at least once, each delivery signed as Stripe signs. The
//! endpoint refuses its first deliveries with 500, so retries are exercised too.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use offsession::store::{SqliteStore, Synchronous};

const KEY: &str = "sk_test_hooks_0123456789";
const SECRET: &str = "whsec_kill_test_secret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    deliveries: u64,
    refused: u64,
    bad_signatures: u64,
}

/// A webhook endpoint on `port`: checks each signature, records event ids, answers
/// 500 to its first `refuse` deliveries and 200 after.
fn endpoint(port: u16, refuse: u64) -> Arc<Mutex<Received>> {
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let shared = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
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
                let t: i64 = signature
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if offsession_server::sign(SECRET, t, &body) != signature {
                    received.bad_signatures += 1;
                }
                if received.deliveries <= refuse {
                    received.refused += 1;
                    500
                } else {
                    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                    received
                        .ids
                        .insert(event["id"].as_str().unwrap().to_owned());
                    200
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

fn serve(dir: &Scratch, port: u16, hook_port: u16) -> Proc {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/worker.toml");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path("serve.log"))
        .unwrap();
    let child = Command::new(offsession())
        .args(["serve", "--config", config])
        .env("OFFSESSION_API_KEY", KEY)
        .env("OFFSESSION_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "OFFSESSION_STORE__URL",
            format!("sqlite://{}", dir.path("hooks.db").display()),
        )
        .env(
            "OFFSESSION_WEBHOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook"),
        )
        .env("OFFSESSION_WEBHOOK_SECRET", SECRET)
        .env("OFFSESSION_WORKER__POLL_INTERVAL", "50ms")
        .env("OFFSESSION_ENGINE__LEASE", "2s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no listener");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc {
        child: Some(child),
        name: "serve".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_kill_9_and_reach_the_endpoint_at_least_once() {
    let dir = Scratch::new("webhooks-kill");
    let port = free_port();
    let hook_port = free_port();
    let received = endpoint(hook_port, 5);
    let mut server = serve(&dir, port, hook_port);
    // Let the deliverer record where it starts before anything is created.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();
    let mut kills = 0;
    for round in 0..4 {
        for i in 0..50 {
            let body = format!(
                r#"{{"amount":{{"value":1000,"currency":"usd"}},"cadence":"recurring","customer":"cus_{round}_{i}","payment_method":"pm_card_visa__{round}_{i}"}}"#
            );
            let response = client
                .post(format!(
                    "http://127.0.0.1:{port}/v2/payments/off_session_payments"
                ))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        if round < 3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.sigkill();
            kills += 1;
            server = serve(&dir, port, hook_port);
        }
    }
    let store = SqliteStore::open(&dir.path("hooks.db"), Synchronous::Normal).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (stored, missing) = loop {
        let mut stored = HashSet::new();
        let mut after = 0;
        loop {
            let page = offsession::core::Store::events_after(&store, after, 1_000)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.sequence;
            stored.extend(page.into_iter().map(|e| e.event.id));
        }
        let missing: Vec<String> = {
            let received = received.lock().unwrap();
            stored.difference(&received.ids).cloned().collect()
        };
        // Payments the mock faults on wait a minute for their replay; what matters
        // here is that every event committed so far reached the endpoint.
        if missing.is_empty() && stored.len() >= 400 {
            break (stored, missing);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never delivered\n{}",
            missing.len(),
            stored.len(),
            std::fs::read_to_string(dir.path("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(missing.is_empty());
    assert!(server
        .sigterm(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let received = received.lock().unwrap();
    assert_eq!(
        received.bad_signatures, 0,
        "deliveries with a wrong signature"
    );
    assert!(received.refused == 5);
    println!(
        "webhooks: {kills} kills; {} events in the outbox, all delivered; {} deliveries ({} refused with 500 and retried, {} repeats after kills)",
        stored.len(),
        received.deliveries,
        received.refused,
        received.deliveries - received.refused - received.ids.len() as u64
    );
}
