//! Handles to runs executing in the background: wait, interrupt, cancel.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::Result;
use crate::executor::LiveObject;
use crate::lease::Lease;
use crate::scheduler::{self, Control};
use crate::state::RunState;

/// How a run ended (as seen by its handle).
#[derive(Clone)]
pub struct RunOutcome {
    /// The committed state after the scheduler stopped, or why the scheduler stopped early.
    pub state: Result<RunState>,
    /// Live objects produced in this session, by node id.
    pub live_values: HashMap<String, LiveObject>,
}

pub(crate) struct RunShared {
    pub(crate) run_id: String,
    pub(crate) control: watch::Sender<Control>,
    pub(crate) outcome: Mutex<Option<RunOutcome>>,
    pub(crate) finished: Condvar,
    pub(crate) lease: Lease,
    pub(crate) heartbeats: scheduler::Heartbeats,
}

/// A running (or finished) run.
#[derive(Clone)]
pub struct RunHandle {
    pub(crate) shared: Arc<RunShared>,
}

impl RunHandle {
    /// The run id.
    pub fn id(&self) -> &str {
        &self.shared.run_id
    }

    /// Blocks until the run stops or `timeout` passes (`None` on timeout).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<RunOutcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut guard = self.shared.outcome.lock().expect("outcome lock");
        loop {
            if let Some(outcome) = guard.as_ref() {
                return Some(outcome.clone());
            }
            match deadline {
                None => guard = self.shared.finished.wait(guard).expect("outcome lock"),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    guard = self
                        .shared
                        .finished
                        .wait_timeout(guard, left)
                        .expect("outcome lock")
                        .0;
                }
            }
        }
    }

    /// True once the run's scheduler has stopped.
    pub fn is_finished(&self) -> bool {
        self.shared.outcome.lock().expect("outcome lock").is_some()
    }

    /// Lets in-flight nodes finish, then pauses the run.
    pub fn interrupt(&self) {
        self.shared.control.send_if_modified(|c| {
            let change = *c == Control::Run;
            if change {
                *c = Control::Interrupt;
            }
            change
        });
    }

    /// Abandons in-flight nodes and marks the run cancelled.
    pub fn cancel(&self) {
        self.shared.control.send_if_modified(|c| {
            let change = matches!(*c, Control::Run | Control::Interrupt);
            if change {
                *c = Control::Cancel;
            }
            change
        });
    }
}
