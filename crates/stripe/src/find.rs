//! Finding an authorization attempt by its metadata, when replaying its key says
//! nothing: Stripe stores an error answered after execution started (a 500 included)
//! under the key and answers it to every replay, whether or not the charge was made.

use offsession_core::{AttemptOutcome, AuthorizeRequest, ProcessorError, Timestamp};
use reqwest::Method;
use serde::Deserialize;

use crate::http::Reply;
use crate::transformers::{IntentStatus, PaymentIntent, ENGINE_METADATA_KEYS};
use crate::{quote, StripeProcessor};

/// Pages of 100 read at most: a customer's PaymentIntents since the attempt.
const MAX_PAGES: usize = 10;

/// Slack before the attempt's first send, for a clock behind Stripe's.
const CLOCK_SLACK_SECS: i64 = 600;

/// A page of `GET /v1/payment_intents`.
#[derive(Debug, Deserialize)]
struct IntentPage {
    #[serde(default)]
    data: Vec<PaymentIntent>,
    #[serde(default)]
    has_more: bool,
}

/// What a listed PaymentIntent says of the attempt, when it says something final.
/// Only settled states count: a listed intent may be one whose confirmation is still
/// running (a replay that met `409`) or one Stripe made and then failed on (the stored
/// 500), so `requires_confirmation`, `requires_action` and `processing`, which as the
/// answer to a confirmation would be read as a decline or looked up later, are no
/// answer here; nor is a `requires_payment_method` or `canceled` intent without the
/// decline that put it there.
fn settled(intent: &PaymentIntent) -> Option<AttemptOutcome> {
    let declined = intent.last_payment_error.is_some();
    match intent.status() {
        IntentStatus::Succeeded | IntentStatus::RequiresCapture => intent.outcome(),
        IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled if declined => {
            intent.outcome()
        }
        _ => None,
    }
}

impl StripeProcessor {
    /// The PaymentIntent this attempt made, found among the customer's PaymentIntents
    /// created since the attempt was first sent (the list is strongly consistent;
    /// Stripe's search is not), by the engine's metadata: the payment's id and the
    /// attempt's number.
    pub(crate) async fn find_intent(
        &self,
        request: AuthorizeRequest<'_>,
        since: Timestamp,
    ) -> Result<Option<AttemptOutcome>, ProcessorError> {
        let error = |message: String| ProcessorError {
            processor: self.config.id.clone(),
            operation: "find",
            message,
        };
        let [payment_key, attempt_key] = ENGINE_METADATA_KEYS;
        let attempt = request.attempt_number.to_string();
        let created = (since.as_millis() / 1_000 - CLOCK_SLACK_SECS).to_string();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("customer", request.payment.customer.as_str()),
                ("created[gte]", created.as_str()),
                ("limit", "100"),
            ];
            if let Some(last) = &after {
                query.push(("starting_after", last.as_str()));
            }
            let body = match self
                .send(Method::GET, &["v1", "payment_intents"], &query, None, None)
                .await
            {
                Reply::Response {
                    status,
                    body,
                    truncated: false,
                    ..
                } if status.is_success() => body,
                Reply::Response { status, .. } => {
                    return Err(error(format!("listing payment intents answered {status}")))
                }
                Reply::NotSent(e) | Reply::Lost(e) => {
                    return Err(error(format!("listing payment intents failed: {e}")))
                }
            };
            let page: IntentPage = serde_json::from_str(&body).map_err(|e| {
                error(format!(
                    "unreadable list of payment intents: {}",
                    quote(&e.to_string())
                ))
            })?;
            let metadata = |intent: &PaymentIntent, key: &str| {
                intent
                    .metadata
                    .get(key)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            if let Some(intent) = page.data.iter().find(|intent| {
                metadata(intent, payment_key).as_deref() == Some(request.payment.id.as_str())
                    && metadata(intent, attempt_key).as_deref() == Some(attempt.as_str())
            }) {
                return Ok(settled(intent));
            }
            match page.data.last() {
                Some(last) if page.has_more => after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}
