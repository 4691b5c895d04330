//! Manual operations: cancel, pause, resume and capture, each a checked transition.

use super::*;

/// Retries of a manual operation that lost a race with the scheduler.
const MANUAL_OPERATION_TRIES: usize = 3;

/// A manual operation the payment's status does not allow.
fn refusal(refused: offsession_core::TransitionRefused) -> ApiError {
    let message = if refused.from == PaymentStatus::Processing {
        format!("{refused}: an authorization attempt is in flight or its outcome is being reconciled with the processor; retry once the payment leaves `processing`")
    } else {
        refused.to_string()
    };
    ApiError::new(ErrorCode::OffSessionPaymentInvalidStatus, message)
}

/// A held authorization that a capture, or the scheduler's expiry, is working on (a
/// live hold on a `requires_capture` payment): capture and cancel wait for it rather
/// than take it over, which would send a second capture or release the authorization
/// under a capture in flight.
fn authorization_in_use(record: &PaymentRecord, now: Timestamp) -> Result<(), ApiError> {
    let held = record.lease.as_ref().is_some_and(|lease| lease.until > now);
    if record.payment.status == PaymentStatus::RequiresCapture && held {
        return Err(ApiError::new(
            ErrorCode::OffSessionPaymentConcurrentUpdate,
            "a capture or the authorization's expiry is under way for this payment; retry shortly",
        ));
    }
    Ok(())
}

/// A manual operation under an idempotency key: `"<operation>:<key>"`, as the payment
/// record keeps it.
fn operation_tag(operation: &str, key: Option<&str>) -> Option<String> {
    key.map(|key| format!("{operation}:{key}"))
}

impl Engine {
    /// Whether the operation `tag` was applied to `record` within the idempotency
    /// keys' lifetime.
    fn applied_before(&self, record: &PaymentRecord, tag: Option<&String>) -> bool {
        let since = self.now().as_millis() - self.inner.config.idempotency_ttl.as_millis() as i64;
        tag.is_some_and(|tag| record.applied(tag, since))
    }

    pub(super) async fn manual<F>(
        &self,
        id: &str,
        tag: Option<String>,
        transition_for: F,
    ) -> Result<OffSessionPayment, ApiError>
    where
        F: Fn(&PaymentRecord) -> Transition,
    {
        let mut last_err = None;
        for _ in 0..MANUAL_OPERATION_TRIES {
            let record = self.stored(id).await?;
            // Done already under this key (its answer was lost): the payment as it is.
            if self.applied_before(&record, tag.as_ref()) {
                return Ok(record.payment);
            }
            // Registered before the clock is read, as a capture's (see there).
            let t = transition_for(&record);
            let _clock_hold = (matches!(t, Transition::Cancel)
                && record.payment.status == PaymentStatus::RequiresCapture)
                .then(|| self.clock_hold(&record.payment))
                .flatten();
            self.refresh_test_clock(&record.payment).await?;
            let now = self.now_for(&record.payment);
            let to = transition(record.payment.status, t).map_err(refusal)?;
            if matches!(t, Transition::Cancel) {
                authorization_in_use(&record, now)?;
            }
            // A held authorization is released under a hold on the payment, as a
            // capture is made: a capture starting meanwhile finds the hold and answers
            // 409 instead of capturing an authorization being voided.
            let record = if matches!(t, Transition::Cancel)
                && record.payment.status == PaymentStatus::RequiresCapture
            {
                let held = match self.hold(&record, now).await {
                    Ok(held) => held,
                    Err(err @ StoreError::Conflict { .. }) => {
                        last_err = Some(err);
                        continue;
                    }
                    Err(err) => return Err(store_error(err)),
                };
                if let Err(err) = self.release_authorization(&held).await {
                    // Give the hold back: a retry of the cancel, or a capture, runs at
                    // once rather than after the hold lapses.
                    let mut released = held.clone();
                    released.lease = None;
                    if let Err(store_err) = self
                        .inner
                        .store
                        .update(&released, Expected::of(&held))
                        .await
                    {
                        tracing::warn!(payment = %held.payment.id, error = %store_err, "could not give back a failed cancel's hold; it lapses on its own");
                    }
                    return Err(err);
                }
                held
            } else {
                record
            };
            let mut next = record.clone();
            next.payment.status = to;
            next.lease = None;
            if let Some(tag) = &tag {
                next.record_operation(tag.clone(), self.now().as_millis());
            }
            match t {
                Transition::Cancel => {
                    next.due_at = None;
                    next.payment.amount_capturable = None;
                    next.authorization = None;
                }
                Transition::Pause => {
                    next.paused_due_at = record.due_at;
                    next.due_at = None;
                }
                Transition::Resume { .. } => {
                    next.due_at = Some(record.paused_due_at.unwrap_or(now).max(now));
                    next.paused_due_at = None;
                }
                _ => unreachable!("manual operations are cancel, pause and resume"),
            };
            match self
                .commit_change(&next, Expected::of(&record), record.payment.status, now)
                .await
            {
                Ok(_) => return Ok(next.payment),
                Err(err @ StoreError::Conflict { .. }) => last_err = Some(err),
                Err(err) => return Err(store_error(err)),
            }
        }
        Err(store_error(
            last_err.unwrap_or_else(|| StoreError::NotFound(id.to_owned())),
        ))
    }

    /// Cancels a payment that is not processing and not terminal; a held
    /// authorization is released at the processor.
    pub async fn cancel(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        self.cancel_keyed(id, None).await
    }

    /// [`Engine::cancel`] under an idempotency key: a cancel already applied under
    /// `key` (within the keys' lifetime) answers the payment as it is now instead of
    /// running again. The key is written with the change.
    pub async fn cancel_keyed(
        &self,
        id: &str,
        key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        self.manual(id, operation_tag("cancel", key), |_| Transition::Cancel)
            .await
    }

    /// Suspends retries until [`Engine::resume`].
    pub async fn pause(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        self.pause_keyed(id, None).await
    }

    /// [`Engine::pause`] under an idempotency key (see [`Engine::cancel_keyed`]).
    pub async fn pause_keyed(
        &self,
        id: &str,
        key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        self.manual(id, operation_tag("pause", key), |_| Transition::Pause)
            .await
    }

    /// Resumes a paused payment; a retry that fell due meanwhile runs at once.
    pub async fn resume(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        self.resume_keyed(id, None).await
    }

    /// [`Engine::resume`] under an idempotency key (see [`Engine::cancel_keyed`]).
    pub async fn resume_keyed(
        &self,
        id: &str,
        key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        self.manual(id, operation_tag("resume", key), |record| {
            Transition::Resume {
                attempted: record.payment.retry_details.attempts > 0 || record.replay_pending,
            }
        })
        .await
    }

    /// `record` held by this instance for a lease from `now`, written (compare-and-set
    /// on `record`): the scheduler and other requests leave a held payment alone
    /// while its processor call runs.
    async fn hold(
        &self,
        record: &PaymentRecord,
        now: Timestamp,
    ) -> Result<PaymentRecord, StoreError> {
        let mut held = record.clone();
        held.lease = Some(Lease {
            owner: self.inner.config.instance_id.clone(),
            until: now.plus(self.inner.config.lease),
        });
        held.version = self.inner.store.update(&held, Expected::of(record)).await?;
        Ok(held)
    }

    pub(super) async fn release_authorization(
        &self,
        record: &PaymentRecord,
    ) -> Result<(), ApiError> {
        let (Some(processor), Some(reference)) = (
            self.processor(record.latest_processor()),
            record.authorization.as_ref(),
        ) else {
            return Ok(());
        };
        let key = format!("{}:cancel", record.payment.id);
        processor
            .cancel(CancelRequest {
                payment: &record.payment,
                reference,
                idempotency_key: &key,
            })
            .await
            .map_err(|e| ApiError::new(ErrorCode::ApiError, e.to_string()))
    }

    /// Captures a `requires_capture` payment, the whole authorization or
    /// `amount_to_capture` of it. At or after `capture.capture_before` (or the end of
    /// the authorization's validity) the capture is refused: the authorization is
    /// released and the payment ends `failed` / `authorization_expired`.
    pub async fn capture(
        &self,
        id: &str,
        amount_to_capture: Option<i64>,
    ) -> Result<OffSessionPayment, ApiError> {
        self.capture_keyed(id, amount_to_capture, None).await
    }

    /// [`Engine::capture`] under an idempotency key (see [`Engine::cancel_keyed`]).
    pub async fn capture_keyed(
        &self,
        id: &str,
        amount_to_capture: Option<i64>,
        key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        let tag = operation_tag("capture", key);
        let record = self.stored(id).await?;
        if self.applied_before(&record, tag.as_ref()) {
            return Ok(record.payment);
        }
        // Registered before the clock is read: a test clock's advance then waits for
        // this capture, or has moved the clock before it is read.
        let _clock_hold = self.clock_hold(&record.payment);
        self.refresh_test_clock(&record.payment).await?;
        let now = self.now_for(&record.payment);
        let to = transition(record.payment.status, Transition::Capture).map_err(refusal)?;
        // Before the deadline check: past it, the expiry would release the
        // authorization under a capture another request is making.
        authorization_in_use(&record, now)?;
        // The earlier of the scheduled expiry and the authorization's own deadline
        // (an expiry whose release failed is scheduled again, past the deadline).
        let deadline = [record.due_at, self.capture_deadline(&record)]
            .into_iter()
            .flatten()
            .min();
        if let Some(expires) = deadline.filter(|expires| now >= *expires) {
            let after = self
                .expire_authorization(Box::new(record), tag.clone())
                .await
                .map_err(store_error)?;
            // The processor may report the authorization captured already (an earlier
            // capture whose write was lost): then the payment is recorded succeeded.
            if after.status == PaymentStatus::Succeeded {
                return Ok(after);
            }
            let what = if after.status == PaymentStatus::Failed {
                "it was released and the payment failed with `authorization_expired`"
            } else {
                "the capture is refused, and releasing it is tried again"
            };
            return Err(ApiError::new(
                ErrorCode::OffSessionPaymentInvalidStatus,
                format!("the authorization expired at {expires}; {what}"),
            ));
        }
        let capturable = record
            .payment
            .amount_capturable
            .unwrap_or(record.payment.amount_requested);
        let value = amount_to_capture.unwrap_or(capturable.value);
        if value <= 0 || value > capturable.value {
            return Err(ApiError::invalid(
                "amount_to_capture",
                format!(
                    "must be between 1 and the capturable amount ({})",
                    capturable.value
                ),
            ));
        }
        let amount = offsession_core::Amount::new(value, capturable.currency);
        let processor = self.processor(record.latest_processor()).ok_or_else(|| {
            ApiError::new(
                ErrorCode::ApiError,
                format!(
                    "processor `{}` is not configured",
                    record.latest_processor()
                ),
            )
        })?;
        // Hold the payment while the processor captures: the scheduler claims a
        // `requires_capture` payment when its authorization expires, to release it and
        // fail it, and must not do that to one whose capture is under way (nor may a
        // test clock's advance pass the hold meanwhile: `_clock_hold` above).
        let mut record = self.hold(&record, now).await.map_err(store_error)?;
        let reference = record.authorization.clone().unwrap_or_default();
        // One key per capture generation: a capture refused while the authorization
        // stayed held gets a new key, so its retry is not answered the stored error.
        let key = match record.capture_generation {
            0 => format!("{}:capture", record.payment.id),
            n => format!("{}:capture:{n}", record.payment.id),
        };
        // The hold is renewed while the processor works, however long it takes.
        let call = processor.capture(CaptureRequest {
            payment: &record.payment,
            reference: &reference,
            amount,
            idempotency_key: &key,
        });
        let (captured, renewal) = self.renewing_lease(&record, call).await;
        if let Some((version, lease)) = renewal {
            record.version = version;
            record.lease = lease;
        }
        // An error may come after the processor captured: an answer lost on the way,
        // or an error stored under the key after execution started, which the
        // processor repeats to every retry of the key. Ask it before giving up.
        let mut still_held = false;
        let captured = match captured {
            Err(err) => match processor.authorization_state(&reference).await {
                Ok(Some(offsession_core::AuthorizationState::Captured)) => {
                    tracing::warn!(payment = %record.payment.id, error = %err, "the capture answered an error, but the processor reports the authorization captured; recording the capture");
                    Ok(())
                }
                Ok(Some(offsession_core::AuthorizationState::Held)) => {
                    still_held = true;
                    Err(err)
                }
                _ => Err(err),
            },
            ok => ok,
        };
        if let Err(err) = captured {
            // The hold goes with the failed capture, so a retry (the same processor
            // key, which the processor answers once) or a cancel runs at once, not
            // after the lease lapses. The capture may still be executing at the
            // processor (a timeout), so the authorization's expiry, which would
            // release it, waits until the hold (as last renewed) would have lapsed. A
            // change made meanwhile is left alone.
            let mut released = record.clone();
            if still_held {
                // Not captured: the next capture may go under a key of its own.
                released.capture_generation += 1;
            }
            let hold_until = released.lease.take().map(|lease| lease.until);
            released.due_at = record
                .due_at
                .map(|due| hold_until.map_or(due, |until| due.max(until)));
            if let Err(store_err) = self
                .inner
                .store
                .update(&released, Expected::of(&record))
                .await
            {
                tracing::warn!(payment = %record.payment.id, error = %store_err, "could not give back a failed capture's hold; it lapses on its own");
            }
            return Err(ApiError::new(ErrorCode::ApiError, err.to_string()));
        }
        let mut next = self.as_captured(&record, to);
        if let Some(tag) = tag {
            next.record_operation(tag, self.now().as_millis());
        }
        self.commit_change(&next, Expected::of(&record), record.payment.status, now)
            .await
            .map_err(store_error)?;
        Ok(next.payment)
    }

    /// `record` once its authorization is captured: `to` (succeeded), nothing left
    /// to capture, its payment record made, nothing scheduled.
    pub(super) fn as_captured(&self, record: &PaymentRecord, to: PaymentStatus) -> PaymentRecord {
        let mut next = record.clone();
        next.payment.status = to;
        next.payment.amount_capturable = None;
        next.payment.payment_record = Some(self.inner.ids.next_id("pr"));
        next.due_at = None;
        next.lease = None;
        next
    }
}
