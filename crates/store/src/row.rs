//! How a `PaymentRecord` maps to the SQL stores' rows: the columns that are queried
//! (status, claimable time, lease, version, processor, payment method, customer,
//! created) beside the record as JSON. Lease and version live only in their columns,
//! so a claim changes columns, not the JSON.

use offsession_core::{
    CardAttempt, ClockScope, Event, Lease, PaymentRecord, PaymentStatus, StoreError, Timestamp,
};

/// The schema version this binary writes. A database at a newer version is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// A clock scope as stored: empty for the engine's clock, the test clock's id
/// otherwise (test clock ids start with `clock_`, never empty).
pub(crate) fn scope_column(scope: &ClockScope) -> &str {
    match scope {
        ClockScope::Engine => "",
        ClockScope::TestClock(id) => id,
    }
}

/// The columns of a record, and its JSON without lease and version.
#[derive(Debug)]
pub(crate) struct RecordRow<'a> {
    pub(crate) id: &'a str,
    pub(crate) status: &'static str,
    pub(crate) scope: &'a str,
    pub(crate) due_at: Option<i64>,
    pub(crate) claimable_at: Option<i64>,
    pub(crate) lease_owner: Option<&'a str>,
    pub(crate) lease_until: Option<i64>,
    pub(crate) processor: &'a str,
    pub(crate) payment_method: &'a str,
    pub(crate) customer: &'a str,
    pub(crate) created: i64,
    pub(crate) body: String,
}

impl<'a> RecordRow<'a> {
    pub(crate) fn of(record: &'a PaymentRecord) -> Result<RecordRow<'a>, StoreError> {
        let scope = match &record.payment.test_clock {
            Some(id) => id.as_str(),
            None => "",
        };
        let mut body = serde_json::to_value(record).map_err(|e| encode_error("record", e))?;
        if let Some(object) = body.as_object_mut() {
            object.remove("lease");
            object.remove("version");
        }
        Ok(RecordRow {
            id: &record.payment.id,
            status: record.payment.status.as_str(),
            scope,
            due_at: record.due_at.map(Timestamp::as_millis),
            claimable_at: record.claimable_at().map(Timestamp::as_millis),
            lease_owner: record.lease.as_ref().map(|l| l.owner.as_str()),
            lease_until: record.lease.as_ref().map(|l| l.until.as_millis()),
            processor: &record.processor,
            payment_method: &record.payment.payment_method,
            customer: &record.payment.customer,
            created: record.payment.created.as_millis(),
            body: body.to_string(),
        })
    }
}

/// A record from its JSON and its lease and version columns.
pub(crate) fn record_from(
    body: &str,
    version: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
) -> Result<PaymentRecord, StoreError> {
    let mut value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| decode_error("record", e))?;
    if let Some(object) = value.as_object_mut() {
        object.insert("version".into(), serde_json::json!(version));
        object.insert("lease".into(), serde_json::Value::Null);
    }
    let mut record: PaymentRecord =
        serde_json::from_value(value).map_err(|e| decode_error("record", e))?;
    record.lease = lease_owner.zip(lease_until).map(|(owner, until)| Lease {
        owner,
        until: Timestamp::from_millis(until),
    });
    Ok(record)
}

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
    record.attempts.iter().map(move |a| CardAttempt {
        payment_id: record.payment.id.clone(),
        attempt_number: a.number,
        at: a.started_at,
        declined: a.decline_category.is_some(),
        amount: record.payment.amount_requested.value,
    })
}

/// An event as stored.
pub(crate) fn event_body(event: &Event) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| encode_error("event", e))
}

/// An event read back.
pub(crate) fn event_from(body: &str) -> Result<Event, StoreError> {
    serde_json::from_str(body).map_err(|e| decode_error("event", e))
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
