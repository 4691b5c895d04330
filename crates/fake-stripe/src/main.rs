//! `offsession-fake-stripe`: the fake Stripe of [`offsession_fake_stripe`] as its own
//! process. Prints `listening on ADDR` and, with `--addr-file`, writes the address
//! there (atomically) once it accepts connections; stops on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use offsession_fake_stripe::{Fake, FakeConfig};

/// A fake Stripe PaymentIntents API on loopback with a ledger of charges.
#[derive(Debug, Parser)]
#[command(name = "offsession-fake-stripe", version, about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the bound address to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Seeds every injected decision.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The secret key requests must carry.
    #[arg(long, default_value = "sk_test_fake_0123456789")]
    api_key: String,
    /// Share of payments whose first attempt declines.
    #[arg(long, default_value_t = 0.0)]
    decline_rate: f64,
    /// Share of later attempts that succeed.
    #[arg(long, default_value_t = 1.0)]
    recover_rate: f64,
    /// Share of creates answered 500 before running.
    #[arg(long, default_value_t = 0.0)]
    fault_5xx_rate: f64,
    /// Share of creates charged whose answer is then held for `--hang-ms`.
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
    /// How long a held answer waits, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    hang_ms: u64,
    /// Creates per second above which 429 is answered.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Every create's answer waits this long, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

fn share(name: &str, value: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("--{name} must be between 0 and 1 (got {value})"))
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let config = FakeConfig {
        seed: args.seed,
        api_key: args.api_key,
        decline_rate: share("decline-rate", args.decline_rate)?,
        recover_rate: share("recover-rate", args.recover_rate)?,
        fault_5xx_rate: share("fault-5xx-rate", args.fault_5xx_rate)?,
        timeout_rate: share("timeout-rate", args.timeout_rate)?,
        hang: Duration::from_millis(args.hang_ms),
        rate_limit: match args.rate_limit {
            Some(0) => return Err("--rate-limit must be at least 1".into()),
            other => other,
        },
        latency: Duration::from_millis(args.latency_ms),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    println!("listening on {bound}");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    Fake::new(config)
        .serve(listener, shutdown)
        .await
        .map_err(|e| format!("serving: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match serve(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
