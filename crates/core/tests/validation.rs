//! Every processor-independent validation rule of the create request, one test each.

use offsession_core::request::{
    parse_create, resolve_for_method, validate_create, CreateRules, MethodRules, ResolvedRetry,
    ValidCreate,
};
use offsession_core::{
    ApiError, CardDetails, ErrorCode, PaymentMethodDetails, RetryStrategy, Timestamp,
};
use serde_json::{json, Value};

const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn policies() -> Vec<String> {
    vec!["stripe_recommended".into(), "weekly".into()]
}

fn base() -> Value {
    json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_card_visa",
        "metadata": {}
    })
}

fn validate_in(body: Value, livemode: bool) -> Result<ValidCreate, ApiError> {
    let request = parse_create(body.to_string().as_bytes())?;
    let policies = policies();
    validate_create(
        &request,
        &CreateRules {
            livemode,
            now: Timestamp::from_millis(NOW),
            retry_policies: &policies,
        },
    )
}

fn validate(body: Value) -> Result<ValidCreate, ApiError> {
    validate_in(body, false)
}

fn with(mut body: Value, path: &[&str], value: Value) -> Value {
    let mut target = &mut body;
    for key in &path[..path.len() - 1] {
        if target.get(*key).is_none() {
            target[*key] = json!({});
        }
        target = &mut target[*key];
    }
    target[path[path.len() - 1]] = value;
    body
}

fn without(mut body: Value, key: &str) -> Value {
    body.as_object_mut().unwrap().remove(key);
    body
}

#[track_caller]
fn assert_code(result: Result<ValidCreate, ApiError>, code: ErrorCode, param: &str) {
    let err = result.expect_err("must be refused");
    assert_eq!(err.code, code, "{err}");
    assert_eq!(err.param.as_deref(), Some(param), "{err}");
    assert!(
        err.message.contains(param.split('.').next().unwrap())
            || code != ErrorCode::OspGenericInvalidRequest,
        "message must name the field: {err}"
    );
}

#[test]
fn a_minimal_request_is_valid() {
    let valid = validate(base()).unwrap();
    assert_eq!(valid.amount.value, 2000);
    assert_eq!(valid.customer, "cus_123");
}

#[test]
fn missing_metadata_defaults_to_empty() {
    assert!(validate(without(base(), "metadata"))
        .unwrap()
        .metadata
        .is_empty());
}

#[test]
fn each_required_field_is_named_when_missing() {
    for field in ["amount", "cadence", "customer", "payment_method"] {
        assert_code(
            validate(without(base(), field)),
            ErrorCode::OspGenericInvalidRequest,
            field,
        );
    }
    assert_code(
        validate(with(base(), &["amount"], json!({"currency": "usd"}))),
        ErrorCode::OspGenericInvalidRequest,
        "amount.value",
    );
    assert_code(
        validate(with(base(), &["amount"], json!({"value": 100}))),
        ErrorCode::OspGenericInvalidRequest,
        "amount.currency",
    );
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let err = validate(with(base(), &["colour"], json!("blue"))).unwrap_err();
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest);
    assert!(err.message.contains("colour"), "{err}");
    let err = validate(with(base(), &["amount", "cents"], json!(5))).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("amount.cents"), "{err}");
    assert!(err.message.contains("cents"), "{err}");
}

#[test]
fn wrong_types_are_refused_by_name() {
    assert_code(
        validate(with(base(), &["amount", "value"], json!("2000"))),
        ErrorCode::OspGenericInvalidRequest,
        "amount.value",
    );
    assert_code(
        validate(with(base(), &["cadence"], json!("weekly"))),
        ErrorCode::OspGenericInvalidRequest,
        "cadence",
    );
}

#[test]
fn malformed_json_is_a_generic_invalid_request() {
    let err = parse_create(b"{\"amount\": ").unwrap_err();
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest);
    let err = parse_create(b"[1,2]").unwrap_err();
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest);
    // A trailing comma after the last field: no field to name (not `?`).
    let err = parse_create(br#"{"cadence": "recurring",}"#).unwrap_err();
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest, "{err:?}");
    assert_eq!(err.param, None, "{err:?}");
    assert!(err.message.contains("trailing comma"), "{err:?}");
}

#[test]
fn unknown_currencies_are_refused() {
    assert_code(
        validate(with(base(), &["amount", "currency"], json!("xyz"))),
        ErrorCode::OspGenericInvalidRequest,
        "amount.currency",
    );
}

#[test]
fn amount_too_small_uses_the_currency_minimum() {
    assert_code(
        validate(with(base(), &["amount", "value"], json!(49))),
        ErrorCode::OspAmountTooSmall,
        "amount.value",
    );
    assert!(validate(with(base(), &["amount", "value"], json!(50))).is_ok());
    assert_code(
        validate(with(base(), &["amount", "value"], json!(0))),
        ErrorCode::OspAmountTooSmall,
        "amount.value",
    );
    assert_code(
        validate(with(base(), &["amount", "value"], json!(-100))),
        ErrorCode::OspAmountTooSmall,
        "amount.value",
    );
}

#[test]
fn zero_decimal_currencies_use_whole_units() {
    let jpy = |v: i64| with(base(), &["amount"], json!({"value": v, "currency": "jpy"}));
    assert!(validate(jpy(50)).is_ok(), "JPY 50 is the minimum, in yen");
    assert_code(
        validate(jpy(49)),
        ErrorCode::OspAmountTooSmall,
        "amount.value",
    );
    let gbp = with(base(), &["amount"], json!({"value": 30, "currency": "GBP"}));
    assert_eq!(validate(gbp).unwrap().amount.currency.as_str(), "gbp");
}

#[test]
fn amount_too_large_uses_the_currency_maximum() {
    assert_code(
        validate(with(base(), &["amount", "value"], json!(100_000_000))),
        ErrorCode::OspAmountTooLarge,
        "amount.value",
    );
    assert!(validate(with(base(), &["amount", "value"], json!(99_999_999))).is_ok());
}

#[test]
fn metadata_allows_at_most_48_keys_two_of_stripes_50_being_the_engines() {
    let keys = |n: usize| -> Value {
        Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect())
    };
    assert!(validate(with(base(), &["metadata"], keys(48))).is_ok());
    for n in [49, 50, 51] {
        assert_code(
            validate(with(base(), &["metadata"], keys(n))),
            ErrorCode::OspGenericInvalidRequest,
            "metadata",
        );
    }
}

#[test]
fn the_engines_metadata_keys_are_reserved() {
    for key in [
        "offsession_payment_id",
        "offsession_attempt",
        "offsession_x",
    ] {
        assert_code(
            validate(with(base(), &["metadata"], json!({ key: "1" }))),
            ErrorCode::OspGenericInvalidRequest,
            &format!("metadata.{key}"),
        );
    }
}

#[test]
fn ids_are_refused_unless_letters_digits_underscore_and_dash() {
    let long = "a".repeat(300);
    for bad in [
        "../../v1/customers/cus_1?expand[]=x",
        "pm_1/../x",
        "pm_1?x=1",
        "pm_1#frag",
        "pm_1%2Fx",
        "pm 1",
        "pm_1\u{0}",
        "pm_1\n",
        "pm_1\u{7f}",
        "pm_é",
        "..",
        "pm.1",
        "pm&1",
        long.as_str(),
    ] {
        for field in ["customer", "payment_method", "on_behalf_of", "test_clock"] {
            let body = with(base(), &[field], json!(bad));
            let err = validate(body).expect_err(bad);
            assert_eq!(
                err.code,
                ErrorCode::OspGenericInvalidRequest,
                "{bad}: {err}"
            );
            assert_eq!(err.param.as_deref(), Some(field), "{bad}: {err}");
        }
        let body = with(base(), &["transfer_data"], json!({ "destination": bad }));
        let err = validate(body).expect_err(bad);
        assert_eq!(err.param.as_deref(), Some("transfer_data.destination"));
    }
    for good in [
        "pm_1RP6TAG7mvlzf7RNfspLoGQ9",
        "cus_SJjFsJvGPQKfH1",
        "pm_card_visa__7",
        "a-b",
    ] {
        assert!(
            validate(with(base(), &["payment_method"], json!(good))).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn a_json_array_is_not_a_create_request() {
    let body = json!([{"value": 2000, "currency": "usd"}, "recurring", "cus_123", "pm_card_visa"]);
    let err = parse_create(body.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest);
    assert!(err.message.contains("JSON object"), "{err}");
    for text in ["\"text\"", "42", "null", ""] {
        assert!(parse_create(text.as_bytes()).is_err(), "{text}");
    }
}

#[test]
fn card_options_are_typed_and_checked() {
    let valid = validate(with(
        base(),
        &["payment_method_options"],
        json!({"card": {"mcc": "5734", "network_transaction_id": "ABC123"}}),
    ))
    .unwrap();
    let card = valid.payment_method_options.unwrap().card.unwrap();
    assert_eq!(card.mcc.as_deref(), Some("5734"));
    assert_eq!(card.network_transaction_id.as_deref(), Some("ABC123"));
    for (options, param) in [
        (
            json!({"card": {"mcc": "57"}}),
            "payment_method_options.card.mcc",
        ),
        (
            json!({"card": {"mcc": "abcd"}}),
            "payment_method_options.card.mcc",
        ),
        (
            json!({"card": {"colour": "red"}}),
            "payment_method_options.card",
        ),
        (
            json!({"card": {"network_transaction_id": "a/b"}}),
            "payment_method_options.card.network_transaction_id",
        ),
        (
            json!({"sepa_debit": {"x": 1}}),
            "payment_method_options.sepa_debit.x",
        ),
    ] {
        let err = validate(with(base(), &["payment_method_options"], options.clone()))
            .expect_err(&options.to_string());
        assert!(
            err.param.as_deref().is_some_and(|p| p.starts_with(param)),
            "{options}: {err:?}"
        );
    }
}

#[test]
fn orchestration_is_none_unless_requested() {
    assert_eq!(validate(base()).unwrap().payments_orchestration, None);
    let valid = validate(with(
        base(),
        &["payments_orchestration"],
        json!({"enabled": true}),
    ))
    .unwrap();
    assert!(valid.payments_orchestration.is_some_and(|o| o.enabled));
}

#[test]
fn metadata_keys_are_at_most_40_characters_without_brackets() {
    let long_key = "k".repeat(41);
    assert_code(
        validate(with(
            base(),
            &["metadata"],
            json!({ long_key.clone(): "v" }),
        )),
        ErrorCode::OspGenericInvalidRequest,
        &format!("metadata.{long_key}"),
    );
    assert_code(
        validate(with(base(), &["metadata"], json!({"a[b]": "v"}))),
        ErrorCode::OspGenericInvalidRequest,
        "metadata.a[b]",
    );
}

#[test]
fn metadata_values_are_at_most_500_characters() {
    assert_code(
        validate(with(
            base(),
            &["metadata"],
            json!({"note": "x".repeat(501)}),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "metadata.note",
    );
    assert!(validate(with(
        base(),
        &["metadata"],
        json!({"note": "x".repeat(500)})
    ))
    .is_ok());
}

#[test]
fn statement_descriptors_are_at_most_22_characters() {
    assert_code(
        validate(with(
            base(),
            &["statement_descriptor"],
            json!("A".repeat(23)),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "statement_descriptor",
    );
    assert_code(
        validate(with(
            base(),
            &["statement_descriptor_suffix"],
            json!("B".repeat(23)),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "statement_descriptor_suffix",
    );
    assert!(validate(with(
        base(),
        &["statement_descriptor"],
        json!("ACME SUBSCRIPTION")
    ))
    .is_ok());
}

#[test]
fn statement_descriptors_refuse_reserved_characters_and_need_a_letter() {
    assert_code(
        validate(with(base(), &["statement_descriptor"], json!("ACME <PRO>"))),
        ErrorCode::OspGenericInvalidRequest,
        "statement_descriptor",
    );
    assert_code(
        validate(with(base(), &["statement_descriptor"], json!("12345"))),
        ErrorCode::OspGenericInvalidRequest,
        "statement_descriptor",
    );
    assert_code(
        validate(with(base(), &["statement_descriptor"], json!("ACM"))),
        ErrorCode::OspGenericInvalidRequest,
        "statement_descriptor",
    );
}

#[test]
fn transfer_amount_must_be_positive_and_at_most_the_amount() {
    let td = |amount: i64| {
        with(
            base(),
            &["transfer_data"],
            json!({"destination": "acct_1", "amount": amount}),
        )
    };
    assert_code(
        validate(td(0)),
        ErrorCode::OspGenericInvalidRequest,
        "transfer_data.amount",
    );
    assert_code(
        validate(td(2001)),
        ErrorCode::OspGenericInvalidRequest,
        "transfer_data.amount",
    );
    assert!(validate(td(2000)).is_ok());
    assert_code(
        validate(with(base(), &["transfer_data"], json!({"amount": 100}))),
        ErrorCode::OspGenericInvalidRequest,
        "transfer_data.destination",
    );
}

#[test]
fn application_fee_needs_connect_and_fits_in_the_amount() {
    assert_code(
        validate(with(base(), &["application_fee_amount"], json!(100))),
        ErrorCode::OspGenericInvalidRequest,
        "application_fee_amount",
    );
    let connect = with(base(), &["on_behalf_of"], json!("acct_1"));
    assert_code(
        validate(with(
            connect.clone(),
            &["application_fee_amount"],
            json!(2001),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "application_fee_amount",
    );
    assert!(validate(with(connect, &["application_fee_amount"], json!(100))).is_ok());
}

#[test]
fn retry_policy_and_retry_strategy_are_mutually_exclusive() {
    let body = with(
        base(),
        &["retry_details"],
        json!({"retry_policy": "weekly", "retry_strategy": "best_available"}),
    );
    assert_code(
        validate(body),
        ErrorCode::OffSessionPaymentRetryPolicyStrategyMutuallyExclusive,
        "retry_details",
    );
}

#[test]
fn retry_policy_must_be_configured() {
    assert_code(
        validate(with(
            base(),
            &["retry_details"],
            json!({"retry_policy": "nope"}),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "retry_details.retry_policy",
    );
}

#[test]
fn retry_until_must_be_in_the_future() {
    assert_code(
        validate(with(
            base(),
            &["retry_details"],
            json!({"retry_until": "2025-12-31T00:00:00.000Z"}),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "retry_details.retry_until",
    );
}

#[test]
fn test_clocks_are_refused_in_livemode() {
    assert_code(
        validate_in(with(base(), &["test_clock"], json!("clock_1")), true),
        ErrorCode::OffSessionPaymentTestClockInLivemode,
        "test_clock",
    );
    assert!(validate_in(with(base(), &["test_clock"], json!("clock_1")), false).is_ok());
}

#[test]
fn orchestration_is_refused_with_connect() {
    for (field, value) in [
        ("on_behalf_of", json!("acct_1")),
        ("transfer_data", json!({"destination": "acct_1"})),
    ] {
        let body = with(
            with(
                base(),
                &["payments_orchestration"],
                json!({"enabled": true}),
            ),
            &[field],
            value,
        );
        assert_code(
            validate(body),
            ErrorCode::OspPaymentsOrchestrationNotSupportedWithConnect,
            "payments_orchestration.enabled",
        );
    }
}

#[test]
fn orchestration_is_refused_with_explicit_smart_retries() {
    let body = with(
        with(
            base(),
            &["payments_orchestration"],
            json!({"enabled": true}),
        ),
        &["retry_details"],
        json!({"retry_strategy": "smart"}),
    );
    assert_code(
        validate(body),
        ErrorCode::OspPaymentsOrchestrationNotSupportedWithSmartRetries,
        "retry_details.retry_strategy",
    );
}

#[test]
fn capture_before_needs_manual_capture_and_a_future_time() {
    assert_code(
        validate(with(
            base(),
            &["capture"],
            json!({"capture_before": "2026-02-01T00:00:00Z"}),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "capture.capture_before",
    );
    assert_code(
        validate(with(
            base(),
            &["capture"],
            json!({"capture_method": "manual", "capture_before": "2025-02-01T00:00:00Z"}),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "capture.capture_before",
    );
}

#[test]
fn target_date_must_be_a_date_not_in_the_past() {
    assert_code(
        validate(with(base(), &["target_date"], json!("01/02/2026"))),
        ErrorCode::OspGenericInvalidRequest,
        "target_date",
    );
    assert_code(
        validate(with(base(), &["target_date"], json!("2025-12-31"))),
        ErrorCode::OspGenericInvalidRequest,
        "target_date",
    );
    assert!(validate(with(base(), &["target_date"], json!("2026-01-01"))).is_ok());
}

#[test]
fn payment_method_options_must_name_a_known_type() {
    assert_code(
        validate(with(
            base(),
            &["payment_method_options"],
            json!({"klarna": {}}),
        )),
        ErrorCode::OspGenericInvalidRequest,
        "payment_method_options.klarna",
    );
}

#[test]
fn empty_ids_are_refused() {
    assert_code(
        validate(with(base(), &["customer"], json!(" "))),
        ErrorCode::OspGenericInvalidRequest,
        "customer",
    );
}

// ----- rules that need the payment method's type ------------------------------------

fn card() -> PaymentMethodDetails {
    PaymentMethodDetails {
        payment_method_type: "card".into(),
        card: Some(CardDetails {
            brand: "visa".into(),
            funding: "credit".into(),
            country: Some("US".into()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        }),
        bank_country: None,
    }
}

fn debit(kind: &str) -> PaymentMethodDetails {
    PaymentMethodDetails {
        payment_method_type: kind.into(),
        card: None,
        bank_country: None,
    }
}

fn resolve_with(
    body: Value,
    method: &PaymentMethodDetails,
    available: &[RetryStrategy],
    ach: bool,
) -> Result<ResolvedRetry, ApiError> {
    let valid = validate(body)?;
    let types = offsession_core::PaymentMethodType::KNOWN.to_vec();
    resolve_for_method(
        &valid,
        method,
        &MethodRules {
            supported_types: &types,
            ach_retries_enabled: ach,
            sepa_debit_retries_enabled: false,
            available,
            default_policy: "stripe_recommended",
        },
    )
}

const ALL: &[RetryStrategy] = &[
    RetryStrategy::None,
    RetryStrategy::Scheduled,
    RetryStrategy::Heuristic,
    RetryStrategy::Smart,
];

fn strategy(name: &str) -> Value {
    with(
        base(),
        &["retry_details"],
        json!({ "retry_strategy": name }),
    )
}

#[track_caller]
fn assert_resolve_code(result: Result<ResolvedRetry, ApiError>, code: ErrorCode) {
    let err = result.expect_err("must be refused");
    assert_eq!(err.code, code, "{err}");
}

#[test]
fn heuristic_retries_are_refused_for_cards() {
    assert_resolve_code(
        resolve_with(strategy("heuristic"), &card(), ALL, true),
        ErrorCode::OffSessionPaymentHeuristicRetriesNotSupportedForCards,
    );
}

#[test]
fn smart_retries_are_refused_for_debits() {
    assert_resolve_code(
        resolve_with(strategy("smart"), &debit("sepa_debit"), ALL, true),
        ErrorCode::OffSessionPaymentSmartRetriesNotSupportedForDebitPaymentMethods,
    );
}

#[test]
fn retry_policies_are_refused_for_debits() {
    let body = with(
        base(),
        &["retry_details"],
        json!({"retry_policy": "weekly"}),
    );
    assert_resolve_code(
        resolve_with(body, &debit("us_bank_account"), ALL, true),
        ErrorCode::OffSessionPaymentRetryPolicyNotSupportedForDebitPaymentMethods,
    );
}

#[test]
fn ach_retries_need_the_switch() {
    assert_resolve_code(
        resolve_with(base(), &debit("us_bank_account"), ALL, false),
        ErrorCode::OspAchRetriesNotEnabled,
    );
    assert_eq!(
        resolve_with(base(), &debit("us_bank_account"), ALL, true)
            .unwrap()
            .strategy,
        RetryStrategy::Heuristic
    );
    assert_eq!(
        resolve_with(strategy("none"), &debit("us_bank_account"), ALL, false)
            .unwrap()
            .strategy,
        RetryStrategy::None,
        "no retries asked, no switch needed"
    );
}

#[test]
fn sepa_debit_retries_need_the_switch() {
    assert_resolve_code(
        resolve_with(base(), &debit("sepa_debit"), ALL, true),
        ErrorCode::OspSepaDebitRetriesNotEnabled,
    );
}

#[test]
fn orchestration_is_only_for_cards() {
    let body = with(
        with(
            base(),
            &["payments_orchestration"],
            json!({"enabled": true}),
        ),
        &["retry_details"],
        json!({"retry_strategy": "none"}),
    );
    assert_resolve_code(
        resolve_with(body, &debit("us_bank_account"), ALL, true),
        ErrorCode::OspPaymentsOrchestrationOnlySupportedForCards,
    );
}

#[test]
fn payment_method_options_must_match_the_method_type() {
    let body = with(
        base(),
        &["payment_method_options"],
        json!({"sepa_debit": {}}),
    );
    assert_resolve_code(
        resolve_with(body.clone(), &card(), ALL, true),
        ErrorCode::OffSessionPaymentIncorrectPaymentMethodTypeForOptions,
    );
    let body = with(base(), &["payment_method_options"], json!({"card": {}}));
    assert!(resolve_with(body, &card(), ALL, true).is_ok());
}

#[test]
fn unsupported_payment_method_types_are_refused() {
    let valid = validate(base()).unwrap();
    let types = vec![offsession_core::PaymentMethodType::Card];
    let err = resolve_for_method(
        &valid,
        &debit("sepa_debit"),
        &MethodRules {
            supported_types: &types,
            ach_retries_enabled: true,
            sepa_debit_retries_enabled: true,
            available: ALL,
            default_policy: "stripe_recommended",
        },
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::OspInvalidPaymentMethodType);
}

#[test]
fn best_available_is_smart_for_cards_and_heuristic_for_debits() {
    assert_eq!(
        resolve_with(base(), &card(), ALL, true).unwrap().strategy,
        RetryStrategy::Smart
    );
    assert_eq!(
        resolve_with(base(), &debit("us_bank_account"), ALL, true)
            .unwrap()
            .strategy,
        RetryStrategy::Heuristic
    );
}

#[test]
fn best_available_falls_back_to_the_default_policy_without_smart() {
    let only = &[RetryStrategy::None, RetryStrategy::Scheduled];
    let resolved = resolve_with(base(), &card(), only, true).unwrap();
    assert_eq!(resolved.strategy, RetryStrategy::Scheduled);
    assert_eq!(resolved.policy.as_deref(), Some("stripe_recommended"));
}

#[test]
fn best_available_with_orchestration_uses_the_default_policy() {
    let body = with(
        base(),
        &["payments_orchestration"],
        json!({"enabled": true}),
    );
    let resolved = resolve_with(body, &card(), ALL, true).unwrap();
    assert_eq!(resolved.strategy, RetryStrategy::Scheduled);
}

#[test]
fn a_named_policy_resolves_to_scheduled() {
    let body = with(
        base(),
        &["retry_details"],
        json!({"retry_policy": "weekly"}),
    );
    let resolved = resolve_with(body, &card(), ALL, true).unwrap();
    assert_eq!(resolved.strategy, RetryStrategy::Scheduled);
    assert_eq!(resolved.policy.as_deref(), Some("weekly"));
}

#[test]
fn a_strategy_without_an_installed_policy_is_refused_clearly() {
    let only = &[RetryStrategy::None, RetryStrategy::Scheduled];
    let err = resolve_with(strategy("smart"), &card(), only, true).unwrap_err();
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest);
    assert!(err.message.contains("smart"), "{err}");
}
