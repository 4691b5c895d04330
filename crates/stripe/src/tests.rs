//! Unit tests of the adapter's private parts: key redaction, quoting, URL
//! encoding, backoff.

use std::time::Duration;

use super::*;

#[test]
fn the_secret_key_never_prints() {
    let key = SecretKey::new("sk_test_51Habcdefghijklmnop");
    assert_eq!(format!("{key:?}"), "SecretKey(sk_…redacted)");
    assert!(!format!("{key}").contains("51Habc"));
    let config = StripeConfig::new("stripe", key);
    assert!(!format!("{config:?}").contains("51Habc"));
}

#[test]
fn quote_caps_on_a_char_boundary_and_escapes_control_characters() {
    assert_eq!(quote("card declined"), "card declined");
    let long = "é".repeat(10_000);
    let quoted = quote(&long);
    assert!(quoted.ends_with("…(truncated)"));
    assert_eq!(
        quoted.chars().count(),
        MAX_QUOTED_CHARS + "…(truncated)".len() - 2
    );
    assert!(quoted.starts_with(&"é".repeat(MAX_QUOTED_CHARS)));
    assert_eq!(quote("a\nb\u{0}"), "a\\nb\\u{0}");
    let controls = quote(&"\u{1}".repeat(10_000));
    assert!(
        controls.chars().count() <= MAX_QUOTED_CHARS + 12,
        "{controls}"
    );
}

#[test]
fn a_pasted_secret_key_is_recognized_and_a_variable_name_is_not() {
    for secret in [
        "sk_test_51Habcdefghijklmnop",
        "sk_live_51Habcdefghijklmnop",
        "rk_live_abc",
        "pk_test_abc",
        " sk_live_abc ",
        "whsec_abc",
        &"A".repeat(65),
        "not a name",
        "STRIPE-KEY",
        "key=value",
        "abc$def",
    ] {
        assert!(looks_like_secret(secret), "{secret}");
    }
    for name in [
        "STRIPE_SECRET_KEY",
        "STRIPE_TEST_SECRET_KEY",
        "stripe_key",
        "SK_ENV",
        &"A".repeat(64),
    ] {
        assert!(!looks_like_secret(name), "{name}");
    }
}

fn processor(api_base: &str) -> StripeProcessor {
    let mut config = StripeConfig::new("s", SecretKey::new("sk_test_x"));
    config.api_base = api_base.into();
    StripeProcessor::new(config).unwrap()
}

#[test]
fn every_segment_is_one_percent_encoded_segment_and_queries_are_form_encoded() {
    let p = processor("https://api.stripe.com");
    let url = p
        .url(
            &["v1", "payment_methods", "pm_1/../x?y=1#z %2F\n\u{7}é"],
            &[],
        )
        .unwrap();
    assert_eq!(
        url.as_str(),
        "https://api.stripe.com/v1/payment_methods/pm_1%2F..%2Fx%3Fy%3D1%23z%20%252F%0A%07%C3%A9"
    );
    assert_eq!(url.path_segments().unwrap().count(), 3);
    let url = p
        .url(
            &["v1", "setup_intents"],
            &[("payment_method", "pm_1&limit=1"), ("customer", "cus 1#x")],
        )
        .unwrap();
    assert_eq!(
        url.query(),
        Some("payment_method=pm_1%26limit%3D1&customer=cus+1%23x")
    );
    for bad in ["", ".", ".."] {
        assert!(
            p.url(&["v1", "payment_intents", bad], &[]).is_none(),
            "{bad:?}"
        );
    }
    // A base with a path prefix keeps it.
    let p = processor("http://127.0.0.1:9/stripe/");
    assert_eq!(
        p.url(&["v1", "payment_intents"], &[]).unwrap().as_str(),
        "http://127.0.0.1:9/stripe/v1/payment_intents"
    );
}

#[test]
fn backoff_grows_quadratically_with_jitter_and_a_cap() {
    let processor =
        StripeProcessor::new(StripeConfig::new("s", SecretKey::new("sk_test_x"))).unwrap();
    let first = processor.backoff("k", 1);
    assert!(
        first >= Duration::from_millis(500) && first < Duration::from_millis(1000),
        "{first:?}"
    );
    let third = processor.backoff("k", 3);
    assert!(
        third >= Duration::from_millis(2500) && third <= Duration::from_secs(5),
        "{third:?}"
    );
    assert_eq!(processor.backoff("k", 2), processor.backoff("k", 2));
}
