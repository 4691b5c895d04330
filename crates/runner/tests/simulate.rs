//! `offsession simulate` end to end on a small population.

mod common;

use common::repo_path;

use offsession_mock::issuer::Scenario;
use offsession_runner::{config, simulate};

fn scenario(name: &str, customers: u64) -> Scenario {
    let path = repo_path(&format!("config/scenarios/{name}.toml"));
    let mut scenario = Scenario::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    scenario.customers = customers;
    scenario
}

#[test]
fn every_shipped_scenario_parses() {
    let dir = repo_path("config/scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let scenario = Scenario::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(scenario.customers >= 100_000, "{}", scenario.name);
        names.push(scenario.name);
    }
    assert!(names.len() >= 3, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_are_compared_on_the_same_population_without_rule_violations() {
    let config = config::load(&repo_path("config/default.toml")).unwrap();
    let report = simulate::run(
        &scenario("issuer-outages", 3_000),
        &repo_path("config/default.toml"),
        &config,
        &simulate::Options::default(),
    )
    .await
    .unwrap();
    let names: Vec<_> = report
        .strategies
        .iter()
        .map(|s| s.strategy.as_str())
        .collect();
    assert_eq!(names, simulate::STRATEGIES);
    let failures = report.strategies[0].first_attempt_failures;
    assert!(failures > 0);
    assert_eq!(report.oracle.first_attempt_failures, failures);
    assert!(report.oracle.recovered > 0);
    for s in &report.strategies {
        assert_eq!(s.payments, 3_000);
        assert_eq!(
            s.first_attempt_failures, failures,
            "{}: same world, same first attempts",
            s.strategy
        );
        assert_eq!(s.recovered_by_day.last().copied(), Some(s.recovered));
        if s.guarded {
            assert_eq!(s.network_rule_violations, 0, "{}", s.strategy);
        }
        // Nothing beats an omniscient retry by much (it sees hourly times only).
        assert!(
            s.percent_of_oracle <= 102.0,
            "{}: {}",
            s.strategy,
            s.percent_of_oracle
        );
    }
    let unguarded = report
        .strategies
        .iter()
        .find(|s| !s.guarded)
        .expect("the reckless strategy runs without the guard");
    assert!(
        unguarded
            .violations_by_rule
            .get("retry_after_hard_decline")
            .copied()
            > Some(0),
        "{:?}",
        unguarded.violations_by_rule
    );
    let none = &report.strategies[0];
    assert_eq!((none.recovered, none.attempts_per_payment), (0, 1.0));
    for s in &report.strategies[1..] {
        assert!(s.recovered > 0, "{} recovers something", s.strategy);
    }
    // The baseline is the best schedule of the family, within the shared bounds.
    let best = &report.schedule_candidates[0];
    assert_eq!(report.baseline, best.name);
    assert!(report
        .schedule_candidates
        .iter()
        .all(|c| c.recovered <= best.recovered
            && c.offsets_hours.len() < report.max_attempts as usize
            && c.offsets_hours
                .iter()
                .all(|h| *h <= report.window_days * 24.0)));
    assert!(report
        .render()
        .contains("best equal-window, equal-budget schedule"));
    // Medians of hours to recovery are also compared over the payments a strategy and
    // `heuristic` both recovered.
    let heuristic = report
        .strategies
        .iter()
        .find(|s| s.strategy == "heuristic")
        .unwrap();
    assert!(heuristic.paired_with_heuristic.is_none());
    for s in report
        .strategies
        .iter()
        .filter(|s| s.strategy != "heuristic" && s.recovered > 0)
    {
        let paired = s.paired_with_heuristic.as_ref().expect(&s.strategy);
        assert!(paired.recovered_by_both > 0, "{}", s.strategy);
        assert!(
            paired.recovered_by_both <= s.recovered.min(heuristic.recovered),
            "{}",
            s.strategy
        );
    }
    assert!(report.render().contains("over the payments both recovered"));
    // `issuer-outages` bills for 30 days and runs 50: charges of the last 8 days get
    // less than the 28-day window, for every strategy alike.
    assert_eq!(report.charges, 3_000);
    assert!(
        report.charges_cut_short > 0 && report.charges_cut_short < report.charges / 2,
        "{}",
        report.charges_cut_short
    );

    let chart = std::env::temp_dir().join(format!("offsession-sim-{}.svg", std::process::id()));
    report.chart(&chart).unwrap();
    let svg = std::fs::read_to_string(&chart).unwrap();
    std::fs::remove_file(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("smart") && svg.contains("scheduled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulation_is_reproducible() {
    let config = config::load(&repo_path("config/default.toml")).unwrap();
    let a = simulate::run(
        &scenario("gig-economy", 1_000),
        &repo_path("config/default.toml"),
        &config,
        &simulate::Options::default(),
    )
    .await
    .unwrap();
    let b = simulate::run(
        &scenario("gig-economy", 1_000),
        &repo_path("config/default.toml"),
        &config,
        &simulate::Options::default(),
    )
    .await
    .unwrap();
    for (x, y) in a.strategies.iter().zip(&b.strategies) {
        assert_eq!(
            (x.recovered, x.attempts),
            (y.recovered, y.attempts),
            "{}",
            x.strategy
        );
    }
}

/// A config folder holding `default.toml` and the given `declines.toml`.
fn config_with_declines(declines: Option<&str>) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "offsession-sim-declines-{}-{}",
        std::process::id(),
        declines.map_or(0, str::len)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo_path("config/default.toml"), dir.join("default.toml")).unwrap();
    if let Some(declines) = declines {
        std::fs::write(dir.join("declines.toml"), declines).unwrap();
    }
    dir.join("default.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_reads_the_configured_decline_table() {
    // The shipped table without its soft categories, and hard by default: no
    // strategy may retry, so none recovers anything.
    let shipped = std::fs::read_to_string(repo_path("config/declines.toml")).unwrap();
    let (head, rest) = shipped.split_once("[categories.soft_funds]").unwrap();
    let (_, tail) = rest.split_once("[visa]").unwrap();
    let all_hard = format!("{head}[visa]{tail}").replace(
        "default_category = \"soft_issuer\"",
        "default_category = \"hard\"",
    );
    let path = config_with_declines(Some(&all_hard));
    let config = config::load(&path).unwrap();
    let report = simulate::run(
        &scenario("gig-economy", 500),
        &path,
        &config,
        &simulate::Options::default(),
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(report.strategies[0].first_attempt_failures > 0);
    for s in report
        .strategies
        .iter()
        .filter(|s| s.strategy != "reckless_unguarded")
    {
        assert_eq!(s.recovered, 0, "{} retried a hard decline", s.strategy);
    }

    let shipped = repo_path("config/default.toml");
    let config = config::load(&shipped).unwrap();
    let report = simulate::run(
        &scenario("gig-economy", 500),
        &shipped,
        &config,
        &simulate::Options::default(),
    )
    .await
    .unwrap();
    assert!(
        report.strategies[1].recovered > 0,
        "the shipped table retries"
    );
}

#[tokio::test]
async fn simulate_names_a_missing_decline_table() {
    let path = config_with_declines(None);
    let config = config::load(&path).unwrap();
    let err = simulate::run(
        &scenario("gig-economy", 10),
        &path,
        &config,
        &simulate::Options::default(),
    )
    .await
    .unwrap_err();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    let message = err.to_string();
    assert!(message.starts_with("`declines.path`"), "{message}");
    assert!(message.contains("declines.toml"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worlds_with_debits_several_charges_and_advice_codes_keep_the_rules() {
    let config = config::load(&repo_path("config/default.toml")).unwrap();
    for name in ["off-calendar", "bank-debits"] {
        let report = simulate::run(
            &scenario(name, 3_000),
            &repo_path("config/default.toml"),
            &config,
            &simulate::Options::default(),
        )
        .await
        .unwrap();
        for s in &report.strategies {
            assert!(s.payments > 3_000, "{name}: several charges per customer");
            if s.guarded {
                assert_eq!(
                    s.network_rule_violations, 0,
                    "{name} {}: {:?}",
                    s.strategy, s.violations_by_rule
                );
            }
        }
        let unguarded = report.strategies.iter().find(|s| !s.guarded).unwrap();
        assert!(
            unguarded
                .violations_by_rule
                .get("mastercard_do_not_retry")
                .copied()
                > Some(0),
            "{name}: a card barred by advice code 21 is attempted again without the guard: {:?}",
            unguarded.violations_by_rule
        );
    }
}

#[test]
fn a_bad_scenario_is_refused_naming_the_key_and_the_rule() {
    let shipped = std::fs::read_to_string(repo_path("config/scenarios/off-calendar.toml")).unwrap();
    for (from, to, expected) in [
        (
            "days_of_month = [28]",
            "days_of_month = [32]",
            "`pay_rules[0]`: `days_of_month` must be 1–31",
        ),
        (
            "weekday = \"thu\"",
            "weekday = \"thursday\"",
            "`pay_rules[3]`: `weekday` must be one of",
        ),
        (
            "hard_share = 0.008",
            "hard_share = 2.0",
            "`declines.hard_share` must be in [0, 1]",
        ),
        (
            "visa = 0.50",
            "viza = 0.50",
            "`brands`: `viza` is not one of",
        ),
        (
            "US = 0.9",
            "USA = 0.9",
            "`countries`: `USA` is not an ISO 3166 country code",
        ),
        (
            "brand = \"mastercard\"",
            "brand = \"mastercrd\"",
            "`outages[0].brand`: `mastercrd`",
        ),
        (
            "jitter_hours = 8\n",
            "jiter_hours = 8\n",
            "unknown field `jiter_hours`",
        ),
    ] {
        assert!(shipped.contains(from), "{from}");
        let text = shipped.replacen(from, to, 1);
        let err = Scenario::from_toml(&text).unwrap_err();
        assert!(err.contains(expected), "{to}: {err}");
    }
    let mut scenario = Scenario::from_toml(&shipped).unwrap();
    scenario.customers = 0;
    assert!(scenario.check().unwrap_err().contains("`customers`"));
}
