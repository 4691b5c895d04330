//! One attempt: the network-rule re-check, the processor choice, the write-ahead, the
//! send (with the lease kept while it is in flight).

use super::*;

impl Engine {
    /// Runs one attempt (or replays the unresolved one) of a claimed payment.
    /// Returns the time spent outside the engine (rate-limit wait and processor).
    pub(super) async fn attempt(
        &self,
        claimed: Box<PaymentRecord>,
    ) -> Result<Duration, StoreError> {
        let now = self.now_for(&claimed.payment);
        let from = claimed.payment.status;
        let Ok(status) = transition(from, Transition::StartAttempt) else {
            return Ok(Duration::ZERO);
        };
        let expected = Expected::of(&claimed);
        let mut record = claimed;
        // A `processing` record whose lease lapsed crashed mid-attempt: its outcome is
        // unknown, so the same attempt is replayed with the same key.
        let replay = (record.replay_pending || from == PaymentStatus::Processing)
            && !record.attempts.is_empty();
        if from == PaymentStatus::Processing && !record.replay_pending {
            if let Some(last) = record.attempts.last_mut() {
                last.outcome_unknown = true;
                last.first_fault_at.get_or_insert(now);
                tracing::warn!(payment = %record.payment.id, key = %last.idempotency_key, "attempt was in flight when its lease lapsed; replaying with the same key");
            }
        }
        // Nothing is sent after the payment's `retry_until` (or a manual capture's
        // `capture_before`), nor a retry after the window its policy gave it, however
        // late the payment was claimed (a worker that was down, a resume, a cascade
        // answered late). A replay of an attempt whose outcome is unknown goes on: it
        // asks what became of an attempt already sent.
        let unknown = replay && record.attempts.last().is_some_and(|a| a.outcome_unknown);
        let ends = [
            record.payment.attempts_end(),
            record.retry_latest.filter(|_| !record.attempts.is_empty()),
        ]
        .into_iter()
        .flatten()
        .min();
        if !unknown && ends.is_some_and(|end| now > end) {
            tracing::info!(payment = %record.payment.id, "the payment's attempt window has passed; failing without an attempt");
            let mut next = record;
            super::step::fail_unsent(
                &mut next,
                now,
                FailureReason::ExceededRetryWindow,
                replay.then_some("not sent again: the payment's attempt window passed first"),
            );
            self.commit_change(&next, expected, from, now).await?;
            return Ok(Duration::ZERO);
        }
        // Every cap check (a retry's, a Mastercard first attempt's) and its
        // write-ahead happen under the card's lock (in this process and across
        // instances sharing the store), so two attempts on one card cannot both spend
        // its last slot.
        // Other payments of the same card may have been attempted since this retry
        // was scheduled: check the network caps again before sending. A first
        // attempt is checked on Mastercard cards only, whose caps count every
        // decline (10 in 24 hours, 35 per amount in 30 days) and whose advice codes
        // 03 / 21 bar the card for every payment; Visa's cap counts reattempts.
        // A fault's replay is checked too: nothing reached the issuer before, so this
        // send is the one the issuer counts (its attempt is left out of the history
        // it is checked against, as a new attempt is not in it yet). An unknown
        // outcome's replay is not: it asks what became of a send already made.
        let replayed = replay
            .then(|| record.attempts.last().map(|a| a.number))
            .flatten();
        let first = record.attempts.is_empty() || replayed == Some(1);
        let brand = super::step::card_brand(&record);
        let checked = self.inner.policies.guarded
            && !unknown
            && (!first || brand == Some(&offsession_core::CardBrand::Mastercard));
        let mut card_lock = if checked {
            // Boxed, as the write under the lock below: rare paths kept out of the
            // attempt's state, which every attempt moves.
            Some(Box::pin(self.lock_cards(&record)).await?)
        } else {
            None
        };
        if checked {
            let mut history = self.card_history(&record, now).await?;
            if let Some(number) = replayed {
                history
                    .retain(|a| !(a.payment_id == record.payment.id && a.attempt_number == number));
            }
            let rules = self.inner.declines.network_rules();
            let allowed =
                rules.earliest_allowed(brand, &history, record.payment.amount_requested.value, now);
            if allowed > now {
                // A barred first attempt fails at once; a retry that cannot happen
                // within its window fails; anything else waits.
                let fails = if first && rules.barred_until(brand, &history).is_some_and(|u| u > now)
                {
                    tracing::info!(payment = %record.payment.id, "card barred by a Mastercard do-not-retry advice code; failing without an attempt");
                    Some(FailureReason::RejectedByPartner)
                } else if ends.is_some_and(|end| allowed > end) {
                    Some(FailureReason::ExceededRetryWindow)
                } else {
                    None
                };
                let mut next = record;
                if let Some(reason) = fails {
                    super::step::fail_unsent(
                        &mut next,
                        now,
                        reason,
                        replayed
                            .map(|_| "not sent again: the card's network rules stopped its replay"),
                    );
                } else {
                    next.lease = None;
                    next.due_at = Some(allowed);
                }
                self.commit_change(&next, expected, from, now).await?;
                return Ok(Duration::ZERO);
            }
        }
        // Which processor: a replay goes back to where the attempt was sent; a new
        // attempt goes to the cascade target, or to the first processor of the route
        // whose circuit breaker lets calls through.
        let processor_id = if replay {
            record.latest_processor().to_owned()
        } else if let Some(target) = record.cascade_to.take() {
            target
        } else {
            let allowed = std::iter::once(&record.processor)
                .chain(record.fallbacks.iter())
                .find(|id| {
                    self.inner
                        .processors
                        .breakers
                        .get(id.as_str())
                        .is_none_or(|b| b.allow(now))
                })
                .cloned();
            match allowed {
                Some(id) => id,
                None => {
                    // Every processor of the route is out of routing: try again when
                    // the primary's breaker lets a probe through.
                    let mut next = record;
                    next.lease = None;
                    next.due_at = Some(now.plus(self.inner.processors.breaker_config.open_for));
                    self.inner.store.update(&next, expected).await?;
                    return Ok(Duration::ZERO);
                }
            }
        };
        let Some(processor) = self.processor(&processor_id).cloned() else {
            tracing::error!(payment = %record.payment.id, processor = %processor_id, "processor is not configured; payment left for another instance");
            return Ok(Duration::ZERO);
        };
        // A replay after the processor forgot the key could charge a second time: an
        // attempt still unsettled then (a long outage, a restore) ends the payment.
        // (A replay of a fault, where nothing was charged, needs no key.)
        let key_lapsed = replay
            && processor
                .idempotency_window()
                .zip(record.attempts.last())
                .is_some_and(|(window, last)| {
                    last.outcome_unknown && now >= last.started_at.plus(window)
                });
        if key_lapsed {
            tracing::error!(payment = %record.payment.id, processor = %processor_id, "an attempt's outcome is still unknown and the processor no longer keeps its idempotency key; the payment ends without a replay (reconcile the key with the processor)");
            let mut next = record;
            next.lease = None;
            let effect = super::step::end_after_key_lapsed(&mut next, now, &processor_id);
            self.commit_change(&next, expected, from, now).await?;
            self.count(effect.as_slice());
            return Ok(Duration::ZERO);
        }
        if replay {
            if let Some(last) = record.attempts.last_mut() {
                last.replays += 1;
                // A fault's replay (nothing reached the issuer before) is sent now: the
                // network rules count it from now, as the issuer sees it, not from the
                // first write-ahead hours ago. An unknown outcome's replay keeps its
                // first send's time, from which the processor's key window runs.
                if !last.outcome_unknown {
                    last.started_at = now;
                }
            }
        } else {
            let number = record.payment.retry_details.attempts + 1;
            if let Some(due) = record.due_at {
                let late = now.as_millis().saturating_sub(due.as_millis()).max(0);
                metrics::histogram!("offsession_due_to_attempt_seconds")
                    .record(late as f64 / 1000.0);
            }
            let mut attempt = AttemptRecord::started(
                self.inner.ids.next_id("ospattempt"),
                &record.payment.id,
                number,
                &processor_id,
                now,
            );
            attempt.due_at = record.due_at;
            record.payment.retry_details.attempts = number;
            record.payment.latest_payment_attempt_record = Some(attempt.id.clone());
            record.first_attempt_at.get_or_insert(now);
            // Grown by one, not doubled: the record may be handed to a store that keeps
            // it, and this is cheaper than the store trimming a doubled `Vec`.
            record.attempts.reserve_exact(1);
            record.attempts.push(attempt);
        }
        record.replay_pending = false;
        record.payment.status = status;
        record.due_at = Some(now);
        // Write-ahead: the attempt and its key are durable before the processor is
        // called, under a lease renewed from now (the claim's may be nearly spent if
        // the payment waited in the queue), so a crash makes the record claimable
        // again (for a replay) when the lease lapses, and no other scheduler takes it
        // for a replay while this attempt is sent.
        record.lease = Some(Lease {
            owner: self.inner.config.instance_id.clone(),
            until: now.plus(self.inner.config.lease),
        });
        // Under the card's lock, the write is the store's `commit_under_lock`: an
        // attempt checked under a lock that was lost meanwhile (its database session
        // ended) is not written, so not sent.
        let store_lock = card_lock.as_mut().and_then(HeldCard::take_store_lock);
        record.version = match store_lock {
            Some(lock) => {
                Box::pin(self.commit_change_under(lock, &record, expected, from, now)).await?
            }
            None => self.commit_change(&record, expected, from, now).await?,
        };
        // The attempt is in the card's history now: the next decision sees it.
        drop(card_lock);

        let Some(attempt) = record.attempts.last().cloned() else {
            return Ok(Duration::ZERO);
        };
        let outside = std::time::Instant::now();
        let send = async {
            if let Some(pacer) = self.inner.processors.pacers.get(processor.id()) {
                let waited = pacer.acquire().await;
                metrics::histogram!("offsession_rate_limit_wait_seconds", "processor" => processor.id().to_owned())
                    .record(waited.as_secs_f64());
            }
            let sent = std::time::Instant::now();
            let request = AuthorizeRequest {
                payment: &record.payment,
                attempt_number: attempt.number,
                idempotency_key: &attempt.idempotency_key,
            };
            let mut outcome = processor.authorize(request).await;
            metrics::histogram!("offsession_attempt_duration_seconds", "processor" => processor.id().to_owned())
                .record(sent.elapsed().as_secs_f64());
            // A replay that answers "unknown" again may be the processor answering a
            // stored error to every replay: ask it what became of the attempt.
            if replay && matches!(outcome, AttemptOutcome::Unknown { .. }) {
                match processor
                    .find_authorization(request, attempt.started_at)
                    .await
                {
                    Ok(Some(found)) if !matches!(found, AttemptOutcome::Unknown { .. }) => {
                        tracing::warn!(payment = %record.payment.id, key = %attempt.idempotency_key, "an attempt's replays answered unknown; its outcome was found at the processor");
                        outcome = found;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(payment = %record.payment.id, %error, "looking up an attempt whose outcome is unknown failed");
                    }
                }
            }
            outcome
        };
        // While the answer is awaited the lease is renewed, so that no other
        // scheduler takes the payment for a replay while this attempt is in flight.
        let (outcome, renewal) = self.renewing_lease(&record, send).await;
        if let Some((version, lease)) = renewal {
            record.version = version;
            record.lease = lease;
        }
        let outside = outside.elapsed();
        if let Some(open_until) =
            self.observe_health(processor.id(), &outcome, self.now_for(&record.payment))
        {
            self.save_breaker(processor.id(), open_until).await;
        }
        self.apply_outcome(record, outcome).await.map(|()| outside)
    }

    /// Runs `call` while the lease of `held` (a record this engine wrote with its
    /// lease) is renewed; returns its output, and the version and lease of the last
    /// renewal, which later writes of the record must expect.
    pub(super) async fn renewing_lease<T>(
        &self,
        held: &PaymentRecord,
        call: impl std::future::Future<Output = T>,
    ) -> (T, Option<(u64, Option<Lease>)>) {
        let renewed = std::sync::Mutex::new(None::<(u64, Option<Lease>)>);
        let renewing = Renewing::default();
        let output = {
            let call = std::pin::pin!(call);
            let keep = std::pin::pin!(self.keep_lease(held, &renewed, &renewing));
            match futures::future::select(call, keep).await {
                futures::future::Either::Left((output, keep)) => {
                    // A renewal sent to the store lands whether or not its future is
                    // dropped: finish it and keep its version, or the next write of
                    // the record would be refused as stale.
                    renewing
                        .stop
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    if renewing.writing.load(std::sync::atomic::Ordering::SeqCst) {
                        keep.await;
                    }
                    output
                }
                futures::future::Either::Right(((), call)) => call.await,
            }
        };
        let renewal = renewed.lock().unwrap_or_else(|p| p.into_inner()).take();
        (output, renewal)
    }

    /// Renews the lease of an attempt in flight every third of the lease, until it
    /// is dropped (the answer came) or another change wins (then it stops: the
    /// outcome write will be refused and the winner replays with the same key). A
    /// renewal that fails is tried again at the next third.
    pub(super) async fn keep_lease(
        &self,
        in_flight: &PaymentRecord,
        renewed: &std::sync::Mutex<Option<(u64, Option<Lease>)>>,
        renewing: &Renewing,
    ) {
        use std::sync::atomic::Ordering;
        let period = (self.inner.config.lease / 3).max(Duration::from_millis(10));
        let mut version = in_flight.version;
        // The leases of renewals whose write failed: one of them may have landed.
        let mut unanswered: Vec<Lease> = Vec::new();
        loop {
            futures_timer::Delay::new(period).await;
            if renewing.stop.load(Ordering::SeqCst) {
                return;
            }
            // Boxed: held across the write, it would otherwise sit in the attempt's state.
            let mut next = Box::new(in_flight.clone());
            next.lease = Some(Lease {
                owner: self.inner.config.instance_id.clone(),
                until: self
                    .now_for(&in_flight.payment)
                    .plus(self.inner.config.lease),
            });
            let expected = Expected {
                version,
                status: in_flight.payment.status,
            };
            renewing.writing.store(true, Ordering::SeqCst);
            let written = self.inner.store.update(&next, expected).await;
            renewing.writing.store(false, Ordering::SeqCst);
            match written {
                Ok(v) => {
                    version = v;
                    unanswered.clear();
                    *renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some((v, next.lease));
                    if renewing.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(payment = %in_flight.payment.id, error = %err, "could not renew the lease of an attempt in flight");
                    // A failed write may still have landed (its answer lost), or not
                    // landed at all (an outage): the store says which. Only another
                    // change ends the renewals; one failure must not let the lease
                    // lapse while the processor call is still out.
                    if let Some(lease) = next.lease.clone() {
                        unanswered.push(lease);
                    }
                    renewing.writing.store(true, Ordering::SeqCst);
                    // Boxed: a record held across an await would sit in the attempt's
                    // state (every attempt moves it), not only in failing renewals.
                    let held = self
                        .inner
                        .store
                        .get(&in_flight.payment.id)
                        .await
                        .map(|held| held.map(Box::new));
                    renewing.writing.store(false, Ordering::SeqCst);
                    let status = in_flight.payment.status;
                    let won_by_another = match held {
                        // Not written: renew again at the next period.
                        Ok(Some(current))
                            if current.version == version && current.payment.status == status =>
                        {
                            false
                        }
                        // Written: go on from it. Only a lease this loop wrote (its
                        // owner and expiry to the millisecond) is taken for its own:
                        // a claim by this instance's scheduler after the lease lapsed
                        // is another change.
                        Ok(Some(current))
                            if current.version == version + 1
                                && current.payment.status == status
                                && current
                                    .lease
                                    .as_ref()
                                    .is_some_and(|l| unanswered.contains(l)) =>
                        {
                            version = current.version;
                            unanswered.clear();
                            *renewed.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some((version, current.lease));
                            false
                        }
                        // The store did not answer: try again; a renewal that landed
                        // is found by the next failure's read.
                        Err(_) => false,
                        // Another change won: its writer replays the attempt with the
                        // same key, and this attempt's outcome write will be refused.
                        Ok(_) => true,
                    };
                    if won_by_another && !renewing.stop.load(Ordering::SeqCst) {
                        return std::future::pending().await;
                    }
                    if renewing.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
    }

    /// The locks a checked attempt holds: its card's (`PaymentRecord::card_key`),
    /// and for a fingerprinted card also the keys earlier releases gave it
    /// (`PaymentRecord::earlier_card_keys`), which payments made before an upgrade
    /// take. This process's first, then the store's (one
    /// lock for both), each in key order everywhere, so two takers never wait on each
    /// other.
    async fn lock_cards(&self, record: &PaymentRecord) -> Result<HeldCard, StoreError> {
        let mut cards = vec![record.card_key().into_owned()];
        cards.extend(record.earlier_card_keys());
        cards.sort();
        let mut local = Vec::with_capacity(cards.len());
        for card in &cards {
            let lock = {
                let mut locks = self
                    .inner
                    .card_locks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                locks
                    .entry(card.clone())
                    .or_insert_with(|| Arc::new(futures::lock::Mutex::new(())))
                    .clone()
            };
            local.push(lock.lock_owned().await);
        }
        let keys: Vec<&str> = cards.iter().map(String::as_str).collect();
        let store = self.inner.store.lock_cards(&keys).await?;
        Ok(HeldCard {
            engine: self.clone(),
            cards,
            store: Some(store),
            local,
        })
    }
}

/// A card's locks, released on drop (the store's, then this process's).
pub(super) struct HeldCard {
    engine: Engine,
    cards: Vec<String>,
    store: Option<offsession_core::CardLock>,
    local: Vec<futures::lock::OwnedMutexGuard<()>>,
}

impl HeldCard {
    /// The store's part of the lock, for the write made under it (which releases it).
    fn take_store_lock(&mut self) -> Option<offsession_core::CardLock> {
        self.store.take()
    }
}

impl Drop for HeldCard {
    fn drop(&mut self) {
        // The store's lock first: a waiter in this process then finds it free.
        drop(self.store.take());
        self.local.clear();
        // Forget a card's lock once nobody holds or waits for it.
        let mut locks = self
            .engine
            .inner
            .card_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for card in &self.cards {
            if locks
                .get(card)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                locks.remove(card);
            }
        }
    }
}

/// Between an attempt in flight and the renewal of its lease: whether a renewal is
/// being written, and whether the answer came (renew no more).
#[derive(Debug, Default)]
pub(super) struct Renewing {
    writing: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
}
