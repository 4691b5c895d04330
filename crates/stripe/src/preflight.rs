//! What preflight learns from Stripe about a payment method (the method itself and
//! its SetupIntents), cached per method for `preflight_cache_ttl`.

use std::time::Instant;

use offsession_core::{ApiError, ErrorCode, OffSessionPayment};
use reqwest::{Method, StatusCode};

use crate::http::{quote_body, redirected, Reply};
use crate::transformers::{PaymentMethod, SetupIntent};
use crate::{quote, StripeProcessor, MAX_BODY_BYTES};

/// A payment method and its SetupIntents, as fetched.
#[derive(Debug, Clone)]
pub(crate) struct PreflightFacts {
    pub(crate) method: PaymentMethod,
    pub(crate) setups: Vec<SetupIntent>,
    pub(crate) fetched: Instant,
}

impl StripeProcessor {
    pub(crate) async fn facts(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PreflightFacts, ApiError> {
        let id = &payment.payment_method;
        if let Some(facts) = self
            .preflight_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|f| f.fetched.elapsed() < self.config.preflight_cache_ttl)
        {
            return Ok(facts.clone());
        }
        if id.is_empty() || id == "." || id == ".." {
            return Err(ApiError::invalid(
                "payment_method",
                format!("`{}` is not a payment method id", quote(id)),
            ));
        }
        let method = match self
            .send(Method::GET, &["v1", "payment_methods", id], &[], None, None)
            .await
        {
            Reply::Response { status, .. } if status == StatusCode::NOT_FOUND => {
                return Err(ApiError::invalid(
                    "payment_method",
                    format!("no such payment method `{}`", quote(id)),
                ))
            }
            reply => {
                PaymentMethod::read(&lookup_body(reply, "payment method")?).map_err(unavailable)?
            }
        };
        let query = [
            ("payment_method", id.as_str()),
            ("customer", payment.customer.as_str()),
            ("limit", "100"),
        ];
        let reply = self
            .send(Method::GET, &["v1", "setup_intents"], &query, None, None)
            .await;
        let setups =
            SetupIntent::read_list(&lookup_body(reply, "setup intent")?).map_err(unavailable)?;
        let facts = PreflightFacts {
            method,
            setups,
            fetched: Instant::now(),
        };
        self.preflight_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), facts.clone());
        Ok(facts)
    }
}

/// Stripe could not answer a lookup: the payment cannot be checked now.
fn unavailable(what: String) -> ApiError {
    ApiError::new(ErrorCode::ApiError, format!("stripe: {what}"))
}

/// The body of a successful `what` lookup; anything else (a redirect, an error
/// status, a body too long to read, no answer) is Stripe being unavailable.
fn lookup_body(reply: Reply, what: &str) -> Result<String, ApiError> {
    match reply {
        Reply::Response {
            status,
            body,
            truncated,
            ..
        } if status.is_success() => {
            if truncated {
                return Err(unavailable(format!(
                    "{what} answer over {MAX_BODY_BYTES} bytes, not read"
                )));
            }
            Ok(body)
        }
        Reply::Response {
            status, location, ..
        } if status.is_redirection() => Err(unavailable(redirected(
            &format!("{what} lookup"),
            status,
            location.as_deref(),
        ))),
        Reply::Response {
            status,
            body,
            truncated,
            ..
        } => Err(unavailable(quote(&format!(
            "{what} lookup answered {status}: {}",
            quote_body(&body, truncated)
        )))),
        Reply::NotSent(e) | Reply::Lost(e) => Err(unavailable(e)),
    }
}
