//! Control requests: an interrupt or a cancel asked of a run by any process, recorded in the
//! store and honoured by whichever worker holds the run's lease (see `docs/queue.md`).

use crate::state::RunStatus;

/// What a caller asks of a run it may not be executing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlRequest {
    /// Finish in-flight nodes, then pause.
    Interrupt,
    /// End the run `cancelled` without waiting for in-flight nodes.
    Cancel,
}

impl ControlRequest {
    /// The name stored in `control_requests.kind`.
    ///
    /// ```
    /// use resumeflow_core::control::ControlRequest;
    /// assert_eq!(ControlRequest::parse(ControlRequest::Cancel.as_str()), Some(ControlRequest::Cancel));
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interrupt => "interrupt",
            Self::Cancel => "cancel",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "interrupt" => Some(Self::Interrupt),
            "cancel" => Some(Self::Cancel),
            _ => None,
        }
    }

    /// The stronger of two requests (a cancel is never downgraded to an interrupt).
    ///
    /// ```
    /// use resumeflow_core::control::ControlRequest::{Cancel, Interrupt};
    /// assert_eq!(Interrupt.merge(Cancel), Cancel);
    /// assert_eq!(Cancel.merge(Interrupt), Cancel);
    /// ```
    #[must_use]
    pub fn merge(self, other: Self) -> Self {
        if self == Self::Cancel || other == Self::Cancel {
            Self::Cancel
        } else {
            Self::Interrupt
        }
    }

    /// How a request applies to a run in `status`: a queued run (no worker has it) ends at
    /// once (`paused` or `cancelled`), a running one waits for its worker, an ended or
    /// paused one is left as it is.
    ///
    /// ```
    /// use resumeflow_core::control::{ControlRequest, ControlEffect};
    /// use resumeflow_core::RunStatus;
    /// assert_eq!(ControlRequest::Cancel.effect_on(RunStatus::Queued), ControlEffect::EndNow(RunStatus::Cancelled));
    /// assert_eq!(ControlRequest::Interrupt.effect_on(RunStatus::Running), ControlEffect::Record);
    /// assert_eq!(ControlRequest::Cancel.effect_on(RunStatus::Completed), ControlEffect::Nothing);
    /// ```
    pub fn effect_on(self, status: RunStatus) -> ControlEffect {
        match (status, self) {
            // A paused run has no worker either; cancelling it ends it.
            (RunStatus::Queued | RunStatus::Paused, Self::Cancel) => {
                ControlEffect::EndNow(RunStatus::Cancelled)
            }
            (RunStatus::Queued, Self::Interrupt) => ControlEffect::EndNow(RunStatus::Paused),
            (RunStatus::Running | RunStatus::Pending, _) => ControlEffect::Record,
            _ => ControlEffect::Nothing,
        }
    }
}

/// What [`ControlRequest::effect_on`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEffect {
    /// No worker holds the run: append the ending event now.
    EndNow(RunStatus),
    /// Record the request for the lease holder.
    Record,
    /// The run has ended: nothing to do.
    Nothing,
}
