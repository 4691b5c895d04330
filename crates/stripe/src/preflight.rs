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
        let unavailable =
            |what: String| ApiError::new(ErrorCode::ApiError, format!("stripe: {what}"));
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
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } if status.is_success() => {
                if truncated {
                    return Err(unavailable(format!(
                        "payment method answer over {MAX_BODY_BYTES} bytes, not read"
                    )));
                }
                PaymentMethod::read(&body).map_err(unavailable)?
            }
            Reply::Response { status, .. } if status == StatusCode::NOT_FOUND => {
                return Err(ApiError::invalid(
                    "payment_method",
                    format!("no such payment method `{}`", quote(id)),
                ))
            }
            Reply::Response {
                status, location, ..
            } if status.is_redirection() => {
                return Err(unavailable(redirected(
                    "payment method lookup",
                    status,
                    location.as_deref(),
                )))
            }
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } => {
                return Err(unavailable(quote(&format!(
                    "payment method lookup answered {status}: {}",
                    quote_body(&body, truncated)
                ))));
            }
            Reply::NotSent(e) | Reply::Lost(e) => return Err(unavailable(e)),
        };
        let query = [
            ("payment_method", id.as_str()),
            ("customer", payment.customer.as_str()),
            ("limit", "100"),
        ];
        let setups = match self
            .send(Method::GET, &["v1", "setup_intents"], &query, None, None)
            .await
        {
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } if status.is_success() => {
                if truncated {
                    return Err(unavailable(format!(
                        "setup intents answer over {MAX_BODY_BYTES} bytes, not read"
                    )));
                }
                SetupIntent::read_list(&body).map_err(unavailable)?
            }
            Reply::Response {
                status, location, ..
            } if status.is_redirection() => {
                return Err(unavailable(redirected(
                    "setup intent lookup",
                    status,
                    location.as_deref(),
                )))
            }
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } => {
                return Err(unavailable(quote(&format!(
                    "setup intent lookup answered {status}: {}",
                    quote_body(&body, truncated)
                ))));
            }
            Reply::NotSent(e) | Reply::Lost(e) => return Err(unavailable(e)),
        };
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
