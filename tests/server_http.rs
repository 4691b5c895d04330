//! `offsession serve` over real HTTP: what a client that is not an SDK can send, and
//! what it gets back — every refusal in the v2 error shape, none a 500.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const KEY: &str = "sk_test_http_0123456789";

fn serve(dir: &Scratch, port: u16) -> Proc {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/worker.toml");
    let log = std::fs::File::create(dir.path("serve.log")).unwrap();
    let child = Command::new(offsession())
        .args(["serve", "--config", config])
        .env("OFFSESSION_API_KEY", KEY)
        .env("OFFSESSION_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("OFFSESSION_SERVER__MAX_BODY_BYTES", "4096")
        .env(
            "OFFSESSION_STORE__URL",
            format!("sqlite://{}", dir.path("http.db").display()),
        )
        .env("RUST_LOG", "warn")
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

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(
        body["error"]["type"].is_string() && body["error"]["message"].is_string(),
        "{status}: not the v2 error shape: {body}"
    );
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_v2_error_and_none_is_a_500() {
    let dir = Scratch::new("server-http");
    let port = free_port();
    let mut server = serve(&dir, port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let payments = format!("{base}/v2/payments/off_session_payments");
    let good = r#"{"amount":{"value":1000,"currency":"usd"},"cadence":"recurring","customer":"cus_1","payment_method":"pm_card_visa__1"}"#;

    // Health and readiness need no key.
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // No key, a wrong key, a live key on a test server: 401.
    for auth in [
        None,
        Some("sk_test_wrong_123456"),
        Some("sk_live_0123456789abcdef"),
    ] {
        let mut request = client.get(&payments);
        if let Some(key) = auth {
            request = request.bearer_auth(key);
        }
        let (status, _) = error_of(request.send().await.unwrap()).await;
        assert_eq!(status, 401, "{auth:?}");
    }
    let post = |body: &'static str, content_type: &'static str| {
        client
            .post(&payments)
            .bearer_auth(KEY)
            .header("content-type", content_type)
            .body(body)
    };
    // Malformed JSON, wrong content type, an unknown parameter, an empty body.
    let (status, body) = error_of(
        post("{\"amount\":", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = error_of(post(good, "text/plain").send().await.unwrap()).await;
    assert_eq!(status, 415);
    let unknown = r#"{"amount":{"value":1000,"currency":"usd"},"cadence":"recurring","customer":"cus_1","payment_method":"pm_card_visa__1","colour":"red"}"#;
    let (status, body) = error_of(post(unknown, "application/json").send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );
    let (status, _) = error_of(post("", "application/json").send().await.unwrap()).await;
    assert_eq!(status, 400);
    // Oversized: 413.
    let huge = format!("{{\"description\":\"{}\"}}", "x".repeat(10_000));
    let (status, _) = error_of(
        client
            .post(&payments)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    // Unknown route 404, wrong method 405, unknown action 404, bad list params 400.
    let (status, _) = error_of(
        client
            .get(format!("{base}/v2/nothing"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = error_of(
        client
            .delete(&payments)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = error_of(
        client
            .post(format!("{payments}/osp_test_x/explode"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "colour=red",
        "page=zzz",
        // A token of no payment: 400, not an empty last page.
        "page=osp_never_made",
    ] {
        let (status, _) = error_of(
            client
                .get(format!("{payments}?{query}"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{query}");
    }
    // An action's unknown parameter, and on an unknown payment.
    let created: Value = post(good, "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let (status, body) = error_of(
        client
            .post(format!("{payments}/{id}/pause"))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"reason": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reason"));
    let (status, _) = error_of(
        client
            .post(format!("{payments}/osp_test_missing/cancel"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    // Events need an object id.
    let (status, _) = error_of(
        client
            .get(format!("{base}/v2/core/events"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let events: Value = client
        .get(format!("{base}/v2/core/events?object_id={id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        events["data"].as_array().unwrap().last().unwrap()["type"],
        "v2.payments.off_session_payment.created",
        "{events}"
    );
    // Garbage of every kind: never a 500.
    for body in [
        "\u{0}\u{1}",
        "[]",
        "null",
        "{\"amount\":{\"value\":1e400}}",
        "{\"amount\":{\"value\":-1,\"currency\":\"usd\"}}",
    ] {
        let response = client
            .post(&payments)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().as_u16() < 500,
            "{body}: {}",
            response.status()
        );
    }
    assert!(server
        .sigterm(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
}

/// Ids and query values holding a control character are refused as what they are
/// (404: no such object; 400: a bad parameter), not passed to the store: Postgres
/// refuses a NUL in text, and every one of these answered 500 with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_ids_are_refused_before_the_store() {
    let Ok(url) = std::env::var("OFFSESSION_TEST_POSTGRES_URL") else {
        println!(
            "skipped: OFFSESSION_TEST_POSTGRES_URL is not set (control characters on Postgres)"
        );
        return;
    };
    let dir = Scratch::new("control-characters");
    let schema = format!("offsession_nul_{}", std::process::id());
    let port = free_port();
    let mut server = common::hooks::serve_on(&dir, port, free_port(), &url, &schema);
    let client = reqwest::Client::new();
    for (method, path, expected) in [
        ("GET", "/v2/payments/off_session_payments/osp_%00", 404),
        (
            "POST",
            "/v2/payments/off_session_payments/osp_%00/cancel",
            404,
        ),
        ("GET", "/v2/payments/off_session_payments?page=osp_%00", 400),
        ("GET", "/v2/core/events/evt_%1f", 404),
        ("GET", "/v2/core/events?object_id=osp_%00", 400),
        ("GET", "/v2/core/event_destinations/ed_%00", 404),
        ("GET", "/v1/test_helpers/test_clocks/clock_%7F", 404),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body, _) = common::hooks::api(&client, port, method, path, None, None).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body["error"]["type"].is_string(), "{path}: {body}");
    }
    // An id without one is looked up as before.
    let (status, _, _) = common::hooks::get(
        &client,
        port,
        "/v2/payments/off_session_payments/osp_missing",
    )
    .await;
    assert_eq!(status, 404);
    server.sigkill();
    offsession::store::PostgresStore::connect(&url, &schema, 1)
        .await
        .unwrap()
        .drop_schema()
        .await
        .unwrap();
}
