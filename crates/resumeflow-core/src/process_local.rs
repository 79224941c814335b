//! Process-wide singletons that survive `fork()`: a forked child inherits the parent's memory
//! but none of its threads, so a singleton that owns threads (a tokio runtime, a work queue
//! fed by worker threads) is tagged with the process id and made again in a child. The
//! parent's copy is leaked there: dropping it would try to join threads that do not exist.

use std::sync::{Mutex, PoisonError};

/// A slot for one value per process; declare it as a `static`.
pub type Slot<T> = Mutex<Option<(u32, &'static T)>>;

/// This process's value in `slot`, made by `make` on first use in each process.
///
/// ```
/// use resumeflow_core::process_local::{get_or_make, Slot};
/// static COUNTER: Slot<u64> = Slot::new(None);
/// assert_eq!(*get_or_make(&COUNTER, || 7), 7);
/// assert_eq!(*get_or_make(&COUNTER, || 8), 7, "made once per process");
/// ```
pub fn get_or_make<T: Send + Sync + 'static>(
    slot: &Slot<T>,
    make: impl FnOnce() -> T,
) -> &'static T {
    let pid = std::process::id();
    let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
    match *held {
        Some((owner, value)) if owner == pid => value,
        _ => {
            let value: &'static T = Box::leak(Box::new(make()));
            *held = Some((pid, value));
            value
        }
    }
}
