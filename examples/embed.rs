//! A billing platform embedding offsession as a library: build an engine, submit a
//! subscription renewal, receive its events, and watch a declined renewal recover on
//! the scheduled retry, on a test clock.
//!
//! Run with `cargo run --example embed`.

use std::sync::Arc;
use std::time::Duration;

use offsession::core::events::FnSink;
use offsession::core::{Event, PaymentStatus, Timestamp};
use offsession::mock::{MockConfig, MockProcessor};
use offsession::store::MemoryStore;
use offsession::Engine;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Events would go to the platform's queue or webhook dispatcher; here, stdout.
    let events = Arc::new(FnSink(|event: Event| {
        println!(
            "  event {:<62} {} status={} attempts={}",
            event.event_type.as_str(),
            event.created,
            event.data.status,
            event.data.retry_details.attempts
        );
    }));
    let engine = Engine::builder()
        .processor(Arc::new(MockProcessor::new("mock", MockConfig::default())))
        .store(Arc::new(MemoryStore::new()))
        .events(events)
        .build()?;

    let start = Timestamp::parse_rfc3339("2026-03-01T08:00:00Z").ok_or("bad start time")?;
    let clock = engine.create_test_clock(start).await?;

    // A renewal whose card is short of funds twice before the customer's payday.
    let renewal = json!({
        "amount": {"value": 4900, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_acme_42",
        "payment_method": "pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter2",
        "metadata": {"subscription": "sub_123", "invoice": "in_2026_03"},
        "statement_descriptor_suffix": "PRO PLAN",
        "test_clock": clock.id,
    });
    println!("create");
    let payment = engine
        .create_json(renewal.to_string().as_bytes(), Some("in_2026_03-renewal"))
        .await?;
    println!("{}", serde_json::to_string_pretty(&payment)?);

    for day in [0u64, 1, 3] {
        println!("advance test clock to day {day}");
        engine
            .advance_test_clock(&clock.id, start.plus(Duration::from_secs(day * 86_400)))
            .await?;
    }

    let settled = engine.retrieve(&payment.id).await?;
    assert_eq!(settled.status, PaymentStatus::Succeeded);
    println!(
        "settled: {} after {} attempts ({})",
        settled.status, settled.retry_details.attempts, settled.amount_requested
    );
    Ok(())
}
