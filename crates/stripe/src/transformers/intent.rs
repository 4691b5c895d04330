//! A PaymentIntent answer and the attempt outcome it means.

use offsession_core::{AttemptOutcome, DeclineCodes, ProcessorReference};
use serde::Deserialize;

use super::WireError;
use crate::quote;

offsession_core::named_enum! {
    /// A PaymentIntent's `status`: every status in Stripe's spec has a reading (the
    /// contract test checks it); any other is `Other`, an `Unknown` outcome.
    IntentStatus {
        /// Charged.
        Succeeded => "succeeded",
        /// Authorized and held until captured or canceled.
        RequiresCapture => "requires_capture",
        /// Not settled yet (bank debits): looked up by id later, never a decline.
        Processing => "processing",
        /// The confirmation failed (a decline); `last_payment_error` says why.
        RequiresPaymentMethod => "requires_payment_method",
        /// Canceled: nothing will be charged.
        Canceled => "canceled",
        /// The customer must authenticate, which an off-session charge cannot do.
        RequiresAction => "requires_action",
        /// Not confirmed, so not charged (the adapter always confirms).
        RequiresConfirmation => "requires_confirmation",
    }
}

offsession_core::named_enum! {
    /// An answer's `object`: which kind of resource it is, so that another kind (a
    /// proxy's JSON, a charge) is never read as a PaymentIntent.
    ObjectType {
        /// `/v1/payment_intents`.
        PaymentIntent => "payment_intent",
        /// `/v1/payment_methods`.
        PaymentMethod => "payment_method",
        /// `/v1/setup_intents`.
        SetupIntent => "setup_intent",
        /// A page of a list endpoint.
        List => "list",
    }
}

/// The parts of a PaymentIntent the adapter reads.
///
/// Deserializing is lenient (it is also embedded in error bodies); an answer that is
/// meant to be a PaymentIntent is read with [`PaymentIntent::read`], which checks it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PaymentIntent {
    /// `pi_…`: the engine stores it to look the intent up, capture or cancel it.
    #[serde(default)]
    pub id: String,
    /// Checked by [`PaymentIntent::read`] to be `payment_intent`.
    #[serde(default)]
    pub object: Option<ObjectType>,
    /// Decides the outcome; missing only in lenient reads.
    #[serde(default)]
    pub status: Option<IntentStatus>,
    /// The charge the confirmation made (an id, or the object when expanded).
    #[serde(default)]
    pub latest_charge: Option<serde_json::Value>,
    /// Why the last confirmation failed: the decline codes.
    #[serde(default)]
    pub last_payment_error: Option<Box<WireError>>,
    /// The engine's `offsession_payment_id` and `offsession_attempt` among the
    /// merchant's keys: how an attempt is found when its key's answer says nothing.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Longest PaymentIntent id accepted in an answer (the spec's `maxLength`).
const MAX_ID_LEN: usize = 5000;

impl PaymentIntent {
    /// Reads an answer that must be a PaymentIntent: JSON, `"object": "payment_intent"`,
    /// a non-empty `id`, and a `status`. The error says what is wrong (quoted, capped).
    pub fn read(body: &str) -> Result<PaymentIntent, String> {
        let intent = serde_json::from_str::<PaymentIntent>(body)
            .map_err(|e| format!("unreadable payment intent: {}", quote(&e.to_string())))?;
        match &intent.object {
            Some(ObjectType::PaymentIntent) => {}
            Some(other) => {
                return Err(format!(
                    "expected a payment intent, got a `{}` object",
                    quote(other.as_str())
                ))
            }
            None => return Err("expected a payment intent; the answer has no `object`".into()),
        }
        if intent.id.is_empty() || intent.id.len() > MAX_ID_LEN {
            return Err("payment intent without a usable `id`".into());
        }
        if intent.status.is_none() {
            return Err(format!(
                "payment intent {} has no `status`",
                quote(&intent.id)
            ));
        }
        Ok(intent)
    }

    /// The status; a missing one reads as `Other("")`, which has no reading.
    pub fn status(&self) -> IntentStatus {
        self.status
            .clone()
            .unwrap_or_else(|| IntentStatus::Other(String::new()))
    }

    /// The PaymentIntent and its latest charge, as the attempt records them.
    pub fn reference(&self) -> ProcessorReference {
        let charge = match &self.latest_charge {
            Some(serde_json::Value::String(id)) => Some(id.clone()),
            Some(serde_json::Value::Object(obj)) => {
                obj.get("id").and_then(|v| v.as_str()).map(str::to_owned)
            }
            _ => None,
        };
        ProcessorReference {
            payment: Some(self.id.clone()),
            charge,
        }
    }

    /// The engine's reading of a PaymentIntent returned with HTTP 200, or `None` while
    /// it is still `processing` (bank debits settle later). A status the adapter does
    /// not know is `Unknown` (money may have moved), never a decline.
    pub fn outcome(&self) -> Option<AttemptOutcome> {
        let reference = self.reference();
        Some(match self.status() {
            IntentStatus::Succeeded => AttemptOutcome::Approved { reference },
            IntentStatus::RequiresCapture => AttemptOutcome::RequiresCapture { reference },
            IntentStatus::Processing => return None,
            IntentStatus::RequiresAction | IntentStatus::RequiresConfirmation => {
                AttemptOutcome::Declined {
                    codes: DeclineCodes::new(
                        "authentication_required",
                        Some("authentication_required"),
                    ),
                    reference,
                }
            }
            IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => {
                AttemptOutcome::Declined {
                    codes: self
                        .last_payment_error
                        .as_ref()
                        .map(|e| e.decline_codes())
                        .unwrap_or_else(|| {
                            DeclineCodes::new("card_declined", Some("generic_decline"))
                        }),
                    reference,
                }
            }
            IntentStatus::Other(status) => AttemptOutcome::Unknown {
                message: format!(
                    "stripe: payment intent {} has status `{}`, which the adapter does not know",
                    quote(&self.id),
                    quote(&status)
                ),
            },
        })
    }
}
