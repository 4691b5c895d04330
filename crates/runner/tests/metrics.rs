//! `/metrics`: the runner's Prometheus exposition, scraped over loopback.

mod common;

use common::{repo_path, write};
use std::io::Write;

use offsession_runner::{batch, config, exporter};

const CONFIG: &str = r#"
[[processors]]
type = "mock"
id = "flaky"
fault_rate = 1.0
rate_limit = { per_second = 5000, burst = 100 }

[[processors]]
type = "mock"
id = "steady"

[run]
input = "batch.jsonl"
"#;

/// A sample line: `name{labels} value` (labels optional).
fn valid_sample(line: &str) -> bool {
    let (name_and_labels, value) = match line.rsplit_once(' ') {
        Some(parts) => parts,
        None => return false,
    };
    let name_end = name_and_labels.find('{').unwrap_or(name_and_labels.len());
    let name = &name_and_labels[..name_end];
    let name_ok = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    let labels_ok = name_end == name_and_labels.len() || name_and_labels.ends_with('}');
    let value_ok = value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN");
    name_ok && labels_ok && value_ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_exposition_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", CONFIG);
    let lines: Vec<String> = (0..30)
        .map(|i| {
            format!(
                r#"{{"amount":{{"value":1500,"currency":"usd"}},"cadence":"recurring","customer":"cus_{i}","payment_method":"pm_card_visa_chargeDeclined_recoversAfter1__{i}","payments_orchestration":{{"enabled":{}}},"retry_details":{{"retry_policy":"stripe_recommended"}}}}"#,
                i % 2 == 0
            )
        })
        .collect();
    write(&dir, "batch.jsonl", &lines.join("\n"));
    let config = config::load(&path).unwrap();

    let handle = exporter::install().unwrap();
    let addr = exporter::serve("127.0.0.1:0".parse().unwrap(), handle)
        .await
        .unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.accepted, 30);

    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "offsession_payments_created_total",
        "offsession_attempts_total",
        "offsession_attempt_duration_seconds_bucket",
        "offsession_payments_terminal_total",
        "offsession_retries_scheduled_total",
        "offsession_rate_limit_wait_seconds_bucket",
        "offsession_cascade_failovers_total",
        "offsession_circuit_state",
    ] {
        assert!(body.contains(name), "`{name}` missing from:\n{body}");
    }
    assert!(
        body.contains(r#"offsession_cascade_failovers_total{from="flaky",to="steady"}"#),
        "{body}"
    );
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(valid_sample(line), "not an exposition sample: {line}");
        assert!(!line.contains("osp_"), "no ids in labels: {line}");
    }

    // promtool's own lint, where installed (Debian package `prometheus`).
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(_) => println!("skipped: promtool is not installed (apt-get install prometheus)"),
    }
}

#[test]
fn the_grafana_dashboard_only_queries_metrics_the_engine_emits() {
    let path = repo_path("config/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let emitted = [
        "offsession_payments_created_total",
        "offsession_attempts_total",
        "offsession_attempt_duration_seconds_bucket",
        "offsession_payments_terminal_total",
        "offsession_retries_scheduled_total",
        "offsession_pending_retries",
        "offsession_rate_limit_wait_seconds_bucket",
        "offsession_cascade_failovers_total",
        "offsession_circuit_state",
    ];
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 9);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("offsession_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(
                    emitted.contains(&name),
                    "panel `{}` queries `{name}`",
                    panel["title"]
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_metrics_listen_serves_and_settles() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.toml",
        "[processor]\ntype = \"mock\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[run]\ninput = \"batch.jsonl\"\n",
    );
    write(
        &dir,
        "batch.jsonl",
        r#"{"amount":{"value":1500,"currency":"usd"},"cadence":"recurring","customer":"cus_1","payment_method":"pm_card_visa"}"#,
    );
    let config = config::load(&path).unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.statuses["succeeded"], 1);

    let bad = write(
        &dir,
        "bad.toml",
        "[processor]\ntype = \"mock\"\n\n[metrics]\nlisten = \"nowhere\"\n",
    );
    let err = config::load(&bad).unwrap_err().to_string();
    assert!(err.contains("metrics.listen"), "{err}");
}
