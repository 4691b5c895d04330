//! Test clocks: frozen times the API can advance, running the attempts due on the way.

use super::*;

impl Engine {
    /// Creates a test clock frozen at `frozen_time`, kept in the store so that it
    /// survives a restart and every instance sees it. Refused in live mode.
    pub async fn create_test_clock(&self, frozen_time: Timestamp) -> Result<TestClock, ApiError> {
        if self.inner.config.livemode {
            return Err(ApiError::new(
                ErrorCode::OffSessionPaymentTestClockInLivemode,
                "test clocks are not available in live mode",
            ));
        }
        let id = self.inner.ids.next_id("clock");
        self.save_test_clock(&id, frozen_time).await?;
        self.inner
            .test_clocks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(ManualClock::new(frozen_time)));
        Ok(TestClock { id, frozen_time })
    }

    /// A test clock and its current time.
    pub async fn retrieve_test_clock(&self, id: &str) -> Result<TestClock, ApiError> {
        let clock = self.load_test_clock(id).await?.ok_or_else(|| {
            ApiError::new(ErrorCode::ResourceMissing, format!("no test clock `{id}`"))
        })?;
        Ok(TestClock {
            id: id.to_owned(),
            frozen_time: clock.now(),
        })
    }

    /// Moves a test clock to `to`, running, in order, exactly the attempts (and
    /// authorization expiries) of its payments that fall due on the way.
    pub async fn advance_test_clock(&self, id: &str, to: Timestamp) -> Result<TestClock, ApiError> {
        let clock = self.load_test_clock(id).await?.ok_or_else(|| {
            ApiError::new(ErrorCode::ResourceMissing, format!("no test clock `{id}`"))
        })?;
        if to < clock.now() {
            return Err(ApiError::invalid(
                "frozen_time",
                format!(
                    "must not be before the clock's current time {}",
                    clock.now()
                ),
            ));
        }
        let scope = ClockScope::TestClock(id.to_owned());
        loop {
            let next = self
                .inner
                .store
                .next_due(&scope)
                .await
                .map_err(store_error)?;
            match next {
                Some(due) if due <= to => {
                    clock.set(due);
                    self.save_test_clock(id, due).await?;
                    let report = self
                        .run_scope(&scope, clock.now())
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::ApiError, e.to_string()))?;
                    if report.handled == 0 {
                        // Due records held by another instance's lease: nothing this
                        // instance may do until the lease lapses.
                        break;
                    }
                }
                _ => break,
            }
        }
        clock.set(to);
        self.save_test_clock(id, to).await?;
        Ok(TestClock {
            id: id.to_owned(),
            frozen_time: clock.now(),
        })
    }

    /// The test clock `id` as the store has it: another instance sharing the store
    /// may have advanced it since this one last looked (or this one restarted). The
    /// clock in memory moves forward to the stored time, never back: an advance under
    /// way here sets it before it saves.
    pub(super) async fn load_test_clock(
        &self,
        id: &str,
    ) -> Result<Option<Arc<ManualClock>>, ApiError> {
        let saved = self
            .inner
            .store
            .load_state(&test_clock_key(id))
            .await
            .map_err(store_error)?;
        let Some(stored) = saved
            .and_then(|text| text.parse::<i64>().ok())
            .map(Timestamp::from_millis)
        else {
            return Ok(self.test_clock(id));
        };
        let clock = self
            .inner
            .test_clocks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(ManualClock::new(stored)))
            .clone();
        // `set` moves a clock forward only.
        clock.set(stored);
        Ok(Some(clock))
    }

    /// Reads a payment's test clock from the store (see `load_test_clock`), so that
    /// `now_for` tells its time after a restart or another instance's advance.
    pub(super) async fn refresh_test_clock(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<(), ApiError> {
        if let Some(id) = &payment.test_clock {
            self.load_test_clock(id).await?;
        }
        Ok(())
    }

    async fn save_test_clock(&self, id: &str, at: Timestamp) -> Result<(), ApiError> {
        self.inner
            .store
            .save_state(&test_clock_key(id), &at.as_millis().to_string())
            .await
            .map_err(store_error)
    }
}

fn test_clock_key(id: &str) -> String {
    format!("test_clock/{id}")
}
