//! Python exceptions for every public core error, and the mapping from `core::Error`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use resumeflow_core::Error;

create_exception!(
    resumeflow,
    ResumeflowError,
    PyException,
    "Base class of resumeflow's errors."
);
create_exception!(
    resumeflow,
    GraphError,
    ResumeflowError,
    "An invalid workflow graph or unknown node id."
);
create_exception!(
    resumeflow,
    RunFailed,
    ResumeflowError,
    "A run ended `failed`; `.state` holds its RunState."
);
create_exception!(
    resumeflow,
    RunNotFound,
    ResumeflowError,
    "The store holds no run with this id."
);
create_exception!(
    resumeflow,
    RunExists,
    ResumeflowError,
    "A run with this id already exists."
);
create_exception!(
    resumeflow,
    CheckpointNotFound,
    ResumeflowError,
    "The run has no such checkpoint."
);
create_exception!(
    resumeflow,
    RunLocked,
    ResumeflowError,
    "Another live worker holds the run's lease."
);
create_exception!(
    resumeflow,
    LeaseLost,
    ResumeflowError,
    "This worker's lease was taken over; it stopped writing."
);
create_exception!(
    resumeflow,
    Cancelled,
    ResumeflowError,
    "This attempt timed out or its run was cancelled: its writes are refused (raised by `ctx.heartbeat()` and `ctx.save_partial_state()`)."
);
create_exception!(
    resumeflow,
    WorkflowMismatch,
    ResumeflowError,
    "The workflow's structure differs from the stored run's."
);
create_exception!(
    resumeflow,
    RunNotResumable,
    ResumeflowError,
    "The run is completed; pass checkpoint_id, updates or rerun."
);
create_exception!(
    resumeflow,
    SerializationError,
    ResumeflowError,
    "A value could not be encoded or decoded."
);
create_exception!(
    resumeflow,
    StoreError,
    ResumeflowError,
    "The store is corrupt, unreadable or not a resumeflow store."
);

static INVALID_ARGUMENT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `InvalidArgument(ResumeflowError, ValueError)`: a bad argument value (a `ValueError` too).
pub fn invalid_argument_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    INVALID_ARGUMENT
        .get_or_try_init(py, || {
            let bases = PyTuple::new(
                py,
                [
                    py.get_type::<ResumeflowError>(),
                    py.get_type::<PyValueError>(),
                ],
            )?;
            let namespace = PyDict::new(py);
            namespace.set_item("__module__", "resumeflow")?;
            namespace.set_item("__doc__", "A bad argument value; also a ValueError.")?;
            let cls = py
                .get_type::<PyType>()
                .call1(("InvalidArgument", bases, namespace))?;
            Ok(cls.cast_into::<PyType>()?.unbind())
        })
        .map(|t| t.bind(py))
}

/// Maps a core error to the matching Python exception.
pub fn to_py(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Graph(_) => GraphError::new_err(message),
        Error::Store(_) => StoreError::new_err(message),
        Error::RunNotFound { .. } => RunNotFound::new_err(message),
        Error::RunExists { .. } => RunExists::new_err(message),
        Error::CheckpointNotFound { .. } => CheckpointNotFound::new_err(message),
        Error::RunLocked { .. } => RunLocked::new_err(message),
        Error::LeaseLost { .. } => LeaseLost::new_err(message),
        Error::StaleAttempt { .. } => Cancelled::new_err(message),
        Error::WorkflowMismatch { .. } => WorkflowMismatch::new_err(message),
        Error::RunNotResumable { .. } => RunNotResumable::new_err(message),
        Error::InvalidArgument { .. } => Python::attach(|py| match invalid_argument_type(py) {
            Ok(cls) => PyErr::from_type(cls.clone(), message),
            Err(e) => e,
        }),
        Error::Shutdown | Error::RunChanged { .. } => ResumeflowError::new_err(message),
    }
}

/// Registers the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ResumeflowError", py.get_type::<ResumeflowError>())?;
    m.add("GraphError", py.get_type::<GraphError>())?;
    m.add("RunFailed", py.get_type::<RunFailed>())?;
    m.add("RunNotFound", py.get_type::<RunNotFound>())?;
    m.add("RunExists", py.get_type::<RunExists>())?;
    m.add("CheckpointNotFound", py.get_type::<CheckpointNotFound>())?;
    m.add("RunLocked", py.get_type::<RunLocked>())?;
    m.add("LeaseLost", py.get_type::<LeaseLost>())?;
    m.add("Cancelled", py.get_type::<Cancelled>())?;
    m.add("WorkflowMismatch", py.get_type::<WorkflowMismatch>())?;
    m.add("RunNotResumable", py.get_type::<RunNotResumable>())?;
    m.add("SerializationError", py.get_type::<SerializationError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("InvalidArgument", invalid_argument_type(py)?)?;
    Ok(())
}
