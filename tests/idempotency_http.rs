//! `Idempotency-Key` on the POSTs other than a create, against a real `serve`: a
//! refused request runs again on a retry with its key (a replayed refusal could never
//! be retried), a successful one is replayed, test clock creates and advances honour
//! their keys, and of concurrent requests with one key only one runs.

mod common;

use common::hooks::*;
use common::*;
use offsession::core::Store;
use reqwest::Method;
use serde_json::{json, Value};

/// A v1 form POST (test clocks), with an optional idempotency key.
async fn form(
    client: &reqwest::Client,
    port: u16,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, Value, bool) {
    let mut request = client
        .post(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(HOOK_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (status, response.json().await.unwrap_or_default(), replayed)
}

/// Turns the answer kept under idempotency key `key` into what a server that stopped
/// before keeping it leaves: an ended claim (status 499) without a body.
async fn lose_answer(store: &dyn Store, key: &str) {
    let state_key = format!("idempotency/{key}");
    let mut kept: Value =
        serde_json::from_str(&store.load_state(&state_key).await.unwrap().unwrap()).unwrap();
    kept["status"] = json!(499);
    kept["body"] = Value::Null;
    store
        .save_state(&state_key, &kept.to_string())
        .await
        .unwrap();
}

/// Creates a payment on test clock `clock_id` (it stays pending until the clock
/// moves); its id.
async fn on_clock(client: &reqwest::Client, port: u16, clock_id: &str) -> String {
    let (status, payment, _) = api(
        client,
        port,
        Method::POST,
        "/v2/payments/off_session_payments",
        Some(
            json!({"amount": {"value": 1000, "currency": "usd"}, "cadence": "recurring",
            "customer": "cus_idem", "payment_method": "pm_card_visa__idem",
            "test_clock": clock_id}),
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{payment}");
    payment["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_run_again_and_test_clocks_honour_their_keys() {
    let dir = Scratch::new("idempotency-http");
    let (port, hook_port) = (free_port(), free_port());
    let _received = endpoint(hook_port, 0, SECRET);
    let mut server = serve(&dir, port, hook_port);
    let client = reqwest::Client::new();
    let clocks = "/v1/test_helpers/test_clocks";

    // A clock made twice under one key is one clock.
    let (status, clock, replayed) = form(
        &client,
        port,
        clocks,
        "frozen_time=1767603600",
        Some("clock-1"),
    )
    .await;
    assert_eq!((status, replayed), (200, false), "{clock}");
    let (status, again, replayed) = form(
        &client,
        port,
        clocks,
        "frozen_time=1767603600",
        Some("clock-1"),
    )
    .await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["id"], clock["id"]);
    let clock_id = clock["id"].as_str().unwrap().to_owned();

    // A clock keeps its name and the time it was made.
    let (status, named, _) = form(
        &client,
        port,
        clocks,
        "frozen_time=1767603600&name=monthly+renewals",
        None,
    )
    .await;
    assert_eq!(status, 200, "{named}");
    assert_eq!(named["name"], "monthly renewals");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, again, _) = get(
        &client,
        port,
        &format!("{clocks}/{}", named["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["name"], "monthly renewals", "{again}");
    assert_eq!(again["created"], named["created"], "{again}");

    // A create repeated under its key answers the first payment, marked as a replay.
    let body = json!({"amount": {"value": 1000, "currency": "usd"}, "cadence": "recurring",
        "customer": "cus_idem", "payment_method": "pm_card_visa__idem",
        "test_clock": clock_id});
    let creates = "/v2/payments/off_session_payments";
    let (status, first, replayed) = api(
        &client,
        port,
        Method::POST,
        creates,
        Some(body.clone()),
        Some("create-1"),
    )
    .await;
    assert_eq!((status, replayed), (200, false), "{first}");
    let (status, again, replayed) = api(
        &client,
        port,
        Method::POST,
        creates,
        Some(body),
        Some("create-1"),
    )
    .await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["id"], first["id"]);

    // A payment on the clock stays pending until the clock moves.
    let id = on_clock(&client, port, &clock_id).await;
    let resume = format!("/v2/payments/off_session_payments/{id}/resume");
    let pause = format!("/v2/payments/off_session_payments/{id}/pause");

    // Resuming a payment that is not paused is refused ...
    let (status, refused, _) =
        api(&client, port, Method::POST, &resume, None, Some("resume-1")).await;
    assert_eq!(status, 400, "{refused}");
    let (status, paused, _) = api(&client, port, Method::POST, &pause, None, None).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["status"], "paused");
    // ... and once it is paused, the same request under the same key resumes it
    // instead of replaying the refusal; then it is replayed.
    let (status, resumed, replayed) =
        api(&client, port, Method::POST, &resume, None, Some("resume-1")).await;
    assert_eq!((status, replayed), (200, false), "{resumed}");
    assert_eq!(resumed["status"], "pending");
    let (status, again, replayed) =
        api(&client, port, Method::POST, &resume, None, Some("resume-1")).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    // Another request under the key is an idempotency error.
    let (status, other, _) = api(&client, port, Method::POST, &pause, None, Some("resume-1")).await;
    assert_eq!(status, 400, "{other}");
    assert_eq!(other["error"]["type"], "idempotency_error", "{other}");

    // An advance retried under its key answers as the first did, instead of
    // "must be later than the clock's current time".
    let advance = format!("{clocks}/{clock_id}/advance");
    let (status, moved, replayed) = form(
        &client,
        port,
        &advance,
        "frozen_time=1767690000",
        Some("advance-1"),
    )
    .await;
    assert_eq!((status, replayed), (200, false), "{moved}");
    let (status, again, replayed) = form(
        &client,
        port,
        &advance,
        "frozen_time=1767690000",
        Some("advance-1"),
    )
    .await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["frozen_time"], moved["frozen_time"]);

    // Eight creates of one event destination under one key, at once: one destination
    // is made; the others get it replayed or are told the key is in use.
    let destinations = "/v2/core/event_destinations";
    let count = |listed: &Value| listed["data"].as_array().map_or(0, Vec::len);
    let (_, before, _) = get(&client, port, &format!("{destinations}?limit=100")).await;
    let body = json!({"name": "raced", "type": "webhook_endpoint", "event_payload": "thin",
        "enabled_events": ["*"],
        "webhook_endpoint": {"url": format!("http://127.0.0.1:{hook_port}/raced")}});
    let answers = futures::future::join_all((0..8).map(|_| {
        api(
            &client,
            port,
            Method::POST,
            destinations,
            Some(body.clone()),
            Some("dest-race"),
        )
    }))
    .await;
    let made: Vec<&Value> = answers
        .iter()
        .filter(|(status, _, replayed)| *status == 200 && !replayed)
        .map(|(_, answer, _)| answer)
        .collect();
    assert_eq!(made.len(), 1, "{answers:?}");
    for (status, answer, replayed) in &answers {
        match status {
            200 if *replayed => assert_eq!(answer["id"], made[0]["id"]),
            200 => {}
            409 => assert_eq!(
                answer["error"]["code"], "idempotency_key_in_use",
                "{answer}"
            ),
            other => panic!("{other}: {answer}"),
        }
    }
    let (_, after, _) = get(&client, port, &format!("{destinations}?limit=100")).await;
    assert_eq!(count(&after), count(&before) + 1, "{after}");

    // A destination create whose answer was never kept (its server stopped after
    // saving the destination; the key is handed back as ended, 499): run again under
    // its key, it answers the destination the first run made instead of making another.
    let body = json!({"name": "lost", "type": "webhook_endpoint", "event_payload": "thin",
        "enabled_events": ["*"],
        "webhook_endpoint": {"url": format!("http://127.0.0.1:{hook_port}/lost")}});
    let (status, first, _) = api(
        &client,
        port,
        Method::POST,
        destinations,
        Some(body.clone()),
        Some("dest-lost"),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let store = offsession::store::SqliteStore::open(
        &dir.path("hooks.db"),
        offsession::store::Synchronous::Normal,
    )
    .unwrap();
    lose_answer(&store, "dest-lost").await;
    let (status, again, replayed) = api(
        &client,
        port,
        Method::POST,
        destinations,
        Some(body),
        Some("dest-lost"),
    )
    .await;
    assert_eq!((status, replayed), (200, false), "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    let (_, listed, _) = get(&client, port, &format!("{destinations}?limit=100")).await;
    assert_eq!(count(&listed), count(&after) + 1, "{listed}");

    // The same for a cancel: run again after its answer was lost, it finds the payment
    // canceled and answers it, instead of refusing to cancel a canceled payment. A
    // cancel under a new key is still refused.
    let cancel = format!(
        "/v2/payments/off_session_payments/{}/cancel",
        on_clock(&client, port, &clock_id).await
    );
    let (status, canceled, _) = api(
        &client,
        port,
        Method::POST,
        &cancel,
        None,
        Some("cancel-lost"),
    )
    .await;
    assert_eq!(status, 200, "{canceled}");
    lose_answer(&store, "cancel-lost").await;
    let (status, again, replayed) = api(
        &client,
        port,
        Method::POST,
        &cancel,
        None,
        Some("cancel-lost"),
    )
    .await;
    assert_eq!((status, replayed), (200, false), "{again}");
    assert_eq!(again["status"], "canceled", "{again}");
    let (status, refused, _) = api(
        &client,
        port,
        Method::POST,
        &cancel,
        None,
        Some("cancel-new"),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    server.sigterm(std::time::Duration::from_secs(10));
}
