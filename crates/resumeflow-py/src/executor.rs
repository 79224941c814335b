//! The Python side of `NodeExecutor`: each attempt runs on a blocking-pool thread that takes
//! the GIL only to call the workflow's runner (torch ops inside release it again).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use resumeflow_core::{
    LiveObject, NodeContext, NodeExecutor, NodeFailure, NodeFuture, NodeOutput, NodeTask, NodeValue,
};

use crate::gil::detached;

/// Calls `runner(node_id, attempt, inputs, inputs_override, ctx)`, which returns
/// `(True, encoded: bytes, live_object)` or
/// `(False, error: str, retryable: bool, peak_memory: int | None, next_override: bytes | None)`.
pub struct PyExecutor {
    runner: Arc<Py<PyAny>>,
}

impl PyExecutor {
    pub fn new(runner: Py<PyAny>) -> Self {
        Self {
            runner: Arc::new(runner),
        }
    }
}

fn live_of(py: Python<'_>, obj: &LiveObject) -> Option<Py<PyAny>> {
    obj.downcast_ref::<Py<PyAny>>().map(|o| o.clone_ref(py))
}

fn call_runner(
    py: Python<'_>,
    runner: &Py<PyAny>,
    task: NodeTask,
) -> PyResult<Result<NodeOutput, NodeFailure>> {
    let inputs = PyList::empty(py);
    for (param, value) in &task.inputs {
        let item = match value {
            NodeValue::Live(obj) => (param.as_str(), live_of(py, obj), None::<Bound<'_, PyBytes>>),
            NodeValue::Bytes(b) => (param.as_str(), None, Some(PyBytes::new(py, b))),
        };
        inputs.append(item)?;
    }
    let override_bytes = task.inputs_override.as_ref().map(|b| PyBytes::new(py, b));
    let ctx = Py::new(
        py,
        PyNodeContext {
            inner: task.context,
        },
    )?;
    let result = runner.bind(py).call1((
        task.node_id.as_str(),
        task.attempt,
        inputs,
        override_bytes,
        ctx,
    ))?;
    let result = result.cast::<PyTuple>()?;
    if result.get_item(0)?.extract::<bool>()? {
        let bytes = result.get_item(1)?.cast::<PyBytes>()?.as_bytes().to_vec();
        let live: Py<PyAny> = result.get_item(2)?.unbind();
        let live: LiveObject = Arc::new(live);
        Ok(Ok(NodeOutput {
            bytes,
            live: Some(live),
        }))
    } else {
        Ok(Err(NodeFailure {
            error: result.get_item(1)?.extract()?,
            retryable: result.get_item(2)?.extract()?,
            peak_memory: result.get_item(3)?.extract()?,
            next_inputs_override: result
                .get_item(4)?
                .extract::<Option<Bound<'_, PyBytes>>>()?
                .map(|b| b.as_bytes().to_vec()),
        }))
    }
}

impl NodeExecutor for PyExecutor {
    fn execute(&self, task: NodeTask) -> NodeFuture {
        let runner = self.runner.clone();
        Box::pin(async move {
            let node_id = task.node_id.clone();
            let joined = tokio::task::spawn_blocking(move || {
                Python::attach(|py| {
                    call_runner(py, &runner, task).unwrap_or_else(|e| {
                        // The runner itself raised (it catches node exceptions): report it.
                        Err(NodeFailure::fatal(format!("resumeflow runner error: {e}")))
                    })
                })
            })
            .await;
            joined.unwrap_or_else(|e| {
                Err(NodeFailure::fatal(format!(
                    "worker thread for node {node_id:?} failed: {e}"
                )))
            })
        })
    }
}

/// The core side of `rf.NodeContext`: saves and loads a node's partial state (bytes).
#[pyclass(module = "resumeflow._core", name = "CoreNodeContext", frozen)]
pub struct PyNodeContext {
    inner: NodeContext,
}

#[pymethods]
impl PyNodeContext {
    #[getter]
    fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    #[getter]
    fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Saves encoded progress durably (fenced by the run's lease).
    fn save_partial_state(&self, py: Python<'_>, state: &Bound<'_, PyBytes>) -> PyResult<()> {
        let bytes = state.as_bytes().to_vec();
        detached(py, || self.inner.save_partial_state(bytes))
    }

    /// The encoded progress saved earlier, or None.
    fn load_partial_state<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let loaded = detached(py, || self.inner.load_partial_state())?;
        Ok(loaded.map(|b| PyBytes::new(py, &b)))
    }

    /// Extends the run's lease now.
    fn heartbeat(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || self.inner.heartbeat())
    }

    /// True once the run was cancelled or this attempt timed out.
    fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}

/// Converts a run's live values to Python objects.
pub fn live_values(
    py: Python<'_>,
    values: &std::collections::HashMap<String, LiveObject>,
) -> PyResult<Py<pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    for (k, v) in values {
        if let Some(obj) = live_of(py, v) {
            d.set_item(k, obj)?;
        }
    }
    Ok(d.unbind())
}
