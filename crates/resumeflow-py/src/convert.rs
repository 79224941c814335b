//! Conversions between Python values and core types: graph specs, states, checkpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use resumeflow_core::{
    Checkpoint, InputBinding, InputSource, NodeSpec, NodeState, RetryPolicy, RunState,
};

/// `(param, "node" | "input", source, required)`
type BindingSpec = (String, String, String, bool);
/// `(max_attempts, initial_interval, backoff_factor, max_interval, jitter)`
type RetrySpec = (u32, f64, f64, f64, bool);
/// `(id, bindings, retry, timeout_s, resources, heartbeat_timeout_s)`
pub type NodeSpecTuple = (
    String,
    Vec<BindingSpec>,
    RetrySpec,
    Option<f64>,
    BTreeMap<String, u32>,
    Option<f64>,
);

fn seconds(field: &str, node: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "node {node:?}: {field} must be a finite number of seconds >= 0, got {value}"
        ))
    })
}

/// Builds a core node from the tuple the Python layer passes.
pub fn node_spec(
    (id, bindings, retry, timeout, resources, heartbeat): NodeSpecTuple,
) -> PyResult<NodeSpec> {
    let inputs = bindings
        .into_iter()
        .map(|(param, kind, source, required)| {
            let source = match kind.as_str() {
                "node" => InputSource::Node(source),
                _ => InputSource::RunInput {
                    name: source,
                    required,
                },
            };
            InputBinding { param, source }
        })
        .collect();
    let (max_attempts, initial, factor, max_interval, jitter) = retry;
    Ok(NodeSpec {
        retry: RetryPolicy {
            max_attempts,
            initial_interval: seconds("retry.initial_interval", &id, initial)?,
            backoff_factor: factor,
            max_interval: seconds("retry.max_interval", &id, max_interval)?,
            jitter,
        },
        timeout: timeout.map(|t| seconds("timeout", &id, t)).transpose()?,
        heartbeat_timeout: heartbeat
            .map(|t| seconds("heartbeat_timeout", &id, t))
            .transpose()?,
        id,
        inputs,
        resources,
    })
}

fn node_dict<'py>(py: Python<'py>, state: &NodeState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("status", state.status.as_str())?;
    d.set_item("attempt", state.attempt)?;
    d.set_item("error", &state.error)?;
    d.set_item("retryable", state.retryable)?;
    d.set_item("started_at", state.started_at)?;
    d.set_item("finished_at", state.finished_at)?;
    match &state.output {
        Some(v) => d.set_item("output", (PyBytes::new(py, &v.hash), v.size))?,
        None => d.set_item("output", py.None())?,
    }
    match &state.inputs_override {
        Some(b) => d.set_item("inputs_override", PyBytes::new(py, b))?,
        None => d.set_item("inputs_override", py.None())?,
    }
    d.set_item("peak_memory", state.peak_memory)?;
    Ok(d)
}

/// A run state as a plain dict (the Python layer wraps it in `RunState`).
pub fn state_dict<'py>(py: Python<'py>, state: &RunState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run_id", &state.run_id)?;
    d.set_item("workflow", &state.workflow)?;
    d.set_item("status", state.status.as_str())?;
    let nodes = PyDict::new(py);
    for id in &state.node_order {
        if let Some(n) = state.nodes.get(id) {
            nodes.set_item(id, node_dict(py, n)?)?;
        }
    }
    d.set_item("nodes", nodes)?;
    d.set_item("node_order", PyList::new(py, &state.node_order)?)?;
    d.set_item("checkpoint_id", state.checkpoint_id)?;
    d.set_item("error", &state.error)?;
    d.set_item("created_at", state.created_at)?;
    d.set_item("updated_at", state.updated_at)?;
    d.set_item("labels", state.labels.clone())?;
    Ok(d)
}

/// A checkpoint as a plain dict.
pub fn checkpoint_dict<'py>(py: Python<'py>, cp: &Checkpoint) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("checkpoint_id", cp.checkpoint_id)?;
    d.set_item("parent_id", cp.parent_id)?;
    d.set_item("run_id", &cp.run_id)?;
    d.set_item("created_at", cp.created_at)?;
    d.set_item("completed", PyList::new(py, &cp.completed)?)?;
    d.set_item("kind", &cp.kind)?;
    d.set_item("seq", cp.seq)?;
    Ok(d)
}

/// Extracts `dict[str, bytes]`.
pub fn bytes_map(map: Option<&Bound<'_, PyDict>>) -> PyResult<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    if let Some(map) = map {
        for (k, v) in map.iter() {
            out.insert(
                k.extract::<String>()?,
                v.cast::<PyBytes>()?.as_bytes().to_vec(),
            );
        }
    }
    Ok(out)
}

/// A partial state as a writable `bytearray` (decoded tensors share its memory): inline bytes
/// are copied in; a blob file is read straight into it, with the GIL released (`read`).
pub fn partial_bytearray<'py>(
    py: Python<'py>,
    found: Option<resumeflow_core::store::PartialState>,
    read: impl Fn(&resumeflow_core::ValueRef, &mut [u8]) -> resumeflow_core::Result<()> + Sync,
) -> PyResult<Option<Bound<'py, pyo3::types::PyByteArray>>> {
    use resumeflow_core::store::PartialState;
    match found {
        None => Ok(None),
        Some(PartialState::Inline(bytes)) => Ok(Some(pyo3::types::PyByteArray::new(py, &bytes))),
        Some(PartialState::File(file)) => {
            pyo3::types::PyByteArray::new_with(py, file.size as usize, |buf| {
                crate::gil::detached(py, || read(&file, buf))
            })
            .map(Some)
        }
    }
}
