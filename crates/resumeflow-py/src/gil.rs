//! The one place that releases the GIL around engine calls and keeps them interruptible.

use std::time::{Duration, Instant};

use pyo3::prelude::*;
use resumeflow_core::{RunHandle, RunOutcome};

use crate::errors::to_py;

/// Runs a blocking engine call with the GIL released; maps its error.
pub fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> resumeflow_core::Result<T> + Send,
) -> PyResult<T> {
    py.detach(f).map_err(to_py)
}

/// Waits for a run with the GIL released, in slices, so that Ctrl-C raises
/// `KeyboardInterrupt` promptly. `None` when `timeout` passed first.
pub fn wait_run(
    py: Python<'_>,
    handle: &RunHandle,
    timeout: Option<Duration>,
) -> PyResult<Option<RunOutcome>> {
    const SLICE: Duration = Duration::from_millis(50);
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = deadline.map_or(SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(SLICE)
        });
        if let Some(outcome) = py.detach(|| handle.wait(Some(slice))) {
            return Ok(Some(outcome));
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}
