//! Contract test: every request the adapter can build uses only parameters that
//! Stripe's OpenAPI spec accepts for that path and method, with values of the right
//! type. The spec is `tests/data/spec.json`, extracted from Stripe's `spec3.json` by
//! `scripts/extract_stripe_data.py`.

use offsession_core::payment::TransferData;
use offsession_core::AttemptOutcome;
use offsession_core::{Amount, Cadence, CaptureMethod, CardBrand, PaymentMethodType};
use offsession_store::conformance::sample_record;
use offsession_stripe::transformers::{
    capture_params, payment_intent_params, IntentStatus, PaymentIntent, PaymentMethod, SetupIntent,
    SetupIntentStatus,
};
use serde_json::Value;

/// Stripe's OpenAPI spec, trimmed by `scripts/extract_stripe_data.py` to the operations
/// the adapter calls and the schemas they reference; inside the crate.
fn spec() -> Value {
    serde_json::from_str(include_str!("data/spec.json")).unwrap()
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Whether `value` (a form string) fits `schema`; an error says why not.
fn fits(spec: &Value, schema: &Value, value: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let errors: Vec<String> = options
            .iter()
            .filter_map(|s| fits(spec, s, value).err())
            .collect();
        return if errors.len() < options.len() {
            Ok(())
        } else {
            Err(errors.join("; "))
        };
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.iter().any(|a| a.as_str() == Some(value)) {
            return Err(format!("`{value}` is not one of {allowed:?}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => value
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| format!("`{value}` is not an integer")),
        Some("boolean") => matches!(value, "true" | "false")
            .then_some(())
            .ok_or(format!("`{value}` is not a boolean")),
        Some("string") => {
            let max = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            (value.chars().count() as u64 <= max)
                .then_some(())
                .ok_or(format!("`{value}` is longer than {max}"))
        }
        Some(other) => Err(format!("a scalar was sent where the spec wants {other}")),
        None => Ok(()),
    }
}

/// Checks one form against `path`'s `method` request body schema.
fn check_form(spec: &Value, path: &str, method: &str, form: &[(String, String)]) {
    let operation = &spec["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not in the spec");
    let properties = &operation["requestBody"]["content"]["application/x-www-form-urlencoded"]
        ["schema"]["properties"];
    for (key, value) in form {
        // `a[b]` addresses property `b` of object `a`, or a key of a map `a`.
        let (top, nested) = match key.split_once('[') {
            Some((top, rest)) => (top, Some(rest.trim_end_matches(']'))),
            None => (key.as_str(), None),
        };
        let schema = resolve(spec, &properties[top]);
        assert!(
            !schema.is_null(),
            "{method} {path}: `{top}` is not a parameter"
        );
        let leaf = match nested {
            None => schema,
            Some(field) => {
                let object = match schema.get("anyOf").and_then(Value::as_array) {
                    Some(options) => options
                        .iter()
                        .map(|o| resolve(spec, o))
                        .find(|o| o["type"] == "object")
                        .unwrap_or(schema),
                    None => schema,
                };
                let named = &object["properties"][field];
                if !named.is_null() {
                    named
                } else {
                    let additional = &object["additionalProperties"];
                    assert!(
                        additional.is_object(),
                        "{method} {path}: `{key}`: `{top}` has no field `{field}`"
                    );
                    additional
                }
            }
        };
        if let Err(why) = fits(spec, leaf, value) {
            panic!("{method} {path}: `{key}`: {why}");
        }
    }
}

fn check_query(spec: &Value, path: &str, names: &[&str]) {
    let parameters = spec["paths"][path]["get"]["parameters"]
        .as_array()
        .expect("GET with parameters");
    for name in names {
        assert!(
            parameters
                .iter()
                .any(|p| p["name"] == *name && p["in"] == "query"),
            "GET {path}: `{name}` is not a query parameter"
        );
    }
}

#[test]
fn every_payment_intent_request_fits_the_spec() {
    let spec = spec();
    let mut payment = sample_record("osp_1", 1_767_225_600_000, None).payment;
    payment.metadata.insert("invoice".into(), "in_1".into());
    // Every optional field set, in both cadences and capture methods.
    for (cadence, capture) in [
        (Cadence::Recurring, CaptureMethod::Automatic),
        (Cadence::Unscheduled, CaptureMethod::Manual),
    ] {
        payment.cadence = cadence;
        payment.capture.capture_method = capture;
        payment.on_behalf_of = Some("acct_1".into());
        payment.transfer_data = Some(TransferData {
            destination: "acct_1".into(),
            amount: Some(100),
        });
        payment.application_fee_amount_requested =
            Some(Amount::new(50, payment.amount_requested.currency));
        payment.statement_descriptor = Some("ACME SUBSCRIPTION".into());
        payment.statement_descriptor_suffix = Some("PRO".into());
        payment.description = Some("renewal".into());
        check_form(
            &spec,
            "/v1/payment_intents",
            "post",
            &payment_intent_params(&payment, 3),
        );
    }
}

#[test]
fn capture_and_cancel_requests_fit_the_spec() {
    let spec = spec();
    check_form(
        &spec,
        "/v1/payment_intents/{intent}/capture",
        "post",
        &capture_params(1500),
    );
    check_form(&spec, "/v1/payment_intents/{intent}/cancel", "post", &[]);
}

#[test]
fn preflight_lookups_fit_the_spec() {
    let spec = spec();
    assert!(spec["paths"]["/v1/payment_methods/{payment_method}"]["get"].is_object());
    check_query(
        &spec,
        "/v1/setup_intents",
        &["payment_method", "customer", "limit"],
    );
    check_query(&spec, "/v1/payment_intents/{intent}", &[]);
}

#[test]
fn the_contract_check_catches_a_wrong_parameter() {
    let spec = spec();
    let bad = vec![("off_sesion".to_owned(), "true".to_owned())];
    assert!(
        std::panic::catch_unwind(|| check_form(&spec, "/v1/payment_intents", "post", &bad))
            .is_err()
    );
    let wrong_type = vec![("amount".to_owned(), "twenty".to_owned())];
    assert!(std::panic::catch_unwind(|| check_form(
        &spec,
        "/v1/payment_intents",
        "post",
        &wrong_type
    ))
    .is_err());
    let wrong_enum = vec![("off_session".to_owned(), "sometimes".to_owned())];
    assert!(std::panic::catch_unwind(|| check_form(
        &spec,
        "/v1/payment_intents",
        "post",
        &wrong_enum
    ))
    .is_err());
}

// ----- answers: every PaymentIntent status the spec lists is read explicitly ----------

fn intent_with_status(status: Option<&str>) -> String {
    let fixtures: Value = serde_json::from_str(include_str!("data/fixtures.json")).unwrap();
    let mut intent = fixtures["resources"]["payment_intent"].clone();
    intent["last_payment_error"] = Value::Null;
    match status {
        Some(status) => intent["status"] = Value::from(status),
        None => {
            intent.as_object_mut().unwrap().remove("status");
        }
    }
    intent.to_string()
}

#[test]
fn every_payment_intent_status_in_the_spec_has_an_explicit_reading() {
    let spec = spec();
    let statuses = spec["components"]["schemas"]["payment_intent"]["properties"]["status"]["enum"]
        .as_array()
        .expect("the spec lists PaymentIntent statuses");
    assert!(statuses.len() >= 7, "{statuses:?}");
    for status in statuses {
        let status = status.as_str().unwrap();
        assert!(
            IntentStatus::from_name(status).is_known(),
            "`{status}` is in Stripe's spec but the adapter does not know it"
        );
        let intent = PaymentIntent::read(&intent_with_status(Some(status))).unwrap();
        let outcome = intent.outcome();
        let declined = matches!(outcome, Some(AttemptOutcome::Declined { .. }));
        assert_eq!(
            declined,
            matches!(
                status,
                "requires_payment_method"
                    | "canceled"
                    | "requires_action"
                    | "requires_confirmation"
            ),
            "`{status}` → {outcome:?}"
        );
        assert!(
            !matches!(outcome, Some(AttemptOutcome::Unknown { .. })),
            "`{status}` → {outcome:?}"
        );
    }
}

#[test]
fn a_status_missing_from_the_spec_is_unknown_never_a_decline() {
    for status in ["requires_review", "", "SUCCEEDED", "succeeded "] {
        let intent = PaymentIntent::read(&intent_with_status(Some(status))).unwrap();
        assert_eq!(
            intent.status(),
            IntentStatus::Other(status.into()),
            "`{status}`"
        );
        let outcome = intent.outcome();
        assert!(
            matches!(outcome, Some(AttemptOutcome::Unknown { .. })),
            "`{status}` → {outcome:?}"
        );
    }
    // No status at all, or not a PaymentIntent: not readable.
    assert!(PaymentIntent::read(&intent_with_status(None)).is_err());
    let mut charge: Value = serde_json::from_str(&intent_with_status(Some("succeeded"))).unwrap();
    charge["object"] = Value::from("charge");
    assert!(PaymentIntent::read(&charge.to_string()).is_err());
    charge.as_object_mut().unwrap().remove("object");
    assert!(PaymentIntent::read(&charge.to_string()).is_err());
    assert!(PaymentIntent::read("<html>502</html>").is_err());
}

#[test]
fn every_setup_intent_status_in_the_spec_is_known_and_only_succeeded_sets_up() {
    let spec = spec();
    let statuses = spec["components"]["schemas"]["setup_intent"]["properties"]["status"]["enum"]
        .as_array()
        .expect("the spec lists SetupIntent statuses");
    assert!(statuses.len() >= 6, "{statuses:?}");
    let fixtures: Value = serde_json::from_str(include_str!("data/fixtures.json")).unwrap();
    for status in statuses {
        let status = status.as_str().unwrap();
        assert!(
            SetupIntentStatus::from_name(status).is_known(),
            "`{status}` is in Stripe's spec but the adapter does not know it"
        );
        let mut setup = fixtures["resources"]["setup_intent"].clone();
        setup["status"] = Value::from(status);
        setup["usage"] = Value::from("off_session");
        let list = serde_json::json!({"object": "list", "data": [setup]}).to_string();
        let setups = SetupIntent::read_list(&list).unwrap();
        assert_eq!(
            setups[0].is_off_session_setup(),
            status == "succeeded",
            "`{status}`"
        );
    }
    // An unknown status or usage is kept as written and sets nothing up.
    let mut setup = fixtures["resources"]["setup_intent"].clone();
    setup["status"] = Value::from("succeeded_later");
    setup["usage"] = Value::from("off_session");
    let list = serde_json::json!({"data": [setup]}).to_string();
    let read = &SetupIntent::read_list(&list).unwrap()[0];
    assert_eq!(
        read.status,
        Some(SetupIntentStatus::Other("succeeded_later".into()))
    );
    assert!(!read.is_off_session_setup());
}

#[test]
fn a_cards_fingerprint_is_read_for_the_network_rules() {
    let fixtures: Value = serde_json::from_str(include_str!("data/fixtures.json")).unwrap();
    let method = &fixtures["resources"]["payment_method"];
    let details = PaymentMethod::read(&method.to_string()).unwrap().details();
    assert_eq!(
        details.card.unwrap().fingerprint.as_deref(),
        Some("AOB934RVNwzk6xtn"),
        "Stripe's fixture card"
    );
}

#[test]
fn payment_method_types_and_brands_map_onto_the_engine_enums() {
    let fixtures: Value = serde_json::from_str(include_str!("data/fixtures.json")).unwrap();
    let mut method = fixtures["resources"]["payment_method"].clone();
    method["type"] = Value::from("card");
    method["card"] = serde_json::json!({"brand": "amex", "funding": "credit"});
    let details = PaymentMethod::read(&method.to_string()).unwrap().details();
    assert_eq!(details.payment_method_type, PaymentMethodType::Card);
    assert_eq!(details.card.unwrap().brand, CardBrand::Amex);
    // A brand or type the engine does not know is kept as Stripe wrote it; a card
    // without a brand reads as `unknown`.
    method["type"] = Value::from("klarna");
    method["card"] = serde_json::json!({"brand": "newnet"});
    let details = PaymentMethod::read(&method.to_string()).unwrap().details();
    assert_eq!(
        details.payment_method_type,
        PaymentMethodType::Other("klarna".into())
    );
    assert_eq!(
        details.card.unwrap().brand,
        CardBrand::Other("newnet".into())
    );
    method["card"] = serde_json::json!({});
    let details = PaymentMethod::read(&method.to_string()).unwrap().details();
    assert_eq!(details.card.unwrap().brand, CardBrand::Unknown);
}

#[test]
fn a_bank_debits_country_is_read_for_the_heuristics_local_time() {
    // `sepa_debit.country` is the bank account's country (Stripe's
    // `payment_method_sepa_debit` schema); a `us_bank_account` is always in the US.
    let fixtures: Value = serde_json::from_str(include_str!("data/fixtures.json")).unwrap();
    let mut method = fixtures["resources"]["payment_method"].clone();
    method["type"] = Value::from("sepa_debit");
    method["card"] = Value::Null;
    method["sepa_debit"] =
        serde_json::json!({"country": "DE", "last4": "3000", "bank_code": "37040044"});
    let details = PaymentMethod::read(&method.to_string()).unwrap().details();
    assert_eq!(details.payment_method_type, PaymentMethodType::SepaDebit);
    assert_eq!(details.country(), Some("DE"));
    method["type"] = Value::from("us_bank_account");
    method["sepa_debit"] = Value::Null;
    let details = PaymentMethod::read(&method.to_string()).unwrap().details();
    assert_eq!(details.country(), Some("US"));
    // A card's country stays the card's: nothing is guessed for it.
    method["type"] = Value::from("card");
    method["card"] = serde_json::json!({"brand": "visa", "country": "FR"});
    let details = PaymentMethod::read(&method.to_string()).unwrap().details();
    assert_eq!(
        (details.country(), details.bank_country.as_deref()),
        (Some("FR"), None)
    );
}

// ----- metadata: the engine's keys are reserved, and at most 50 are sent ---------------

fn metadata_of(form: &[(String, String)]) -> Vec<(String, String)> {
    form.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect()
}

#[test]
fn merchant_metadata_never_overrides_the_engine_keys() {
    let spec = spec();
    let mut payment = sample_record("osp_real", 1_767_225_600_000, None).payment;
    payment.metadata.clear();
    for key in [
        "offsession_payment_id",
        "offsession_attempt",
        "offsession_other",
    ] {
        payment.metadata.insert(key.into(), "forged".into());
    }
    payment.metadata.insert("invoice".into(), "in_1".into());
    let form = payment_intent_params(&payment, 2);
    check_form(&spec, "/v1/payment_intents", "post", &form);
    let metadata = metadata_of(&form);
    assert_eq!(
        metadata,
        vec![
            ("invoice".to_owned(), "in_1".to_owned()),
            ("offsession_payment_id".to_owned(), "osp_real".to_owned()),
            ("offsession_attempt".to_owned(), "2".to_owned()),
        ]
    );
}

#[test]
fn at_most_fifty_metadata_keys_are_sent_the_first_48_merchant_keys_in_order() {
    let spec = spec();
    let mut payment = sample_record("osp_many", 1_767_225_600_000, None).payment;
    payment.metadata.clear();
    for i in 0..60 {
        payment.metadata.insert(format!("k{i:02}"), format!("v{i}"));
    }
    payment
        .metadata
        .insert("offsession_payment_id".into(), "forged".into());
    let form = payment_intent_params(&payment, 1);
    check_form(&spec, "/v1/payment_intents", "post", &form);
    let metadata = metadata_of(&form);
    assert_eq!(metadata.len(), 50);
    let expected: Vec<String> = (0..48).map(|i| format!("k{i:02}")).collect();
    let sent: Vec<&str> = metadata[..48].iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(sent, expected);
    assert_eq!(
        metadata[48],
        ("offsession_payment_id".to_owned(), "osp_many".to_owned())
    );
    assert_eq!(
        metadata[49],
        ("offsession_attempt".to_owned(), "1".to_owned())
    );
    // Distinct keys: the engine's appear once.
    let mut keys: Vec<&str> = metadata.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 50);
}
