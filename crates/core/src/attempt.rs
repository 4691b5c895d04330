//! Attempts and their outcomes: what a processor answers, and how the engine files it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The raw signals a processor gives on a decline (Stripe's names; other adapters map
/// their own codes onto these fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclineCodes {
    /// Error code, e.g. `card_declined`, `expired_card`, `authentication_required`.
    pub code: String,
    /// Issuer's decline reason, e.g. `insufficient_funds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    /// Processor advice: `do_not_try_again`, `try_again_later`, `confirm_card_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice_code: Option<String>,
    /// Issuer's raw network response code, e.g. Visa `51`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_decline_code: Option<String>,
    /// Network advice, e.g. Mastercard merchant advice code `03`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_advice_code: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl DeclineCodes {
    /// A decline with `code` and an optional `decline_code`.
    pub fn new(code: &str, decline_code: Option<&str>) -> DeclineCodes {
        DeclineCodes {
            code: code.to_owned(),
            decline_code: decline_code.map(str::to_owned),
            ..DeclineCodes::default()
        }
    }
}

impl fmt::Display for DeclineCodes {
    /// `card_declined (insufficient_funds)`, as `last_authorization_attempt_error` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.decline_code {
            Some(decline) if decline != &self.code => write!(f, "{} ({decline})", self.code),
            _ => f.write_str(&self.code),
        }
    }
}

/// What a decline means for retrying (see `declines-and-network-rules.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineCategory {
    /// Never retry (lost or stolen card, fraud, do-not-try-again advice).
    Hard,
    /// Stop retrying this method until it has new card data (expired card, wrong CVC).
    NeedsNewCardData,
    /// The customer must come back on-session (authentication required).
    NeedsCustomer,
    /// Soft: not enough funds now; timing matters.
    SoftFunds,
    /// Soft: the issuer declined without a reason; retry later with backoff.
    SoftIssuer,
    /// Soft: a passing fault at the issuer or network; retry soon.
    SoftTransient,
}

impl DeclineCategory {
    /// Every category.
    pub const ALL: [DeclineCategory; 6] = [
        DeclineCategory::Hard,
        DeclineCategory::NeedsNewCardData,
        DeclineCategory::NeedsCustomer,
        DeclineCategory::SoftFunds,
        DeclineCategory::SoftIssuer,
        DeclineCategory::SoftTransient,
    ];

    /// Whether a later retry may succeed.
    pub fn is_soft(self) -> bool {
        matches!(
            self,
            DeclineCategory::SoftFunds
                | DeclineCategory::SoftIssuer
                | DeclineCategory::SoftTransient
        )
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineCategory::Hard => "hard",
            DeclineCategory::NeedsNewCardData => "needs_new_card_data",
            DeclineCategory::NeedsCustomer => "needs_customer",
            DeclineCategory::SoftFunds => "soft_funds",
            DeclineCategory::SoftIssuer => "soft_issuer",
            DeclineCategory::SoftTransient => "soft_transient",
        }
    }
}

impl fmt::Display for DeclineCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The processor's own ids for an attempt (PaymentIntent and charge for Stripe).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessorReference {
    /// The processor's payment id (a PaymentIntent `pi_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<String>,
    /// The processor's charge id (`ch_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<String>,
}

/// What a processor answered to an authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Authorized and captured.
    Approved {
        /// Processor ids.
        reference: ProcessorReference,
    },
    /// Authorized; funds held until capture.
    RequiresCapture {
        /// Processor ids.
        reference: ProcessorReference,
    },
    /// The issuer (or processor on its behalf) declined.
    Declined {
        /// The raw codes.
        codes: DeclineCodes,
        /// Processor ids, when the processor created an object for the decline.
        reference: ProcessorReference,
    },
    /// The processor did not give the issuer's answer (timeout before sending, 429,
    /// 5xx with `Stripe-Should-Retry`, misconfiguration). No money moved.
    ProcessorFault {
        /// Which fault: what the engine may do next depends on it.
        kind: FaultKind,
        /// What went wrong.
        message: String,
    },
    /// The request may have reached the processor and no answer came back: money may
    /// have moved. Reconcile with the same idempotency key before anything else.
    Unknown {
        /// What went wrong.
        message: String,
    },
}

/// Why a processor did not give the issuer's answer; in every case nothing was
/// charged (a lost answer is [`AttemptOutcome::Unknown`], not a fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A passing fault (5xx, connection refused before sending): the same request
    /// may work later.
    Unavailable,
    /// HTTP 429: slow down, then send the same request again.
    RateLimited,
    /// The processor refused the request itself (400/401/403, a redirect): the
    /// merchant's configuration is wrong and the same request fails again until it
    /// is fixed.
    Refused,
}

impl FaultKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Unavailable => "unavailable",
            FaultKind::RateLimited => "rate_limited",
            FaultKind::Refused => "refused",
        }
    }
}

impl AttemptOutcome {
    /// A processor fault of `kind`.
    pub fn fault(kind: FaultKind, message: impl Into<String>) -> AttemptOutcome {
        AttemptOutcome::ProcessorFault {
            kind,
            message: message.into(),
        }
    }

    /// Short name for metrics and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            AttemptOutcome::Approved { .. } => "approved",
            AttemptOutcome::RequiresCapture { .. } => "requires_capture",
            AttemptOutcome::Declined { .. } => "declined",
            AttemptOutcome::ProcessorFault { .. } => "processor_fault",
            AttemptOutcome::Unknown { .. } => "unknown",
        }
    }
}

/// One authorization attempt as the engine records it.
///
/// The record is written (with its idempotency key) before the processor is called,
/// so that a crash between sending and receiving is reconciled with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// `ospattempt_…`, shown as `latest_payment_attempt_record`.
    pub id: String,
    /// 1 for the first authorization attempt.
    pub number: u32,
    /// `<payment id>:attempt:<number>`: the same on every replay of this attempt.
    pub idempotency_key: String,
    /// The processor the attempt went to.
    pub processor: String,
    /// When the attempt was started: its first send, or the latest replay of a fault
    /// (nothing had reached the processor before it). An unknown outcome's replays
    /// keep the first send's time, from which the processor's key window runs.
    pub started_at: Timestamp,
    /// When it was due (the payment's due time when it was claimed): `started_at -
    /// due_at` is how late the scheduler sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    /// When the final answer came (None while unresolved).
    pub finished_at: Option<Timestamp>,
    /// How many times the same attempt was sent again after a fault or unknown outcome.
    pub replays: u32,
    /// When the first answer that settled nothing (fault, refusal, unknown) came:
    /// replays end at `replay_deadline` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_fault_at: Option<Timestamp>,
    /// An answer to this attempt was lost (money may have moved): only an answer
    /// from the processor for the same key settles it, never a later fault.
    #[serde(default)]
    pub outcome_unknown: bool,
    /// The final answer (None while unresolved).
    pub outcome: Option<AttemptOutcome>,
    /// Category the engine filed a decline under.
    pub decline_category: Option<DeclineCategory>,
}

impl AttemptRecord {
    /// Attempt `number` of payment `payment_id`, sent to `processor` at
    /// Whether the processor's answer is known (not in flight, not lost).
    pub fn answered(&self) -> bool {
        self.outcome.is_some() && !self.outcome_unknown
    }

    /// `started_at`, with no answer yet; its key is [`attempt_idempotency_key`].
    pub fn started(
        id: String,
        payment_id: &str,
        number: u32,
        processor: &str,
        started_at: Timestamp,
    ) -> AttemptRecord {
        AttemptRecord {
            id,
            number,
            idempotency_key: attempt_idempotency_key(payment_id, number),
            processor: processor.to_owned(),
            started_at,
            due_at: None,
            finished_at: None,
            replays: 0,
            first_fault_at: None,
            outcome_unknown: false,
            outcome: None,
            decline_category: None,
        }
    }
}

/// The idempotency key of attempt `number` of payment `payment_id`.
pub fn attempt_idempotency_key(payment_id: &str, number: u32) -> String {
    // Built by hand: `format!` cost about 800 instructions per key (callgrind).
    let mut digits = itoa::Buffer::new();
    let number = digits.format(number);
    let mut key = String::with_capacity(payment_id.len() + ":attempt:".len() + number.len());
    key.push_str(payment_id);
    key.push_str(":attempt:");
    key.push_str(number);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_answered_once_its_outcome_is_known() {
        let started = AttemptRecord::started(
            "att_1".into(),
            "osp_1",
            1,
            "mock",
            Timestamp::from_millis(0),
        );
        assert!(!started.answered(), "in flight");
        let mut approved = started.clone();
        approved.outcome = Some(AttemptOutcome::Approved {
            reference: ProcessorReference::default(),
        });
        assert!(approved.answered());
        let mut lost = approved.clone();
        lost.outcome_unknown = true;
        assert!(!lost.answered(), "a lost answer is not known");
    }

    #[test]
    fn idempotency_key_depends_only_on_payment_and_attempt_number() {
        assert_eq!(attempt_idempotency_key("osp_1", 3), "osp_1:attempt:3");
        assert_ne!(
            attempt_idempotency_key("osp_1", 3),
            attempt_idempotency_key("osp_1", 4)
        );
    }

    #[test]
    fn decline_codes_display_names_the_decline_code() {
        let codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
        assert_eq!(codes.to_string(), "card_declined (insufficient_funds)");
        assert_eq!(
            DeclineCodes::new("expired_card", None).to_string(),
            "expired_card"
        );
    }
}
