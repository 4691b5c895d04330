//! A worker stopped with SIGTERM mid-batch: it stops claiming, lets the attempts in
//! flight finish, gives back every lease and exits 0 within its deadline; a restarted
//! worker settles the rest, each payment once. Also `submit`'s refusals and `status`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offsession::core::PaymentStatus;
use offsession::store::{SqliteStore, Synchronous};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_finishes_in_flight_attempts_and_releases_every_lease() {
    let dir = Scratch::new("sigterm");
    // Every answer takes 300 ms: with 64 in flight, 400 payments take about 2 s.
    let (_fake, addr) = start_fake(&dir, &["--latency-ms", "300"]);
    let db = dir.path("store.db");
    let config = dir.path("worker.toml");
    // A free port for /metrics and /healthz.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &config,
        worker_config(
            &addr,
            &format!("sqlite://{}", db.display()),
            "offsession",
            "w1",
        ) + &format!("\n[metrics]\nlisten = \"{metrics}\"\n"),
    )
    .unwrap();
    let input = dir.path("batch.jsonl");
    write_batch(&input, 0, 400);
    // Two refused lines among them, reported by line number and code.
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("{\"amount\": 12\n");
    text.push_str("{\"amount\":{\"value\":500,\"currency\":\"usd\"},\"cadence\":\"recurring\",\"customer\":\"cus_x\",\"payment_method\":\"pm_x\",\"retry_details\":{\"retry_policy\":\"nightly\"}}\n");
    std::fs::write(&input, text).unwrap();
    let (status, stdout, stderr) = run(&[
        "submit",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ]);
    assert!(status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["created"], 400, "{report}");
    let invalid = report["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 2, "{report}");
    assert_eq!(invalid[0]["line"], 401);
    assert_eq!(invalid[0]["code"], "osp_generic_invalid_request");
    assert_eq!(invalid[1]["line"], 402);
    assert!(
        invalid[1]["message"].as_str().unwrap().contains("nightly"),
        "{report}"
    );

    let log = dir.path("worker.log");
    let mut worker = start_worker(&config, &log, "w1");
    let store = SqliteStore::open(&db, Synchronous::Normal).unwrap();
    // Mid-batch: some payments settled, others not yet.
    let waited = Instant::now();
    loop {
        let settled = records(&store)
            .await
            .iter()
            .filter(|r| r.payment.status.is_terminal())
            .count();
        if settled >= 64 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "nothing settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it runs: /healthz answers, /metrics counts the attempts.
    let health = reqwest::get(format!("http://{metrics}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let exported = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(exported.contains("offsession_attempts_total"), "{exported}");
    assert!(
        exported.contains("offsession_due_to_attempt_seconds"),
        "{exported}"
    );
    let signalled = Instant::now();
    let exit = worker.sigterm(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit {exit:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let after_stop = records(&store).await;
    let held: Vec<_> = after_stop
        .iter()
        .filter(|r| r.lease.is_some())
        .map(|r| r.payment.id.clone())
        .collect();
    assert!(held.is_empty(), "leases still held: {held:?}");
    let processing = after_stop
        .iter()
        .filter(|r| r.payment.status == PaymentStatus::Processing)
        .count();
    assert_eq!(processing, 0, "attempts left in flight");
    let unsettled = after_stop
        .iter()
        .filter(|r| !r.payment.status.is_terminal())
        .count();
    assert!(
        unsettled > 0,
        "the batch ended before SIGTERM: not mid-batch"
    );
    let creates_at_stop = ledger(&addr).await["counters"]["creates"].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ledger(&addr).await["counters"]["creates"],
        creates_at_stop,
        "requests after exit"
    );

    // `status` sees what is left, and the stopped instance.
    let (status, stdout, stderr) = run(&["status", "--config", config.to_str().unwrap(), "--json"]);
    assert!(status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["payments"], 400);
    assert_eq!(report["due_now"], unsettled, "{report}");
    assert_eq!(report["stuck"], 0, "{report}");
    assert_eq!(
        report["instances"]["w1"],
        serde_json::Value::Null,
        "{report}"
    );

    // A restarted worker settles the rest, each payment once.
    let mut worker = start_worker(&config, &log, "w1");
    let waited = Instant::now();
    loop {
        let all = records(&store).await;
        if all.iter().all(|r| r.payment.status.is_terminal()) {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(60), "not settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker
        .sigterm(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    let summary = check_exactly_once(&records(&store).await, &ledger(&addr).await);
    println!(
        "sigterm: exited 0 in {:.2}s with {unsettled} payments unsettled and no lease held; {summary}",
        took.as_secs_f64()
    );
}

/// One process attempts payments on a SQLite file (its card locks, which keep two
/// attempts on one card within the network caps, are the process's own): a second
/// worker on the same file is refused with a message naming it, and starts once the
/// first has stopped. `submit` on the file is not refused meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_one_sqlite_file_is_refused() {
    let dir = Scratch::new("sqlite-one-worker");
    let (_fake, addr) = start_fake(&dir, &[]);
    let db = dir.path("store.db");
    let config = dir.path("worker.toml");
    std::fs::write(
        &config,
        worker_config(
            &addr,
            &format!("sqlite://{}", db.display()),
            "offsession",
            "w1",
        ),
    )
    .unwrap();
    let log = dir.path("first.log");
    let mut first = start_worker(&config, &log, "w1");
    let lock = dir.path("store.db-worker.lock");
    let waited = Instant::now();
    while !lock.exists() {
        assert!(waited.elapsed() < Duration::from_secs(20), "no worker lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, stderr) = run(&["worker", "--config", config.to_str().unwrap()]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("serves one worker"), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    let input = dir.path("batch.jsonl");
    write_batch(&input, 0, 3);
    let (status, _, stderr) = run(&[
        "submit",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    assert!(first
        .sigterm(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    let mut second = start_worker(&config, &dir.path("second.log"), "w2");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        second.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the second worker runs once the first stopped"
    );
    assert!(second
        .sigterm(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
}
