//! How a `PaymentRecord` maps to the SQL stores' rows: the columns that are queried
//! (status, claimable time, lease, version, processor, payment method, customer,
//! created) beside the record as JSON. Lease and version live only in their columns,
//! so a claim changes columns, not the JSON.

use offsession_core::{
    CardAttempt, ClockScope, EventNotification, EventType, Lease, PaymentRecord, PaymentStatus,
    StoreError, Timestamp,
};

/// The schema version this binary writes. A database at a newer version is refused.
pub const SCHEMA_VERSION: i64 = 5;

/// The least string above every string that starts with `prefix`, in code-point
/// order (UTF-8 byte order): `prefix` with its last character raised by one, after
/// dropping trailing characters that cannot be. `None` when there is no such bound
/// (an empty prefix, or one of `char::MAX` only): every key from `prefix` on matches.
/// Listing engine state by prefix reads the range `[prefix, prefix_end)`.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 {
            0xD7FF => Some('\u{E000}'),
            code => char::from_u32(code + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A clock scope as stored: empty for the engine's clock, the test clock's id
/// otherwise (test clock ids start with `clock_`, never empty).
pub(crate) fn scope_column(scope: &ClockScope) -> &str {
    match scope {
        ClockScope::Engine => "",
        ClockScope::TestClock(id) => id,
    }
}

/// The columns of a record, and the record as JSON. Lease and version are read back
/// from their columns only (a claim changes the columns, not the JSON).
#[derive(Debug)]
pub(crate) struct RecordRow {
    pub(crate) id: String,
    pub(crate) status: &'static str,
    pub(crate) scope: String,
    pub(crate) due_at: Option<i64>,
    pub(crate) claimable_at: Option<i64>,
    pub(crate) lease_owner: Option<String>,
    pub(crate) lease_until: Option<i64>,
    pub(crate) processor: String,
    pub(crate) payment_method: String,
    pub(crate) customer: String,
    pub(crate) created: i64,
    pub(crate) body: String,
    /// The attempts as the network rules read them.
    pub(crate) attempts: Vec<CardAttempt>,
    /// The card the attempts are filed under (`PaymentRecord::card_key`): the
    /// attempts table's `payment_method` column, which the card history is read by.
    /// Empty for a record without attempts.
    pub(crate) card: String,
}

impl RecordRow {
    /// The row and the (thin) events of one change, encoded on the caller's thread.
    pub(crate) fn with_events(
        record: &PaymentRecord,
        events: &[EventNotification],
    ) -> Result<(RecordRow, Vec<EventRow>), StoreError> {
        let body = serde_json::to_string(record).map_err(|e| encode_error("record", e))?;
        let events = events
            .iter()
            .map(|e| {
                Ok((
                    e.id.clone(),
                    e.related_object.id.clone(),
                    e.event_type.as_str(),
                    e.created.as_millis(),
                    event_body(e)?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let row = RecordRow {
            id: record.payment.id.clone(),
            status: record.payment.status.as_str(),
            scope: scope_column(&ClockScope::of(&record.payment)).to_owned(),
            due_at: record.due_at.map(Timestamp::as_millis),
            claimable_at: record.claimable_at().map(Timestamp::as_millis),
            lease_owner: record.lease.as_ref().map(|l| l.owner.clone()),
            lease_until: record.lease.as_ref().map(|l| l.until.as_millis()),
            processor: record.processor.clone(),
            payment_method: record.payment.payment_method.clone(),
            customer: record.payment.customer.clone(),
            created: record.payment.created.as_millis(),
            body,
            attempts: card_attempts(record).collect(),
            // Only attempts are filed under it: no copy for a record without any.
            card: if record.attempts.is_empty() {
                String::new()
            } else {
                record.card_key().into_owned()
            },
        };
        Ok((row, events))
    }

    /// The attempts an update writes: the newest only. Attempts are appended one per
    /// write-ahead, and after that only the newest changes (its answer, a replay), so
    /// older rows are already as stored.
    pub(crate) fn newest_attempt(&self) -> &[CardAttempt] {
        match self.attempts.len() {
            0 => &[],
            n => &self.attempts[n - 1..],
        }
    }
}

/// A record from its JSON and its lease and version columns.
pub(crate) fn record_from(
    body: &str,
    version: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
) -> Result<PaymentRecord, StoreError> {
    let mut record: PaymentRecord =
        serde_json::from_str(body).map_err(|e| decode_error("record", e))?;
    record.version = version as u64;
    record.lease = lease_owner.zip(lease_until).map(|(owner, until)| Lease {
        owner,
        until: Timestamp::from_millis(until),
    });
    Ok(record)
}

/// A stored row before it is decoded: body, version, lease owner, lease until.
pub(crate) type RawRecord = (String, i64, Option<String>, Option<i64>);

/// The records of a claim that could be read. A row whose body this binary cannot
/// read (one written by a newer binary during a rolling upgrade, or edited by hand)
/// is left out and logged, not allowed to fail the claim: the other payments of the
/// batch go on, and it is claimed again when its lease lapses — by an instance that
/// can read it, or by this one, logging again.
pub(crate) fn claimed_records(
    rows: impl Iterator<Item = Result<PaymentRecord, StoreError>>,
) -> Vec<PaymentRecord> {
    rows.filter_map(|read| {
        read.map_err(|err| {
            tracing::error!(error = %err, "a claimed payment's stored record cannot be read; left out of this claim until its lease lapses");
        })
        .ok()
    })
    .collect()
}

/// Decodes rows read by a store.
pub(crate) fn records_from(rows: Vec<RawRecord>) -> Result<Vec<PaymentRecord>, StoreError> {
    rows.into_iter()
        .map(|(body, version, owner, until)| record_from(&body, version, owner, until))
        .collect()
}

/// An event ready to insert: id, payment id, type, created, JSON.
pub(crate) type EventRow = (String, String, &'static str, i64, String);

/// A status column read back.
pub(crate) fn status_from(text: &str) -> Result<PaymentStatus, StoreError> {
    PaymentStatus::ALL
        .iter()
        .copied()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| StoreError::Backend {
            message: format!("unknown status `{text}` in the payments table"),
            retryable: false,
            source: None,
        })
}

/// One row of the attempts table: what the network rules read.
pub(crate) fn card_attempts(record: &PaymentRecord) -> impl Iterator<Item = CardAttempt> + '_ {
    record
        .attempts
        .iter()
        .map(|a| CardAttempt::of(&record.payment, a))
}

/// An event's `body` column when the id, payment id, type and created columns
/// rebuild the event exactly (`EventNotification::about_payment`, as the engine makes
/// every event): `{}` in test mode, `{"livemode":true}` in live mode. Any other event
/// is stored as its whole JSON. The outbox row is then about a third of the JSON's
/// size; both forms are JSON, so Postgres keeps them in its `json` column.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rebuilt {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    livemode: bool,
}

/// An event's `body` column (see `Rebuilt`).
pub fn event_body(event: &EventNotification) -> Result<String, StoreError> {
    // What `EventNotification::about_payment` makes, checked without making one: this
    // runs for every event the engine writes.
    let related = &event.related_object;
    let rebuilt = event.object == "v2.core.event"
        && related.object_type == offsession_core::payment::OBJECT_NAME
        && related
            .url
            .strip_prefix("/v2/payments/off_session_payments/")
            .is_some_and(|id| id == related.id);
    if rebuilt {
        serde_json::to_string(&Rebuilt {
            livemode: event.livemode,
        })
    } else {
        serde_json::to_string(event)
    }
    .map_err(|e| encode_error("event", e))
}

/// An event read back from its columns (id, payment id, type, created, body).
pub(crate) fn event_from(
    id: String,
    payment_id: &str,
    event_type: &str,
    created: i64,
    body: &str,
) -> Result<EventNotification, StoreError> {
    let livemode = match serde_json::from_str::<EventNotification>(body) {
        Ok(whole) => return Ok(whole),
        Err(_) => {
            serde_json::from_str::<Rebuilt>(body)
                .map_err(|e| decode_error("event", e))?
                .livemode
        }
    };
    let event_type = EventType::parse(event_type).ok_or_else(|| StoreError::Backend {
        message: format!("unknown event type `{event_type}` in the events table"),
        retryable: false,
        source: None,
    })?;
    Ok(EventNotification::about_payment(
        id,
        event_type,
        Timestamp::from_millis(created),
        livemode,
        payment_id,
    ))
}

fn encode_error(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::backend(format!("encoding the {what} as JSON"), false, e)
}

fn decode_error(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::backend(format!("decoding a stored {what}"), false, e)
}

/// The refusal when the database's schema is newer than this binary's.
pub(crate) fn newer_schema(found: i64) -> StoreError {
    StoreError::Backend {
        message: format!(
            "the database schema is version {found}, newer than this binary's {SCHEMA_VERSION}: run a newer offsession, or restore a backup taken before the upgrade"
        ),
        retryable: false,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_last_character_is_raised() {
        assert_eq!(prefix_end("destination/").as_deref(), Some("destination0"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
    }

    fn event(livemode: bool) -> EventNotification {
        EventNotification::about_payment(
            "evt_1".into(),
            EventType::Succeeded,
            Timestamp::from_millis(1_000),
            livemode,
            "osp_1",
        )
    }

    #[test]
    fn an_event_made_as_the_engine_makes_it_is_stored_as_its_mode_only() {
        assert_eq!(event_body(&event(false)).unwrap(), "{}");
        assert_eq!(event_body(&event(true)).unwrap(), r#"{"livemode":true}"#);
        for livemode in [false, true] {
            let body = event_body(&event(livemode)).unwrap();
            let back = event_from(
                "evt_1".into(),
                "osp_1",
                "v2.payments.off_session_payment.succeeded",
                1_000,
                &body,
            )
            .unwrap();
            assert_eq!(back, event(livemode));
        }
    }

    #[test]
    fn any_other_event_is_stored_whole_and_its_json_wins_over_the_columns() {
        let mut odd = event(false);
        odd.object = "v2.core.other".into();
        let body = event_body(&odd).unwrap();
        assert!(body.contains("v2.core.other"), "{body}");
        let back = event_from("evt_1".into(), "osp_1", "unused", 0, &body).unwrap();
        assert_eq!(back, odd);
    }

    #[test]
    fn a_body_that_is_neither_form_is_refused() {
        let err = event_from(
            "evt_1".into(),
            "osp_1",
            "v2.payments.off_session_payment.succeeded",
            1_000,
            r#"{"livemode":true,"id":"evt_1"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("decoding a stored event"), "{err}");
        let err = event_from("evt_1".into(), "osp_1", "v2.nope", 1_000, "{}").unwrap_err();
        assert!(err.to_string().contains("v2.nope"), "{err}");
    }
}
