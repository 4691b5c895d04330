//! The fake's other routes: retrieving, capturing and cancelling a PaymentIntent,
//! payment methods, setup intents, and the ledger.

use super::*;

pub(crate) async fn get_intent(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(ledger) = fake.ledger_for(&headers) else {
        return unauthorized();
    };
    match ledger.intents.get(&id) {
        Some(intent) => (StatusCode::OK, Json(intent.clone())).into_response(),
        None => missing("payment_intent", &id),
    }
}

pub(crate) async fn capture_intent(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(mut ledger) = fake.ledger_for(&headers) else {
        return unauthorized();
    };
    let Some(intent) = ledger.intents.get_mut(&id) else {
        return missing("payment_intent", &id);
    };
    if intent["status"] == "requires_capture" {
        intent["status"] = json!("succeeded");
        let answer = intent.clone();
        if let Some(charge) = ledger.charges.iter_mut().find(|c| c.payment_intent == id) {
            charge.status = "succeeded".into();
        }
        return (StatusCode::OK, Json(answer)).into_response();
    }
    error(
        400,
        json!({"type": "invalid_request_error", "code": "payment_intent_unexpected_state"}),
    )
}

pub(crate) async fn cancel_intent(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(mut ledger) = fake.ledger_for(&headers) else {
        return unauthorized();
    };
    let Some(intent) = ledger.intents.get_mut(&id) else {
        return missing("payment_intent", &id);
    };
    if intent["status"] != "requires_capture" {
        return error(
            400,
            json!({"type": "invalid_request_error", "code": "payment_intent_unexpected_state"}),
        );
    }
    intent["status"] = json!("canceled");
    let answer = intent.clone();
    ledger.charges.retain(|c| c.payment_intent != id);
    (StatusCode::OK, Json(answer)).into_response()
}

/// A payment method's card fingerprint: one card per payment method here, so a
/// fingerprint made from the id (Stripe's are 16 characters of the same alphabet).
fn fingerprint_of(payment_method: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    payment_method.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// `pm_X` belongs to `cus_X`.
pub(crate) fn customer_of(payment_method: &str) -> Option<String> {
    payment_method
        .strip_prefix("pm_")
        .filter(|rest| !rest.is_empty())
        .map(|rest| format!("cus_{rest}"))
}

pub(crate) async fn get_payment_method(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if fake.ledger_for(&headers).is_none() {
        return unauthorized();
    }
    let Some(customer) = customer_of(&id) else {
        return missing("payment_method", &id);
    };
    let brand = if id.contains("mastercard") {
        "mastercard"
    } else {
        "visa"
    };
    Json(json!({
        "id": id, "object": "payment_method", "type": "card", "customer": customer,
        "livemode": false,
        "card": {"brand": brand, "funding": "credit", "country": "US", "last4": "4242",
                 "exp_month": 8, "exp_year": 2030, "wallet": null,
                 "fingerprint": fingerprint_of(&id)},
    }))
    .into_response()
}

pub(crate) async fn list_setup_intents(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if fake.ledger_for(&headers).is_none() {
        return unauthorized();
    }
    let payment_method = field(&query, "payment_method");
    let customer = field(&query, "customer");
    let data = match customer_of(payment_method) {
        Some(owner) if customer.is_empty() || owner == customer => vec![json!({
            "id": format!("seti_{payment_method}"), "object": "setup_intent",
            "payment_method": payment_method, "customer": owner, "status": "succeeded",
            "usage": "off_session", "on_behalf_of": null, "livemode": false,
        })],
        _ => Vec::new(),
    };
    Json(json!({"object": "list", "data": data, "has_more": false, "url": "/v1/setup_intents"}))
        .into_response()
}

pub(crate) async fn ledger(State(fake): State<Fake>) -> Response {
    Json(fake.ledger()).into_response()
}
