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
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

mod http;
mod preflight;
mod secret;
pub mod transformers;

pub use http::{quote, MAX_BODY_BYTES, MAX_QUOTED_CHARS};
use http::{quote_body, redirected, Reply};
use preflight::PreflightFacts;
pub use secret::{looks_like_secret, SecretKey};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizeRequest, CancelRequest, Capabilities, CaptureRequest,
    ErrorCode, OffSessionPayment, PaymentMethodDetails, Processor, ProcessorError,
};
use reqwest::{Method, StatusCode};

use crate::transformers::{
    capture_params, payment_intent_params, ErrorBody, Form, List, PaymentIntent, PaymentMethod,
    SetupIntent,
};

/// Adapter settings.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// Processor id in the engine.
    pub id: String,
    /// Secret key (`sk_test_…`, `sk_live_…`, or a restricted key).
    pub secret_key: SecretKey,
    /// API base URL.
    pub api_base: String,
    /// Pinned `Stripe-Version`.
    pub stripe_version: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Transport retries of one request (same idempotency key).
    pub max_network_retries: u32,
    /// First transport retry wait.
    pub retry_base: Duration,
    /// Longest transport retry wait.
    pub retry_cap: Duration,
    /// How long preflight results are cached per payment method.
    pub preflight_cache_ttl: Duration,
    /// How long the adapter refuses to call Stripe after a 401/403.
    pub misconfigured_cooldown: Duration,
    /// Payment method types this account charges.
    pub payment_method_types: Vec<String>,
}

impl StripeConfig {
    /// Defaults (Stripe's API, stripe-go's retry policy) for `id` and `secret_key`.
    pub fn new(id: &str, secret_key: SecretKey) -> StripeConfig {
        StripeConfig {
            id: id.into(),
            secret_key,
            api_base: "https://api.stripe.com".into(),
            stripe_version: "2022-11-15".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_network_retries: 2,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(5),
            preflight_cache_ttl: Duration::from_secs(600),
            misconfigured_cooldown: Duration::from_secs(300),
            payment_method_types: vec![
                "card".into(),
                "us_bank_account".into(),
                "sepa_debit".into(),
            ],
        }
    }
}

/// Adapter construction failures.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// The Stripe processor.
#[derive(Debug)]
pub struct StripeProcessor {
    config: StripeConfig,
    capabilities: Capabilities,
    http: reqwest::Client,
    preflight_cache: Mutex<HashMap<String, PreflightFacts>>,
    misconfigured_until: Mutex<Option<Instant>>,
}

impl StripeProcessor {
    /// An adapter with one pooled HTTP client.
    pub fn new(config: StripeConfig) -> Result<StripeProcessor, StripeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("offsession/", env!("CARGO_PKG_VERSION")))
            // A redirect is never followed: a 3xx is a misconfiguration (or a proxy),
            // and following it would send the charge and the key somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StripeError::Client(e.to_string()))?;
        let capabilities = Capabilities {
            payment_method_types: config.payment_method_types.clone(),
            currencies: Vec::new(),
            connect: true,
            manual_capture: true,
        };
        Ok(StripeProcessor {
            config,
            capabilities,
            http,
            preflight_cache: Mutex::new(HashMap::new()),
            misconfigured_until: Mutex::new(None),
        })
    }

    /// Maps a non-success, non-redirect HTTP reply to an attempt outcome.
    fn error_outcome(&self, status: StatusCode, body: &str, truncated: bool) -> AttemptOutcome {
        let error = serde_json::from_str::<ErrorBody>(body)
            .unwrap_or_default()
            .error;
        let code = error.code.clone().unwrap_or_default();
        let text = error
            .message
            .clone()
            .or_else(|| error.code.clone())
            .unwrap_or_else(|| quote_body(body, truncated));
        // Everything quoted from the answer is capped, whatever its size.
        let describe = |what: &str| quote(&format!("stripe {status} {what}: {text}"));
        match status.as_u16() {
            402 => AttemptOutcome::Declined {
                codes: error.decline_codes(),
                reference: error.reference(),
            },
            401 | 403 => {
                self.mark_misconfigured(status);
                AttemptOutcome::ProcessorFault {
                    retryable: false,
                    rate_limited: false,
                    message: describe("processor misconfigured"),
                }
            }
            409 | 429 => AttemptOutcome::ProcessorFault {
                retryable: true,
                rate_limited: status == StatusCode::TOO_MANY_REQUESTS
                    && code.as_str() != "lock_timeout",
                message: describe(&code),
            },
            400..=499 => AttemptOutcome::ProcessorFault {
                retryable: false,
                rate_limited: false,
                message: describe(
                    error
                        .error_type
                        .as_deref()
                        .unwrap_or("invalid_request_error"),
                ),
            },
            _ => AttemptOutcome::Unknown {
                message: describe("server error"),
            },
        }
    }

    /// Looks a `processing` PaymentIntent up by id. Anything but a readable
    /// PaymentIntent with a known status is `Unknown`.
    async fn reconcile_processing(&self, intent: &PaymentIntent) -> AttemptOutcome {
        let id = quote(&intent.id);
        match self
            .send(
                Method::GET,
                &["v1", "payment_intents", &intent.id],
                &[],
                None,
                None,
            )
            .await
        {
            Reply::Response {
                status,
                body,
                truncated: false,
                ..
            } if status.is_success() => match PaymentIntent::read(&body) {
                Ok(found) if found.id != intent.id => AttemptOutcome::Unknown {
                    message: format!(
                        "stripe: looking up payment intent {id} answered another one ({})",
                        quote(&found.id)
                    ),
                },
                Ok(found) => match found.outcome() {
                    Some(outcome) => outcome,
                    None => AttemptOutcome::Unknown {
                        message: format!("stripe: payment intent {id} is processing"),
                    },
                },
                Err(why) => AttemptOutcome::Unknown {
                    message: format!("stripe: payment intent {id} is processing; lookup: {why}"),
                },
            },
            Reply::Response {
                status, truncated, ..
            } => AttemptOutcome::Unknown {
                message: format!(
                    "stripe: payment intent {id} is processing; lookup answered {status}{}",
                    if truncated {
                        format!(" with a body over {MAX_BODY_BYTES} bytes")
                    } else {
                        String::new()
                    }
                ),
            },
            Reply::NotSent(e) | Reply::Lost(e) => AttemptOutcome::Unknown {
                message: format!("stripe: payment intent {id} is processing; lookup failed: {e}"),
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

    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        // The pinned PaymentIntents API has no parameter for these card options:
        // refuse the payment rather than charge without what the merchant asked for.
        if let Some(card) = payment
            .payment_method_options
            .as_ref()
            .and_then(|o| o.card.as_ref())
        {
            let unsupported = [
                ("mcc", card.mcc.is_some()),
                (
                    "network_transaction_id",
                    card.network_transaction_id.is_some(),
                ),
            ];
            if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
                return Err(ApiError::invalid(
                    &format!("payment_method_options.card.{field}"),
                    format!(
                        "is not supported by processor `{}`: Stripe's PaymentIntents API (version {}) has no such parameter",
                        self.config.id, self.config.stripe_version
                    ),
                ));
            }
        }
        let facts = self.facts(payment).await?;
        let method = &facts.method;
        if method.customer_id() != Some(payment.customer.as_str()) {
            return Err(ApiError::new(
                ErrorCode::OspPaymentMethodNotAttached,
                format!(
                    "Payment method `{}` is not attached to customer `{}`; attach it with a SetupIntent first.",
                    quote(&method.id),
                    quote(&payment.customer)
                ),
            )
            .with_param("payment_method"));
        }
        if !self.capabilities.supports_type(&method.method_type) {
            return Err(ApiError::new(
                ErrorCode::OspInvalidPaymentMethodType,
                format!(
                    "payment method type `{}` is not supported",
                    quote(&method.method_type)
                ),
            )
            .with_param("payment_method"));
        }
        let setups: Vec<&SetupIntent> = facts
            .setups
            .iter()
            .filter(|s| s.is_off_session_setup())
            .collect();
        if setups.is_empty() {
            return Err(ApiError::new(
                ErrorCode::OspPmNotSetupForOffSession,
                format!(
                    "Payment method `{}` has no succeeded SetupIntent with `usage=off_session`; set it up on-session first.",
                    quote(&method.id)
                ),
            )
            .with_param("payment_method"));
        }
        let on_platform = setups.iter().any(|s| s.account().is_none());
        match &payment.on_behalf_of {
            Some(account) if !setups.iter().any(|s| s.account() == Some(account.as_str())) => {
                return Err(if on_platform {
                    ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnPlatform,
                        format!(
                            "Payment method `{}` was set up on the platform, not for `{}`.",
                            quote(&method.id),
                            quote(account)
                        ),
                    )
                } else {
                    ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                        format!(
                            "Payment method `{}` was set up for another connected account.",
                            quote(&method.id)
                        ),
                    )
                }
                .with_param("on_behalf_of"));
            }
            None if !on_platform => {
                return Err(ApiError::new(
                    ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                    format!(
                        "Payment method `{}` was set up only on a connected account; pass the same `on_behalf_of`.",
                        quote(&method.id)
                    ),
                )
                .with_param("on_behalf_of"));
            }
            _ => {}
        }
        Ok(method.details())
    }

    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        if self.is_misconfigured() {
            return AttemptOutcome::ProcessorFault {
                retryable: false,
                rate_limited: false,
                message: "stripe: processor misconfigured (401/403); not called".into(),
            };
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
            } if status.is_redirection() => AttemptOutcome::ProcessorFault {
                retryable: false,
                rate_limited: false,
                message: format!(
                    "stripe: {}",
                    redirected("payment intent creation", status, location.as_deref())
                ),
            },
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } => self.error_outcome(status, &body, truncated),
            Reply::NotSent(message) => AttemptOutcome::ProcessorFault {
                retryable: true,
                rate_limited: false,
                message: format!("stripe: not sent: {message}"),
            },
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
