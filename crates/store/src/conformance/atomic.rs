//! What the durable stores add to the contract: a create writes its idempotency key,
//! payment and events together; a change and its events commit together; keys
//! expire; engine state round-trips.

use std::time::Duration;

use offsession_core::events::RelatedObject;
use offsession_core::{
    EventNotification, EventType, Expected, IdempotencyClaim, NewIdempotencyKey, OutboxEvent,
    PaymentRecord, PaymentStatus, Store, StoreError, Timestamp,
};

use super::sample_record;

/// An event of `event_type` for `record`'s payment.
pub fn sample_event(record: &PaymentRecord, id: &str, event_type: EventType) -> EventNotification {
    EventNotification {
        id: id.into(),
        object: "v2.core.event".into(),
        event_type,
        created: record.payment.created,
        livemode: false,
        related_object: RelatedObject {
            id: record.payment.id.clone(),
            object_type: "v2.payments.off_session_payment".into(),
            url: format!("/v2/payments/off_session_payments/{}", record.payment.id),
        },
    }
}

const DAY: Duration = Duration::from_secs(86_400);

fn key<'a>(key: &'a str, fingerprint: &'a str, now: i64) -> NewIdempotencyKey<'a> {
    NewIdempotencyKey {
        key,
        fingerprint,
        now: Timestamp::from_millis(now),
        ttl: DAY,
    }
}

async fn event_ids(store: &dyn Store) -> Vec<String> {
    store
        .events_after(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.id)
        .collect()
}

pub(super) async fn a_create_writes_key_payment_and_event_together(store: &dyn Store) {
    let a = sample_record("osp_a", 1_000, None);
    let created = sample_event(&a, "evt_a", EventType::Created);
    let claim = store
        .create(
            &a,
            Some(key("k1", "fp-a", 1_000)),
            std::slice::from_ref(&created),
        )
        .await
        .unwrap();
    assert_eq!(claim, IdempotencyClaim::Inserted);
    assert!(store.get("osp_a").await.unwrap().is_some());
    if store.keeps_events() {
        let events = store.events_after(0, 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, created, "the outbox round-trips the event");
    }

    // Same key again: the original mapping, and nothing of the second request is
    // written (no payment, no event).
    let b = sample_record("osp_b", 2_000, None);
    let repeat = store
        .create(
            &b,
            Some(key("k1", "fp-b", 2_000)),
            &[sample_event(&b, "evt_b", EventType::Created)],
        )
        .await
        .unwrap();
    assert_eq!(
        repeat,
        IdempotencyClaim::Existing {
            fingerprint: "fp-a".into(),
            payment_id: "osp_a".into()
        }
    );
    assert!(store.get("osp_b").await.unwrap().is_none());
    if store.keeps_events() {
        assert_eq!(event_ids(store).await, ["evt_a"]);
    }
}

pub(super) async fn a_refused_create_registers_no_key_and_no_event(store: &dyn Store) {
    let a = sample_record("osp_a", 1_000, None);
    store.insert(&a).await.unwrap();
    // Same payment id with a new key: refused, and the key stays free.
    let err = store
        .create(
            &a,
            Some(key("k2", "fp", 1_000)),
            &[sample_event(&a, "evt_dup", EventType::Created)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err}");
    let b = sample_record("osp_b", 2_000, None);
    let claim = store
        .create(&b, Some(key("k2", "fp", 2_000)), &[])
        .await
        .unwrap();
    assert_eq!(
        claim,
        IdempotencyClaim::Inserted,
        "a refused create must not keep its key"
    );
    if store.keeps_events() {
        assert!(event_ids(store).await.is_empty());
    }
}

pub(super) async fn an_expired_key_counts_as_new(store: &dyn Store) {
    let a = sample_record("osp_a", 1_000, None);
    store
        .create(&a, Some(key("k3", "fp-a", 1_000)), &[])
        .await
        .unwrap();
    let b = sample_record("osp_b", 2_000, None);
    let day_later = 1_000 + DAY.as_millis() as i64;
    // The lookup a create makes first counts expiry as `create` does.
    let lookup =
        |key: &'static str, at: i64| store.idempotency_key(key, Timestamp::from_millis(at), DAY);
    assert_eq!(
        lookup("k3", day_later - 1).await.unwrap(),
        Some(("fp-a".to_string(), "osp_a".to_string()))
    );
    assert_eq!(lookup("k3", day_later).await.unwrap(), None, "expired");
    assert_eq!(lookup("k_unknown", 1_000).await.unwrap(), None);
    let claim = store
        .create(&b, Some(key("k3", "fp-b", day_later - 1)), &[])
        .await
        .unwrap();
    assert!(matches!(claim, IdempotencyClaim::Existing { .. }));
    let claim = store
        .create(&b, Some(key("k3", "fp-b", day_later)), &[])
        .await
        .unwrap();
    assert_eq!(claim, IdempotencyClaim::Inserted, "expired after its ttl");
    let claim = store
        .create(
            &sample_record("osp_c", 3_000, None),
            Some(key("k3", "fp-c", day_later + 1)),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        claim,
        IdempotencyClaim::Existing {
            fingerprint: "fp-b".into(),
            payment_id: "osp_b".into()
        },
        "the renewed key maps to the payment that renewed it"
    );
    assert_eq!(
        lookup("k3", day_later + 1).await.unwrap(),
        Some(("fp-b".to_string(), "osp_b".to_string()))
    );
}

pub(super) async fn a_change_and_its_events_commit_together(store: &dyn Store) {
    let a = sample_record("osp_a", 1_000, None);
    store.insert(&a).await.unwrap();
    let stored = store.get("osp_a").await.unwrap().unwrap();
    let mut next = stored.clone();
    next.payment.status = PaymentStatus::Canceled;
    next.due_at = None;
    let canceled = sample_event(&next, "evt_1", EventType::Canceled);
    store
        .commit(
            &next,
            Expected::of(&stored),
            std::slice::from_ref(&canceled),
        )
        .await
        .unwrap();
    // A stale change is refused and its event is not written.
    let stale = store
        .commit(
            &next,
            Expected::of(&stored),
            &[sample_event(&next, "evt_stale", EventType::Canceled)],
        )
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale}");
    if store.keeps_events() {
        assert_eq!(event_ids(store).await, ["evt_1"]);
    }
}

pub(super) async fn events_come_in_commit_order_and_page(store: &dyn Store) {
    if !store.keeps_events() {
        return;
    }
    for i in 0..5 {
        let record = sample_record(&format!("osp_{i}"), 1_000 + i, None);
        let events: Vec<_> = (0..2)
            .map(|j| sample_event(&record, &format!("evt_{i}_{j}"), EventType::Created))
            .collect();
        store.create(&record, None, &events).await.unwrap();
    }
    let first = store.events_after(0, 4).await.unwrap();
    assert_eq!(first.len(), 4);
    let ids: Vec<_> = first.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(ids, ["evt_0_0", "evt_0_1", "evt_1_0", "evt_1_1"]);
    assert!(first.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let rest = store.events_after(first[3].sequence, 100).await.unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(rest[0].event.id, "evt_2_0");
    assert!(store
        .events_after(rest[5].sequence, 10)
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn removed_events_keep_later_positions(store: &dyn Store) {
    if !store.keeps_events() {
        return;
    }
    assert_eq!(store.newest_event_sequence().await.unwrap(), 0);
    assert_eq!(store.remove_events_through(10).await.unwrap(), 0);
    for i in 0..4 {
        let record = sample_record(&format!("osp_{i}"), 1_000 + i, None);
        let events: Vec<_> = (0..2)
            .map(|j| sample_event(&record, &format!("evt_{i}_{j}"), EventType::Created))
            .collect();
        store.create(&record, None, &events).await.unwrap();
    }
    let all = store.events_after(0, 100).await.unwrap();
    assert_eq!(all.len(), 8);
    assert_eq!(
        store.newest_event_sequence().await.unwrap(),
        all[7].sequence
    );
    // The oldest three go; the rest keep their positions and are found as before.
    assert_eq!(
        store.remove_events_through(all[2].sequence).await.unwrap(),
        3
    );
    assert_eq!(
        store.remove_events_through(all[2].sequence).await.unwrap(),
        0
    );
    let kept = store.events_after(0, 100).await.unwrap();
    let positions = |events: &[OutboxEvent]| -> Vec<(u64, String)> {
        events
            .iter()
            .map(|e| (e.sequence, e.event.id.clone()))
            .collect()
    };
    assert_eq!(positions(&kept), positions(&all[3..]));
    assert_eq!(
        positions(&store.events_after(all[4].sequence, 2).await.unwrap()),
        positions(&all[5..7])
    );
    assert!(store.event(&all[1].event.id).await.unwrap().is_none());
    assert!(store.event(&all[5].event.id).await.unwrap().is_some());
    // Removing all of them: none kept, and a new event takes a new position.
    assert_eq!(
        store.remove_events_through(all[7].sequence).await.unwrap(),
        5
    );
    assert_eq!(store.newest_event_sequence().await.unwrap(), 0);
    let record = sample_record("osp_9", 2_000, None);
    let event = sample_event(&record, "evt_9_0", EventType::Created);
    store.create(&record, None, &[event]).await.unwrap();
    let new = store.events_after(0, 10).await.unwrap();
    assert_eq!(new.len(), 1);
    assert!(new[0].sequence > all[7].sequence, "{new:?}");
}

pub(super) async fn events_are_found_by_id_and_by_payment(store: &dyn Store) {
    if !store.keeps_events() {
        return;
    }
    for i in 0..3 {
        let record = sample_record(&format!("osp_{i}"), 1_000 + i, None);
        let events: Vec<_> = (0..3)
            .map(|j| sample_event(&record, &format!("evt_{i}_{j}"), EventType::Created))
            .collect();
        store.create(&record, None, &events).await.unwrap();
    }
    let found = store.event("evt_1_2").await.unwrap().unwrap();
    assert_eq!(found.event.id, "evt_1_2");
    assert_eq!(found.event.related_object.id, "osp_1");
    assert_eq!(
        found.event,
        sample_event(
            &sample_record("osp_1", 1_001, None),
            "evt_1_2",
            EventType::Created
        ),
        "read back whole"
    );
    // Events in live mode, and events not made as the engine makes them, read back
    // exactly as written too.
    let record = sample_record("osp_live", 2_000, None);
    let mut live = sample_event(&record, "evt_live", EventType::Created);
    live.livemode = true;
    let mut odd = sample_event(&record, "evt_odd", EventType::Canceled);
    odd.related_object.url = "/elsewhere".into();
    store
        .create(&record, None, &[live.clone(), odd.clone()])
        .await
        .unwrap();
    assert_eq!(store.event("evt_live").await.unwrap().unwrap().event, live);
    let both: Vec<_> = store
        .events_for("osp_live", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(both, [live, odd]);
    assert!(store.event("evt_9").await.unwrap().is_none());
    let of_one = store.events_for("osp_2", 10).await.unwrap();
    let ids: Vec<_> = of_one.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(ids, ["evt_2_0", "evt_2_1", "evt_2_2"]);
    assert_eq!(store.events_for("osp_0", 2).await.unwrap().len(), 2);
    assert!(store.events_for("osp_9", 10).await.unwrap().is_empty());
}

pub(super) async fn engine_state_round_trips(store: &dyn Store) {
    assert_eq!(store.load_state("smart").await.unwrap(), None);
    store.save_state("smart", "{\"v\":1}").await.unwrap();
    store.save_state("breakers", "[]").await.unwrap();
    store.save_state("smart", "{\"v\":2}").await.unwrap();
    assert_eq!(
        store.load_state("smart").await.unwrap().as_deref(),
        Some("{\"v\":2}")
    );
    assert_eq!(
        store.load_state("breakers").await.unwrap().as_deref(),
        Some("[]")
    );
    // A swap writes only over what it expects: absent, or the value it read.
    assert!(store.swap_state("key/a", None, "1").await.unwrap());
    assert!(!store.swap_state("key/a", None, "2").await.unwrap());
    assert!(!store.swap_state("key/a", Some("0"), "2").await.unwrap());
    assert!(store.swap_state("key/a", Some("1"), "2").await.unwrap());
    assert_eq!(
        store.load_state("key/a").await.unwrap().as_deref(),
        Some("2")
    );
    // A conditional removal removes only what it expects.
    assert!(!store.remove_state_if("key/a", "1").await.unwrap());
    assert!(!store.remove_state_if("key/none", "1").await.unwrap());
    assert_eq!(
        store.load_state("key/a").await.unwrap().as_deref(),
        Some("2")
    );
    assert!(store.remove_state_if("key/a", "2").await.unwrap());
    assert_eq!(store.load_state("key/a").await.unwrap(), None);
    assert!(store.swap_state("key/a", None, "3").await.unwrap());
}

pub(super) async fn engine_state_lists_by_prefix(store: &dyn Store) {
    assert!(store.list_state("instance/").await.unwrap().is_empty());
    store.save_state("instance/b", "2").await.unwrap();
    store.save_state("instance/a", "1").await.unwrap();
    store.save_state("instances", "not one").await.unwrap();
    store.save_state("smart", "{}").await.unwrap();
    store.save_state("instance/a", "3").await.unwrap();
    // Just past the prefix's range ('0' follows '/'), and inside it above ASCII.
    store.save_state("instance0", "not one").await.unwrap();
    store
        .save_state("instance/\u{e9}t\u{e9}", "4")
        .await
        .unwrap();
    store.save_state("instance.", "not one").await.unwrap();
    assert_eq!(
        store.list_state("instance/").await.unwrap(),
        vec![
            ("instance/a".to_owned(), "3".to_owned()),
            ("instance/b".to_owned(), "2".to_owned()),
            ("instance/\u{e9}t\u{e9}".to_owned(), "4".to_owned())
        ]
    );
    assert_eq!(store.list_state("").await.unwrap().len(), 7);
    // Read a page at a time, the same entries in the same order.
    for prefix in ["instance/", ""] {
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .list_state_page(prefix, after.as_deref(), 2)
                .await
                .unwrap();
            assert!(page.len() <= 2, "{page:?}");
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            paged.extend(page);
        }
        assert_eq!(paged, store.list_state(prefix).await.unwrap(), "{prefix:?}");
    }
    assert_eq!(
        store
            .list_state_page("instance/", Some("instance/a"), 1)
            .await
            .unwrap(),
        vec![("instance/b".to_owned(), "2".to_owned())]
    );
    store.delete_state("instance/\u{e9}t\u{e9}").await.unwrap();
    // A deleted key is gone from reads and lists; deleting an absent one is fine.
    store.delete_state("instance/a").await.unwrap();
    store.delete_state("instance/never").await.unwrap();
    assert_eq!(store.load_state("instance/a").await.unwrap(), None);
    let keys: Vec<String> = store
        .list_state("instance/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["instance/b"]);
}
