//! The one process-wide tokio runtime that every engine schedules on (made again in a forked
//! child, see [`crate::process_local`]).

use tokio::runtime::Runtime;

use crate::process_local::{get_or_make, Slot};

/// The shared runtime of this process, started on first use.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: Slot<Runtime> = Slot::new(None);
    get_or_make(&RUNTIME, || {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("resumeflow-sched")
            .enable_all()
            .build()
            .expect("start the tokio runtime")
    })
}
