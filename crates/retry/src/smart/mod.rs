//! The `smart` strategy: learns, from the outcomes the engine records, the chance
//! that a retry succeeds, and picks the retry time that maximizes expected recovery.
//!
//! # Model
//! Online logistic regression over hashed features (the "hashing trick"): decline
//! category, raw decline and advice codes, card brand, funding and country, amount
//! band, cadence, attempts so far, and for each candidate time: time since the first
//! failure, wait since the decline, local hour, weekday and day of month — plus the
//! crosses of the category with each time feature, which is where the signal is
//! (insufficient funds clear after paydays, transient faults clear within hours).
//! Updates are AdaGrad steps, one per observed retry.
//!
//! Why not linfa or smartcore: both fit a model in batch over a dataset held in
//! memory; the engine needs an update per outcome, a decision in microseconds from a
//! shared model, and a state it can persist and restore. A hashed online logistic
//! regression is about a hundred lines, has no dependency, and its decision cost is
//! measured by the `smart_decision` criterion bench.
//!
//! # Decision
//! Candidate times run from `min_wait` after the decline to the end of the retry
//! window, every `candidate_step`. The chosen time maximizes `p(t) × discount^days`
//! (a recovery today is worth more than the same chance next week). When no
//! candidate reaches `min_probability` the payment stops: an attempt that will not
//! succeed costs fees and network-rule budget. A small, deterministic share of
//! decisions (seeded by payment id and attempt) explores a random candidate, so the
//! model keeps learning about times it would not otherwise pick.
//!
//! Without data the model starts from a prior: a base success rate of about 15 %,
//! transient faults favour short waits, funds declines favour paydays.

use std::sync::RwLock;
use std::time::Duration;

use offsession_core::policy::terminal_reason;
use offsession_core::{
    AttemptObservation, DeclineCategory, FailureReason, RetryContext, RetryDecision, RetryPolicy,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::RetryConfigError;
use offsession_core::hash::{fnv1a as hash_str, mix64 as mix};

mod evidence;
mod features;
mod state;

use evidence::{Arm, Cohorts};
use features::*;

const DIMENSIONS: usize = 1 << 14;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Smart settings as written in configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmartConfig {
    /// Total attempts at most.
    pub max_attempts: u32,
    /// No attempt later than this after the first.
    #[serde(with = "offsession_core::duration::text")]
    pub window: Duration,
    /// Spacing of candidate times.
    #[serde(with = "offsession_core::duration::text")]
    pub candidate_step: Duration,
    /// Least time between a decline and its retry.
    #[serde(with = "offsession_core::duration::text")]
    pub min_wait: Duration,
    /// Stop when no candidate's predicted success reaches this.
    pub min_probability: f64,
    /// Value of a recovery one day later relative to now.
    pub daily_discount: f64,
    /// Share of decisions that explore a random candidate.
    pub exploration: f64,
    /// Optimism bonus (logit units) for candidate times whose features have little
    /// evidence yet; it shrinks as outcomes at such times are observed.
    pub optimism: f64,
    /// AdaGrad base learning rate.
    pub learning_rate: f64,
    /// Also learn from first attempts (their own bias; shared time-of-week features).
    /// Off by default: at 100,000 payments it moved smart's recovery against the
    /// schedule from +15.2 % to +17.1 % on `salaried` (seed 11) but from −7.5 % to
    /// −13.2 % on `gig-economy` (seed 23), and held-out seeds were mixed.
    pub learn_from_first_attempts: bool,
    /// Choose between the learned model and the rule-based plan (`[heuristic]`) by
    /// evidence: a share of payments (`evidence_share`, split evenly) always follows
    /// one or the other, and every other payment follows whichever has recovered the
    /// larger share of its failed payments, counted once their window has passed
    /// (the rule-based plan until both have 100 such payments).
    pub select_by_evidence: bool,
    /// Share of payments that gather that evidence.
    pub evidence_share: f64,
    /// Where the runner saves and loads the learned state (none: not persisted).
    /// This crate does no file I/O: see [`SmartPolicy::state`] and
    /// [`SmartPolicy::restore`].
    pub state_path: Option<std::path::PathBuf>,
}

impl Default for SmartConfig {
    fn default() -> SmartConfig {
        SmartConfig {
            max_attempts: 8,
            window: Duration::from_secs(28 * 86_400),
            candidate_step: Duration::from_secs(4 * 3_600),
            min_wait: Duration::from_secs(3_600),
            min_probability: 0.01,
            daily_discount: 0.97,
            exploration: 0.05,
            optimism: 1.0,
            learning_rate: 0.3,
            learn_from_first_attempts: false,
            select_by_evidence: true,
            evidence_share: 0.2,
            state_path: None,
        }
    }
}

/// A saved state this version cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "smart state has version {version} and {weights} weights; expected version 1 and {}",
    DIMENSIONS
)]
pub struct StateRefused {
    /// The state's version.
    pub version: u32,
    /// How many weights it holds.
    pub weights: usize,
}

/// The learned state, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmartState {
    /// Format version.
    pub version: u32,
    /// Weights by hashed feature.
    pub weights: Vec<f32>,
    /// AdaGrad sums of squared gradients.
    pub squared_gradients: Vec<f32>,
    /// Retries learned from.
    pub observations: u64,
    /// Evidence of the two plans: failed payments and recoveries of the model's
    /// share, then of the rules' share.
    #[serde(default)]
    pub evidence: [u64; 4],
}

/// The model behind the strategy.
#[derive(Debug)]
struct Model {
    weights: Vec<f32>,
    squared_gradients: Vec<f32>,
    observations: u64,
}

impl Model {
    fn prior() -> Model {
        let mut weights = vec![0.0; DIMENSIONS];
        let mut set = |index: usize, value: f32| weights[index] += value;
        set(slot(BIAS, 0), -1.7);
        let cross = |family: u64, category: DeclineCategory, value: u64| {
            slot(CROSS + family, (category_id(category) << 8) | value)
        };
        // Transient faults clear within hours.
        set(cross(WAIT, DeclineCategory::SoftTransient, 0), 0.8);
        set(cross(WAIT, DeclineCategory::SoftTransient, 1), 0.6);
        // Funds arrive on paydays: the 1st–2nd, the 15th–16th, Fridays; rarely overnight.
        // A cold-start guess only: every day of the month and of the week has its
        // own weight, learned from outcomes.
        for (day, weight) in [(0, 0.8), (1, 0.8), (14, 0.6), (15, 0.6)] {
            set(cross(MONTHDAY, DeclineCategory::SoftFunds, day), weight);
        }
        set(cross(WEEKDAY, DeclineCategory::SoftFunds, 5), 0.3);
        set(cross(WAIT, DeclineCategory::SoftFunds, 0), -0.8);
        set(cross(WAIT, DeclineCategory::SoftFunds, 1), -0.5);
        // Issuer declines: a slight preference for waiting a day or more.
        set(cross(WAIT, DeclineCategory::SoftIssuer, 0), -0.2);
        set(cross(WAIT, DeclineCategory::SoftIssuer, 1), -0.1);
        // Night-time attempts fare worse; many failures in a row predict more.
        set(slot(HOUR, 0), -0.3);
        for attempts in 5..=8 {
            set(slot(ATTEMPTS, attempts), -0.4);
        }
        Model {
            weights,
            squared_gradients: vec![0.0; DIMENSIONS],
            observations: 0,
        }
    }

    fn score(&self, slots: &[usize]) -> f32 {
        slots.iter().map(|&i| self.weights[i]).sum()
    }
}

/// The smart strategy.
#[derive(Debug)]
pub struct SmartPolicy {
    max_attempts: u32,
    window: Duration,
    step_ms: i64,
    min_wait: Duration,
    min_probability: f32,
    daily_discount: f64,
    exploration: f64,
    optimism: f32,
    learning_rate: f32,
    learn_from_first_attempts: bool,
    select_by_evidence: bool,
    evidence_share: f64,
    rules: crate::HeuristicPolicy,
    /// Failed payments and their recoveries, model share then rules share.
    evidence: std::sync::Mutex<Cohorts>,
    model: RwLock<Model>,
}

impl SmartPolicy {
    /// A policy with `config`, starting from the prior.
    pub fn new(config: &SmartConfig) -> Result<SmartPolicy, RetryConfigError> {
        let err = |message: &str| RetryConfigError::Policy {
            policy: "smart".into(),
            message: message.into(),
        };
        let step = config.candidate_step;
        if step < Duration::from_secs(600) {
            return Err(err("`candidate_step` must be at least 10m"));
        }
        if !(0.0..1.0).contains(&config.min_probability)
            || !(0.0..=1.0).contains(&config.exploration)
            || !(0.0..=1.0).contains(&config.daily_discount)
        {
            return Err(err(
                "`min_probability`, `exploration` and `daily_discount` must be in [0, 1]",
            ));
        }
        if config.max_attempts == 0 {
            return Err(err("`max_attempts` must be at least 1"));
        }
        Ok(SmartPolicy {
            max_attempts: config.max_attempts,
            window: config.window,
            step_ms: step.as_millis() as i64,
            min_wait: config.min_wait,
            min_probability: config.min_probability as f32,
            daily_discount: config.daily_discount,
            exploration: config.exploration,
            optimism: config.optimism as f32,
            learning_rate: config.learning_rate as f32,
            learn_from_first_attempts: config.learn_from_first_attempts,
            select_by_evidence: config.select_by_evidence,
            evidence_share: config.evidence_share.clamp(0.0, 1.0),
            rules: crate::HeuristicPolicy::new(&crate::HeuristicConfig {
                max_attempts: config.max_attempts,
                window: config.window,
                ..crate::HeuristicConfig::default()
            })?,
            evidence: std::sync::Mutex::new(Cohorts::new(config.window.as_millis() as i64)),
            model: RwLock::new(Model::prior()),
        })
    }

    /// Uses `rules` as the rule-based plan (default: `[heuristic]`'s defaults with
    /// this policy's window and attempt budget).
    pub fn with_rules(mut self, rules: crate::HeuristicPolicy) -> SmartPolicy {
        self.rules = rules;
        self
    }

    /// Retries learned from so far.
    pub fn observations(&self) -> u64 {
        self.model
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .observations
    }

    /// The predicted chance that a retry of this situation at `at` succeeds.
    pub fn predict(&self, context: &RetryContext<'_>, at: Timestamp) -> f64 {
        let s = self.situation_of(context);
        let model = self.model.read().unwrap_or_else(|p| p.into_inner());
        f64::from(sigmoid(
            model.score(&s.slots) + model.score(&time_slots(&s, at)),
        ))
    }

    fn situation_of(&self, context: &RetryContext<'_>) -> Situation {
        let codes = context.decline;
        situation(
            Some(context.category),
            codes.decline_code.as_deref().unwrap_or(&codes.code),
            codes
                .advice_code
                .as_deref()
                .or(codes.network_advice_code.as_deref()),
            context.method.and_then(|m| m.card.as_ref()),
            context.payment.amount_requested.value,
            context.payment.cadence,
            context.payment.retry_details.attempts,
            context.now,
            context
                .attempts
                .first()
                .and_then(|a| a.finished_at)
                .unwrap_or(context.first_attempt_at),
        )
    }
}

impl RetryPolicy for SmartPolicy {
    fn name(&self) -> &str {
        "smart"
    }

    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        if let Some(reason) = terminal_reason(context.category) {
            return RetryDecision::Stop(reason);
        }
        let attempts = context.payment.retry_details.attempts;
        if attempts >= self.max_attempts {
            return RetryDecision::Stop(FailureReason::RetriesExhausted);
        }
        let window_end = context.window_end(self.window);
        let earliest = context.now.plus(self.min_wait);
        if earliest > window_end {
            return RetryDecision::Stop(FailureReason::ExceededRetryWindow);
        }
        let (arm, sampled) = self.arm(&context.payment.id);
        if sampled && attempts == 1 {
            let slot = if arm == Arm::Model { 0 } else { 2 };
            self.cohorts().add(context.now, slot, context.now);
        }
        if arm == Arm::Rules {
            return self.rules.decide(context);
        }
        let s = self.situation_of(context);
        let model = self.model.read().unwrap_or_else(|p| p.into_inner());
        let base = model.score(&s.slots);
        let tables = TimeTables::new(&model.weights, &model.squared_gradients, s.category);
        drop(model);
        let walk = CandidateWalk::new(&s, earliest, window_end);
        // Every candidate's predicted chance (optimistic where evidence is thin) and
        // its discounted value; the discount steps by one factor per candidate.
        let days_first = (earliest.as_millis() - context.now.as_millis()) as f64 / DAY_MS as f64;
        let mut discount = self.daily_discount.powf(days_first) as f32;
        let step_discount = self
            .daily_discount
            .powf(self.step_ms as f64 / DAY_MS as f64) as f32;
        let mut candidates: Vec<(f32, Timestamp, f32)> = Vec::with_capacity(256);
        let mut t = earliest;
        while t <= window_end && candidates.len() < 4096 {
            let (score, novelty) = tables.lookup(walk.values(&s, t));
            let logit = base + score;
            let optimistic = sigmoid(logit + self.optimism * novelty);
            candidates.push((optimistic * discount, t, logit));
            discount *= step_discount;
            t = Timestamp::from_millis(t.as_millis() + self.step_ms);
        }
        if candidates.is_empty() {
            return RetryDecision::Stop(FailureReason::ExceededRetryWindow);
        }
        // Plan the attempts left: pick the best candidates one by one, each pick
        // discounting its neighbours (attempts a few hours apart meet the same
        // balance), and send the earliest of the plan next. With many attempts left
        // the plan spreads over the window and starts early; with one left it waits
        // for the single best time.
        let left = self.max_attempts.saturating_sub(attempts).max(1) as usize;
        let mut weight = vec![1.0f32; candidates.len()];
        let mut plan_failure = 1.0f32;
        let mut chosen: Option<Timestamp> = None;
        let mut best_p = 0.0f32;
        for _ in 0..left {
            let Some((i, value)) = candidates
                .iter()
                .zip(&weight)
                .map(|((v, _, _), w)| v * w)
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
            else {
                break;
            };
            if value <= 0.0 {
                break;
            }
            let (_, at, logit) = candidates[i];
            let p = sigmoid(logit);
            plan_failure *= 1.0 - p * weight[i];
            best_p = best_p.max(p);
            chosen = Some(chosen.map_or(at, |c: Timestamp| c.min(at)));
            // Candidates are evenly spaced: only those within a day of the pick move.
            let reach = (DAY_MS / self.step_ms.max(1)) as usize;
            let from = i.saturating_sub(reach);
            let to = (i + reach).min(candidates.len() - 1);
            for (j, w) in weight.iter_mut().enumerate().take(to + 1).skip(from) {
                let apart = (j.abs_diff(i) as i64 * self.step_ms) as f32 / DAY_MS as f32;
                *w *= apart.min(1.0);
            }
        }
        let Some(mut chosen) = chosen else {
            return RetryDecision::Stop(FailureReason::ExceededRetryWindow);
        };
        // Calibrated give-up: stop when the whole plan is unlikely to recover.
        if 1.0 - plan_failure < self.min_probability || best_p <= 0.0 {
            return RetryDecision::Stop(FailureReason::RetriesExhausted);
        }
        let candidates = candidates.len() as u64;
        // Deterministic exploration: the same payment and attempt always explore (or
        // not) the same way, on any instance.
        let seed = mix(hash_str(&context.payment.id) ^ u64::from(attempts));
        if ((seed >> 11) as f64 / (1u64 << 53) as f64) < self.exploration && candidates > 1 {
            let pick = mix(seed) % candidates;
            chosen = Timestamp::from_millis(earliest.as_millis() + pick as i64 * self.step_ms);
        }
        RetryDecision::RetryAt {
            not_before: chosen,
            latest: Some(window_end),
        }
    }

    fn observe(&self, observation: &AttemptObservation<'_>) {
        if observation.approved
            && observation.attempt_number > 1
            && observation.payment.retry_details.retry_strategy
                == offsession_core::RetryStrategy::Smart
        {
            if let (arm, true) = self.arm(&observation.payment.id) {
                let failed_at = observation.first_failure_at.unwrap_or(observation.at);
                let slot = if arm == Arm::Model { 1 } else { 3 };
                self.cohorts().add(failed_at, slot, observation.at);
            }
        }
        let card = observation.method.and_then(|m| m.card.as_ref());
        let s = match (
            observation.previous_decline,
            observation.previous_attempt_at,
        ) {
            (Some((codes, category)), Some(previous_at)) => situation(
                Some(category),
                codes.decline_code.as_deref().unwrap_or(&codes.code),
                codes
                    .advice_code
                    .as_deref()
                    .or(codes.network_advice_code.as_deref()),
                card,
                observation.payment.amount_requested.value,
                observation.payment.cadence,
                observation.attempt_number.saturating_sub(1),
                previous_at,
                observation.first_failure_at.unwrap_or(previous_at),
            ),
            // A first attempt says when this population's cards have money, which
            // the shared time features carry over to retries.
            _ if observation.attempt_number == 1 && self.learn_from_first_attempts => situation(
                None,
                "",
                None,
                card,
                observation.payment.amount_requested.value,
                observation.payment.cadence,
                0,
                observation.at,
                observation.at,
            ),
            _ => return,
        };
        let times = time_slots(&s, observation.at);
        let mut model = self.model.write().unwrap_or_else(|p| p.into_inner());
        let p = sigmoid(model.score(&s.slots) + model.score(&times));
        let gradient = if observation.approved { 1.0 } else { 0.0 } - p;
        for &i in s.slots.iter().chain(times.iter()) {
            model.squared_gradients[i] += gradient * gradient;
            let rate = self.learning_rate / (1.0 + model.squared_gradients[i]).sqrt();
            model.weights[i] += rate * gradient;
        }
        model.observations += 1;
    }
}
