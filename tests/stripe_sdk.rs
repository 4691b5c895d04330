//! Stripe's official Python SDK drives `offsession serve` unchanged
//! (`tests/sdk/stripe_sdk_test.py`). Needs `OFFSESSION_TEST_PYTHON`: a Python with
//! `stripe==16.1.0a4` installed (`.ci/run` makes one); prints `skipped: …` without it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_stripe_python_sdk_drives_the_server() {
    let Ok(python) = std::env::var("OFFSESSION_TEST_PYTHON") else {
        println!("skipped: OFFSESSION_TEST_PYTHON is not set (a Python with stripe==16.1.0a4)");
        return;
    };
    let dir = Scratch::new("sdk");
    let port = free_port();
    let hook_port = free_port();
    let hook_port2 = free_port();
    let key = "sk_test_sdk_0123456789";
    let secret = "whsec_sdk_test_secret_0123";
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/worker.toml");
    let log = std::fs::File::create(dir.path("serve.log")).unwrap();
    let server = Command::new(offsession())
        .args(["serve", "--config", config])
        .env("OFFSESSION_API_KEY", key)
        .env("OFFSESSION_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "OFFSESSION_STORE__URL",
            format!("sqlite://{}", dir.path("sdk.db").display()),
        )
        .env(
            "OFFSESSION_WEBHOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook"),
        )
        .env("OFFSESSION_WEBHOOK_SECRET", secret)
        .env("OFFSESSION_WORKER__POLL_INTERVAL", "50ms")
        // The script expects each card's own outcome: the config's random faults
        // (1.5 % of attempts) would make a payment it waits for fail now and then.
        .env("OFFSESSION_PROCESSOR__FAULT_RATE", "0")
        .env("OFFSESSION_PROCESSOR__UNKNOWN_RATE", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Proc {
        child: Some(server),
        name: "serve".into(),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server did not listen: {}",
            std::fs::read_to_string(dir.path("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/stripe_sdk_test.py"
        ))
        .env("OFFSESSION_URL", format!("http://127.0.0.1:{port}"))
        .env("OFFSESSION_KEY", key)
        .env("WEBHOOK_PORT", hook_port.to_string())
        .env("WEBHOOK_PORT2", hook_port2.to_string())
        .env("WEBHOOK_SECRET", secret)
        .output()
        .expect("running the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let exit = server.sigterm(Duration::from_secs(20));
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path("serve.log")).unwrap_or_default()
    );
    assert!(
        exit.is_some_and(|s| s.success()),
        "serve on SIGTERM: {exit:?}"
    );
}
