//! A plain `worker` sharing a Postgres store with `serve` takes no webhook endpoint.
//! A file of its own: test binaries run one after another, so its processes do not
//! meet `webhooks_kill.rs`'s, whose servers restart on ports another test could be
//! handed meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::hooks::*;
use common::*;

/// A plain `worker` sharing the store with `serve` delivers no webhooks, so it owns no
/// endpoint: every event reaches the endpoint through `serve`. (The worker's id is
/// picked so that, counted among the deliverers, it would own the endpoint.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_worker_beside_serve_takes_no_webhook_endpoint() {
    let Ok(url) = std::env::var("OFFSESSION_TEST_POSTGRES_URL") else {
        println!("skipped: OFFSESSION_TEST_POSTGRES_URL is not set (serve and a worker)");
        return;
    };
    let dir = Scratch::new("webhooks-worker");
    let schema = format!("offsession_hookw_{}", std::process::id());
    let hook_port = free_port();
    let received = endpoint(hook_port, 0, SECRET);
    let hook_url = format!("http://127.0.0.1:{hook_port}/hook");
    let endpoint_id = format!("we_{}", &offsession_server::hash_key(&hook_url)[..16]);
    let serve_id = "serve-hooks".to_owned();
    let worker_id = (0..100)
        .map(|n| format!("worker-{n}"))
        .find(|w| {
            offsession_server::webhooks::owner_of(&endpoint_id, &[serve_id.clone(), w.clone()])
                == Some(w.as_str())
        })
        .unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/worker.toml");
    let log = std::fs::File::create(dir.path("worker.log")).unwrap();
    let worker = std::process::Command::new(offsession())
        .args(["worker", "--config", config])
        .env("OFFSESSION_STORE__URL", &url)
        .env("OFFSESSION_STORE__SCHEMA", &schema)
        .env("OFFSESSION_ENGINE__INSTANCE_ID", &worker_id)
        .env("OFFSESSION_WORKER__POLL_INTERVAL", "50ms")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut worker = Proc {
        child: Some(worker),
        name: "worker".into(),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let port = free_port();
    let mut server = serve_with(
        &dir,
        port,
        hook_port,
        &url,
        &schema,
        &[("OFFSESSION_ENGINE__INSTANCE_ID", &serve_id)],
    );
    let client = reqwest::Client::new();
    for i in 0..10 {
        let payment = create_payment(&client, port, &format!("cus_worker_{i}")).await;
        assert!(payment.starts_with("osp_"), "{payment}");
    }
    let store = offsession::store::PostgresStore::connect(&url, &schema, 2)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stored = outbox_ids(&store).await;
        let missing = stored.difference(&received.lock().unwrap().ids).count();
        if missing == 0 && stored.len() >= 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never delivered; serve's log:\n{}",
            stored.len(),
            std::fs::read_to_string(dir.path("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server
        .sigterm(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    assert!(worker
        .sigterm(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    store.drop_schema().await.unwrap();
}
