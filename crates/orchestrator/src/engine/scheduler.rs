//! The scheduler: claim due payments under a lease and handle them, `concurrency` at a time.

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

    pub(super) async fn run_scope(
        &self,
        scope: &ClockScope,
        now: Timestamp,
    ) -> Result<RunReport, EngineError> {
        use futures::future::{Either, FutureExt};
        use futures::stream::FuturesUnordered;
        enum Done {
            Handled(Result<RunReport, EngineError>),
            Claimed(Result<Vec<PaymentRecord>, StoreError>),
        }
        let config = &self.inner.config;
        let mut report = RunReport::default();
        let mut queue: std::collections::VecDeque<PaymentRecord> =
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
        loop {
            if queue.is_empty() && !exhausted && !claiming {
                in_flight.push(Either::Left(
                    Box::pin(self.claim(scope, now)).map(Done::Claimed),
                ));
                claiming = true;
            }
            while handling < config.concurrency {
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
            match in_flight.next().await {
                Some(Done::Handled(result)) => {
                    handling -= 1;
                    report.add(result?);
                }
                Some(Done::Claimed(batch)) => {
                    claiming = false;
                    let batch = batch?;
                    exhausted = batch.is_empty();
                    queue.extend(batch);
                }
                None => {
                    // Nothing in flight: one more look, now that every attempt ended.
                    let batch = self.claim(scope, now).await?;
                    if batch.is_empty() {
                        return Ok(report);
                    }
                    exhausted = false;
                    queue.extend(batch);
                }
            }
        }
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
        self.inner
            .store
            .claim_due(scope, now, config.claim_batch, &lease)
            .await
    }

    pub(super) async fn handle(&self, record: PaymentRecord) -> Result<RunReport, EngineError> {
        let started = std::time::Instant::now();
        let mut outside = Duration::ZERO;
        let outcome = match record.payment.status {
            PaymentStatus::RequiresCapture => self.expire_authorization(record).await,
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

    pub(super) async fn expire_authorization(
        &self,
        record: PaymentRecord,
    ) -> Result<(), StoreError> {
        let now = self.now_for(&record.payment);
        let Ok(to) = transition(record.payment.status, Transition::ExpireAuthorization) else {
            return Ok(());
        };
        if let Err(err) = self.release_authorization(&record).await {
            tracing::warn!(payment = %record.payment.id, error = %err, "releasing an expired authorization failed");
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
        Ok(())
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
