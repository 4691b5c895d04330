//! Processes for the crash tests: the fake Stripe in its own process (its ledger
//! outlives every worker), `offsession submit`, `worker` and `status`, and the store
//! read back directly.
#![allow(dead_code)]

pub mod hooks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use offsession::core::{PaymentRecord, PaymentStatus, Store};
use serde_json::Value;

pub const KEY: &str = "sk_test_fake_0123456789";

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `offsession` binary under test.
pub fn offsession() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_offsession"))
}

/// The fake Stripe binary: built by `cargo test --workspace` beside `offsession`
/// (its own tests run it); built here when this test runs alone.
pub fn fake_stripe() -> PathBuf {
    let path = offsession().with_file_name("offsession-fake-stripe");
    if !path.exists() {
        let release = offsession()
            .parent()
            .is_some_and(|dir| dir.ends_with("release"));
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args([
            "build",
            "-p",
            "offsession-fake-stripe",
            "--bin",
            "offsession-fake-stripe",
        ]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building offsession-fake-stripe failed");
    }
    path
}

/// A scratch folder, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "offsession-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process killed on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status (None: still running after `within`).
    pub fn sigterm(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// The fake Stripe, started with `args`; its address.
pub fn start_fake(dir: &Scratch, args: &[&str]) -> (Proc, String) {
    let file = dir.path("fake.addr");
    let child = Command::new(fake_stripe())
        .arg("--addr-file")
        .arg(&file)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the fake Stripe");
    let fake = Proc {
        child: Some(child),
        name: "fake".into(),
    };
    let started = Instant::now();
    loop {
        if let Ok(addr) = std::fs::read_to_string(&file) {
            return (fake, addr);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the fake wrote no address"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (30 s at most) until something listens on loopback `port`.
pub fn wait_for_listener(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no listener");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fake's ledger.
pub async fn ledger(addr: &str) -> Value {
    reqwest::get(format!("http://{addr}/ledger"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Fast retries and short leases, so that weeks of schedule fit in seconds.
pub fn worker_config(fake: &str, store: &str, schema: &str, instance: &str) -> String {
    format!(
        r#"
[engine]
instance_id = "{instance}"
lease = "2s"
replay_backoff = ["1s", "1s", "2s"]
concurrency = 64
claim_batch = 128
default_retry_policy = "fast"

[retry_policies.fast]
offsets = ["1s", "3s", "5s"]
window = "20s"

[processor]
type = "stripe"
id = "stripe"
secret_key = "{KEY}"
api_base = "http://{fake}"
connect_timeout = "1s"
request_timeout = "1s"
max_network_retries = 0
payment_method_types = ["card"]

[store]
url = "{store}"
schema = "{schema}"
max_connections = 8

[worker]
poll_interval = "100ms"
heartbeat_interval = "500ms"
instance_timeout = "2s"
shutdown_deadline = "10s"
"#
    )
}

/// Writes `n` create requests (customers `cus_<i>`, methods `pm_<i>`) from `first`.
pub fn write_batch(path: &Path, first: usize, n: usize) {
    let mut text = String::new();
    for i in first..first + n {
        text.push_str(&format!(
            "{{\"amount\":{{\"value\":{},\"currency\":\"usd\"}},\"cadence\":\"recurring\",\"customer\":\"cus_{i:06}\",\"payment_method\":\"pm_{i:06}\",\"retry_details\":{{\"retry_policy\":\"fast\"}}}}\n",
            1_000 + i
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// Runs `offsession <args>` to completion; (status, stdout, stderr).
pub fn run(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(offsession())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running offsession");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `submit` until every line is stored (a line refused with `api_error` — the store
/// was unreachable — is submitted again with the rest of the file: nothing doubles).
pub fn submit(config: &Path, input: &Path) -> Value {
    for _ in 0..20 {
        let (status, stdout, stderr) = run(&[
            "submit",
            "--config",
            config.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ]);
        if status.success() {
            let report: Value = serde_json::from_str(&stdout).unwrap();
            let invalid = report["invalid"].as_array().unwrap();
            if invalid.is_empty() {
                return report;
            }
            assert!(
                invalid.iter().all(|line| line["code"] == "api_error"),
                "lines refused: {invalid:?}"
            );
        } else {
            eprintln!("submit failed, again: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("submit never stored every line");
}

/// Starts `offsession worker` with `config`, logging to `log`.
pub fn start_worker(config: &Path, log: &Path, name: &str) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(offsession())
        .args(["worker", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting a worker");
    Proc {
        child: Some(child),
        name: name.into(),
    }
}

/// Every stored payment.
pub async fn records(store: &dyn Store) -> Vec<PaymentRecord> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(1_000, after.as_deref()).await.unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        after = Some(last.payment.id.clone());
        all.extend(page);
    }
}

/// Payments by status.
pub fn by_status(records: &[PaymentRecord]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        *counts.entry(record.payment.status.as_str()).or_default() += 1;
    }
    counts
}

/// What the crash tests check at the end, printed for the closing note.
pub fn check_exactly_once(records: &[PaymentRecord], ledger: &Value) -> String {
    let unsettled: Vec<_> = records
        .iter()
        .filter(|r| !r.payment.status.is_terminal())
        .map(|r| format!("{} {}", r.payment.id, r.payment.status.as_str()))
        .collect();
    assert!(unsettled.is_empty(), "not terminal: {unsettled:?}");
    let mut charges: BTreeMap<String, usize> = BTreeMap::new();
    for charge in ledger["charges"].as_array().unwrap() {
        *charges
            .entry(charge["payment_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let doubled: Vec<_> = charges.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "charged more than once: {doubled:?}");
    let charged: BTreeSet<&str> = charges.keys().map(String::as_str).collect();
    let succeeded: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.payment.status == PaymentStatus::Succeeded)
        .map(|r| r.payment.id.as_str())
        .collect();
    let only_charged: Vec<_> = charged.difference(&succeeded).collect();
    let only_succeeded: Vec<_> = succeeded.difference(&charged).collect();
    assert!(
        only_charged.is_empty() && only_succeeded.is_empty(),
        "ledger and store disagree: charged but not succeeded {only_charged:?}, succeeded but not charged {only_succeeded:?}"
    );
    let held: Vec<_> = records
        .iter()
        .filter(|r| r.lease.is_some())
        .map(|r| r.payment.id.as_str())
        .collect();
    assert!(held.is_empty(), "leases left on settled payments: {held:?}");
    format!(
        "{} payments: {:?}; {} charged in the ledger, none twice; ledger counters {}",
        records.len(),
        by_status(records),
        charged.len(),
        ledger["counters"]
    )
}

/// A small xorshift, seeded from the clock and printed, so a failing run repeats.
pub struct Rng(u64);

impl Rng {
    pub fn from_clock(what: &str) -> Rng {
        let seed = std::env::var("OFFSESSION_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("{what}: seed {seed} (OFFSESSION_CHAOS_SEED={seed} repeats it)");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
