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
        // Issue 8, item 8: each of these was accepted and then spun, stalled or
        // silently switched something off.
        ("[engine]\nlease = \"0s\"\n", "engine.lease"),
        ("[engine]\nlease = \"500ms\"\n", "engine.lease"),
        ("[engine]\nreplay_backoff = []\n", "engine.replay_backoff"),
        ("[engine]\nreplay_backoff = [\"0s\"]\n", "engine.replay_backoff"),
        ("[engine]\nmax_replays = 0\n", "engine.max_replays"),
        ("[engine]\nreplay_deadline = \"0s\"\n", "engine.replay_deadline"),
        ("[engine]\nauthorization_validity = \"0s\"\n", "engine.authorization_validity"),
        ("[run]\nhorizon = \"0s\"\n", "run.horizon"),
        ("[circuit_breaker]\nfailure_rate = -0.5\n", "circuit_breaker"),
        ("[circuit_breaker]\nfailure_rate = 1.5\n", "circuit_breaker"),
        ("[circuit_breaker]\nopen_for = \"0s\"\n", "circuit_breaker"),
        ("[circuit_breaker]\nmin_calls = 0\n", "circuit_breaker"),
        ("[run]\nstart = \"yesterday\"\n", "run.start"),
        ("[retry_policies.x]\noffsets = [\"3d\", \"1d\"]\nwindow = \"5d\"\n", "retry_policies.x"),
        ("[engine]\ndefault_retry_policy = \"nope\"\n[retry_policies.x]\noffsets = [\"1d\"]\nwindow = \"5d\"\n", "engine.default_retry_policy"),
        // Two endpoints of one URL would share (and move) one delivery position.
        ("[[webhooks]]\nurl = \"https://hooks.example/a\"\nsecret = \"whsec_12345678\"\n[[webhooks]]\nurl = \"https://hooks.example/a\"\nsecret = \"whsec_87654321\"\nenabled_events = [\"v2.payments.off_session_payment.failed\"]\n", "webhooks[1].url"),
    ] {
        let path = write(&dir, "c.toml", &format!("[processor]\ntype = \"mock\"\n{text}"));
        let err = config::load(&path).map(|_| ()).expect_err(text).to_string();
        assert!(err.contains(key), "expected `{key}` in: {err}");
    }
    let path = write(&dir, "p.toml", "[processor]\ntype = \"paypal\"\n");
    let err = config::load(&path).unwrap_err().to_string();
    assert!(err.contains("paypal"), "{err}");
}

#[test]
fn processor_values_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("type = \"mock\"\nrate_limit = { per_second = 0 }\n", "processor.rate_limit"),
        ("type = \"mock\"\nrate_limit = { per_second = 5, burst = 0 }\n", "processor.rate_limit"),
        ("type = \"mock\"\nenforce_rate_limit = 0\n", "processor.enforce_rate_limit"),
        ("type = \"mock\"\nlatency = { kind = \"uniform\", min_millis = 9, max_millis = 1 }\n", "processor.latency"),
        ("type = \"mock\"\nlatency = { kind = \"log_normal\", median_millis = -1.0, sigma = 0.5 }\n", "processor.latency"),
        ("type = \"stripe\"\napi_base = \"http://api.stripe.com\"\n", "processor.api_base"),
        ("type = \"stripe\"\napi_base = \"ftp://127.0.0.1\"\n", "processor.api_base"),
        ("type = \"stripe\"\napi_base = \"https://api.stripe.com/?x=1\"\n", "processor.api_base"),
        ("type = \"stripe\"\napi_base = \"not a url\"\n", "processor.api_base"),
        ("type = \"stripe\"\nrequest_timeout = \"0s\"\n", "processor.request_timeout"),
        ("type = \"stripe\"\nconnect_timeout = \"0s\"\n", "processor.connect_timeout"),
        ("type = \"stripe\"\nrate_limit = { per_second = 0 }\n", "processor.rate_limit"),
        ("type = \"stripe\"\n[engine]\nid_seed = 7\n", "engine.id_seed"),
    ] {
        let path = write(&dir, "p.toml", &format!("[processor]\n{text}"));
        let err = config::load(&path).map(|_| ()).expect_err(text).to_string();
        assert!(err.contains(key), "expected `{key}` in: {err}");
    }
    for ok in [
        "type = \"stripe\"\napi_base = \"http://127.0.0.1:12111\"\n",
        "type = \"stripe\"\napi_base = \"http://localhost:12111\"\n",
        "type = \"stripe\"\napi_base = \"https://api.stripe.com\"\n",
    ] {
        let path = write(&dir, "q.toml", &format!("[processor]\n{ok}"));
        config::load(&path).expect(ok);
    }
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
async fn bad_lines_are_reported_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", MINIMAL);
    let good = r#"{"amount":{"value":1000,"currency":"usd"},"cadence":"recurring","customer":"cus_1","payment_method":"pm_card_visa"}"#;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(good.as_bytes());
    bytes.extend_from_slice(b"\n{\"amount\": \"\xff\xfe\"}\n");
    bytes.extend_from_slice(
        br#"[{"value":1000,"currency":"usd"},"recurring","cus_1","pm_card_visa"]"#,
    );
    bytes.push(b'\n');
    bytes.extend_from_slice(good.as_bytes());
    std::fs::write(dir.path().join("batch.jsonl"), bytes).unwrap();
    let config = config::load(&path).unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.submitted, 4);
    assert_eq!(summary.accepted, 2, "{}", summary.render());
    let invalid: Vec<_> = summary
        .invalid
        .iter()
        .map(|l| (l.line, l.code.as_str()))
        .collect();
    assert_eq!(
        invalid,
        [
            (2, "osp_generic_invalid_request"),
            (3, "osp_generic_invalid_request")
        ]
    );
    assert!(summary.invalid[0].message.contains("UTF-8"));
    assert!(summary.invalid[1].message.contains("JSON object"));
    assert_eq!(summary.unsettled(), 0);
}

#[tokio::test]
async fn a_state_path_in_a_missing_folder_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.toml",
        &format!("{MINIMAL}\n[smart]\nstate_path = \"no/such/folder/state.json\"\n"),
    );
    let config = config::load(&path).unwrap();
    let err = offsession_runner::wiring::build(
        &path,
        &config,
        std::sync::Arc::new(offsession_core::SystemClock),
        std::sync::Arc::new(offsession_core::DiscardEvents),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("smart.state_path") && err.contains("does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_settle_reports_it() {
    // Every answer is lost: the payment ends after its replays, flagged as an
    // unknown outcome, instead of being replayed forever.
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.toml",
        "[engine]\nmax_replays = 3\n[processor]\ntype = \"mock\"\nunknown_rate = 1.0\n[run]\ninput = \"batch.jsonl\"\n",
    );
    write(
        &dir,
        "batch.jsonl",
        r#"{"amount":{"value":1000,"currency":"usd"},"cadence":"recurring","customer":"cus_1","payment_method":"pm_card_visa"}"#,
    );
    let config = config::load(&path).unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.statuses["failed"], 1, "{}", summary.render());
    assert_eq!(summary.ended_by_faults, 1);
    assert_eq!(summary.outcome_unknown, 1);
    assert_eq!(summary.stuck, 0);
    assert_eq!(summary.unsettled(), 1);
    assert!(summary.render().contains("ended by faults"));
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

#[tokio::test]
async fn the_runner_selects_the_stripe_processor_from_config() {
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
    .await
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
    .await
    .unwrap();
    assert!(format!("{:?}", wired.engine).contains("stripe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_on_the_default_config_and_settles_every_payment() {
    use offsession_runner::bench;
    let dir = tempfile::tempdir().unwrap();
    let path = repo_path("config/default.toml");
    let mut stores = vec![
        "memory:".to_owned(),
        format!("sqlite://{}", dir.path().join("bench.db").display()),
    ];
    stores.extend(offsession_store::conformance::test_postgres_url(
        "Postgres bench",
    ));
    for (store, overlap) in stores
        .iter()
        .flat_map(|s| [(s.clone(), false), (s.clone(), true)])
    {
        let durable = store != "memory:";
        // The SQLite bench writes a new file each run.
        let store = if overlap {
            store.replace("bench.db", "bench-overlap.db")
        } else {
            store
        };
        let report = bench::run(&bench::BenchOptions {
            config: config::load(&path).unwrap(),
            config_path: path.clone(),
            payments: 500,
            concurrency: 16,
            latency: offsession_mock::LatencyModel::Fixed { millis: 0 },
            rate_limit: None,
            store: store.clone(),
            instances: 1,
            overlap,
        })
        .await
        .unwrap();
        // Settling during the intake still settles every payment, and sends each one
        // attempt (the bench's mock has no faults and no rate limit).
        assert_eq!(report.succeeded, 500, "{store} overlap {overlap}");
        assert_eq!(report.processor_requests, 500, "{store} overlap {overlap}");
        // The engine's own checks accept the bench's settings (a 50 ms replay wait was
        // refused once, and `bench` failed before sending anything).
        assert_eq!(report.payments, 500, "{store}");
        assert!(report.settled_per_second > 0.0, "{report:?}");
        assert_eq!(report.rate_limited, 0);
        assert!(report.cpu_per_payment_us.is_some(), "{report:?}");
        let baseline = durable && !overlap;
        assert_eq!(report.baseline_per_second.is_some(), baseline, "{report:?}");
        assert_eq!(report.baseline_ratio.is_some(), baseline, "{report:?}");
    }
}

/// `serve` on a durable store refuses seeded ids, as `worker` does: after a restart, or
/// from a second instance, they would repeat payment ids and attempt keys. On
/// `memory:` nothing outlives the process, so it accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_durable_store_refuses_seeded_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "s.toml",
        &format!(
            "[engine]\nid_seed = 7\n[processor]\ntype = \"mock\"\n[store]\nurl = \"sqlite://{}\"\n[server]\nlisten = \"127.0.0.1:0\"\napi_key_hashes = [\"sha256:{}\"]\n",
            dir.path().join("s.db").display(),
            "0".repeat(64)
        ),
    );
    let config = config::load(&path).unwrap();
    let err = offsession_runner::serve::run(&path, &config, std::future::ready(()))
        .await
        .map(|_| ())
        .expect_err("seeded ids on SQLite")
        .to_string();
    assert!(err.contains("engine.id_seed"), "{err}");
    assert!(
        !dir.path().join("s.db").exists(),
        "refused before the store was opened"
    );
}
