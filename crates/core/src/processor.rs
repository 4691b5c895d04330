//! The `Processor` trait: what an adapter to Stripe, a mock or any acquirer provides.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::attempt::{AttemptOutcome, ProcessorReference};
use crate::error::ApiError;
use crate::method::{CardBrand, PaymentMethodType};
use crate::money::Amount;
use crate::payment::OffSessionPayment;

/// What a processor can charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Payment method types it charges.
    pub payment_method_types: Vec<PaymentMethodType>,
    /// Lower-case currency codes; empty means any currency in the table.
    pub currencies: Vec<String>,
    /// Whether `on_behalf_of` / `transfer_data` payments are supported.
    pub connect: bool,
    /// Whether manual capture is supported.
    pub manual_capture: bool,
}

impl Capabilities {
    /// Whether `payment_method_type` is supported.
    pub fn supports_type(&self, payment_method_type: &PaymentMethodType) -> bool {
        self.payment_method_types.contains(payment_method_type)
    }
}

/// Card facts the retry engine and network rules need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardDetails {
    /// The network whose retry rules apply.
    pub brand: CardBrand,
    /// `credit`, `debit`, `prepaid`, `unknown`.
    pub funding: String,
    /// Issuing country, ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// Wallet the card came from (`apple_pay`, `google_pay`), if any.
    pub wallet: Option<String>,
    /// The processor's fingerprint of the card number (Stripe's `card.fingerprint`),
    /// when it reports one: the same card saved as two payment methods has one
    /// fingerprint, and the network rules count per card, not per payment method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The processor (its configured id) whose fingerprint it is: fingerprints of
    /// different processors (or Stripe accounts) are not comparable. Set by the
    /// engine at create, where preflight ran; `None` in records made before it was,
    /// whose card key names the payment's processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_by: Option<String>,
}

/// What preflight learned about the payment method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodDetails {
    /// Card or bank debit: which retry switches and options apply.
    pub payment_method_type: PaymentMethodType,
    /// Card facts, for cards.
    pub card: Option<CardDetails>,
    /// Country of a bank debit's account (ISO 3166-1 alpha-2): `US` for
    /// `us_bank_account`, the bank's country for `sepa_debit`. A card's country is in
    /// `card`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_country: Option<String>,
}

impl PaymentMethodDetails {
    /// Where the card was issued or the bank account is held, when known: the local
    /// time of the holder's funding days is read from it. An ACH account is in the US
    /// even when `bank_country` is missing (a record stored before it existed, or a
    /// processor that does not report it).
    pub fn country(&self) -> Option<&str> {
        match &self.card {
            Some(card) => card.country.as_deref(),
            None => self
                .bank_country
                .as_deref()
                .or_else(|| self.payment_method_type.scheme_country()),
        }
    }
}

/// One authorization request. The idempotency key is the same on every replay of the
/// same attempt, so a processor that honours it never charges an attempt twice.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeRequest<'a> {
    /// The payment being charged.
    pub payment: &'a OffSessionPayment,
    /// Attempt number (1-based).
    pub attempt_number: u32,
    /// `<payment id>:attempt:<n>`.
    pub idempotency_key: &'a str,
}

/// A capture of a held authorization.
#[derive(Debug, Clone, Copy)]
pub struct CaptureRequest<'a> {
    /// The payment being captured.
    pub payment: &'a OffSessionPayment,
    /// The processor's ids from the authorization.
    pub reference: &'a ProcessorReference,
    /// Amount to capture (at most the authorized amount).
    pub amount: Amount,
    /// Idempotency key of the capture.
    pub idempotency_key: &'a str,
}

/// Release of a held authorization.
#[derive(Debug, Clone, Copy)]
pub struct CancelRequest<'a> {
    /// The payment whose authorization is released.
    pub payment: &'a OffSessionPayment,
    /// The processor's ids from the authorization.
    pub reference: &'a ProcessorReference,
    /// Idempotency key of the cancel.
    pub idempotency_key: &'a str,
}

/// What became of a held authorization, as the processor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationState {
    /// Still held: it can be captured or released.
    Held,
    /// Captured: the money moved.
    Captured,
    /// Released, or expired at the processor: nothing will be captured.
    Released,
}

/// A capture or cancel the processor did not perform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("processor `{processor}` refused {operation}: {message}")]
pub struct ProcessorError {
    /// The processor id.
    pub processor: String,
    /// `capture` or `cancel`.
    pub operation: &'static str,
    /// What it said.
    pub message: String,
}

/// An adapter to a payment processor.
#[async_trait]
pub trait Processor: Send + Sync + Debug {
    /// Unique id of this processor instance (from config).
    fn id(&self) -> &str;

    /// What it can charge.
    fn capabilities(&self) -> &Capabilities;

    /// Checks, before the payment is accepted, that the method can be charged
    /// off-session for this customer (attached, set up for off-session, right
    /// `on_behalf_of`), and returns its type and card facts. Errors use the API codes
    /// (`osp_payment_method_not_attached`, `osp_pm_*`).
    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError>;

    /// Sends one authorization attempt.
    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome;

    /// Captures a held authorization.
    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError>;

    /// Releases a held authorization.
    async fn cancel(&self, request: CancelRequest<'_>) -> Result<(), ProcessorError>;

    /// How long after an attempt's first send the processor still answers its
    /// idempotency key with the original result. A replay later than that may execute
    /// as a new charge, so the engine never sends one: an attempt whose outcome is
    /// still unknown then ends the payment instead. `None`: the key is kept for as
    /// long as the engine replays.
    fn idempotency_window(&self) -> Option<std::time::Duration> {
        None
    }

    /// Reads the state of the authorization `reference` names, so that an engine
    /// that lost a capture's answer (a crash between the processor's capture and the
    /// write) records the capture instead of releasing and failing the payment.
    /// `Ok(None)`: this processor cannot tell.
    async fn authorization_state(
        &self,
        _reference: &ProcessorReference,
    ) -> Result<Option<AuthorizationState>, ProcessorError> {
        Ok(None)
    }

    /// What became of an authorization attempt whose replays keep answering
    /// "unknown" (Stripe stores an error answered after execution started, a 500
    /// included, under the key and answers it to every replay), read from the
    /// processor's own records instead of through the key. `since` is when the attempt
    /// was first sent. `Ok(None)`: not found, or this processor cannot look attempts
    /// up; the engine keeps replaying then.
    async fn find_authorization(
        &self,
        _request: AuthorizeRequest<'_>,
        _since: crate::Timestamp,
    ) -> Result<Option<AttemptOutcome>, ProcessorError> {
        Ok(None)
    }
}

/// Processors live behind `Arc<dyn Processor>` chosen by config: keep the trait object-safe.
fn _object_safe(_: &dyn Processor) {}
