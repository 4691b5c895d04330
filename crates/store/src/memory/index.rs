//! The memory store's ordered indexes: due payments per clock scope, and every
//! attempt per card for the network rules. Each is kept in step with a record as it
//! changes, by the creation sequence that keys the record.

use std::collections::BTreeMap;

use offsession_core::{AttemptRecord, CardAttempt, ClockScope, PaymentRecord, Timestamp};

use super::Map;

/// A payment's place in its scope's due index: (claimable at, creation sequence).
/// Payments due at the same time are claimed in creation order (the SQL stores: in
/// id order; the engine's ids are time-ordered, so the two agree for them).
pub(super) type DueKey = (Timestamp, u64);
/// An attempt in a card's history: (sent at, payment's creation sequence, attempt
/// number).
pub(super) type CardKey = (Timestamp, u64, u32);

pub(super) fn due_key(record: &PaymentRecord, sequence: u64) -> Option<DueKey> {
    record.claimable_at().map(|at| (at, sequence))
}

/// Whether two versions of an attempt make the same card-index entry: the same
/// attempt, started at the same time, in the same answer state (an answer comes
/// once, its decline and advice code with it).
fn same_entry(a: &AttemptRecord, b: &AttemptRecord) -> bool {
    a.number == b.number
        && a.started_at == b.started_at
        && a.decline_category.is_some() == b.decline_category.is_some()
        && a.answered() == b.answered()
}

/// Keeps a card's attempt index in step with a record's attempts (few per record):
/// untouched when no attempt started or got its answer since `old`; only the entries
/// of attempts that changed are written.
pub(super) fn reindex_card(
    by_card: &mut Map<String, Vec<(CardKey, CardAttempt)>>,
    sequence: u64,
    old: Option<&PaymentRecord>,
    new: &PaymentRecord,
) {
    let before: &[AttemptRecord] = old.map_or(&[], |old| &old.attempts);
    if before.len() == new.attempts.len()
        && before
            .iter()
            .zip(&new.attempts)
            .all(|(a, b)| same_entry(a, b))
    {
        return;
    }
    // A record's card is fixed at create, so `old`'s entries are under the same key.
    let card = new.card_key();
    if !by_card.contains_key(card.as_ref()) {
        by_card.insert(card.clone().into_owned(), Vec::new());
    }
    let Some(index) = by_card.get_mut(card.as_ref()) else {
        return;
    };
    // An entry whose start moved (a fault's replay, counted from its send) is filed
    // again below.
    for was in before {
        let kept = new
            .attempts
            .iter()
            .any(|a| a.number == was.number && a.started_at == was.started_at);
        let key = (was.started_at, sequence, was.number);
        if let (false, Ok(at)) = (kept, index.binary_search_by(|(k, _)| k.cmp(&key))) {
            index.remove(at);
        }
    }
    for (i, attempt) in new.attempts.iter().enumerate() {
        if before.get(i).is_some_and(|was| same_entry(was, attempt)) {
            // Unchanged since `old`: its entry is already what it would be.
            continue;
        }
        let key = (attempt.started_at, sequence, attempt.number);
        let entry = CardAttempt::of(&new.payment, attempt);
        match index.binary_search_by(|(k, _)| k.cmp(&key)) {
            // The index holds only what the card history answers: an attempt that
            // no rule counts (a first attempt approved) leaves it.
            Ok(at) if !entry.counted() => {
                index.remove(at);
            }
            Err(_) if !entry.counted() => {}
            Ok(at) => index[at].1 = entry,
            Err(at) => {
                // A card's first attempts take exactly their room; a busy card's
                // list grows as a `Vec` does.
                if index.len() < 4 {
                    index.reserve_exact(1);
                }
                index.insert(at, (key, entry));
            }
        }
    }
    if index.is_empty() {
        by_card.remove(card.as_ref());
    }
}

/// Moves a payment's due entry from `old` to `new`; its id moves with it.
pub(super) fn reindex_due(
    due: &mut Map<ClockScope, BTreeMap<DueKey, String>>,
    scope: &ClockScope,
    id: &str,
    old: Option<DueKey>,
    new: Option<DueKey>,
) {
    if old == new {
        return;
    }
    if !due.contains_key(scope) {
        due.insert(scope.clone(), BTreeMap::new());
    }
    let Some(index) = due.get_mut(scope) else {
        return;
    };
    let id = old
        .and_then(|old| index.remove(&old))
        .unwrap_or_else(|| id.to_owned());
    if let Some(new) = new {
        index.insert(new, id);
    } else if index.is_empty() && *scope != ClockScope::Engine {
        // A test clock with nothing due keeps no map behind.
        due.remove(scope);
    }
}
