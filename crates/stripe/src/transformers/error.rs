//! Stripe's error bodies (`{"error": {...}}`) and what an HTTP error answer means for
//! an attempt.

use offsession_core::{AttemptOutcome, DeclineCodes, FaultKind, ProcessorReference};
use reqwest::StatusCode;
use serde::Deserialize;

use super::PaymentIntent;
use crate::http::quote_body;
use crate::quote;

offsession_core::named_enum! {
    /// An error's `type`: which part of the request Stripe blames.
    WireErrorType {
        /// Stripe failed; the same request may work later.
        ApiError => "api_error",
        /// The issuer or network declined the card.
        CardError => "card_error",
        /// The idempotency key was reused with other parameters.
        IdempotencyError => "idempotency_error",
        /// The request itself is wrong (a parameter, a missing object).
        InvalidRequestError => "invalid_request_error",
    }
}

offsession_core::named_enum! {
    /// An error's `code`. Only the codes the adapter acts on are named; every other
    /// code is `Other` and is passed on verbatim in the decline codes.
    WireErrorCode {
        /// A decline without a more specific code; `decline_code` says why.
        CardDeclined => "card_declined",
        /// Another request on the same object held its lock: a 429 that is no rate
        /// limit, safe to send again at once.
        LockTimeout => "lock_timeout",
        /// Too many requests for the account.
        RateLimit => "rate_limit",
        /// A request with the same idempotency key is still running.
        IdempotencyKeyInUse => "idempotency_key_in_use",
    }
}

/// A Stripe error body. Read leniently: a body that is not one reads as an empty
/// error, so an HTTP status alone still decides the outcome.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    /// Stripe nests the error object under `error`.
    #[serde(default)]
    pub error: WireError,
}

impl ErrorBody {
    /// The error body in `body`, or an empty one when it is not readable.
    pub fn read(body: &str) -> ErrorBody {
        serde_json::from_str(body).unwrap_or_default()
    }
}

/// The error object of a Stripe error body (also a PaymentIntent's
/// `last_payment_error`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WireError {
    /// Which part of the request Stripe blames; absent in some proxies' answers.
    #[serde(rename = "type", default)]
    pub error_type: Option<WireErrorType>,
    /// Machine-readable reason: the decline's `code` on card errors.
    #[serde(default)]
    pub code: Option<WireErrorCode>,
    /// The issuer's reason for a decline (`insufficient_funds`, …).
    #[serde(default)]
    pub decline_code: Option<String>,
    /// Stripe's retry advice (`do_not_try_again`, `try_again_later`, …).
    #[serde(default)]
    pub advice_code: Option<String>,
    /// The card network's raw response code, which network retry rules key on.
    #[serde(default)]
    pub network_decline_code: Option<String>,
    /// The network's advice (Mastercard Merchant Advice Code).
    #[serde(default)]
    pub network_advice_code: Option<String>,
    /// Text for humans; quoted (capped) wherever it is shown.
    #[serde(default)]
    pub message: Option<String>,
    /// The request parameter Stripe blames, on invalid request errors.
    #[serde(default)]
    pub param: Option<String>,
    /// The declined charge, so that the attempt records it.
    #[serde(default)]
    pub charge: Option<String>,
    /// The PaymentIntent the failed confirmation belongs to.
    #[serde(default)]
    pub payment_intent: Option<PaymentIntent>,
}

impl WireError {
    /// The decline codes of a card error, each capped: they are Stripe's text, stored
    /// and shown by the engine.
    pub fn decline_codes(&self) -> DeclineCodes {
        let capped = |s: &Option<String>| s.as_deref().map(quote);
        let code = self.code.as_ref().map_or_else(
            || WireErrorCode::CardDeclined.as_str().into(),
            |c| quote(c.as_str()),
        );
        DeclineCodes {
            decline_code: capped(&self.decline_code).or_else(|| {
                // Errors such as `expired_card` carry no decline_code; the code is the reason.
                (code != WireErrorCode::CardDeclined.as_str()).then(|| code.clone())
            }),
            code,
            advice_code: capped(&self.advice_code),
            network_decline_code: capped(&self.network_decline_code),
            network_advice_code: capped(&self.network_advice_code),
            message: capped(&self.message),
        }
    }

    /// The PaymentIntent and charge ids the error names.
    pub fn reference(&self) -> ProcessorReference {
        ProcessorReference {
            payment: self
                .payment_intent
                .as_ref()
                .map(|pi| pi.id.clone())
                .filter(|id| !id.is_empty()),
            charge: self.charge.clone(),
        }
    }
}

/// Whether `body` is Stripe's error body (`{"error": {"type": …}}`), as every error
/// Stripe itself answers is; a proxy's or load balancer's error page is not. A body cut
/// at [`crate::MAX_BODY_BYTES`] (`truncated`) cannot be parsed, so it counts when it
/// opens as one (`{"error": {`).
pub fn is_stripe_error(body: &str, truncated: bool) -> bool {
    if !truncated {
        // Only the envelope: an error whose other members this adapter cannot read
        // (a changed PaymentIntent inside a decline) is still Stripe's.
        return serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|value| value["error"]["type"].is_string());
    }
    let rest = body.trim_start();
    let Some(rest) = rest.strip_prefix('{') else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix("\"error\"") else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix(':') else {
        return false;
    };
    rest.trim_start().starts_with('{')
}

/// The `code` of an error body, if it is one.
pub fn error_code(body: &str) -> Option<WireErrorCode> {
    ErrorBody::read(body).error.code
}

/// What an HTTP error answer (neither 2xx nor a redirect) to a PaymentIntent creation
/// means: 402 is the issuer's decline; 401/403 and other 4xx are refusals (the same
/// request fails again until the configuration changes); 429 is passing (a rate
/// limit unless it is a `lock_timeout`); 409 (the key still in use by a request
/// Stripe is running) and anything else, 5xx included, is `Unknown` because Stripe
/// may have charged. `truncated` says the
/// body was cut at [`crate::MAX_BODY_BYTES`].
pub fn error_outcome(status: StatusCode, body: &str, truncated: bool) -> AttemptOutcome {
    let error = ErrorBody::read(body).error;
    let code = error.code.as_ref().map_or("", WireErrorCode::as_str);
    let text = error
        .message
        .clone()
        .or_else(|| error.code.as_ref().map(|c| c.as_str().to_owned()))
        .unwrap_or_else(|| quote_body(body, truncated));
    // Everything quoted from the answer is capped, whatever its size.
    let describe = |what: &str| quote(&format!("stripe {status} {what}: {text}"));
    match status.as_u16() {
        402 => AttemptOutcome::Declined {
            codes: error.decline_codes(),
            reference: error.reference(),
        },
        401 | 403 => AttemptOutcome::fault(FaultKind::Refused, describe("processor misconfigured")),
        // A 409 is Stripe still running a request with the same idempotency key:
        // that request may charge, so the outcome is unknown until a replay with the
        // key answers.
        409 => AttemptOutcome::Unknown {
            message: describe(if code.is_empty() { "conflict" } else { code }),
        },
        429 => AttemptOutcome::fault(
            if error.code != Some(WireErrorCode::LockTimeout) {
                FaultKind::RateLimited
            } else {
                FaultKind::Unavailable
            },
            describe(code),
        ),
        400..=499 => AttemptOutcome::fault(
            FaultKind::Refused,
            describe(error.error_type.as_ref().map_or(
                WireErrorType::InvalidRequestError.as_str(),
                WireErrorType::as_str,
            )),
        ),
        _ => AttemptOutcome::Unknown {
            message: describe("server error"),
        },
    }
}
