//! The adapter's configuration: read from TOML with the same defaults as
//! `StripeConfig::new`, unknown keys refused, every bad value refused by `check` with
//! the key named, and the secret key found without ever being shown.

use std::time::Duration;

use offsession_core::PaymentMethodType;
use offsession_stripe::{
    check_api_base, SecretKey, StripeClientError, StripeConfig, StripeConfigRefused,
    StripeProcessor,
};

fn from_toml(text: &str) -> Result<StripeConfig, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn an_empty_section_has_the_same_defaults_as_new() {
    let read = from_toml("").unwrap();
    let mut built = StripeConfig::new("stripe", SecretKey::new("sk_test_x"));
    built.secret_key = None;
    assert_eq!(read, built);
    assert_eq!(read, StripeConfig::default());
    assert_eq!(read.secret_key_env, "STRIPE_SECRET_KEY");
    assert_eq!(read.api_base, "https://api.stripe.com");
    assert_eq!(
        read.payment_method_types,
        [
            PaymentMethodType::Card,
            PaymentMethodType::UsBankAccount,
            PaymentMethodType::SepaDebit
        ]
    );
    read.check().unwrap();
}

#[test]
fn every_key_is_read_with_durations_as_text() {
    let read = from_toml(
        r#"
        id = "stripe_eu"
        secret_key = "sk_test_in_file"
        secret_key_env = "STRIPE_EU_KEY"
        api_base = "http://127.0.0.1:12111"
        stripe_version = "2024-06-20"
        connect_timeout = "2s"
        request_timeout = "1m"
        max_network_retries = 4
        retry_base = "1s"
        retry_cap = "30s"
        preflight_cache_ttl = "0s"
        misconfigured_cooldown = "1h"
        payment_method_types = ["card", "sepa_debit"]
        "#,
    )
    .unwrap();
    assert_eq!(read.id, "stripe_eu");
    assert_eq!(read.secret_key, Some(SecretKey::new("sk_test_in_file")));
    assert_eq!(read.secret_key_env, "STRIPE_EU_KEY");
    assert_eq!(read.api_base, "http://127.0.0.1:12111");
    assert_eq!(read.stripe_version, "2024-06-20");
    assert_eq!(read.connect_timeout, Duration::from_secs(2));
    assert_eq!(read.request_timeout, Duration::from_secs(60));
    assert_eq!(read.max_network_retries, 4);
    assert_eq!(read.retry_base, Duration::from_secs(1));
    assert_eq!(read.retry_cap, Duration::from_secs(30));
    assert_eq!(read.preflight_cache_ttl, Duration::ZERO);
    assert_eq!(read.misconfigured_cooldown, Duration::from_secs(3_600));
    assert_eq!(
        read.payment_method_types,
        [PaymentMethodType::Card, PaymentMethodType::SepaDebit]
    );
    read.check().unwrap();
    assert!(
        !format!("{read:?}").contains("in_file"),
        "the key is redacted in Debug"
    );
}

#[test]
fn unknown_keys_and_unitless_durations_are_refused() {
    let err = from_toml("request_timout = \"5s\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("request_timout"), "{err}");
    let err = from_toml("request_timeout = \"30\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("(ms, s, m, h, d or w)"), "{err}");
    let err = from_toml("request_timeout = 30").unwrap_err().to_string();
    assert!(err.contains("request_timeout"), "{err}");
}

fn refusal(edit: impl FnOnce(&mut StripeConfig)) -> StripeConfigRefused {
    let mut config = StripeConfig::new("stripe", SecretKey::new("sk_test_x"));
    edit(&mut config);
    config.check().unwrap_err()
}

#[test]
fn check_refuses_each_bad_value_naming_the_key() {
    let err = refusal(|c| c.connect_timeout = Duration::ZERO);
    assert_eq!(err.key, "connect_timeout");
    assert_eq!(err.to_string(), "`connect_timeout`: must be longer than 0s");
    assert_eq!(
        refusal(|c| c.request_timeout = Duration::ZERO).key,
        "request_timeout"
    );
    let err = refusal(|c| c.api_base = "http://api.stripe.com".into());
    assert_eq!(err.key, "api_base");
    assert!(err.message.contains("loopback"), "{err}");
    let err = refusal(|c| c.max_network_retries = 11);
    assert_eq!(err.key, "max_network_retries");
    assert_eq!(err.message, "must be at most 10 (got 11)");
    let err = refusal(|c| {
        c.payment_method_types
            .push(PaymentMethodType::from_name("crad"))
    });
    assert_eq!(err.key, "payment_method_types");
    assert!(err.message.contains("`crad` is not one of card"), "{err}");

    // The limits themselves pass, and a zero cache lifetime means no cache.
    let mut config = StripeConfig::new("stripe", SecretKey::new("sk_test_x"));
    config.max_network_retries = 10;
    config.preflight_cache_ttl = Duration::ZERO;
    config.check().unwrap();
}

#[test]
fn the_processor_is_not_built_from_a_config_check_refuses() {
    let mut config = StripeConfig::new("stripe", SecretKey::new("sk_test_x"));
    config.api_base = "https://api.stripe.com/?x=1".into();
    match StripeProcessor::new(config) {
        Err(StripeClientError::Config(err)) => assert_eq!(err.key, "api_base"),
        other => panic!("expected a refused config, got {other:?}"),
    }
}

#[test]
fn the_api_base_is_https_or_loopback_http_with_nothing_after_the_path() {
    for good in [
        "https://api.stripe.com",
        "https://api.stripe.com/",
        "https://proxy.example/stripe/",
        "http://127.0.0.1:12111",
        "http://localhost:12111",
        "http://[::1]:12111/v",
    ] {
        assert_eq!(check_api_base(good), Ok(()), "{good}");
    }
    for (bad, why) in [
        ("http://api.stripe.com", "loopback addresses only"),
        ("http://10.0.0.1", "loopback addresses only"),
        ("ftp://127.0.0.1", "scheme `ftp` is not https"),
        ("https://api.stripe.com/?x=1", "query or fragment"),
        ("https://api.stripe.com/#x", "query or fragment"),
        (
            "https://user:pw@api.stripe.com",
            "must not carry credentials",
        ),
        ("not a url", "is not a URL"),
        ("unix:/run/stripe.sock", "has no host"),
    ] {
        let err = check_api_base(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
    let err = check_api_base("https://user:pw@api.stripe.com").unwrap_err();
    assert!(!err.contains("pw"), "{err}");
}

fn with_env(name: &str) -> StripeConfig {
    StripeConfig {
        secret_key_env: name.into(),
        ..StripeConfig::default()
    }
}

#[test]
fn the_secret_key_comes_from_the_config_or_the_named_variable() {
    let explicit = StripeConfig::new("stripe", SecretKey::new("sk_test_explicit"));
    assert_eq!(
        explicit.resolve_secret_key().unwrap(),
        SecretKey::new("sk_test_explicit")
    );

    // Only this test sets this variable.
    let name = "OFFSESSION_STRIPE_CONFIG_TEST_KEY";
    std::env::set_var(name, "sk_test_from_env");
    assert_eq!(
        with_env(name).resolve_secret_key().unwrap(),
        SecretKey::new("sk_test_from_env")
    );
    // An explicit key wins over the variable.
    let mut both = with_env(name);
    both.secret_key = Some(SecretKey::new("sk_test_explicit"));
    assert_eq!(
        both.resolve_secret_key().unwrap(),
        SecretKey::new("sk_test_explicit")
    );
    std::env::set_var(name, " ");
    let err = with_env(name).resolve_secret_key().unwrap_err();
    assert_eq!(err.key, "secret_key_env");
    assert_eq!(
        err.message,
        format!("environment variable `{name}` is empty")
    );
    std::env::remove_var(name);

    let empty = StripeConfig::new("stripe", SecretKey::new(""));
    assert_eq!(empty.resolve_secret_key().unwrap_err().key, "secret_key");
}

#[test]
fn a_missing_variable_is_named_and_a_pasted_key_is_not_shown() {
    let name = "OFFSESSION_STRIPE_CONFIG_TEST_NO_SUCH_KEY";
    let err = with_env(name).resolve_secret_key().unwrap_err();
    assert_eq!(err.key, "secret_key_env");
    assert_eq!(
        err.to_string(),
        format!("`secret_key_env`: environment variable `{name}` is not set (or set `secret_key`)")
    );

    let pasted = "sk_live_51HpastedByMistake";
    let err = with_env(pasted).resolve_secret_key().unwrap_err();
    assert_eq!(err.key, "secret_key_env");
    assert_eq!(
        err.message,
        "must name an environment variable, and the value given looks like a secret key (not shown)"
    );
    assert!(!err.to_string().contains("pasted"), "{err}");

    // The processor is not built without a key, and says why.
    match StripeProcessor::new(with_env(name)) {
        Err(StripeClientError::Config(err)) => assert_eq!(err.key, "secret_key_env"),
        other => panic!("expected a missing key, got {other:?}"),
    }
}
