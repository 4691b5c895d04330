//! Webhook delivery survives kill -9: `offsession serve` is killed with SIGKILL three
//! times while it delivers, and restarted; at the end every event in the outbox has
//! reached the endpoint at least once, each delivery signed as Stripe signs. The
//! endpoint refuses its first deliveries with 500, so retries are exercised too.
//! And the delivery log, resends, and event destinations made, updated and pinged
//! through the API, against the same kind of endpoint.

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
    /// Every delivery's event id, type, `Stripe-Signature` and body, in arrival order.
    arrivals: Vec<(String, String, String, String)>,
    deliveries: u64,
    refused: u64,
    bad_signatures: u64,
}

/// A webhook endpoint on `port`: checks each signature against `secret`, records
/// event ids, answers 500 to its first `refuse` deliveries and 200 after.
fn endpoint(port: u16, refuse: u64, secret: &'static str) -> Arc<Mutex<Received>> {
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

/// The ids of every event in `store`'s outbox.
async fn outbox_ids(store: &dyn offsession::core::Store) -> HashSet<String> {
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

fn serve(dir: &Scratch, port: u16, hook_port: u16) -> Proc {
    let store = format!("sqlite://{}", dir.path("hooks.db").display());
    serve_on(dir, port, hook_port, &store, "offsession")
}

fn serve_on(dir: &Scratch, port: u16, hook_port: u16, store: &str, schema: &str) -> Proc {
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
    let received = endpoint(hook_port, 5, SECRET);
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
        let stored = outbox_ids(&store).await;
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

async fn api(
    client: &reqwest::Client,
    port: u16,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    key: Option<&str>,
) -> (u16, serde_json::Value, bool) {
    let mut request = client
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(KEY);
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

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a delivery's `Stripe-Signature` is `secret`'s signature of its body.
fn signed_with(secret: &str, signature: &str, body: &str) -> bool {
    let t: i64 = signature
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    offsession_server::sign(secret, t, body) == signature
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_resends_and_destinations_work_over_the_api() {
    use reqwest::Method;
    let dir = Scratch::new("webhooks-log");
    let port = free_port();
    let hook_port = free_port();
    // The configured endpoint refuses its first two deliveries.
    let received = endpoint(hook_port, 2, SECRET);
    let mut server = serve(&dir, port, hook_port);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();
    let (status, payment, _) = api(
        &client,
        port,
        Method::POST,
        "/v2/payments/off_session_payments",
        Some(
            serde_json::json!({"amount": {"value": 1000, "currency": "usd"},
            "cadence": "recurring", "customer": "cus_log", "payment_method": "pm_card_visa__log"}),
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{payment}");
    let payment_id = payment["id"].as_str().unwrap().to_owned();
    // The created event: refused twice, delivered on the third attempt (1 s and 2 s
    // of backoff).
    let (_, events, _) = api(
        &client,
        port,
        Method::GET,
        &format!("/v2/core/events?object_id={payment_id}"),
        None,
        None,
    )
    .await;
    let created = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "v2.payments.off_session_payment.created")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivered_at =
        |received: &Received, id: &str| received.arrivals.iter().filter(|a| a.0 == id).count();
    wait_for("the created event's third delivery", || {
        delivered_at(&received.lock().unwrap(), &created) >= 3
    })
    .await;
    let path = format!("/v2/core/events/{created}/deliveries");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let (_, log, _) = api(&client, port, Method::GET, &path, None, None).await;
        if log["data"][0]["status"] == "delivered" {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "never logged as delivered: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entry = &log["data"][0];
    assert_eq!(entry["attempts"], 3, "{log}");
    assert_eq!(entry["last_status"], 200, "{log}");
    assert!(
        entry["destination"].as_str().unwrap().starts_with("we_"),
        "{log}"
    );

    // A resend reaches the endpoint once more and is counted; the same
    // Idempotency-Key replays the answer without sending again.
    let resend = format!("/v2/core/events/{created}/resend");
    let before = delivered_at(&received.lock().unwrap(), &created);
    let (status, answer, replayed) =
        api(&client, port, Method::POST, &resend, None, Some("resend-1")).await;
    assert_eq!((status, replayed), (200, false), "{answer}");
    assert_eq!(answer["data"][0]["attempts"], 4, "{answer}");
    assert_eq!(
        delivered_at(&received.lock().unwrap(), &created),
        before + 1
    );
    let (status, again, replayed) =
        api(&client, port, Method::POST, &resend, None, Some("resend-1")).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(
        delivered_at(&received.lock().unwrap(), &created),
        before + 1
    );
    let (status, refused, _) = api(
        &client,
        port,
        Method::POST,
        &resend,
        Some(serde_json::json!({"destination": "ed_nope"})),
        None,
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ed_nope"));
    let (status, _, _) = api(
        &client,
        port,
        Method::POST,
        "/v2/core/events/evt_nope/resend",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The payment's events page newest first, `limit` at a time.
    let mut seen = Vec::new();
    let mut next = format!("/v2/core/events?object_id={payment_id}&limit=1");
    loop {
        let (status, page, _) = api(&client, port, Method::GET, &next, None, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
        seen.push(page["data"][0]["id"].as_str().unwrap().to_owned());
        match page["next_page_url"].as_str() {
            Some(url) => next = url.to_owned(),
            None => break,
        }
    }
    let (_, events, _) = api(
        &client,
        port,
        Method::GET,
        &format!("/v2/core/events?object_id={payment_id}"),
        None,
        None,
    )
    .await;
    let all = events["data"].as_array().unwrap();
    assert!(all.len() >= 3, "{events}");
    assert_eq!(seen.len(), all.len());
    assert_eq!(
        seen,
        all.iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>()
    );
    let (status, _, _) = api(
        &client,
        port,
        Method::GET,
        &format!("{path}?bogus=1"),
        None,
        None,
    )
    .await;
    assert_eq!(
        status, 400,
        "an unknown query parameter of the delivery log"
    );

    // A destination made through the API: updated, then pinged with its own secret.
    let dest_port = free_port();
    // Its secret is known only once it is made; signatures are checked below.
    let dest_received = endpoint(dest_port, 0, "whsec_checked_below");
    let (status, destination, _) = api(
        &client,
        port,
        Method::POST,
        "/v2/core/event_destinations",
        Some(
            serde_json::json!({"name": "log test", "type": "webhook_endpoint",
            "event_payload": "thin",
            "enabled_events": ["v2.payments.off_session_payment.failed"],
            "webhook_endpoint": {"url": format!("http://127.0.0.1:{dest_port}/d")},
            "include": ["webhook_endpoint.signing_secret"]}),
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{destination}");
    let id = destination["id"].as_str().unwrap().to_owned();
    // Each refusal names the field and the rule.
    for (bad, says) in [
        (serde_json::json!({"enabled_events": []}), "at least one"),
        (
            serde_json::json!({"webhook_endpoint": {"url": "http://127.0.0.1:1/x", "bogus": 1}}),
            "webhook_endpoint.bogus",
        ),
        (serde_json::json!({"include": ["nope"]}), "`include`"),
        (serde_json::json!({"name": 5}), "`name` must be"),
        (serde_json::json!({"metadata": {"k": 1}}), "metadata.k"),
    ] {
        let (status, refused, _) = api(
            &client,
            port,
            Method::POST,
            &format!("/v2/core/event_destinations/{id}"),
            Some(bad.clone()),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{bad}: {message}");
    }
    // A create repeated under its Idempotency-Key makes one destination.
    let again = serde_json::json!({"name": "keyed", "type": "webhook_endpoint",
        "event_payload": "thin", "enabled_events": ["*"],
        "webhook_endpoint": {"url": format!("http://127.0.0.1:{dest_port}/k")}});
    let (_, first, replayed_first) = api(
        &client,
        port,
        Method::POST,
        "/v2/core/event_destinations",
        Some(again.clone()),
        Some("dest-1"),
    )
    .await;
    let (_, second, replayed_second) = api(
        &client,
        port,
        Method::POST,
        "/v2/core/event_destinations",
        Some(again),
        Some("dest-1"),
    )
    .await;
    assert_eq!((replayed_first, replayed_second), (false, true));
    assert_eq!(first["id"], second["id"]);
    let (_, listed, _) = api(
        &client,
        port,
        Method::GET,
        "/v2/core/event_destinations?limit=1",
        None,
        None,
    )
    .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["data"][0]["id"], first["id"], "newest first");
    let (status, _, _) = api(
        &client,
        port,
        Method::GET,
        "/v2/core/event_destinations?limit=abc",
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = api(
        &client,
        port,
        Method::DELETE,
        &format!(
            "/v2/core/event_destinations/{}",
            first["id"].as_str().unwrap()
        ),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let secret = destination["webhook_endpoint"]["signing_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, updated, _) = api(
        &client,
        port,
        Method::POST,
        &format!("/v2/core/event_destinations/{id}"),
        Some(
            serde_json::json!({"name": "renamed", "metadata": {"team": "billing"},
            "enabled_events": ["*"]}),
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["enabled_events"], serde_json::json!(["*"]));
    assert_eq!(updated["metadata"]["team"], "billing");
    assert!(updated["webhook_endpoint"].get("signing_secret").is_none());
    let (status, bad, _) = api(
        &client,
        port,
        Method::POST,
        &format!("/v2/core/event_destinations/{id}"),
        Some(serde_json::json!({"enabled_events": ["v2.nope"]})),
        None,
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    let (status, pinged, _) = api(
        &client,
        port,
        Method::POST,
        &format!("/v2/core/event_destinations/{id}/ping"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{pinged}");
    assert_eq!(pinged["type"], "v2.core.event_destination.ping");
    assert_eq!(pinged["related_object"]["id"], id.as_str());
    {
        let dest = dest_received.lock().unwrap();
        assert_eq!(dest.arrivals.len(), 1);
        let (event, kind, signature, body) = &dest.arrivals[0];
        assert_eq!(event, pinged["id"].as_str().unwrap());
        assert_eq!(kind, "v2.core.event_destination.ping");
        assert!(signed_with(&secret, signature, body), "{signature}");
        assert!(!signed_with(SECRET, signature, body));
    }
    let disable = format!("/v2/core/event_destinations/{id}/disable");
    let (status, _, _) = api(&client, port, Method::POST, &disable, None, None).await;
    assert_eq!(status, 200);
    let ping_path = format!("/v2/core/event_destinations/{id}/ping");
    let (status, refused, _) = api(&client, port, Method::POST, &ping_path, None, None).await;
    assert_eq!(
        status, 400,
        "a disabled destination is not pinged: {refused}"
    );
    let enable = format!("/v2/core/event_destinations/{id}/enable");
    let (status, _, _) = api(&client, port, Method::POST, &enable, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(dest_received.lock().unwrap().arrivals.len(), 1);
    // After the update the destination takes every type: a resend to it by name is
    // accepted, signed with its secret, and counted in its log.
    let (status, answer, _) = api(
        &client,
        port,
        Method::POST,
        &resend,
        Some(serde_json::json!({"destination": id})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let mine = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == id.as_str())
        .unwrap();
    assert_eq!(mine["attempts"], 1, "{answer}");
    assert_eq!(mine["last_status"], 200, "{answer}");
    {
        let dest = dest_received.lock().unwrap();
        let (event, _, signature, body) = dest.arrivals.last().unwrap();
        assert_eq!(event, &created);
        assert!(signed_with(&secret, signature, body), "{signature}");
    }
    assert!(server
        .sigterm(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let received = received.lock().unwrap();
    assert_eq!(received.bad_signatures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_deliver_each_event_once() {
    let Ok(url) = std::env::var("OFFSESSION_TEST_POSTGRES_URL") else {
        println!("skipped: OFFSESSION_TEST_POSTGRES_URL is not set (two serve instances)");
        return;
    };
    let dir = Scratch::new("webhooks-two");
    let schema = format!("offsession_hooks_{}", std::process::id());
    let hook_port = free_port();
    let received = endpoint(hook_port, 0, SECRET);
    let ports = [free_port(), free_port()];
    let mut first = serve_on(&dir, ports[0], hook_port, &url, &schema);
    // The second waits to be seen by the first before it takes any endpoint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = serve_on(&dir, ports[1], hook_port, &url, &schema);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = reqwest::Client::new();
    for i in 0..100 {
        let port = ports[i % 2];
        let (status, body, _) = api(
            &client,
            port,
            reqwest::Method::POST,
            "/v2/payments/off_session_payments",
            Some(
                serde_json::json!({"amount": {"value": 1000, "currency": "usd"},
                "cadence": "recurring", "customer": format!("cus_two_{i}"),
                "payment_method": format!("pm_card_visa__two_{i}")}),
            ),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let store = offsession::store::PostgresStore::connect(&url, &schema, 2)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let stored = outbox_ids(&store).await;
        let missing = stored.difference(&received.lock().unwrap().ids).count();
        if missing == 0 && stored.len() >= 300 {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never delivered",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Let a second deliverer, were there one, catch up with its copies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for server in [&mut first, &mut second] {
        assert!(server
            .sigterm(Duration::from_secs(20))
            .is_some_and(|s| s.success()));
    }
    let (deliveries, repeats, bad_signatures) = {
        let received = received.lock().unwrap();
        let delivered: HashSet<&String> = received.arrivals.iter().map(|a| &a.0).collect();
        (
            received.arrivals.len(),
            received.arrivals.len() - delivered.len(),
            received.bad_signatures,
        )
    };
    store.drop_schema().await.unwrap();
    println!(
        "two instances: {} events in the outbox, {deliveries} deliveries, {repeats} repeated",
        stored.len(),
    );
    assert_eq!(repeats, 0, "both instances delivered to the one endpoint");
    assert_eq!(bad_signatures, 0);
}
