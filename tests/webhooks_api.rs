//! The webhook API of `offsession serve` over HTTP: the delivery log, resends (with
//! their `Idempotency-Key`), the events list's pages, and event destinations made,
//! updated, refused, disabled and pinged — against a real server process and an
//! endpoint that checks every signature.

mod common;

use std::time::{Duration, Instant};

use common::hooks::*;
use common::*;

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
    // The created event, the first sent: refused on its first try (the endpoint
    // refuses the first two deliveries, whichever events they carry), then retried
    // with backoff until accepted.
    let (_, events, _) = get(
        &client,
        port,
        &format!("/v2/core/events?object_id={payment_id}"),
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
    // Between its refused first try and its retry (a second later) it is `retrying`.
    wait_for("the created event's first try", || {
        delivered_at(&received.lock().unwrap(), &created) >= 1
    })
    .await;
    let (_, log, _) = get(
        &client,
        port,
        &format!("/v2/core/events/{created}/deliveries"),
    )
    .await;
    if log["data"][0]["attempts"] == 1 {
        assert_eq!(log["data"][0]["status"], "retrying", "{log}");
    }
    wait_for("the created event's retry", || {
        delivered_at(&received.lock().unwrap(), &created) >= 2
    })
    .await;
    let path = format!("/v2/core/events/{created}/deliveries");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let (_, log, _) = get(&client, port, &path).await;
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
    let tries = delivered_at(&received.lock().unwrap(), &created);
    assert!(tries >= 2, "refused first: {tries}");
    assert_eq!(entry["attempts"], tries, "every try logged: {log}");
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
    assert_eq!(answer["data"][0]["attempts"], tries + 1, "{answer}");
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
    let (status, _, _) = post(&client, port, "/v2/core/events/evt_nope/resend").await;
    assert_eq!(status, 404);

    // The payment's events page newest first, `limit` at a time.
    let mut seen = Vec::new();
    let mut next = format!("/v2/core/events?object_id={payment_id}&limit=1");
    loop {
        let (status, page, _) = get(&client, port, &next).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
        seen.push(page["data"][0]["id"].as_str().unwrap().to_owned());
        match page["next_page_url"].as_str() {
            Some(url) => next = url.to_owned(),
            None => break,
        }
    }
    let (_, events, _) = get(
        &client,
        port,
        &format!("/v2/core/events?object_id={payment_id}"),
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
    let (status, _, _) = get(&client, port, &format!("{path}?bogus=1")).await;
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
        // Plain http only to loopback, judged by the parsed host, not a prefix.
        (
            serde_json::json!({"webhook_endpoint": {"url": "http://127.0.0.1@evil.example/x"}}),
            "must be https",
        ),
        (
            serde_json::json!({"webhook_endpoint": {"url": "http://localhost.evil.example/x"}}),
            "must be https",
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
    let (_, listed, _) = get(&client, port, "/v2/core/event_destinations?limit=1").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["data"][0]["id"], first["id"], "newest first");
    let (status, _, _) = get(&client, port, "/v2/core/event_destinations?limit=abc").await;
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
    assert_eq!(bad["error"]["param"], "enabled_events", "{bad}");
    let (status, pinged, _) = post(
        &client,
        port,
        &format!("/v2/core/event_destinations/{id}/ping"),
    )
    .await;
    assert_eq!(status, 200, "{pinged}");
    assert_eq!(pinged["type"], "v2.core.event_destination.ping");
    assert_eq!(pinged["related_object"]["id"], id.as_str());
    // A receiver fetches the thin event it got: the ping is found like any event.
    let ping_id = pinged["id"].as_str().unwrap().to_owned();
    let (status, fetched, _) = get(&client, port, &format!("/v2/core/events/{ping_id}")).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched, pinged, "the fetched ping is the one answered");
    // Its delivery log: the one destination, sent once; a ping is not resent.
    let (status, log, _) = get(
        &client,
        port,
        &format!("/v2/core/events/{ping_id}/deliveries"),
    )
    .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["data"].as_array().map(Vec::len), Some(1), "{log}");
    assert_eq!(log["data"][0]["destination"], id.as_str());
    assert_eq!(log["data"][0]["status"], "delivered", "{log}");
    assert_eq!(log["data"][0]["attempts"], 1);
    assert!(
        log["data"][0]["last_attempt_at"]
            .as_str()
            .is_some_and(|at| at.starts_with("20") && at.ends_with('Z')),
        "an RFC 3339 time, as the API's others: {log}"
    );
    let (status, refused, _) =
        post(&client, port, &format!("/v2/core/events/{ping_id}/resend")).await;
    assert_eq!(status, 400, "a ping is not resent: {refused}");
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
    let (status, _, _) = post(&client, port, &disable).await;
    assert_eq!(status, 200);
    let ping_path = format!("/v2/core/event_destinations/{id}/ping");
    let (status, refused, _) = post(&client, port, &ping_path).await;
    assert_eq!(
        status, 400,
        "a disabled destination is not pinged: {refused}"
    );
    let enable = format!("/v2/core/event_destinations/{id}/enable");
    let (status, _, _) = post(&client, port, &enable).await;
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

/// `serve` on a `memory:` store (nothing kept between processes) still keeps its
/// outbox while it runs: the events list answers and the webhook is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_memory_store_keeps_and_delivers_its_events() {
    let dir = Scratch::new("webhooks-memory");
    let port = free_port();
    let hook_port = free_port();
    let received = endpoint(hook_port, 0, SECRET);
    let mut server = serve_on(&dir, port, hook_port, "memory:", "unused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();
    let payment = create_payment(&client, port, "cus_mem").await;
    let created = created_event(&client, port, &payment).await;
    wait_for("the created event's delivery", || {
        received.lock().unwrap().ids.contains(&created)
    })
    .await;
    assert_eq!(received.lock().unwrap().bad_signatures, 0);
    server.sigkill();
}

/// A destination made through the API gets the events committed from its first
/// moment (not from when its deliverer first runs, up to a second later); one
/// re-enabled gets none of the events of its disabled time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_gets_events_from_its_first_moment_and_none_while_disabled() {
    use reqwest::Method;
    let dir = Scratch::new("webhooks-first");
    let port = free_port();
    let hook_port = free_port();
    let dest_port = free_port();
    let _configured = endpoint(hook_port, 0, SECRET);
    let mut server = serve(&dir, port, hook_port);
    let client = reqwest::Client::new();
    let (status, destination, _) = api(
        &client,
        port,
        Method::POST,
        "/v2/core/event_destinations",
        Some(
            serde_json::json!({"name": "first moment", "type": "webhook_endpoint",
            "event_payload": "thin",
            "enabled_events": ["v2.payments.off_session_payment.created"],
            "webhook_endpoint": {"url": format!("http://127.0.0.1:{dest_port}/d")},
            "include": ["webhook_endpoint.signing_secret"]}),
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{destination}");
    let id = destination["id"].as_str().unwrap().to_owned();
    let secret: &'static str = Box::leak(
        destination["webhook_endpoint"]["signing_secret"]
            .as_str()
            .unwrap()
            .to_owned()
            .into_boxed_str(),
    );
    let received = endpoint(dest_port, 0, secret);
    // Created at once, before the deliverer's first run.
    let first = create_payment(&client, port, "cus_first").await;
    let first = created_event(&client, port, &first).await;
    wait_for("the first payment's created event", || {
        received.lock().unwrap().ids.contains(&first)
    })
    .await;

    let (status, _, _) = post(
        &client,
        port,
        &format!("/v2/core/event_destinations/{id}/disable"),
    )
    .await;
    assert_eq!(status, 200);
    // The deliverer stops within a second of the disable.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let while_disabled = create_payment(&client, port, "cus_disabled").await;
    let while_disabled = created_event(&client, port, &while_disabled).await;
    let (status, _, _) = post(
        &client,
        port,
        &format!("/v2/core/event_destinations/{id}/enable"),
    )
    .await;
    assert_eq!(status, 200);
    let after = create_payment(&client, port, "cus_after").await;
    let after = created_event(&client, port, &after).await;
    wait_for("the created event after re-enabling", || {
        received.lock().unwrap().ids.contains(&after)
    })
    .await;
    let received = received.lock().unwrap();
    assert!(
        !received.ids.contains(&while_disabled),
        "an event of the disabled time was sent"
    );
    assert_eq!(received.bad_signatures, 0);
    drop(received);
    server.sigkill();
}
