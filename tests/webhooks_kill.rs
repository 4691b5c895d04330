//! Webhook delivery survives kill -9: `offsession serve` is killed with SIGKILL three
//! times while it delivers, and restarted; at the end every event in the outbox has
//! reached the endpoint at least once, each delivery signed as Stripe signs. The
//! endpoint refuses its first deliveries with 500, so retries are exercised too.
//! And two `serve` instances on one Postgres deliver each event once.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::hooks::*;
use common::*;
use offsession::store::{SqliteStore, Synchronous};

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
                .bearer_auth(HOOK_KEY)
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
