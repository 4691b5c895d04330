//! kill -9 chaos on Postgres: three workers share one schema; a random one is killed
//! with SIGKILL at random moments at least 20 times and restarted, and the workers'
//! database sessions are terminated (`pg_terminate_backend`) every few seconds, while
//! a fake Stripe in another process times out after charging or fails with 5xx on a
//! share of requests. At the end every payment is terminal, no payment was charged
//! twice, and the store's succeeded payments are exactly the ledger's charged ones.
//! Needs `OFFSESSION_TEST_POSTGRES_URL`; works in a schema of its own and drops it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offsession::store::PostgresStore;

const PAYMENTS_PER_BATCH: usize = 500;
const BATCHES: usize = 4;
const KILLS: u32 = 20;
const WORKERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_killed_and_disconnected_settle_every_payment_exactly_once() {
    let Ok(url) = std::env::var("OFFSESSION_TEST_POSTGRES_URL") else {
        println!("skipped: OFFSESSION_TEST_POSTGRES_URL is not set (Postgres chaos)");
        return;
    };
    let mut rng = Rng::from_clock("postgres chaos");
    let dir = Scratch::new("chaos-postgres");
    let schema = format!(
        "offsession_chaos_{}_{}",
        std::process::id(),
        rng.below(1_000_000)
    );
    let seed = rng.below(1_000_000).to_string();
    let (_fake, addr) = start_fake(
        &dir,
        &[
            "--seed",
            &seed,
            "--decline-rate",
            "0.3",
            "--recover-rate",
            "0.5",
            "--fault-5xx-rate",
            "0.08",
            "--timeout-rate",
            "0.06",
            "--hang-ms",
            "1500",
        ],
    );
    let store = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    let configs: Vec<_> = (1..=WORKERS)
        .map(|n| {
            let path = dir.path(&format!("worker{n}.toml"));
            std::fs::write(&path, worker_config(&addr, &url, &schema, &format!("w{n}"))).unwrap();
            path
        })
        .collect();
    let batches: Vec<_> = (0..BATCHES)
        .map(|b| {
            let path = dir.path(&format!("batch{b}.jsonl"));
            write_batch(&path, b * PAYMENTS_PER_BATCH, PAYMENTS_PER_BATCH);
            path
        })
        .collect();
    let log = dir.path("workers.log");
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let application = format!("offsession/{schema}");
    let started = Instant::now();
    submit(&configs[0], &batches[0]);
    let mut submitted = 1;
    let mut workers: Vec<_> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| start_worker(c, &log, &format!("w{}", i + 1)))
        .collect();
    let mut kills = 0;
    let mut disconnected = 0;
    let mut last_disconnect = Instant::now();
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1_000))).await;
        let victim = rng.below(WORKERS as u64) as usize;
        workers[victim].sigkill();
        kills += 1;
        if last_disconnect.elapsed() > Duration::from_secs(3) {
            // Every session of this schema's workers, mid-transaction or idle.
            let ended = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    &[&application],
                )
                .await
                .unwrap();
            disconnected += ended.len();
            last_disconnect = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        if kills % 5 == 0 && submitted < BATCHES {
            submit(&configs[0], &batches[submitted]);
            submitted += 1;
        }
        workers[victim] = start_worker(&configs[victim], &log, &format!("w{}", victim + 1));
    }
    for batch in &batches[submitted..] {
        submit(&configs[1], batch);
    }
    let again = submit(&configs[2], &batches[0]);
    assert_eq!(again["created"], 0, "{again}");

    let settle_by = Instant::now() + Duration::from_secs(150);
    loop {
        let records = records(&store).await;
        if records.len() == BATCHES * PAYMENTS_PER_BATCH
            && records.iter().all(|r| r.payment.status.is_terminal())
        {
            break;
        }
        assert!(
            Instant::now() < settle_by,
            "not settled: {:?}\n{}",
            by_status(&records),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for worker in &mut workers {
        let exit = worker.sigterm(Duration::from_secs(15));
        assert!(
            exit.is_some_and(|s| s.success()),
            "SIGTERM {}: {exit:?}\n{}",
            worker.name,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let records = common::records(&store).await;
    let ledger = ledger(&addr).await;
    let summary = check_exactly_once(&records, &ledger);
    let counters = &ledger["counters"];
    let creates = counters["creates"].as_f64().unwrap();
    let faulted = counters["faults_5xx"].as_f64().unwrap() + counters["timeouts"].as_f64().unwrap();
    assert!(
        faulted / creates >= 0.10,
        "only {faulted} of {creates} creates faulted"
    );
    assert!(disconnected > 0, "no session was terminated");
    store.drop_schema().await.unwrap();
    println!(
        "postgres chaos: {WORKERS} workers, {kills} kills and {disconnected} sessions terminated, {:.1}s in all; {summary}; {:.1}% of creates timed out after charging or failed with 5xx",
        started.elapsed().as_secs_f64(),
        100.0 * faulted / creates
    );
}
