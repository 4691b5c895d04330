//! The SQLite store keeps the store contract, in memory and in a file, and a file
//! keeps its payments across a reopen.
#![cfg(feature = "sqlite")]

use offsession_core::{EventType, Expected, PaymentStatus, Store, StoreError};
use offsession_store::conformance::{run_all, sample_event, sample_record};
use offsession_store::{SqliteStore, Synchronous};

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("offsession-sqlite-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("offsession.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_keeps_the_store_contract() {
    run_all(|| SqliteStore::open_in_memory().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_keeps_payments_events_and_state_across_a_reopen() {
    let path = temp_db("reopen");
    {
        let store = SqliteStore::open(&path, Synchronous::Normal).unwrap();
        let record = sample_record("osp_a", 1_000, None);
        store
            .create(
                &record,
                None,
                &[sample_event(&record, "evt_1", EventType::Created)],
            )
            .await
            .unwrap();
        let stored = store.get("osp_a").await.unwrap().unwrap();
        let mut next = stored.clone();
        next.payment.status = PaymentStatus::Canceled;
        next.due_at = None;
        store
            .commit(
                &next,
                Expected::of(&stored),
                &[sample_event(&next, "evt_2", EventType::Canceled)],
            )
            .await
            .unwrap();
        store.save_state("smart", "{}").await.unwrap();
    }
    let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
    let record = store.get("osp_a").await.unwrap().unwrap();
    assert_eq!(record.payment.status, PaymentStatus::Canceled);
    assert_eq!(record.version, 2);
    let events = store.events_after(0, 10).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(ids, ["evt_1", "evt_2"]);
    assert_eq!(
        store.load_state("smart").await.unwrap().as_deref(),
        Some("{}")
    );
    drop(store);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() {
    let path = temp_db("newer");
    drop(SqliteStore::open(&path, Synchronous::Normal).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
    }
    let err = SqliteStore::open(&path, Synchronous::Normal).unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }));
    let message = err.to_string();
    assert!(message.contains("version 99"), "{message}");
    assert!(message.contains("newer than this binary"), "{message}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99);
    drop(conn);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_copied_into_the_database_beside_the_writer() {
    // The writer checkpoints by itself only past 16,384 WAL pages; below that, pages
    // reach the database file only through the checkpointer thread.
    let path = temp_db("checkpoint");
    let store = SqliteStore::open(&path, Synchronous::Normal).unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    for i in 0..300 {
        let record = sample_record(&format!("osp_{i}"), 1_000 + i, None);
        store.insert(&record).await.unwrap();
    }
    let wal = path.with_extension("db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 300 * 1_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&path).unwrap().len();
        if size > before + 300 * 1_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {size} bytes (from {before}): nothing was checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(store);
    assert!(
        !wal.exists(),
        "the last connection to close removes the WAL"
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// A row whose body cannot be read (written by a newer binary, or edited by hand) is
/// left out of a claim instead of failing it: the other payments of the batch are
/// claimed and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_does_not_fail_the_claim_of_the_others() {
    let path = temp_db("unreadable");
    let store = SqliteStore::open(&path, Synchronous::Normal).unwrap();
    for (id, at) in [("osp_bad", 1_000), ("osp_good", 2_000)] {
        store.insert(&sample_record(id, at, None)).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute(
        "UPDATE payments SET body = '{\"from_a_newer_binary\": true}' WHERE id = 'osp_bad'",
        [],
    )
    .unwrap();
    let lease = offsession_core::Lease {
        owner: "me".into(),
        until: offsession_core::Timestamp::from_millis(100_000),
    };
    let claimed = store
        .claim_due(
            &offsession_core::ClockScope::Engine,
            offsession_core::Timestamp::from_millis(50_000),
            10,
            &lease,
        )
        .await
        .unwrap();
    let ids: Vec<_> = claimed.iter().map(|r| r.payment.id.as_str()).collect();
    assert_eq!(ids, ["osp_good"]);
}
