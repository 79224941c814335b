//! The one process-wide tokio runtime that every engine schedules on.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// The shared runtime, started on first use.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("resumeflow-sched")
            .enable_all()
            .build()
            .expect("start the tokio runtime")
    })
}
