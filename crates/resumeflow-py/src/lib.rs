//! `resumeflow._core`: the PyO3 bindings. They convert types, release the GIL around every
//! engine call, and map core errors to Python exceptions; no engine logic lives here.

mod buffers;
mod convert;
mod engine;
mod errors;
mod executor;
mod gil;
mod task_queue;
mod threads;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PyGraph>()?;
    m.add_class::<engine::PyRun>()?;
    m.add_class::<threads::PyThreadStore>()?;
    m.add_class::<executor::PyNodeContext>()?;
    m.add_class::<executor::PyTask>()?;
    m.add_function(wrap_pyfunction!(executor::next_task, m)?)?;
    m.add_function(wrap_pyfunction!(executor::idle_workers, m)?)?;
    m.add_function(wrap_pyfunction!(executor::shutdown_workers, m)?)?;
    errors::register(m)?;
    m.add("SCHEMA_VERSION", resumeflow_core::store::SCHEMA_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
