//! Intake: validate, preflight, route and store a new payment (`pending`).

use super::*;

fn cadence_label(cadence: offsession_core::Cadence) -> &'static str {
    match cadence {
        offsession_core::Cadence::Recurring => "recurring",
        offsession_core::Cadence::Unscheduled => "unscheduled",
    }
}

/// A create request's fingerprint, for idempotency keys.
fn fingerprint(text: &str) -> String {
    format!("{:016x}", offsession_core::hash::fnv1a(text))
}

impl Engine {
    /// Creates a payment from a JSON body.
    pub async fn create_json(
        &self,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        let request = parse_create(body)?;
        self.create(&request, idempotency_key).await
    }

    /// [`Engine::create_json`], telling whether the payment answered is one an earlier
    /// request under the same idempotency key made (a replay).
    pub async fn create_json_replayed(
        &self,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<(OffSessionPayment, bool), ApiError> {
        let request = parse_create(body)?;
        self.create_answer(&request, idempotency_key).await
    }

    /// Validates, preflights and stores a payment (`pending`). With an idempotency
    /// key, a repeat of the same request returns the original payment and a different
    /// request with the same key is an `idempotency_error`.
    pub async fn create(
        &self,
        request: &CreateOffSessionPayment,
        idempotency_key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        self.create_answer(request, idempotency_key)
            .await
            .map(|(payment, _)| payment)
    }

    /// [`Engine::create`], and whether the payment is an earlier request's (a replay).
    async fn create_answer(
        &self,
        request: &CreateOffSessionPayment,
        idempotency_key: Option<&str>,
    ) -> Result<(OffSessionPayment, bool), ApiError> {
        let request_fingerprint = idempotency_key
            .map(|_| fingerprint(&serde_json::to_string(request).unwrap_or_default()));
        // A key already registered answers before anything else is checked: a retry
        // gets its payment even when the request would no longer pass validation or
        // preflight (a date since passed, a card detached), so a client never reads
        // "nothing was made" and creates again under a new key.
        if let Some(key) = idempotency_key {
            let registered = self
                .inner
                .store
                .idempotency_key(
                    key,
                    self.inner.clock.now(),
                    self.inner.config.idempotency_ttl,
                )
                .await
                .map_err(store_error)?;
            if let Some((original, payment_id)) = registered {
                return self
                    .existing_for_key(key, &original, request_fingerprint.as_deref(), &payment_id)
                    .await
                    .map(|payment| (payment, true));
            }
        }
        let clock_now = match &request.test_clock {
            Some(id) if !self.inner.config.livemode => match self.load_test_clock(id).await? {
                Some(clock) => clock.now(),
                None => {
                    return Err(ApiError::invalid(
                        "test_clock",
                        format!("no test clock `{id}`"),
                    ))
                }
            },
            _ => self.inner.clock.now(),
        };
        let valid = validate_create(
            request,
            &CreateRules {
                livemode: self.inner.config.livemode,
                now: clock_now,
                retry_policies: &self.inner.policies.names,
            },
        )?;
        // Preflight asks the first configured processor; routing then uses the facts.
        let processor = self.inner.processors.list[0].clone();
        let mut payment = self.new_payment(&valid, clock_now);
        let mut method = processor.preflight(&payment).await?;
        // The fingerprint is this processor's, whichever processor the route picks.
        if let Some(card) = method.card.as_mut().filter(|c| c.fingerprint.is_some()) {
            card.fingerprint_by = Some(processor.id().to_owned());
        }
        let resolved = resolve_for_method(
            &valid,
            &method,
            &MethodRules {
                supported_types: &self.inner.processors.supported_types,
                ach_retries_enabled: self.inner.config.ach_retries_enabled,
                sepa_debit_retries_enabled: self.inner.config.sepa_debit_retries_enabled,
                available: &self.inner.policies.available,
                default_policy: &self.inner.config.default_retry_policy,
            },
        )?;
        payment.retry_details.retry_strategy = resolved.strategy;
        payment.retry_details.retry_policy = resolved.policy;
        let mut route =
            self.inner
                .processors
                .router
                .route(&payment, &method, &self.inner.processors.list)?;
        if !payment.orchestrated() {
            // Without orchestration a payment stays on its primary processor.
            route.truncate(1);
        }

        let due = valid
            .target_date
            .as_ref()
            .map(|(_, at)| (*at).max(clock_now))
            .unwrap_or(clock_now);
        let mut record = PaymentRecord::new(payment.clone(), route.remove(0), Some(method), due);
        record.fallbacks = route;
        let key = idempotency_key
            .zip(request_fingerprint.as_deref())
            .map(|(key, fingerprint)| offsession_core::NewIdempotencyKey {
                key,
                fingerprint,
                now: self.inner.clock.now(),
                ttl: self.inner.config.idempotency_ttl,
            });
        let events = self.build_events(&[EventType::Created], &payment, clock_now);
        // The key, the payment and its event are written together: a key never maps
        // to a payment that does not exist.
        match self
            .inner
            .store
            .create_owned(record, key, &events)
            .await
            .map_err(store_error)?
        {
            IdempotencyClaim::Inserted => self.publish(events, &payment),
            IdempotencyClaim::Existing {
                fingerprint: original,
                payment_id,
            } => {
                return self
                    .existing_for_key(
                        idempotency_key.unwrap_or_default(),
                        &original,
                        request_fingerprint.as_deref(),
                        &payment_id,
                    )
                    .await
                    .map(|payment| (payment, true));
            }
        }
        metrics::counter!(
            "offsession_payments_created_total",
            "cadence" => cadence_label(payment.cadence),
            "strategy" => payment.retry_details.retry_strategy.as_str()
        )
        .increment(1);
        Ok((payment, false))
    }

    /// The answer to a create whose key is registered: the original payment when the
    /// request is the same, else an `idempotency_error`.
    async fn existing_for_key(
        &self,
        key: &str,
        original: &str,
        request: Option<&str>,
        payment_id: &str,
    ) -> Result<OffSessionPayment, ApiError> {
        if Some(original) != request {
            return Err(ApiError::new(
                ErrorCode::IdempotencyError,
                format!("idempotency key `{key}` was used with a different request"),
            ));
        }
        self.retrieve(payment_id).await
    }

    pub(super) fn new_payment(&self, valid: &ValidCreate, now: Timestamp) -> OffSessionPayment {
        OffSessionPayment {
            id: self.inner.ids.next_id("osp"),
            object: ObjectTag::OffSessionPayment,
            amount_requested: valid.amount,
            amount_capturable: None,
            compartment_id: self.inner.config.compartment_id.clone(),
            cadence: valid.cadence,
            capture: valid.capture,
            created: now,
            customer: valid.customer.clone(),
            payment_method: valid.payment_method.clone(),
            metadata: valid.metadata.clone(),
            on_behalf_of: valid.on_behalf_of.clone(),
            transfer_data: valid.transfer_data.clone(),
            application_fee_amount_requested: valid.application_fee_amount,
            statement_descriptor: valid.statement_descriptor.clone(),
            statement_descriptor_suffix: valid.statement_descriptor_suffix.clone(),
            description: valid.description.clone(),
            payment_details: valid.payment_details.clone(),
            payment_method_options: valid.payment_method_options.clone(),
            payments_orchestration: valid.payments_orchestration,
            retry_details: RetryDetails {
                attempts: 0,
                retry_strategy: RetryStrategy::None,
                retry_policy: None,
                retry_until: valid.retry_until,
            },
            status: PaymentStatus::Pending,
            failure_reason: None,
            last_authorization_attempt_error: None,
            latest_payment_attempt_record: None,
            payment_record: None,
            target_date: valid.target_date.as_ref().map(|(text, _)| text.clone()),
            test_clock: valid.test_clock.clone(),
            livemode: self.inner.config.livemode,
        }
    }
}
