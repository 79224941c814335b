//! The Python side of `NodeExecutor`: attempts queue up for a pool of Python worker threads,
//! which hold the GIL only while they call node code (torch ops inside release it again).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};
use resumeflow_core::{
    LiveObject, NodeContext, NodeExecutor, NodeFailure, NodeFuture, NodeOutput, NodeTask,
    NodeValue, ValueRef,
};

use resumeflow_core::process_local::{get_or_make, Slot};
use tokio::sync::oneshot;

use crate::gil::detached;
use crate::task_queue::TaskQueue;

/// Node attempts wait in a [`TaskQueue`] until a Python worker thread takes them.
///
/// The threads that call node code are Python threads (`resumeflow._workers`), not Rust
/// threads: at interpreter exit CPython stops its own daemon threads cleanly, whereas a Rust
/// thread holding the GIL during finalization would crash the process.
struct Queued {
    runner: Arc<Py<PyAny>>,
    task: NodeTask,
    reply: oneshot::Sender<Result<NodeOutput, NodeFailure>>,
}

/// This process's queue (a forked child gets a fresh one: the parent's may be locked by a
/// worker thread that does not exist in the child).
fn queue() -> &'static TaskQueue<Queued> {
    static QUEUE: Slot<TaskQueue<Queued>> = Slot::new(None);
    get_or_make(&QUEUE, TaskQueue::default)
}

/// Hands each attempt to the Python worker pool and awaits the runner's result, which is
/// `(True, encoded: bytes, live_object)` or
/// `(False, error: str, retryable: bool, peak_memory: int | None, next_override: bytes | None
/// [, retry_after_s: float | None, retry_reason: str | None])`.
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

impl NodeExecutor for PyExecutor {
    fn execute(&self, task: NodeTask) -> NodeFuture {
        let queue = queue();
        if queue.is_closed() {
            // The interpreter is exiting: behave like a crash (nothing recorded; the run
            // stays resumable) rather than failing the node.
            return Box::pin(std::future::pending());
        }
        let (reply, rx) = oneshot::channel();
        let node_id = task.node_id.clone();
        let queued = Queued {
            runner: self.runner.clone(),
            task,
            reply,
        };
        let sent = queue.push(queued).map_err(drop);
        Box::pin(async move {
            if sent.is_err() {
                return Err(NodeFailure::fatal(format!(
                    "node {node_id:?}: the worker queue is closed"
                )));
            }
            match rx.await {
                Ok(result) => result,
                Err(_) if queue.is_closed() => std::future::pending().await,
                Err(_) => Err(NodeFailure::fatal(format!(
                    "node {node_id:?}: the worker thread dropped the task without a result"
                ))),
            }
        })
    }
}

fn live_of(py: Python<'_>, obj: &LiveObject) -> Option<Py<PyAny>> {
    obj.downcast_ref::<Py<PyAny>>().map(|o| o.clone_ref(py))
}

fn parse_result(result: &Bound<'_, PyAny>) -> PyResult<Result<NodeOutput, NodeFailure>> {
    let result = result.cast::<PyTuple>()?;
    if result.get_item(0)?.extract::<bool>()? {
        let encoded = result.get_item(1)?;
        // The encoded bytes, the encoded value as a list of buffers (joined here: one copy),
        // or `(hash, size)` of a value the node's thread already wrote to a blob file
        // (`CoreNodeContext.stage_file`).
        let (bytes, file): (Arc<[u8]>, _) = match encoded.cast::<PyBytes>() {
            Ok(b) => (Arc::from(b.as_bytes()), None),
            Err(_) if encoded.is_instance_of::<PyList>() => {
                let buffers = encoded
                    .try_iter()?
                    .map(|part| PyBuffer::<u8>::get(&part?))
                    .collect::<PyResult<Vec<_>>>()?;
                if buffers.iter().any(|b| !b.is_c_contiguous()) {
                    return Err(pyo3::exceptions::PyValueError::new_err(
                        "an encoded part is not a contiguous buffer",
                    ));
                }
                (
                    crate::buffers::concat(&crate::buffers::segments(&buffers)),
                    None,
                )
            }
            Err(_) => {
                let (hash, size): (Vec<u8>, u64) = encoded.extract()?;
                (Arc::from(&[][..]), Some(ValueRef { hash, size }))
            }
        };
        let live: LiveObject = Arc::new(result.get_item(2)?.unbind());
        let compress = result.len() > 3 && result.get_item(3)?.extract::<bool>()?;
        Ok(Ok(NodeOutput {
            bytes,
            live: Some(live),
            compress,
            file,
        }))
    } else {
        let retry_after = if result.len() > 5 {
            result
                .get_item(5)?
                .extract::<Option<f64>>()?
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(|s| Duration::from_secs_f64(s.min(1e9)))
        } else {
            None
        };
        let retry_reason = if result.len() > 6 {
            result.get_item(6)?.extract::<Option<String>>()?
        } else {
            None
        };
        Ok(Err(NodeFailure {
            error: result.get_item(1)?.extract()?,
            retryable: result.get_item(2)?.extract()?,
            peak_memory: result.get_item(3)?.extract()?,
            next_inputs_override: result
                .get_item(4)?
                .extract::<Option<Bound<'_, PyBytes>>>()?
                .map(|b| b.as_bytes().to_vec()),
            retry_after,
            retry_reason,
        }))
    }
}

/// One attempt handed to a Python worker thread.
#[pyclass(module = "resumeflow._core", name = "CoreTask", frozen)]
pub struct PyTask {
    queued: Mutex<Option<Queued>>,
    #[pyo3(get)]
    node_id: String,
    #[pyo3(get)]
    attempt: u32,
}

#[pymethods]
impl PyTask {
    /// Calls the workflow's runner for this attempt and delivers its result to the engine.
    fn run(&self, py: Python<'_>) -> PyResult<()> {
        let Some(queued) = self.queued.lock().expect("task lock").take() else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "task already ran",
            ));
        };
        let Queued {
            runner,
            task,
            reply,
        } = queued;
        let inputs = PyList::empty(py);
        for (param, value) in &task.inputs {
            let item = match value {
                NodeValue::Live(obj) => {
                    (param.as_str(), live_of(py, obj), None::<Bound<'_, PyBytes>>)
                }
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
        let outcome = runner
            .bind(py)
            .call1((
                task.node_id.as_str(),
                task.attempt,
                inputs,
                override_bytes,
                ctx,
            ))
            .and_then(|r| parse_result(&r))
            .unwrap_or_else(|e| Err(NodeFailure::fatal(format!("resumeflow runner error: {e}"))));
        let _ = reply.send(outcome);
        Ok(())
    }
}

/// Waits (GIL released) up to `timeout` seconds for an attempt to run; None if none came
/// or the pool is shutting down.
#[pyfunction]
pub fn next_task(py: Python<'_>, timeout: f64) -> Option<PyTask> {
    let queue = queue();
    if queue.is_closed() {
        return None;
    }
    let timeout = Duration::from_secs_f64(timeout.max(0.0));
    let got = py.detach(|| queue.take(timeout));
    got.map(|queued| PyTask {
        node_id: queued.task.node_id.clone(),
        attempt: queued.task.attempt,
        queued: Mutex::new(Some(queued)),
    })
}

/// Worker threads waiting for work right now.
#[pyfunction]
pub fn idle_workers() -> usize {
    queue().idle()
}

/// Stops handing out work (interpreter exit): waiting workers return None; attempts not yet
/// taken are left unrecorded, as after a crash.
#[pyfunction]
pub fn shutdown_workers() {
    queue().close();
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

    /// Saves a streaming node's cursor with the encoded items from index `first` on,
    /// appended to those saved before (one commit; a save costs what it adds).
    fn save_stream_state(
        &self,
        py: Python<'_>,
        state: &Bound<'_, PyBytes>,
        first: u64,
        segment: &Bound<'_, PyBytes>,
    ) -> PyResult<()> {
        let state = state.as_bytes().to_vec();
        let segment = segment.as_bytes().to_vec();
        detached(py, || self.inner.save_stream_state(state, first, segment))
    }

    /// The segments saved with `save_stream_state`: `[(first, bytes), ...]` in order.
    fn load_partial_segments<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(u64, Bound<'py, PyBytes>)>> {
        let loaded = detached(py, || self.inner.load_partial_segments())?;
        Ok(loaded
            .into_iter()
            .map(|(first, b)| (first, PyBytes::new(py, &b)))
            .collect())
    }

    /// The encoded progress saved earlier, or None.
    fn load_partial_state<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<Bound<'py, PyByteArray>>> {
        let found = detached(py, || self.inner.partial_state_ref())?;
        crate::convert::partial_bytearray(py, found, |file, buf| {
            self.inner.read_partial_file_into(file, buf)
        })
    }

    /// Extends the run's lease now.
    /// Writes a large encoded output, given as buffers whose concatenation is the value,
    /// straight to a blob file with the GIL released (no joined copy); returns
    /// `(hash, size)` to return in place of the bytes, or None when the value is below the
    /// store's file threshold.
    fn stage_file<'py>(
        &self,
        py: Python<'py>,
        parts: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, u64)>> {
        let buffers = crate::buffers::contiguous(&parts, "stage_file")?;
        let segments = crate::buffers::segments(&buffers);
        let staged = detached(py, || self.inner.stage_file(&segments))?;
        Ok(staged.map(|v| (PyBytes::new(py, &v.hash), v.size)))
    }

    /// Saves encoded progress given as parts (`_codec.encode_parts`), durably: a large
    /// state's tensor memory goes to a blob file with the GIL released, without being joined
    /// into a `bytes` object or copied into Rust first.
    fn save_partial_state_parts(
        &self,
        py: Python<'_>,
        parts: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let buffers = crate::buffers::contiguous(&parts, "save_partial_state_parts")?;
        let segments = crate::buffers::segments(&buffers);
        detached(py, || self.inner.save_partial_state_parts(&segments))
    }

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
