//! kill -9 chaos on SQLite: one worker, killed with SIGKILL at random moments at least
//! 20 times and restarted, against a fake Stripe in another process that times out
//! after charging or fails with 5xx on a share of requests. At the end every payment
//! is terminal, no payment was charged twice, and the store's succeeded payments are
//! exactly the ledger's charged ones.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offsession::store::{SqliteStore, Synchronous};

const PAYMENTS_PER_BATCH: usize = 500;
const BATCHES: usize = 4;
const KILLS: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_twenty_times_settles_every_payment_exactly_once() {
    let mut rng = Rng::from_clock("sqlite chaos");
    let dir = Scratch::new("chaos-sqlite");
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
    let db = dir.path("chaos.db");
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
    let batches: Vec<_> = (0..BATCHES)
        .map(|b| {
            let path = dir.path(&format!("batch{b}.jsonl"));
            write_batch(&path, b * PAYMENTS_PER_BATCH, PAYMENTS_PER_BATCH);
            path
        })
        .collect();
    let log = dir.path("worker.log");
    let started = Instant::now();
    submit(&config, &batches[0]);
    let mut submitted = 1;
    let mut worker = start_worker(&config, &log, "w1");
    let mut kills = 0;
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1_200))).await;
        worker.sigkill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        if kills % 5 == 0 && submitted < BATCHES {
            submit(&config, &batches[submitted]);
            submitted += 1;
        }
        worker = start_worker(&config, &log, "w1");
    }
    for batch in &batches[submitted..] {
        submit(&config, batch);
    }
    // The batches again, as after a crash of the submitter: nothing doubles.
    let again = submit(&config, &batches[0]);
    assert_eq!(again["created"], 0, "{again}");
    assert_eq!(again["already_stored"], PAYMENTS_PER_BATCH, "{again}");

    let store = SqliteStore::open(&db, Synchronous::Normal).unwrap();
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
    let exit = worker.sigterm(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM: {exit:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
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
    println!(
        "sqlite chaos: {kills} kills, {:.1}s in all; {summary}; {:.1}% of creates timed out after charging or failed with 5xx",
        started.elapsed().as_secs_f64(),
        100.0 * faulted / creates
    );
}
