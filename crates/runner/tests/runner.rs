//! The runner: configuration loading and a batch run end to end.

mod common;

use common::{repo_path, write};

use std::path::PathBuf;

use offsession_runner::{batch, config};

fn repo_config() -> PathBuf {
    repo_path("config/default.toml")
}

const MINIMAL: &str = r#"
[processor]
type = "mock"

[run]
input = "batch.jsonl"
"#;

#[test]
fn the_shipped_config_loads() {
    let config = config::load(&repo_config()).unwrap();
    assert!(config.retry_policies.contains_key("stripe_recommended"));
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.toml",
        &format!("{MINIMAL}\n[engine]\nconcurency = 3\n"),
    );
    let err = config::load(&path).unwrap_err().to_string();
    assert!(err.contains("concurency"), "{err}");
    let path = write(
        &dir,
        "d.toml",
        "[processor]\ntype = \"mock\"\nfault_rat = 0.1\n",
    );
    let err = config::load(&path).unwrap_err().to_string();
    assert!(err.contains("fault_rat"), "{err}");
}

#[test]
fn bad_values_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[engine]\nconcurrency = \"many\"\n", "concurrency"),
        ("[engine]\nlease = \"5 minutes\"\n", "engine.lease"),
        ("[engine]\nconcurrency = 0\n", "engine.concurrency"),
        ("[run]\nstart = \"yesterday\"\n", "run.start"),
        ("[retry_policies.x]\noffsets = [\"3d\", \"1d\"]\nwindow = \"5d\"\n", "retry_policies.x"),
        ("[engine]\ndefault_retry_policy = \"nope\"\n[retry_policies.x]\noffsets = [\"1d\"]\nwindow = \"5d\"\n", "engine.default_retry_policy"),
    ] {
        let path = write(&dir, "c.toml", &format!("[processor]\ntype = \"mock\"\n{text}"));
        let err = config::load(&path).unwrap_err().to_string();
        assert!(err.contains(key), "expected `{key}` in: {err}");
    }
    let path = write(&dir, "p.toml", "[processor]\ntype = \"paypal\"\n");
    let err = config::load(&path).unwrap_err().to_string();
    assert!(err.contains("paypal"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", MINIMAL);
    // Only this test sets this variable.
    std::env::set_var("OFFSESSION_ENGINE__INSTANCE_ID", "from-env");
    std::env::set_var("OFFSESSION_TEST_POSTGRES_URL_UNRELATED", "not config");
    let config = config::load(&path).unwrap();
    std::env::remove_var("OFFSESSION_ENGINE__INSTANCE_ID");
    std::env::remove_var("OFFSESSION_TEST_POSTGRES_URL_UNRELATED");
    assert_eq!(config.engine.instance_id, "from-env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_to_a_correct_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", MINIMAL);
    let line = |pm: &str, extra: &str| {
        format!(
            r#"{{"amount":{{"value":1000,"currency":"usd"}},"cadence":"recurring","customer":"cus_1","payment_method":"{pm}","retry_details":{{"retry_policy":"stripe_recommended"}}{extra}}}"#
        )
    };
    let lines = [
        line("pm_card_visa", ""),
        line("pm_card_visa", ""),
        line("pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter2", ""),
        line("pm_card_visa_chargeDeclinedInsufficientFunds", ""),
        line("pm_card_visa_chargeDeclinedLostCard", ""),
        line("pm_card_chargeDeclinedExpiredCard", ""),
        String::new(),
        line("pm_card_visa", r#","colour":"blue""#),
        r#"{"amount":{"value":10,"currency":"usd"},"cadence":"recurring","customer":"c","payment_method":"pm_card_visa"}"#.to_owned(),
        "not json".to_owned(),
    ];
    write(&dir, "batch.jsonl", &lines.join("\n"));
    let config = config::load(&path).unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.submitted, 9);
    assert_eq!(summary.accepted, 6);
    let invalid: Vec<_> = summary
        .invalid
        .iter()
        .map(|l| (l.line, l.code.as_str()))
        .collect();
    assert_eq!(
        invalid,
        [
            (8, "osp_generic_invalid_request"),
            (9, "osp_amount_too_small"),
            (10, "osp_generic_invalid_request")
        ]
    );
    assert_eq!(summary.statuses["succeeded"], 3);
    assert_eq!(summary.statuses["failed"], 3);
    assert_eq!(summary.failure_reasons["retries_exhausted"], 1);
    assert_eq!(summary.failure_reasons["rejected_by_partner"], 1);
    assert_eq!(summary.failure_reasons["no_valid_payment_method"], 1);
    assert_eq!(summary.first_attempt_failures, 4);
    assert_eq!(summary.recovered_by_retry, 1);
    // 2 + 3 (recovering) + 8 (exhausted) + 1 + 1.
    assert_eq!(summary.attempts, 15);
    assert!(summary.render().contains("recovered by retry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_batch_settles_every_payment() {
    let path = repo_config();
    let config = config::load(&path).unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.submitted, 3000);
    let settled: u64 = ["succeeded", "failed", "canceled"]
        .iter()
        .filter_map(|s| summary.statuses.get(*s))
        .sum();
    assert_eq!(settled, summary.accepted, "{}", summary.render());
    assert!(summary.recovered_by_retry > 0);
}

#[test]
fn the_runner_selects_the_stripe_processor_from_config() {
    let example = repo_path("config/stripe.example.toml");
    let config = config::load(&example).unwrap();
    assert!(matches!(
        config.processor,
        Some(config::ProcessorConfig::Stripe(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "s.toml",
        "[processor]\ntype = \"stripe\"\nsecret_key_env = \"OFFSESSION_RUNNER_TEST_NO_SUCH_KEY\"\n",
    );
    let config = config::load(&path).unwrap();
    let err = offsession_runner::wiring::build(
        &path,
        &config,
        std::sync::Arc::new(offsession_core::SystemClock),
        std::sync::Arc::new(offsession_core::DiscardEvents),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("processor.secret_key_env")
            && err.contains("OFFSESSION_RUNNER_TEST_NO_SUCH_KEY"),
        "{err}"
    );

    let path = write(
        &dir,
        "t.toml",
        "[processor]\ntype = \"stripe\"\nsecret_key = \"sk_test_in_file_123\"\n",
    );
    let config = config::load(&path).unwrap();
    assert!(
        !format!("{config:?}").contains("in_file_123"),
        "the key is redacted in Debug"
    );
    let wired = offsession_runner::wiring::build(
        &path,
        &config,
        std::sync::Arc::new(offsession_core::SystemClock),
        std::sync::Arc::new(offsession_core::DiscardEvents),
    )
    .unwrap();
    assert!(format!("{:?}", wired.engine).contains("stripe"));
}
