//! The simulated issuers as a `Processor`: answers from the population, the money
//! each approval takes, and idempotent replays.

use super::*;

/// A processor whose answers come from a [`Population`]'s issuers.
#[derive(Debug)]
pub struct SimulatedIssuer {
    id: String,
    population: Arc<Population>,
    clock: Arc<dyn Clock>,
    capabilities: Capabilities,
    charged: Mutex<HashMap<u64, f64>>,
    answered: Mutex<HashMap<String, AttemptOutcome>>,
}

impl SimulatedIssuer {
    /// A processor `id` for `population`, reading time from `clock`.
    pub fn new(id: &str, population: Arc<Population>, clock: Arc<dyn Clock>) -> SimulatedIssuer {
        SimulatedIssuer {
            id: id.into(),
            population,
            clock,
            capabilities: Capabilities {
                payment_method_types: vec![
                    PaymentMethodType::Card,
                    PaymentMethodType::UsBankAccount,
                    PaymentMethodType::SepaDebit,
                ],
                currencies: Vec::new(),
                connect: true,
                manual_capture: true,
            },
            charged: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        }
    }

    fn customer(&self, payment_method: &str) -> Option<&Customer> {
        self.population.customer_of(payment_method)
    }
}

#[async_trait]
impl Processor for SimulatedIssuer {
    fn id(&self) -> &str {
        &self.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        let customer = self
            .customer(&payment.payment_method)
            .ok_or_else(|| ApiError::invalid("payment_method", "not a simulated card"))?;
        Ok(customer.method_details())
    }

    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        if let Some(outcome) = self
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(request.idempotency_key)
        {
            return outcome.clone();
        }
        let Some(customer) = self.customer(&request.payment.payment_method) else {
            return AttemptOutcome::fault(
                offsession_core::FaultKind::Refused,
                "unknown simulated card",
            );
        };
        let amount = request.payment.amount_requested.value;
        let charged = self
            .charged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&customer.index)
            .copied()
            .unwrap_or(0.0);
        let outcome = match self
            .population
            .answer(customer, amount, self.clock.now(), charged)
        {
            None => {
                *self
                    .charged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(customer.index)
                    .or_default() += amount as f64;
                AttemptOutcome::Approved {
                    reference: ProcessorReference::default(),
                }
            }
            Some(codes) => AttemptOutcome::Declined {
                codes,
                reference: ProcessorReference::default(),
            },
        };
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.idempotency_key.to_owned(), outcome.clone());
        outcome
    }

    async fn capture(&self, _request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn cancel(&self, _request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }
}
