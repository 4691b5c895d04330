//! A loopback load generator for `offsession serve`: creates per second and latency.
//!
//! ```sh
//! cargo run --release --example load -- --url http://127.0.0.1:4242 --key sk_test_… \
//!     [--concurrency 64] [--seconds 10] [--rate N]
//! ```
//!
//! Without `--rate` it is closed-loop: `--concurrency` clients each send the next
//! create as soon as the last is answered, which finds the maximum rate. With `--rate`
//! it is open-loop: creates are scheduled at a fixed interval, `--concurrency`
//! connections take them in turn, and each latency is measured from its scheduled
//! time, so a stalled server is not hidden by the client waiting for it (coordinated
//! omission), as wrk2 and oha's rate mode do. Every create is a new payment (its own
//! customer and card, a `pm_card_visa__…` of the mock processor). Prints JSON.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    url: String,
    key: String,
    concurrency: usize,
    seconds: f64,
    rate: Option<f64>,
}

fn args() -> Args {
    let mut args = Args {
        url: "http://127.0.0.1:4242".into(),
        key: std::env::var("OFFSESSION_API_KEY").unwrap_or_default(),
        concurrency: 64,
        seconds: 10.0,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value,
            "--key" => args.key = value,
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency"),
            "--seconds" => args.seconds = value.parse().expect("--seconds"),
            "--rate" => args.rate = Some(value.parse().expect("--rate")),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        !args.key.is_empty(),
        "--key or OFFSESSION_API_KEY is required"
    );
    args
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Sends one create; on failure, what failed: `status 503`, `connect: <cause>` or
/// `request: <cause>` with the innermost error's text (e.g. the operating system's),
/// or `body`.
async fn create(client: &reqwest::Client, url: &str, key: &str) -> Result<(), String> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let run = std::process::id();
    let body = format!(
        r#"{{"amount":{{"value":1000,"currency":"usd"}},"cadence":"recurring","customer":"cus_load_{run}_{n}","payment_method":"pm_card_visa__load_{run}_{n}"}}"#
    );
    match client
        .post(format!("{url}/v2/payments/off_session_payments"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => {
            response.bytes().await.map(drop).map_err(|_| "body".into())
        }
        Ok(response) => Err(format!("status {}", response.status().as_u16())),
        Err(e) => {
            let stage = if e.is_connect() { "connect" } else { "request" };
            Err(format!("{stage}: {}", innermost(&e)))
        }
    }
}

/// The last cause of a client error, as text.
fn innermost(error: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = error;
    while let Some(cause) = last.source() {
        last = cause;
    }
    last.to_string()
}

/// Failed creates by what failed.
type Failures = Arc<Mutex<std::collections::BTreeMap<String, u64>>>;

fn count(failures: &Failures, why: String) {
    *failures.lock().unwrap().entry(why).or_default() += 1;
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = args();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(16))
        .build()
        .unwrap();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let failed: Failures = Arc::default();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    match args.rate {
        None => {
            let tasks: Vec<_> = (0..args.concurrency)
                .map(|_| {
                    let (client, url, key) = (client.clone(), args.url.clone(), args.key.clone());
                    let (latencies, failed) = (latencies.clone(), failed.clone());
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        while Instant::now() < until {
                            let sent = Instant::now();
                            match create(&client, &url, &key).await {
                                Ok(()) => mine.push(sent.elapsed()),
                                Err(why) => count(&failed, why),
                            }
                        }
                        latencies.lock().unwrap().extend(mine);
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
        Some(rate) => {
            // `--concurrency` connections take the scheduled sends in turn (as wrk2
            // does): a send waits for a free connection, and its latency still counts
            // from its scheduled time.
            let interval = Duration::from_secs_f64(1.0 / rate);
            let next = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..args.concurrency)
                .map(|_| {
                    let (client, url, key) = (client.clone(), args.url.clone(), args.key.clone());
                    let (latencies, failed, next) =
                        (latencies.clone(), failed.clone(), next.clone());
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            let scheduled = started + interval.mul_f64(n as f64);
                            if scheduled >= until {
                                break;
                            }
                            tokio::time::sleep_until(scheduled.into()).await;
                            match create(&client, &url, &key).await {
                                Ok(()) => mine.push(scheduled.elapsed()),
                                Err(why) => count(&failed, why),
                            }
                        }
                        latencies.lock().unwrap().extend(mine);
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    let failures = failed.lock().unwrap().clone();
    println!(
        "{}",
        serde_json::json!({
            "mode": if args.rate.is_some() { "open-loop" } else { "closed-loop" },
            "rate": args.rate,
            "concurrency": args.concurrency,
            "seconds": elapsed,
            "created": latencies.len(),
            "failed": failures.values().sum::<u64>(),
            "failures": failures,
            "creates_per_second": latencies.len() as f64 / elapsed,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "max_ms": percentile(&latencies, 1.0),
        })
    );
}
