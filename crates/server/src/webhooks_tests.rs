//! Tests of webhook delivery: ownership, concurrency, log sweeps, signatures.
use super::*;

#[test]
fn each_endpoint_has_one_owner_and_a_leaving_instance_moves_only_its_own() {
    let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
    let mut owned = std::collections::HashMap::new();
    for n in 0..300 {
        let endpoint = format!("we_{n}");
        let before = owner_of(&endpoint, &three).unwrap();
        *owned.entry(before).or_insert(0) += 1;
        let after = owner_of(&endpoint, &two).unwrap();
        if before != "b" {
            assert_eq!(before, after, "{endpoint} moved although its owner stayed");
        }
    }
    assert!(owned.values().all(|n| *n > 60), "{owned:?}");
    assert_eq!(owner_of("we_1", &["only".to_owned()]), Some("only"));
    assert!(Owners::alone("me").owns("we_anything"));
}

/// An endpoint that holds every request `hold` and answers 200; counts the most
/// requests it held at once, and the event ids it received.
async fn slow_endpoint(
    hold: Duration,
) -> (
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen_most, seen_ids) = (most.clone(), ids.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (now, most, ids) = (now.clone(), most.clone(), ids.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break text[end + 4..].to_owned();
                        }
                    }
                };
                let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                ids.lock()
                    .unwrap()
                    .push(event["id"].as_str().unwrap().to_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen_most, seen_ids)
}

/// Delivers 12 events with `concurrency`; returns the most in flight at once, and
/// whether every event arrived and the cursor ended past the last.
async fn deliver_with(concurrency: usize) -> (usize, bool) {
    use offsession_core::EventType;
    use offsession_store::conformance::{sample_event, sample_record};
    let store: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::with_outbox());
    let (url, most, ids) = slow_endpoint(Duration::from_millis(100)).await;
    let endpoint = WebhookEndpoint {
        id: "we_slow".into(),
        url,
        secret: "whsec_test_secret".into(),
        enabled_events: vec!["*".into()],
    };
    store
        .save_state("webhook/we_slow/cursor", "0")
        .await
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..12 {
        let record = sample_record(&format!("osp_{i}"), 1_000 + i, None);
        let event = sample_event(&record, &format!("evt_{i}"), EventType::Created);
        sent.push(event.id.clone());
        store.create(&record, None, &[event]).await.unwrap();
    }
    let settings = DeliverySettings {
        concurrency,
        poll: Duration::from_millis(20),
        ..DeliverySettings::default()
    };
    let delivering = tokio::spawn(deliver(
        store.clone(),
        endpoint,
        settings,
        Owners::alone("me"),
        std::future::pending(),
    ));
    let last = store
        .events_after(0, 100)
        .await
        .unwrap()
        .last()
        .unwrap()
        .sequence;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.load_state("webhook/we_slow/cursor").await.unwrap() != Some(last.to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the cursor never reached the end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delivering.abort();
    let mut got = ids.lock().unwrap().clone();
    got.sort();
    sent.sort();
    (most.load(std::sync::atomic::Ordering::SeqCst), got == sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_delivery_logs_are_removed_up_to_the_cursor_and_new_ones_kept() {
    use offsession_core::EventType;
    use offsession_store::conformance::{sample_event, sample_record};
    let store: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::with_outbox());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Three events of long ago, then one of now.
    for (i, created) in [1_000, 2_000, 3_000, now_ms].into_iter().enumerate() {
        let record = sample_record(&format!("osp_{i}"), created, None);
        let event = sample_event(&record, &format!("evt_{i}"), EventType::Created);
        store.create(&record, None, &[event]).await.unwrap();
        record_attempt(store.as_ref(), "we_1", &format!("evt_{i}"), Some(200)).await;
    }
    let sequences: Vec<u64> = store
        .events_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    let kept = |i: usize| {
        let store = store.clone();
        async move {
            store
                .load_state(&log_key("we_1", &format!("evt_{i}")))
                .await
                .unwrap()
                .is_some()
        }
    };
    let day = Duration::from_secs(86_400);
    // The deliverer is done with the first two only: the third stays.
    assert_eq!(
        sweep_logs(store.as_ref(), "we_1", sequences[1], day)
            .await
            .unwrap(),
        2
    );
    assert!(!kept(0).await && !kept(1).await && kept(2).await && kept(3).await);
    // Done with all: the old third goes, the new fourth stays; a sweep resumes.
    assert_eq!(
        sweep_logs(store.as_ref(), "we_1", sequences[3], day)
            .await
            .unwrap(),
        1
    );
    assert!(!kept(2).await && kept(3).await);
    assert_eq!(
        sweep_logs(store.as_ref(), "we_1", sequences[3], day)
            .await
            .unwrap(),
        0
    );
    assert!(kept(3).await);
}

/// An event dated ahead of the wall clock (a test clock's) does not hold up the
/// sweep until its date: it is judged by its log's last attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_ahead_does_not_hold_up_the_sweep() {
    use offsession_core::EventType;
    use offsession_store::conformance::{sample_event, sample_record};
    let store: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::with_outbox());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day_ms = 86_400_000;
    // A test clock a year ahead, delivered 31 days ago; then events of 40 days ago.
    for (i, created) in [
        now_ms + 365 * day_ms,
        now_ms - 40 * day_ms,
        now_ms - 40 * day_ms,
    ]
    .into_iter()
    .enumerate()
    {
        let record = sample_record(&format!("osp_{i}"), created, None);
        let event = sample_event(&record, &format!("evt_{i}"), EventType::Created);
        store.create(&record, None, &[event]).await.unwrap();
        let log = serde_json::json!({"attempts": 1, "last_status": 200,
            "last_attempt_at": (now_ms - 31 * day_ms) / 1_000});
        store
            .save_state(&log_key("we_1", &format!("evt_{i}")), &log.to_string())
            .await
            .unwrap();
    }
    let newest = store.newest_event_sequence().await.unwrap();
    let thirty_days = Duration::from_secs(30 * 86_400);
    assert_eq!(
        sweep_logs(store.as_ref(), "we_1", newest, thirty_days)
            .await
            .unwrap(),
        3
    );
    for i in 0..3 {
        let key = log_key("we_1", &format!("evt_{i}"));
        assert!(store.load_state(&key).await.unwrap().is_none(), "{key}");
    }
    // Delivered just now, the one dated ahead is kept, and holds the sweep there.
    let record = sample_record("osp_3", now_ms + 365 * day_ms, None);
    let event = sample_event(&record, "evt_3", EventType::Created);
    store.create(&record, None, &[event]).await.unwrap();
    record_attempt(store.as_ref(), "we_1", "evt_3", Some(200)).await;
    let newest = store.newest_event_sequence().await.unwrap();
    assert_eq!(
        sweep_logs(store.as_ref(), "we_1", newest, thirty_days)
            .await
            .unwrap(),
        0
    );
    assert!(store
        .load_state(&log_key("we_1", "evt_3"))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn old_pings_and_their_logs_are_removed_and_new_ones_kept() {
    let store: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::new());
    let now = offsession_core::Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    for (id, created) in [
        ("evt_old", offsession_core::Timestamp::from_millis(1_000)),
        ("evt_new", now),
    ] {
        let ping = serde_json::json!({
            "id": id, "type": "v2.core.event_destination.ping", "created": created,
            "related_object": {"id": "ed_1", "type": "v2.core.event_destination", "url": "/v2/core/event_destinations/ed_1"},
        });
        store
            .save_state(&crate::destinations::ping_key(id), &ping.to_string())
            .await
            .unwrap();
        record_attempt(store.as_ref(), "ed_1", id, Some(200)).await;
    }
    let has = |key: String| {
        let store = store.clone();
        async move { store.load_state(&key).await.unwrap().is_some() }
    };
    let day = Duration::from_secs(86_400);
    assert_eq!(sweep_pings(store.as_ref(), day).await.unwrap(), 1);
    assert!(!has(crate::destinations::ping_key("evt_old")).await);
    assert!(!has(log_key("ed_1", "evt_old")).await);
    assert!(has(crate::destinations::ping_key("evt_new")).await);
    assert!(has(log_key("ed_1", "evt_new")).await);
    assert_eq!(sweep_pings(store.as_ref(), day).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_gets_at_most_its_concurrency_and_the_cursor_ends_past_every_event() {
    assert_eq!(deliver_with(1).await, (1, true), "one at a time");
    assert_eq!(deliver_with(4).await, (4, true), "four at a time");
}

#[test]
fn signatures_match_stripes_scheme() {
    // HMAC-SHA256("whsec_test", "1700000000.{}"), computed independently with
    // Python: hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert_eq!(
        sign("whsec_test", 1_700_000_000, "{}"),
        "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
    );
}

/// An event its endpoint refuses does not hold up the events after it: the cursor
/// moves past it once its retry is filed in the store, the next event is delivered at
/// once, and the refused one is retried (by its due time) until it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_does_not_hold_up_the_next_and_is_retried() {
    use axum::extract::State;
    use offsession_core::EventType;
    use offsession_store::conformance::{sample_event, sample_record};
    type Seen = Arc<std::sync::Mutex<Vec<(String, u16)>>>;
    async fn hook(State(seen): State<Seen>, body: String) -> axum::http::StatusCode {
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = event["id"].as_str().unwrap().to_owned();
        let mut seen = seen.lock().unwrap();
        let refused_before = seen.iter().filter(|(e, s)| *e == id && *s == 400).count();
        // `evt_0` is refused three times, as a receiver whose handler fails on it.
        let status = if id == "evt_0" && refused_before < 3 {
            400
        } else {
            200
        };
        seen.push((id, status));
        axum::http::StatusCode::from_u16(status).unwrap()
    }
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let store: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::with_outbox());
    store.save_state("webhook/we_r/cursor", "0").await.unwrap();
    for i in 0..2 {
        let record = sample_record(&format!("osp_{i}"), 1_000 + i, None);
        let event = sample_event(&record, &format!("evt_{i}"), EventType::Created);
        store.create(&record, None, &[event]).await.unwrap();
    }
    let endpoint = WebhookEndpoint {
        id: "we_r".into(),
        url,
        secret: "whsec_test_secret".into(),
        enabled_events: vec!["*".into()],
    };
    let settings = DeliverySettings {
        poll: Duration::from_millis(20),
        first_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_secs(1),
        ..DeliverySettings::default()
    };
    let delivering = tokio::spawn(deliver(
        store.clone(),
        endpoint,
        settings,
        Owners::alone("me"),
        std::future::pending(),
    ));
    let accepted = |id: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(e, status)| e == id && *status == 200)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !accepted("evt_1") {
        assert!(std::time::Instant::now() < deadline, "evt_1 held up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !accepted("evt_0"),
        "evt_1 came first, while evt_0 waits for its retry"
    );
    let filed = store.list_state("webhook/we_r/retry/").await.unwrap();
    assert_eq!(filed.len(), 1, "{filed:?}");
    assert!(filed[0].1.contains("evt_0"), "{filed:?}");
    while !accepted("evt_0") {
        assert!(std::time::Instant::now() < deadline, "evt_0 never retried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    delivering.abort();
    assert!(store
        .list_state("webhook/we_r/retry/")
        .await
        .unwrap()
        .is_empty());
    let tries = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(e, _)| e == "evt_0")
        .count();
    assert_eq!(tries, 4, "three refusals, then accepted");
}
