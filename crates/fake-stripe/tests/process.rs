//! The fake as its own process: it writes its address, charges once per idempotency
//! key, injects what it is told to, and answers its ledger over HTTP.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const KEY: &str = "sk_test_fake_0123456789";

/// The fake's process, killed on drop (a failed assertion leaves nothing running).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> (Running, String) {
    let dir = std::env::temp_dir().join(format!("fake-stripe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("addr-{}", args.len()));
    let _ = std::fs::remove_file(&file);
    let child = Running(
        Command::new(env!("CARGO_BIN_EXE_offsession-fake-stripe"))
            .arg("--addr-file")
            .arg(&file)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        if let Ok(addr) = std::fs::read_to_string(&file) {
            return (child, addr);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no address");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn create(client: &reqwest::Client, addr: &str, key: &str, payment: &str) -> (u16, Value) {
    let response = client
        .post(format!("http://{addr}/v1/payment_intents"))
        .bearer_auth(KEY)
        .header("Idempotency-Key", key)
        .form(&[
            ("amount", "1000"),
            ("currency", "usd"),
            ("customer", "cus_1"),
            ("payment_method", "pm_1"),
            ("confirm", "true"),
            ("off_session", "true"),
            ("metadata[offsession_payment_id]", payment),
            ("metadata[offsession_attempt]", "1"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ledger(client: &reqwest::Client, addr: &str) -> Value {
    client
        .get(format!("http://{addr}/ledger"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_charges_once_and_the_ledger_shows_it() {
    let (_child, addr) = start(&[]);
    let client = reqwest::Client::new();
    let (status, first) = create(&client, &addr, "k1", "osp_1").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "succeeded");
    let (status, again) = create(&client, &addr, "k1", "osp_1").await;
    assert_eq!(status, 200);
    assert_eq!(
        again["id"], first["id"],
        "a replay answers the stored intent"
    );
    let ledger = ledger(&client, &addr).await;
    assert_eq!(ledger["charges"].as_array().unwrap().len(), 1);
    assert_eq!(ledger["charges"][0]["payment_id"], "osp_1");
    assert_eq!(ledger["counters"]["replays"], 1);
    // The payment method belongs to its customer and is set up off-session.
    let pm: Value = client
        .get(format!("http://{addr}/v1/payment_methods/pm_7"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pm["customer"], "cus_7");
}

#[tokio::test]
async fn injected_faults_charge_only_when_they_say_so() {
    let (_child, addr) = start(&[
        "--fault-5xx-rate",
        "0.3",
        "--timeout-rate",
        "0.3",
        "--hang-ms",
        "300",
        "--decline-rate",
        "0.5",
    ]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut answered_5xx = 0;
    let mut timed_out = 0;
    for n in 0..200 {
        let key = format!("key{n}");
        let payment = format!("osp_{n}");
        match client
            .post(format!("http://{addr}/v1/payment_intents"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", &key)
            .form(&[
                ("amount", "1000"),
                ("currency", "usd"),
                ("metadata[offsession_payment_id]", payment.as_str()),
                ("metadata[offsession_attempt]", "1"),
            ])
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 500 => answered_5xx += 1,
            Ok(_) => {}
            Err(e) if e.is_timeout() => timed_out += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let ledger = ledger(&reqwest::Client::new(), &addr).await;
    let counters = &ledger["counters"];
    assert_eq!(counters["faults_5xx"], answered_5xx);
    assert_eq!(counters["timeouts"], timed_out);
    assert!((40..80).contains(&answered_5xx), "{answered_5xx}");
    assert!(timed_out > 20, "{timed_out}");
    // Every charge is one payment's, and a 500 never charged.
    let charges = ledger["charges"].as_array().unwrap();
    assert_eq!(counters["charged"], charges.len());
    let declined = counters["declines"].as_u64().unwrap();
    assert_eq!(
        charges.len() as u64 + declined + answered_5xx,
        200,
        "each request charged, declined or failed before running"
    );
}

#[tokio::test]
async fn creates_over_the_rate_limit_get_429() {
    let (_child, addr) = start(&["--rate-limit", "20"]);
    let client = reqwest::Client::new();
    let mut limited = 0;
    for n in 0..60 {
        let (status, _) = create(&client, &addr, &format!("r{n}"), &format!("osp_{n}")).await;
        if status == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 30, "{limited} of 60 refused at 20/s");
    let ledger = ledger(&client, &addr).await;
    assert_eq!(ledger["counters"]["rate_limited"], limited);
}
