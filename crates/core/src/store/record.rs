//! The stored payment: the API object with the engine's bookkeeping.

use super::*;

/// A payment with the engine's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The API object.
    pub payment: OffSessionPayment,
    /// Bumped by every successful `update`.
    pub version: u64,
    /// The processor the payment is routed to (its primary).
    pub processor: String,
    /// Processors the payment may cascade to, in order, after the primary (empty
    /// unless payments orchestration is on).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Type and card facts from preflight.
    pub method: Option<PaymentMethodDetails>,
    /// When the scheduler must next act (attempt, replay, or expire an authorization).
    pub due_at: Option<Timestamp>,
    /// Current claim, if any.
    pub lease: Option<Lease>,
    /// Authorization attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// The next run replays the last attempt with the same idempotency key instead of
    /// starting a new one (after a processor fault or an unknown outcome).
    pub replay_pending: bool,
    /// When the first attempt was sent.
    pub first_attempt_at: Option<Timestamp>,
    /// Processor ids of a held authorization (manual capture).
    pub authorization: Option<ProcessorReference>,
    /// `due_at` before a pause, restored on resume.
    pub paused_due_at: Option<Timestamp>,
    /// The latest time the pending retry may run (the policy's window).
    #[serde(default)]
    pub retry_latest: Option<Timestamp>,
    /// The next attempt cascades to this processor at once (payments orchestration).
    #[serde(default)]
    pub cascade_to: Option<String>,
    /// Manual operations applied under an idempotency key, as `("<operation>:<key>",
    /// engine time in ms)`, newest last, at most [`KEYED_OPERATIONS_KEPT`]: written with
    /// the change they made, so that a request run again under its key after its
    /// answer was lost finds its operation done instead of doing it twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyed_operations: Vec<(String, i64)>,
    /// Captures that failed while the processor reported the authorization still
    /// held (not captured): the next capture goes under a new key
    /// (`<payment>:capture:<n>`), since a processor answers a key's stored error to
    /// every retry of that key.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub capture_generation: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How many keyed manual operations a payment remembers.
pub const KEYED_OPERATIONS_KEPT: usize = 16;

impl PaymentRecord {
    /// A new record for a freshly created payment, due at `due_at`.
    pub fn new(
        payment: OffSessionPayment,
        processor: String,
        method: Option<PaymentMethodDetails>,
        due_at: Timestamp,
    ) -> PaymentRecord {
        PaymentRecord {
            payment,
            version: 0,
            processor,
            fallbacks: Vec::new(),
            method,
            due_at: Some(due_at),
            lease: None,
            attempts: Vec::new(),
            replay_pending: false,
            first_attempt_at: None,
            authorization: None,
            paused_due_at: None,
            retry_latest: None,
            cascade_to: None,
            keyed_operations: Vec::new(),
            capture_generation: 0,
        }
    }

    /// The card this payment charges, as the network rules count it:
    /// `card:<processor>:<fingerprint>` when preflight reported the card's fingerprint
    /// (the same card saved as two payment methods is one card), else the payment
    /// method's id. Fixed at create, when preflight runs. `<processor>` is the one
    /// whose fingerprint it is (`CardDetails::fingerprint_by`: preflight's, whichever
    /// processor the payment is routed to, so that payments on one card routed to
    /// different processors share one history); a record made before that was kept
    /// names its own processor.
    pub fn card_key(&self) -> std::borrow::Cow<'_, str> {
        let card = self.method.as_ref().and_then(|m| m.card.as_ref());
        match card.and_then(|c| c.fingerprint.as_deref()) {
            Some(fingerprint) => {
                let by = card
                    .and_then(|c| c.fingerprint_by.as_deref())
                    .unwrap_or(&self.processor);
                std::borrow::Cow::Owned(format!("card:{by}:{fingerprint}"))
            }
            None => std::borrow::Cow::Borrowed(&self.payment.payment_method),
        }
    }

    /// The keys the card's attempts were filed under by earlier releases, when they
    /// differ from [`PaymentRecord::card_key`]: the payment method's id (before
    /// fingerprints were read), and `card:<the payment's processor>:<fingerprint>`
    /// when the fingerprint is another processor's (before the key named the
    /// fingerprint's processor). Payments made before an upgrade, and their attempts,
    /// are found under them; the network rules read and lock every one.
    pub fn earlier_card_keys(&self) -> Vec<String> {
        let card = self.method.as_ref().and_then(|m| m.card.as_ref());
        let Some(fingerprint) = card.and_then(|c| c.fingerprint.as_deref()) else {
            return Vec::new();
        };
        let mut keys = vec![self.payment.payment_method.clone()];
        if card
            .and_then(|c| c.fingerprint_by.as_deref())
            .is_some_and(|by| by != self.processor)
        {
            keys.push(format!("card:{}:{fingerprint}", self.processor));
        }
        keys
    }

    /// Whether operation `tag` (`"<operation>:<key>"`) was applied to this payment
    /// at or after `since` (engine time, ms).
    pub fn applied(&self, tag: &str, since: i64) -> bool {
        self.keyed_operations
            .iter()
            .any(|(done, at)| done == tag && *at >= since)
    }

    /// Records operation `tag` as applied at `at` (engine time, ms), forgetting the
    /// oldest beyond [`KEYED_OPERATIONS_KEPT`].
    pub fn record_operation(&mut self, tag: String, at: i64) {
        self.keyed_operations.push((tag, at));
        let excess = self
            .keyed_operations
            .len()
            .saturating_sub(KEYED_OPERATIONS_KEPT);
        self.keyed_operations.drain(..excess);
    }

    /// When a claimant may pick the record up: its due time, or the end of its lease
    /// if that is later. `None`: nothing to do.
    pub fn claimable_at(&self) -> Option<Timestamp> {
        let due = self.due_at?;
        Some(match &self.lease {
            Some(lease) if lease.until > due => lease.until,
            _ => due,
        })
    }

    /// The payment's id.
    pub fn id(&self) -> &str {
        &self.payment.id
    }

    /// The processor of the latest attempt, which holds its authorization and knows
    /// its key (a cascade or an open circuit breaker may have sent it to a fallback);
    /// the payment's own before any attempt.
    pub fn latest_processor(&self) -> &str {
        self.attempts
            .last()
            .map_or(self.processor.as_str(), |a| a.processor.as_str())
    }
}
