//! The one process-wide tokio runtime that every engine schedules on.
//!
//! A forked child inherits the runtime's memory but none of its threads, so the runtime is
//! tagged with the process id and a new one is started in a child (the parent's copy is
//! leaked there: dropping it would try to join threads that do not exist).

use std::sync::Mutex;

use tokio::runtime::Runtime;

/// The shared runtime of this process, started on first use.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = RUNTIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match *slot {
        Some((owner, rt)) if owner == pid => rt,
        _ => {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
            let rt: &'static Runtime = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .thread_name("resumeflow-sched")
                    .enable_all()
                    .build()
                    .expect("start the tokio runtime"),
            ));
            *slot = Some((pid, rt));
            rt
        }
    }
}
