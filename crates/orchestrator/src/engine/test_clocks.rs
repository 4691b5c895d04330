//! Test clocks: frozen times the API can advance, running the attempts due on the way.

use super::*;

impl Engine {
    /// Creates a test clock frozen at `frozen_time`, kept in the store so that it
    /// survives a restart and every instance sees it. Refused in live mode.
    pub async fn create_test_clock(&self, frozen_time: Timestamp) -> Result<TestClock, ApiError> {
        self.create_named_test_clock(frozen_time, None).await
    }

    /// [`Engine::create_test_clock`] with a name, kept with the clock.
    pub async fn create_named_test_clock(
        &self,
        frozen_time: Timestamp,
        name: Option<&str>,
    ) -> Result<TestClock, ApiError> {
        if self.inner.config.livemode {
            return Err(ApiError::new(
                ErrorCode::OffSessionPaymentTestClockInLivemode,
                "test clocks are not available in live mode",
            ));
        }
        let id = self.inner.ids.next_id("clock");
        let created = self.now();
        // What does not change (written first: a clock found is a clock described).
        let about = serde_json::json!({"created": created.as_millis(), "name": name});
        self.inner
            .store
            .save_state(&about_key(&id), &about.to_string())
            .await
            .map_err(store_error)?;
        self.save_test_clock(&id, frozen_time).await?;
        self.inner
            .test_clocks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(ManualClock::new(frozen_time)));
        Ok(TestClock {
            id,
            frozen_time,
            created: Some(created),
            name: name.map(str::to_owned),
        })
    }

    /// Test clock `id` at `frozen_time`, with its creation time and name.
    async fn described(&self, id: &str, frozen_time: Timestamp) -> Result<TestClock, ApiError> {
        let about: serde_json::Value = self
            .inner
            .store
            .load_state(&about_key(id))
            .await
            .map_err(store_error)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        Ok(TestClock {
            id: id.to_owned(),
            frozen_time,
            created: about["created"].as_i64().map(Timestamp::from_millis),
            name: about["name"].as_str().map(str::to_owned),
        })
    }

    /// A test clock and its current time.
    pub async fn retrieve_test_clock(&self, id: &str) -> Result<TestClock, ApiError> {
        let clock = self.load_test_clock(id).await?.ok_or_else(|| {
            ApiError::new(ErrorCode::ResourceMissing, format!("no test clock `{id}`"))
        })?;
        self.described(id, clock.now()).await
    }

    /// Moves a test clock to `to`, running, in order, exactly the attempts (and
    /// authorization expiries) of its payments that fall due on the way.
    pub async fn advance_test_clock(&self, id: &str, to: Timestamp) -> Result<TestClock, ApiError> {
        self.advance_test_clock_unless(id, to, &std::sync::atomic::AtomicBool::new(false))
            .await
    }

    /// [`Engine::advance_test_clock`], stopping between two steps once `stop` is set
    /// (an advance that lost its claim to another instance): the clock then stays at
    /// the last step reached.
    pub async fn advance_test_clock_unless(
        &self,
        id: &str,
        to: Timestamp,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<TestClock, ApiError> {
        let stopped = || {
            ApiError::new(
                ErrorCode::OffSessionPaymentConcurrentUpdate,
                format!("the advance of test clock `{id}` lost its claim and stopped"),
            )
        };
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
        // Claims that found a due record and took nothing, in a row.
        let mut idle = 0u32;
        loop {
            let next = self
                .inner
                .store
                .next_due(&scope)
                .await
                .map_err(store_error)?;
            match next {
                Some(due) if due <= to => {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        return Err(stopped());
                    }
                    // A capture or cancel under way here holds its payment on this
                    // clock's time: let it finish before the clock passes its hold
                    // (the clock is set under the holds' lock, which a new hold takes
                    // before it reads the time).
                    self.set_clock_past_holds(id, &clock, due).await;
                    self.save_test_clock(id, due).await?;
                    let report = self
                        .run_scope(&scope, clock.now())
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::ApiError, e.to_string()))?;
                    if report.handled > 0 {
                        idle = 0;
                    } else {
                        // A due record the claim skipped: locked by another
                        // transaction for a moment (Postgres' `SKIP LOCKED`), or
                        // written meanwhile. Jumping to `to` would leave it behind, to
                        // be attempted later than its time: look again shortly, and
                        // give up only after a second of nothing to take.
                        idle += 1;
                        if idle > 20 {
                            tracing::warn!(clock = %id, %due, "a due payment stayed out of reach while the test clock advanced; it runs on a later advance");
                            break;
                        }
                        futures_timer::Delay::new(std::time::Duration::from_millis(50)).await;
                    }
                }
                _ => break,
            }
        }
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return Err(stopped());
        }
        clock.set(to);
        self.save_test_clock(id, to).await?;
        self.described(id, clock.now()).await
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

    /// Saves a test clock's time, forward only: of two instances saving one clock at
    /// once, the later time stays (a compare-and-set on the stored time).
    async fn save_test_clock(&self, id: &str, at: Timestamp) -> Result<(), ApiError> {
        let key = test_clock_key(id);
        let store = &self.inner.store;
        for _ in 0..CLOCK_SAVE_TRIES {
            let saved = store.load_state(&key).await.map_err(store_error)?;
            if saved
                .as_deref()
                .and_then(|text| text.parse::<i64>().ok())
                .is_some_and(|stored| stored >= at.as_millis())
            {
                return Ok(());
            }
            let value = at.as_millis().to_string();
            if store
                .swap_state(&key, saved.as_deref(), &value)
                .await
                .map_err(store_error)?
            {
                return Ok(());
            }
        }
        Err(ApiError::new(
            ErrorCode::OffSessionPaymentConcurrentUpdate,
            format!("test clock `{id}` kept changing while it was saved; retry"),
        ))
    }

    /// Claims the right to advance test clock `id`, for every instance sharing the
    /// store: the claim's holder (this instance and this advance), or `None` when
    /// another advance of it is under way (here or on another instance). A claim whose
    /// instance stopped lapses [`ADVANCE_LEASE`] after it was last renewed: its holder
    /// renews it ([`Engine::renew_test_clock_advance`]) while it advances, and releases
    /// it ([`Engine::release_test_clock_advance`]) after.
    pub async fn claim_test_clock_advance(&self, id: &str) -> Result<Option<String>, ApiError> {
        let saved = self.saved_advance_claim(id).await?;
        if self.live(saved.as_deref()) {
            return Ok(None);
        }
        let holder = format!(
            "{}/{}",
            self.inner.config.instance_id,
            self.inner.ids.next_id("advance")
        );
        let claimed = self
            .inner
            .store
            .swap_state(
                &advance_key(id),
                saved.as_deref(),
                &self.advance_claim(&holder),
            )
            .await
            .map_err(store_error)?;
        Ok(claimed.then_some(holder))
    }

    /// Ends `holder`'s claim on advancing test clock `id` (a claim another advance took
    /// over after this one's lapsed is left alone).
    pub async fn release_test_clock_advance(&self, id: &str, holder: &str) -> Result<(), ApiError> {
        if let Some(text) = self.held_by(id, holder).await? {
            self.inner
                .store
                .remove_state_if(&advance_key(id), &text)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// Whether an advance of test clock `id` is under way on any instance.
    pub async fn test_clock_advancing(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.live(self.saved_advance_claim(id).await?.as_deref()))
    }

    /// Renews `holder`'s claim on advancing `id` for another [`ADVANCE_LEASE`];
    /// `false` when it no longer holds it (it lapsed and another advance took it, or
    /// it was released): the advance must stop.
    pub async fn renew_test_clock_advance(&self, id: &str, holder: &str) -> Result<bool, ApiError> {
        let Some(text) = self.held_by(id, holder).await? else {
            return Ok(false);
        };
        self.inner
            .store
            .swap_state(&advance_key(id), Some(&text), &self.advance_claim(holder))
            .await
            .map_err(store_error)
    }

    /// The stored claim on advancing `id`, as text.
    async fn saved_advance_claim(&self, id: &str) -> Result<Option<String>, ApiError> {
        self.inner
            .store
            .load_state(&advance_key(id))
            .await
            .map_err(store_error)
    }

    /// The stored claim on advancing `id` if `holder` holds it, as text (what a swap
    /// or a removal expects).
    async fn held_by(&self, id: &str, holder: &str) -> Result<Option<String>, ApiError> {
        Ok(self
            .saved_advance_claim(id)
            .await?
            .filter(|text| AdvanceClaim::parse(text).is_some_and(|c| c.by == holder)))
    }

    /// Whether a stored claim still holds (not lapsed).
    fn live(&self, saved: Option<&str>) -> bool {
        saved
            .and_then(AdvanceClaim::parse)
            .is_some_and(|claim| claim.until > self.now().as_millis())
    }

    fn advance_claim(&self, holder: &str) -> String {
        serde_json::json!({
            "by": holder,
            "until": self.now().as_millis() + ADVANCE_LEASE.as_millis() as i64,
        })
        .to_string()
    }
}

/// Tries at saving a test clock's time against other instances' saves.
const CLOCK_SAVE_TRIES: usize = 8;

/// How long a claim on advancing a test clock holds without renewal.
pub const ADVANCE_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// A stored claim on advancing a test clock: its holder (instance and advance) and
/// until when (engine time, milliseconds).
struct AdvanceClaim {
    by: String,
    until: i64,
}

impl AdvanceClaim {
    fn parse(text: &str) -> Option<AdvanceClaim> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(AdvanceClaim {
            by: value["by"].as_str()?.to_owned(),
            until: value["until"].as_i64()?,
        })
    }
}

fn test_clock_key(id: &str) -> String {
    format!("test_clock/{id}")
}

fn about_key(id: &str) -> String {
    format!("test_clock_about/{id}")
}

fn advance_key(id: &str) -> String {
    format!("test_clock_advancing/{id}")
}

/// A capture or cancel under way on a payment of a test clock. Its hold on the
/// payment is measured on the test clock, so an advance past the hold's end would
/// take the payment from under it (and expire the authorization being captured): the
/// clock's advances in this process wait until it is dropped.
pub(super) struct ClockHold {
    engine: Engine,
    clock: String,
}

impl Drop for ClockHold {
    fn drop(&mut self) {
        let mut holds = self
            .engine
            .inner
            .clock_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = holds.get_mut(&self.clock) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.clock);
            }
        }
    }
}

impl Engine {
    /// Registers a capture or cancel under way on `payment`, when it is on a test
    /// clock, until the returned guard is dropped.
    pub(super) fn clock_hold(&self, payment: &OffSessionPayment) -> Option<ClockHold> {
        let clock = payment.test_clock.clone()?;
        *self
            .inner
            .clock_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(clock.clone())
            .or_default() += 1;
        Some(ClockHold {
            engine: self.clone(),
            clock,
        })
    }

    /// Sets test clock `id` to `to` once no capture or cancel is under way on it in
    /// this process (waiting at most a minute: a hold that long is one whose processor
    /// call hangs, and the advance is not held up forever). The clock is set under the
    /// holds' lock, so a hold taken meanwhile reads the new time.
    async fn set_clock_past_holds(&self, id: &str, clock: &ManualClock, to: Timestamp) {
        let started = std::time::Instant::now();
        loop {
            {
                let holds = self
                    .inner
                    .clock_holds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let waited_long = started.elapsed() > std::time::Duration::from_secs(60);
                if holds.get(id).is_none_or(|n| *n == 0) || waited_long {
                    if waited_long {
                        tracing::warn!(clock = %id, "a capture or cancel on this test clock has been under way for a minute; advancing past its hold");
                    }
                    clock.set(to);
                    return;
                }
            }
            futures_timer::Delay::new(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two instances saving one clock in either order leave the later time: the
    /// earlier save, arriving last, does not move the clock back.
    #[tokio::test]
    async fn a_clock_is_saved_forward_only() {
        let store: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::new());
        let engine = Engine::builder()
            .processor(Arc::new(offsession_mock::MockProcessor::new(
                "mock",
                offsession_mock::MockConfig::default(),
            )))
            .store(store.clone())
            .build()
            .unwrap();
        let start = Timestamp::from_millis(1_767_225_600_000);
        let clock = engine.create_test_clock(start).await.unwrap();
        let stored = || async {
            store
                .load_state(&test_clock_key(&clock.id))
                .await
                .unwrap()
                .unwrap()
        };
        let later = start.plus(Duration::from_secs(2 * 86_400));
        engine.save_test_clock(&clock.id, later).await.unwrap();
        engine
            .save_test_clock(&clock.id, start.plus(Duration::from_secs(86_400)))
            .await
            .unwrap();
        assert_eq!(stored().await, later.as_millis().to_string());
        // Saving the same time again is no change and no error.
        engine.save_test_clock(&clock.id, later).await.unwrap();
        assert_eq!(stored().await, later.as_millis().to_string());
    }
}
