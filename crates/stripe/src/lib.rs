//! The Stripe processor adapter: charges a customer's saved payment method
//! off-session with a confirmed PaymentIntent.
//!
//! Safety: every attempt is sent with `Idempotency-Key` = the engine's attempt key,
//! on the first send and on every transport retry, so Stripe executes an attempt at
//! most once whatever fails in between. Transport retries follow stripe-go (sleep
//! `retry_base × (1 + n²)` capped at `retry_cap`, jittered, `Stripe-Should-Retry`
//! obeyed). A request that may have reached Stripe and got no answer is reported as
//! `Unknown`; the engine then replays it with the same key, and a PaymentIntent still
//! `processing` is looked up by id.
//!
//! Answers are read defensively: redirects are never followed (a 3xx is a refusal), at
//! most [`MAX_BODY_BYTES`] of a body is read, every quoted text is capped at
//! [`MAX_QUOTED_CHARS`], ids go into URLs as single percent-encoded path segments, and
//! a 2xx that is not a readable PaymentIntent with a known status is `Unknown` (never a
//! decline).
//!
//! The adapter decides no retries of the customer's payment: it reports declines with
//! Stripe's codes, and the engine's decline table and policy decide.
//!
//! [`StripeConfig`] is the adapter's only configuration type (the runner reads it
//! from its config file as is); [`transformers`] holds every translation between
//! Stripe's JSON and the engine's types.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

mod config;
mod find;
mod http;
mod preflight;
mod secret;
pub mod transformers;

pub use config::{check_api_base, StripeConfig, StripeConfigRefused, MAX_NETWORK_RETRIES};
pub use http::{quote, MAX_BODY_BYTES, MAX_QUOTED_CHARS};
use http::{quote_body, redirected, Reply};
use preflight::PreflightFacts;
pub use secret::{looks_like_secret, SecretKey};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizationState, AuthorizeRequest, CancelRequest, Capabilities,
    CaptureRequest, FaultKind, OffSessionPayment, PaymentMethodDetails, Processor, ProcessorError,
    ProcessorReference,
};
use reqwest::Method;

use crate::transformers::{
    capture_params, check_card_options, error_outcome, payment_intent_params, preflight_details,
    Form, IntentStatus, PaymentIntent,
};

/// Why [`StripeProcessor::new`] could not build an adapter.
#[derive(Debug, thiserror::Error)]
pub enum StripeClientError {
    /// The configuration was refused, or its secret key could not be found; the
    /// error names the setting.
    #[error(transparent)]
    Config(#[from] StripeConfigRefused),
    /// The HTTP client could not be built (TLS backend, system settings).
    #[error("building the HTTP client: {0}")]
    Http(String),
}

/// One Stripe account as an engine processor. It holds one pooled HTTP client, the
/// preflight cache, and the time until which a refused key (401/403) keeps it from
/// calling Stripe.
#[derive(Debug)]
pub struct StripeProcessor {
    config: StripeConfig,
    /// Resolved once at construction, so the environment is read once.
    secret_key: SecretKey,
    capabilities: Capabilities,
    http: reqwest::Client,
    preflight_cache: Mutex<HashMap<String, PreflightFacts>>,
    misconfigured_until: Mutex<Option<Instant>>,
}

impl StripeProcessor {
    /// An adapter with one pooled HTTP client, once `config` passes
    /// [`StripeConfig::check`] and its secret key is found
    /// ([`StripeConfig::resolve_secret_key`]).
    pub fn new(config: StripeConfig) -> Result<StripeProcessor, StripeClientError> {
        config.check()?;
        let secret_key = config.resolve_secret_key()?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("offsession/", env!("CARGO_PKG_VERSION")))
            // A redirect is never followed: a 3xx is a misconfiguration (or a proxy),
            // and following it would send the charge and the key somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StripeClientError::Http(e.to_string()))?;
        let capabilities = Capabilities {
            payment_method_types: config.payment_method_types.clone(),
            currencies: Vec::new(),
            connect: true,
            manual_capture: true,
        };
        Ok(StripeProcessor {
            config,
            secret_key,
            capabilities,
            http,
            preflight_cache: Mutex::new(HashMap::new()),
            misconfigured_until: Mutex::new(None),
        })
    }

    /// `GET /v1/payment_intents/{id}`: the PaymentIntent, read whole and checked to
    /// be the one asked for; `Err` says why not (quoted, capped).
    async fn retrieve_intent(&self, id: &str) -> Result<PaymentIntent, String> {
        let reply = self
            .send(Method::GET, &["v1", "payment_intents", id], &[], None, None)
            .await;
        let body = match reply {
            Reply::Response {
                status,
                body,
                truncated: false,
                ..
            } if status.is_success() => body,
            Reply::Response {
                status, truncated, ..
            } => {
                return Err(format!(
                    "answered {status}{}",
                    if truncated {
                        format!(" with a body over {MAX_BODY_BYTES} bytes")
                    } else {
                        String::new()
                    }
                ))
            }
            Reply::NotSent(e) | Reply::Lost(e) => return Err(format!("failed: {e}")),
        };
        let found = PaymentIntent::read(&body)?;
        if found.id != id {
            return Err(format!("answered another one ({})", quote(&found.id)));
        }
        Ok(found)
    }

    /// Looks a `processing` PaymentIntent up by id. Anything but a readable
    /// PaymentIntent with a known status is `Unknown`.
    async fn reconcile_processing(&self, intent: &PaymentIntent) -> AttemptOutcome {
        let id = quote(&intent.id);
        match self.retrieve_intent(&intent.id).await {
            Ok(found) => found.outcome().unwrap_or_else(|| AttemptOutcome::Unknown {
                message: format!("stripe: payment intent {id} is processing"),
            }),
            Err(why) => AttemptOutcome::Unknown {
                message: format!("stripe: payment intent {id} is processing; lookup: {why}"),
            },
        }
    }
}

#[async_trait]
impl Processor for StripeProcessor {
    fn id(&self) -> &str {
        &self.config.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// `GET /v1/payment_intents/{pi}`: `succeeded` is captured, `requires_capture`
    /// held, `canceled` released; any other answer is an error.
    async fn authorization_state(
        &self,
        reference: &ProcessorReference,
    ) -> Result<Option<AuthorizationState>, ProcessorError> {
        let error = |message: String| self.operation_error("retrieve", message);
        let Some(pi) = reference.payment.as_deref() else {
            return Err(error("no payment intent to look up".into()));
        };
        let intent = self
            .retrieve_intent(pi)
            .await
            .map_err(|why| error(format!("payment intent {}: {why}", quote(pi))))?;
        match intent.status() {
            IntentStatus::Succeeded => Ok(Some(AuthorizationState::Captured)),
            IntentStatus::RequiresCapture => Ok(Some(AuthorizationState::Held)),
            IntentStatus::Canceled => Ok(Some(AuthorizationState::Released)),
            other => Err(error(format!(
                "payment intent {} is `{}`, not a held authorization",
                quote(pi),
                quote(&format!("{other:?}"))
            ))),
        }
    }

    /// `GET /v1/payment_intents?customer=…&created[gte]=…`, paged: the intent whose
    /// metadata names this payment and attempt.
    async fn find_authorization(
        &self,
        request: AuthorizeRequest<'_>,
        since: offsession_core::Timestamp,
    ) -> Result<Option<AttemptOutcome>, ProcessorError> {
        self.find_intent(request, since).await
    }

    /// Stripe keeps an idempotency key for at least 24 hours; the engine stops
    /// replaying an hour before that.
    fn idempotency_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(23 * 3_600))
    }

    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        check_card_options(payment, &self.config.id, &self.config.stripe_version)?;
        let facts = self.facts(payment).await?;
        preflight_details(payment, &self.capabilities, &facts.method, &facts.setups)
    }

    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        if self.is_misconfigured() {
            return AttemptOutcome::fault(
                FaultKind::Refused,
                "stripe: processor misconfigured (401/403); not called",
            );
        }
        let form = payment_intent_params(request.payment, request.attempt_number);
        match self
            .send(
                Method::POST,
                &["v1", "payment_intents"],
                &[],
                Some(&form),
                Some(request.idempotency_key),
            )
            .await
        {
            // Whatever a 2xx says, Stripe may have charged: anything but a readable
            // PaymentIntent with a known status is `Unknown` (replayed with the same key).
            Reply::Response {
                status,
                truncated: true,
                ..
            } if status.is_success() => AttemptOutcome::Unknown {
                message: format!(
                    "stripe: {status} answer over {MAX_BODY_BYTES} bytes, not read; the charge may have been made"
                ),
            },
            Reply::Response { status, body, .. } if status.is_success() => {
                match PaymentIntent::read(&body) {
                    Ok(intent) => match intent.outcome() {
                        Some(outcome) => outcome,
                        None => self.reconcile_processing(&intent).await,
                    },
                    Err(why) => AttemptOutcome::Unknown {
                        message: format!("stripe: {status}: {why}"),
                    },
                }
            }
            // A redirect comes from a proxy or a wrong `api_base`, not from Stripe's
            // payment API, and is never followed: the charge was not made.
            Reply::Response {
                status, location, ..
            } if status.is_redirection() => {
                let why = redirected("payment intent creation", status, location.as_deref());
                AttemptOutcome::fault(FaultKind::Refused, format!("stripe: {why}"))
            }
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } => error_outcome(status, &body, truncated),
            Reply::NotSent(message) => {
                AttemptOutcome::fault(FaultKind::Unavailable, format!("stripe: not sent: {message}"))
            }
            Reply::Lost(message) => AttemptOutcome::Unknown {
                message: format!("stripe: no answer: {message}"),
            },
        }
    }

    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        let Some(pi) = request.reference.payment.as_deref() else {
            return Err(self.operation_error("capture", "no payment intent to capture".into()));
        };
        let form = capture_params(request.amount.value);
        self.intent_action("capture", pi, &form, request.idempotency_key)
            .await
    }

    async fn cancel(&self, request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        let Some(pi) = request.reference.payment.as_deref() else {
            return Ok(());
        };
        self.intent_action("cancel", pi, &Vec::new(), request.idempotency_key)
            .await
    }
}

impl StripeProcessor {
    /// `POST /v1/payment_intents/{pi}/{operation}` (capture or cancel).
    async fn intent_action(
        &self,
        operation: &'static str,
        pi: &str,
        form: &Form,
        idempotency_key: &str,
    ) -> Result<(), ProcessorError> {
        let reply = self
            .send(
                Method::POST,
                &["v1", "payment_intents", pi, operation],
                &[],
                Some(form),
                Some(idempotency_key),
            )
            .await;
        settle_reply(operation, reply).map_err(|message| self.operation_error(operation, message))
    }

    fn operation_error(&self, operation: &'static str, message: String) -> ProcessorError {
        ProcessorError {
            processor: self.config.id.clone(),
            operation,
            message,
        }
    }
}

/// A capture's or cancel's reply: `Ok` on 2xx, otherwise a capped message.
fn settle_reply(what: &str, reply: Reply) -> Result<(), String> {
    match reply {
        Reply::Response { status, .. } if status.is_success() => Ok(()),
        Reply::Response {
            status, location, ..
        } if status.is_redirection() => Err(redirected(what, status, location.as_deref())),
        Reply::Response {
            status,
            body,
            truncated,
            ..
        } => Err(quote(&format!(
            "{status}: {}",
            quote_body(&body, truncated)
        ))),
        Reply::NotSent(e) | Reply::Lost(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
