//! The learned state: saved, restored, and folded across instances.

use super::*;

impl SmartPolicy {
    /// The learned state.
    pub fn state(&self) -> SmartState {
        let model = self.model.read().unwrap_or_else(|p| p.into_inner());
        SmartState {
            version: 1,
            weights: model.weights.clone(),
            squared_gradients: model.squared_gradients.clone(),
            observations: model.observations,
            evidence: self.evidence(),
        }
    }

    /// Replaces the model with a saved state.
    pub fn restore(&self, state: SmartState) -> Result<(), StateRefused> {
        if state.version != 1
            || state.weights.len() != DIMENSIONS
            || state.squared_gradients.len() != DIMENSIONS
        {
            return Err(StateRefused {
                version: state.version,
                weights: state.weights.len(),
            });
        }
        self.set_evidence(state.evidence);
        *self.model.write().unwrap_or_else(|p| p.into_inner()) = Model {
            weights: state.weights,
            squared_gradients: state.squared_gradients,
            observations: state.observations,
        };
        Ok(())
    }

    /// Folds what this instance learned since `base` into `stored` (what the store
    /// holds now, written by any instance): the model becomes `stored + (model -
    /// base)`, weights, AdaGrad sums and observations alike, and is returned to be
    /// saved and used as the next `base`. Instances that each reconcile in turn so
    /// learn from every instance's retries, not only their own.
    pub fn reconcile(
        &self,
        base: &SmartState,
        stored: SmartState,
    ) -> Result<SmartState, StateRefused> {
        let refused = |state: &SmartState| StateRefused {
            version: state.version,
            weights: state.weights.len(),
        };
        for state in [base, &stored] {
            if state.version != 1
                || state.weights.len() != DIMENSIONS
                || state.squared_gradients.len() != DIMENSIONS
            {
                return Err(refused(state));
            }
        }
        let mut model = self.model.write().unwrap_or_else(|p| p.into_inner());
        let fold = |local: &mut [f32], base: &[f32], stored: &[f32]| {
            for ((l, b), s) in local.iter_mut().zip(base).zip(stored) {
                *l = s + (*l - b);
            }
        };
        fold(&mut model.weights, &base.weights, &stored.weights);
        fold(
            &mut model.squared_gradients,
            &base.squared_gradients,
            &stored.squared_gradients,
        );
        for g in &mut model.squared_gradients {
            *g = g.max(0.0);
        }
        model.observations =
            stored.observations + model.observations.saturating_sub(base.observations);
        let local = self.evidence();
        let evidence: [u64; 4] =
            std::array::from_fn(|i| stored.evidence[i] + local[i].saturating_sub(base.evidence[i]));
        self.set_evidence(evidence);
        Ok(SmartState {
            version: 1,
            weights: model.weights.clone(),
            squared_gradients: model.squared_gradients.clone(),
            observations: model.observations,
            evidence,
        })
    }
}
