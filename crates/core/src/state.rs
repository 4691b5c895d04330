//! The payment status state machine, as one pure function.
//!
//! Every status change in the engine goes through [`transition`]; the store then
//! checks that the status it replaces is still the one the change was computed from.

use std::fmt;

use crate::payment::PaymentStatus;

/// Something that happens to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// The scheduler starts (or replays) an authorization attempt.
    StartAttempt,
    /// The attempt was approved and captured.
    Approve,
    /// The attempt was approved with manual capture: funds are held.
    Authorize,
    /// The attempt failed and another one is scheduled (or the same one is replayed).
    ScheduleRetry,
    /// The attempt failed and the policy stopped.
    Fail,
    /// The merchant cancels.
    Cancel,
    /// The merchant pauses retries.
    Pause,
    /// The merchant resumes; `attempted` says whether any attempt was made already.
    Resume {
        /// `true` returns to `pending_retry`, `false` to `pending`.
        attempted: bool,
    },
    /// The merchant captures a held authorization.
    Capture,
    /// A held authorization lapsed.
    ExpireAuthorization,
}

impl Transition {
    /// Every transition (both `Resume` variants).
    pub const ALL: [Transition; 11] = [
        Transition::StartAttempt,
        Transition::Approve,
        Transition::Authorize,
        Transition::ScheduleRetry,
        Transition::Fail,
        Transition::Cancel,
        Transition::Pause,
        Transition::Resume { attempted: false },
        Transition::Resume { attempted: true },
        Transition::Capture,
        Transition::ExpireAuthorization,
    ];

    /// Short name, as used in error messages (`cancel`, `pause`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::StartAttempt => "start_attempt",
            Transition::Approve => "approve",
            Transition::Authorize => "authorize",
            Transition::ScheduleRetry => "schedule_retry",
            Transition::Fail => "fail",
            Transition::Cancel => "cancel",
            Transition::Pause => "pause",
            Transition::Resume { .. } => "resume",
            Transition::Capture => "capture",
            Transition::ExpireAuthorization => "expire_authorization",
        }
    }
}

/// A transition that is not allowed from the current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct TransitionRefused {
    /// The status the payment is in.
    pub from: PaymentStatus,
    /// The refused transition.
    pub transition: Transition,
}

impl fmt::Display for TransitionRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from.is_terminal() {
            write!(
                f,
                "cannot {} a payment whose status is `{}`: the status is terminal",
                self.transition.as_str(),
                self.from
            )
        } else {
            write!(
                f,
                "cannot {} a payment whose status is `{}`",
                self.transition.as_str(),
                self.from
            )
        }
    }
}

/// The status after `transition`, or a refusal. Terminal statuses never change;
/// `processing` refuses every manual operation.
pub fn transition(
    from: PaymentStatus,
    transition: Transition,
) -> Result<PaymentStatus, TransitionRefused> {
    use PaymentStatus as S;
    use Transition as T;
    let to = match (from, transition) {
        (S::Pending | S::PendingRetry, T::StartAttempt) => S::Processing,
        // A lapsed lease on `processing` means the attempt's outcome is unknown: the
        // scheduler replays it with the same idempotency key.
        (S::Processing, T::StartAttempt) => S::Processing,
        (S::Processing, T::Approve) => S::Succeeded,
        (S::Processing, T::Authorize) => S::RequiresCapture,
        (S::Processing, T::ScheduleRetry) => S::PendingRetry,
        (S::Processing, T::Fail) => S::Failed,
        // A payment whose next attempt may not be made (network rules push it past
        // its window, a card barred by an advice code, `retry_until` or
        // `capture_before` passed before it was sent) fails without one.
        (S::Pending | S::PendingRetry, T::Fail) => S::Failed,
        (S::Pending | S::PendingRetry | S::Paused | S::RequiresCapture, T::Cancel) => S::Canceled,
        (S::Pending | S::PendingRetry, T::Pause) => S::Paused,
        (S::Paused, T::Resume { attempted: false }) => S::Pending,
        (S::Paused, T::Resume { attempted: true }) => S::PendingRetry,
        (S::RequiresCapture, T::Capture) => S::Succeeded,
        (S::RequiresCapture, T::ExpireAuthorization) => S::Failed,
        _ => return Err(TransitionRefused { from, transition }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus as S;
    use Transition as T;

    /// The whole allowed table; everything else must be refused.
    const ALLOWED: &[(PaymentStatus, Transition, PaymentStatus)] = &[
        (S::Pending, T::StartAttempt, S::Processing),
        (S::PendingRetry, T::StartAttempt, S::Processing),
        (S::Processing, T::StartAttempt, S::Processing),
        (S::Processing, T::Approve, S::Succeeded),
        (S::Processing, T::Authorize, S::RequiresCapture),
        (S::Processing, T::ScheduleRetry, S::PendingRetry),
        (S::Processing, T::Fail, S::Failed),
        (S::PendingRetry, T::Fail, S::Failed),
        (S::Pending, T::Fail, S::Failed),
        (S::Pending, T::Cancel, S::Canceled),
        (S::PendingRetry, T::Cancel, S::Canceled),
        (S::Paused, T::Cancel, S::Canceled),
        (S::RequiresCapture, T::Cancel, S::Canceled),
        (S::Pending, T::Pause, S::Paused),
        (S::PendingRetry, T::Pause, S::Paused),
        (S::Paused, T::Resume { attempted: false }, S::Pending),
        (S::Paused, T::Resume { attempted: true }, S::PendingRetry),
        (S::RequiresCapture, T::Capture, S::Succeeded),
        (S::RequiresCapture, T::ExpireAuthorization, S::Failed),
    ];

    #[test]
    fn every_allowed_transition_works() {
        for &(from, t, to) in ALLOWED {
            assert_eq!(transition(from, t), Ok(to), "{from} --{t:?}-->");
        }
    }

    #[test]
    fn every_other_transition_is_refused() {
        for from in PaymentStatus::ALL {
            for t in Transition::ALL {
                if ALLOWED.iter().any(|&(f, tt, _)| f == from && tt == t) {
                    continue;
                }
                assert_eq!(
                    transition(from, t),
                    Err(TransitionRefused {
                        from,
                        transition: t
                    }),
                    "{from} --{t:?}--> must be refused"
                );
            }
        }
    }

    #[test]
    fn terminal_states_never_change() {
        for from in PaymentStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for t in Transition::ALL {
                assert!(transition(from, t).is_err(), "{from} --{t:?}-->");
            }
        }
    }

    #[test]
    fn processing_refuses_cancel_pause_and_capture() {
        for t in [
            T::Cancel,
            T::Pause,
            T::Capture,
            T::Resume { attempted: true },
        ] {
            assert!(transition(S::Processing, t).is_err(), "{t:?}");
        }
    }

    #[test]
    fn refusals_name_the_status_and_the_operation() {
        let err = transition(S::Succeeded, T::Cancel).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot cancel a payment whose status is `succeeded`: the status is terminal"
        );
    }

    proptest::proptest! {
        #[test]
        fn no_sequence_of_transitions_leaves_a_terminal_state(
            steps in proptest::collection::vec(0usize..Transition::ALL.len(), 0..64)
        ) {
            let mut status = S::Pending;
            let mut terminal_seen: Option<PaymentStatus> = None;
            for step in steps {
                if let Ok(next) = transition(status, Transition::ALL[step]) {
                    status = next;
                }
                if let Some(t) = terminal_seen {
                    proptest::prop_assert_eq!(status, t);
                }
                if status.is_terminal() {
                    terminal_seen = Some(status);
                }
            }
        }
    }
}
