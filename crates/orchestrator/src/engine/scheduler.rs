//! The scheduler: claim due payments under a lease and handle them, `concurrency` at a time.

use std::borrow::Borrow;

use super::*;

impl Engine {
    /// Runs everything due on the engine clock now.
    pub async fn run_due(&self) -> Result<RunReport, EngineError> {
        self.run_scope(&ClockScope::Engine, self.inner.clock.now())
            .await
    }

    /// When the next engine-clock payment falls due.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, EngineError> {
        Ok(self.inner.store.next_due(&ClockScope::Engine).await?)
    }

    /// Runs what is due on the engine clock until nothing is, or until `stop`
    /// completes: then it claims nothing more, gives back the leases of payments
    /// claimed but not started, and returns once the attempts in flight have written
    /// their outcomes. Payments falling due while it runs are claimed too (the
    /// clock is read at every claim). A long-running worker calls this in a loop.
    pub async fn run_due_until(
        &self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<RunReport, EngineError> {
        self.run_scope_until(&ClockScope::Engine, self.inner.clock.now(), stop)
            .await
    }

    pub(super) async fn run_scope(
        &self,
        scope: &ClockScope,
        now: Timestamp,
    ) -> Result<RunReport, EngineError> {
        self.run_scope_until(scope, now, std::future::pending())
            .await
    }

    async fn run_scope_until(
        &self,
        scope: &ClockScope,
        now: Timestamp,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<RunReport, EngineError> {
        use futures::future::{Either, FutureExt};
        use futures::stream::FuturesUnordered;
        enum Done {
            Handled(Result<RunReport, EngineError>),
            Claimed(Result<Vec<PaymentRecord>, StoreError>),
        }
        let config = &self.inner.config;
        // On the engine clock a claim reads the clock again, so work that fell due
        // during a long pass is picked up; a test clock stays where it was advanced to.
        let claim_now = || match scope {
            ClockScope::Engine => self.inner.clock.now().max(now),
            _ => now,
        };
        // Attempts waiting for a rate-limit permit hold their payments: no more in
        // flight than can be sent in half a lease.
        let concurrency = self
            .paced_capacity()
            .map_or(config.concurrency, |cap| config.concurrency.min(cap));
        let mut stop = std::pin::pin!(stop);
        let mut stopping = false;
        let mut report = RunReport::default();
        // Claimed records are boxed once: the attempt holds its record through every
        // await, and a record by value would be copied into each attempt's state.
        let mut queue: std::collections::VecDeque<Box<PaymentRecord>> =
            std::collections::VecDeque::new();
        // Claims run beside the attempts in flight, in one set of futures: a claim
        // never waits while attempts that hold store connections go unpolled.
        let mut in_flight = FuturesUnordered::new();
        let mut handling = 0;
        let mut claiming = false;
        // Claims are made whenever the queue runs dry, so that `concurrency` attempts
        // stay in flight instead of draining batch by batch. After an empty claim the
        // scheduler waits for the work in flight to finish before it looks again
        // (cascades and zero-wait retries fall due now).
        let mut exhausted = false;
        let mut failure: Option<EngineError> = None;
        let mut failed_with: Option<EngineError> = None;
        loop {
            if let Some(err) = failure.take() {
                // The store (or the engine) failed: claim nothing more, let the
                // attempts in flight write their outcomes, then report the first
                // failure. Dropping them instead would leave their payments leased
                // until the leases lapse.
                tracing::warn!(error = %err, "a scheduler pass failed; finishing the attempts in flight");
                failed_with.get_or_insert(err);
                if !stopping {
                    stopping = true;
                    self.release(queue.drain(..)).await;
                }
            }
            if !stopping && queue.is_empty() && !exhausted && !claiming {
                in_flight.push(Either::Left(
                    Box::pin(self.claim(scope, claim_now())).map(Done::Claimed),
                ));
                claiming = true;
            }
            while !stopping && handling < concurrency {
                match queue.pop_front() {
                    Some(record) => {
                        // Boxed where it is made: the attempt's state is large, and
                        // moving it into the set unboxed copies all of it several times.
                        in_flight.push(Either::Right(
                            Box::pin(self.handle(record)).map(Done::Handled),
                        ));
                        handling += 1;
                    }
                    None => break,
                }
            }
            let done = if stopping {
                in_flight.next().await
            } else {
                match futures::future::select(stop.as_mut(), in_flight.next()).await {
                    Either::Left(((), _)) => {
                        stopping = true;
                        self.release(queue.drain(..)).await;
                        continue;
                    }
                    Either::Right((done, _)) => done,
                }
            };
            match done {
                Some(Done::Handled(Ok(handled))) => {
                    handling -= 1;
                    report.add(handled);
                }
                Some(Done::Claimed(Ok(batch))) => {
                    claiming = false;
                    exhausted = batch.is_empty();
                    if stopping {
                        self.release(batch).await;
                    } else {
                        queue.extend(batch.into_iter().map(Box::new));
                    }
                }
                Some(Done::Handled(Err(err))) => {
                    handling -= 1;
                    failure = Some(err);
                }
                Some(Done::Claimed(Err(err))) => {
                    claiming = false;
                    failure = Some(err.into());
                }
                None if stopping => {
                    return match failed_with {
                        Some(err) => Err(err),
                        None => Ok(report),
                    }
                }
                None => {
                    // Nothing in flight: one more look, now that every attempt ended.
                    let batch = self.claim(scope, claim_now()).await?;
                    if batch.is_empty() {
                        return Ok(report);
                    }
                    exhausted = false;
                    queue.extend(batch.into_iter().map(Box::new));
                }
            }
        }
    }

    /// Gives back the leases of claimed payments that were not started, so another
    /// instance (or this one, restarted) takes them at once instead of when the
    /// lease lapses. A payment changed since is left alone.
    async fn release<R: Borrow<PaymentRecord>>(&self, claimed: impl IntoIterator<Item = R>) {
        let releases = claimed.into_iter().map(|record| async move {
            let record: &PaymentRecord = record.borrow();
            let mut next = record.clone();
            next.lease = None;
            match self.inner.store.update(&next, Expected::of(record)).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(err) => {
                    tracing::warn!(payment = %record.payment.id, error = %err, "could not give back a lease; it lapses on its own");
                }
            }
        });
        futures::future::join_all(releases).await;
    }

    /// Claims up to `claim_batch` due payments of `scope` under this instance's lease.
    pub(super) async fn claim(
        &self,
        scope: &ClockScope,
        now: Timestamp,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let config = &self.inner.config;
        let lease = Lease {
            owner: config.instance_id.clone(),
            until: now.plus(config.lease),
        };
        let limit = self
            .paced_capacity()
            .map_or(config.claim_batch, |cap| config.claim_batch.min(cap));
        self.inner.store.claim_due(scope, now, limit, &lease).await
    }

    /// When every processor is rate-limited: how many attempts this instance can
    /// start in half a lease at its share of the limits. Claiming more only hoards
    /// payments that other instances could send, and lets their leases lapse while
    /// they wait.
    pub(super) fn paced_capacity(&self) -> Option<usize> {
        let processors = &self.inner.processors;
        if processors.list.is_empty()
            || processors
                .list
                .iter()
                .any(|p| !processors.pacers.contains_key(p.id()))
        {
            return None;
        }
        let per_second: f64 = processors
            .pacers
            .values()
            .map(|p| p.per_second_share())
            .sum();
        let half_lease = self.inner.config.lease.as_secs_f64() / 2.0;
        Some(((per_second * half_lease) as usize).max(1))
    }

    pub(super) async fn handle(
        &self,
        record: Box<PaymentRecord>,
    ) -> Result<RunReport, EngineError> {
        let started = std::time::Instant::now();
        let mut outside = Duration::ZERO;
        let outcome = match record.payment.status {
            PaymentStatus::RequiresCapture => {
                self.expire_authorization(record, None).await.map(|_| ())
            }
            PaymentStatus::Pending | PaymentStatus::PendingRetry | PaymentStatus::Processing => {
                self.attempt(record).await.map(|waited| outside = waited)
            }
            _ => {
                // Nothing to do for this status: drop the stale due time.
                let mut next = record.clone();
                next.due_at = None;
                next.lease = None;
                self.inner
                    .store
                    .update(&next, Expected::of(&record))
                    .await
                    .map(|_| ())
            }
        };
        let total = started.elapsed();
        let overhead = total.saturating_sub(outside);
        metrics::histogram!("offsession_engine_overhead_seconds").record(overhead.as_secs_f64());
        if let Some(observer) = &self.inner.timing {
            (observer.0)(AttemptTiming {
                total,
                processor: outside,
            });
        }
        match outcome {
            Ok(()) => Ok(RunReport {
                handled: 1,
                conflicts: 0,
            }),
            Err(StoreError::Conflict { id, .. }) => {
                tracing::debug!(payment = %id, "lost a race to another change; skipped");
                Ok(RunReport {
                    handled: 1,
                    conflicts: 1,
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Releases an expired authorization and fails the payment, or records the
    /// capture the processor reports, or tries again later; returns the payment as
    /// it was left. `capture`: the keyed capture (`"capture:<key>"`) that found the
    /// authorization past its deadline, recorded with a capture the processor reports.
    pub(super) async fn expire_authorization(
        &self,
        record: Box<PaymentRecord>,
        capture: Option<String>,
    ) -> Result<OffSessionPayment, StoreError> {
        let now = self.now_for(&record.payment);
        let Ok(to) = transition(record.payment.status, Transition::ExpireAuthorization) else {
            return Ok(record.payment);
        };
        // A capture whose answer was lost (a crash between the processor's capture
        // and its write) is recorded, not released and failed.
        let state = match (
            self.processor(record.latest_processor()),
            record.authorization.as_ref(),
        ) {
            (Some(processor), Some(reference)) => processor.authorization_state(reference).await,
            _ => Ok(None),
        };
        let released = matches!(
            state,
            Ok(Some(offsession_core::AuthorizationState::Released))
        );
        match state {
            Ok(Some(offsession_core::AuthorizationState::Captured)) => {
                tracing::warn!(payment = %record.payment.id, "the authorization was captured at the processor without the capture being recorded; recording it");
                let to = transition(record.payment.status, Transition::Capture)
                    .unwrap_or(PaymentStatus::Succeeded);
                let mut next = self.as_captured(&record, to);
                if let Some(tag) = capture {
                    next.record_operation(tag, self.now().as_millis());
                }
                self.commit_change(&next, Expected::of(&record), record.payment.status, now)
                    .await?;
                return Ok(next.payment);
            }
            Ok(_) => {}
            Err(err) => {
                if self
                    .try_expiry_later(&record, now, "reading its state", &err.to_string())
                    .await?
                {
                    return Ok(record.payment);
                }
            }
        }
        // Released already (canceled, or expired at the processor): nothing to
        // release, and a cancel would be refused.
        if released {
            tracing::info!(payment = %record.payment.id, "the authorization was released at the processor already");
        } else if let Err(err) = self.release_authorization(&record).await {
            // Refused (it may have been captured) or not answered: the payment is not
            // failed while the processor could still say otherwise.
            if self
                .try_expiry_later(&record, now, "releasing it", &err.to_string())
                .await?
            {
                return Ok(record.payment);
            }
        }
        let mut next = record.clone();
        next.payment.status = to;
        next.payment.failure_reason = Some(FailureReason::AuthorizationExpired);
        next.payment.amount_capturable = None;
        next.authorization = None;
        next.due_at = None;
        next.lease = None;
        self.commit_change(&next, Expected::of(&record), record.payment.status, now)
            .await?;
        Ok(next.payment)
    }

    /// When an expiring authorization's state cannot be read or its release fails:
    /// the expiry runs again in an hour, for up to `replay_deadline` after the
    /// authorization stopped being capturable; `Ok(false)` once that has passed (the
    /// payment then fails as before, and the failure is logged).
    async fn try_expiry_later(
        &self,
        record: &PaymentRecord,
        now: Timestamp,
        doing: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let deadline = self
            .capture_deadline(record)
            .or(record.due_at)
            .unwrap_or(now);
        if now >= deadline.plus(self.inner.config.replay_deadline) {
            tracing::error!(payment = %record.payment.id, error, "{doing} failed for an expired authorization until the replay deadline; the payment fails (check the processor for a capture)");
            return Ok(false);
        }
        tracing::warn!(payment = %record.payment.id, error, "{doing} failed for an expired authorization; trying again in an hour");
        let mut next = record.clone();
        next.due_at = Some(now.plus(Duration::from_secs(3_600)));
        next.lease = None;
        self.inner.store.update(&next, Expected::of(record)).await?;
        Ok(true)
    }

    /// When a held authorization stops being capturable, from its approval (the
    /// latest attempt's answer), as the outcome step first scheduled its expiry.
    pub(super) fn capture_deadline(&self, record: &PaymentRecord) -> Option<Timestamp> {
        let approved = record.attempts.last()?.finished_at?;
        Some(super::step::capture_deadline(
            &record.payment,
            approved,
            self.inner.config.authorization_validity,
        ))
    }

    /// Sets the gauges that need a count over the store (pending retries).
    pub async fn update_gauges(&self) -> Result<(), EngineError> {
        for (status, count) in self.inner.store.count_by_status().await? {
            if status == PaymentStatus::PendingRetry {
                metrics::gauge!("offsession_pending_retries").set(count as f64);
            }
        }
        Ok(())
    }

    /// Pacing of a processor: (current pace as a fraction of its quota, 429s seen).
    pub fn pacing(&self, processor: &str) -> Option<(f64, u64)> {
        self.inner
            .processors
            .pacers
            .get(processor)
            .map(|p| (p.pace(), p.rate_limited()))
    }
}
