//! `CoreEngine`, `CoreGraph` and `CoreRun`: the engine as the Python layer sees it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};
use resumeflow_core::{
    Durability, Engine, EngineOptions, Graph, NodeExecutor, ResumeOptions, RunHandle, RunStatus,
    StartOptions,
};

use crate::convert::{bytes_map, checkpoint_dict, node_spec, state_dict, NodeSpecTuple};
use crate::errors::{to_py, GraphError};
use crate::executor::{live_values, PyExecutor};
use crate::gil::{detached, wait_run};

/// `(seq, at, kind, node_id)` of one event.
type EventRow = (i64, f64, String, Option<String>);

/// `(seq, at, kind, node_id, payload)`: an event with its fields as named msgpack.
type TypedEventRow<'py> = (i64, f64, String, Option<String>, Bound<'py, PyBytes>);

/// A validated workflow graph.
#[pyclass(module = "resumeflow._core", name = "CoreGraph", frozen)]
pub struct PyGraph {
    graph: Arc<Graph>,
}

#[pymethods]
impl PyGraph {
    /// Validates `nodes` (tuples built by `rf.Workflow`); raises `GraphError`.
    #[new]
    fn new(name: String, nodes: Vec<NodeSpecTuple>) -> PyResult<Self> {
        let specs = nodes
            .into_iter()
            .map(node_spec)
            .collect::<PyResult<Vec<_>>>()?;
        let graph = Graph::new(name, specs).map_err(|e| GraphError::new_err(e.to_string()))?;
        Ok(Self {
            graph: Arc::new(graph),
        })
    }

    /// Node ids in topological order.
    fn node_ids(&self) -> Vec<String> {
        self.graph
            .node_ids()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Stable hash of the node ids and wiring.
    fn structural_hash(&self) -> String {
        self.graph.structural_hash()
    }
}

/// A run executing in the background.
#[pyclass(module = "resumeflow._core", name = "CoreRun", frozen)]
pub struct PyRun {
    handle: RunHandle,
}

#[pymethods]
impl PyRun {
    #[getter]
    fn id(&self) -> &str {
        self.handle.id()
    }

    /// Waits for the run to stop; returns `(state_dict, live_values)` or None on timeout.
    #[pyo3(signature = (timeout=None))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(Py<PyDict>, Py<PyDict>)>> {
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        let Some(outcome) = wait_run(py, &self.handle, timeout)? else {
            return Ok(None);
        };
        let state = outcome.state.map_err(to_py)?;
        Ok(Some((
            state_dict(py, &state)?.unbind(),
            live_values(py, &outcome.live_values)?,
        )))
    }

    fn done(&self) -> bool {
        self.handle.is_finished()
    }

    /// Finishes in-flight nodes, then pauses.
    fn interrupt(&self) {
        self.handle.interrupt();
    }

    /// Abandons in-flight nodes and cancels the run.
    fn cancel(&self) {
        self.handle.cancel();
    }
}

/// The engine on one store file.
#[pyclass(module = "resumeflow._core", name = "CoreEngine", frozen)]
pub struct PyEngine {
    engine: Engine,
}

impl PyEngine {
    /// A stored value read straight into a new `bytearray` (GIL released while reading):
    /// writable, so decoded tensors and arrays share its memory instead of copying it.
    fn value_bytes<'py>(
        &self,
        py: Python<'py>,
        value: &resumeflow_core::ValueRef,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        PyByteArray::new_with(py, value.size as usize, |buf| {
            detached(py, || self.engine.load_value_into(value, buf))
        })
    }

    /// The engine's store (shared by the thread-checkpoint saver).
    pub fn store(&self) -> Arc<dyn resumeflow_core::Store> {
        self.engine.store().clone()
    }
}

/// A run status named by a caller (`InvalidArgument` for anything else).
fn parse_status(text: &str) -> PyResult<RunStatus> {
    RunStatus::parse(text).ok_or_else(|| {
        to_py(resumeflow_core::Error::InvalidArgument {
            field: "status".into(),
            message: format!("{text:?} is not a run status"),
        })
    })
}

/// Run states as a list of dicts.
fn state_list<'py>(
    py: Python<'py>,
    runs: &[resumeflow_core::RunState],
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for run in runs {
        list.append(state_dict(py, run)?)?;
    }
    Ok(list)
}

fn executor(runner: Py<PyAny>) -> Arc<dyn NodeExecutor> {
    Arc::new(PyExecutor::new(runner))
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (path, max_concurrency=None, durability="sync", resources=None, lease_seconds=30.0, max_store_bytes=None, blob_file_threshold=None, read_only=false, blob_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        max_concurrency: Option<usize>,
        durability: &str,
        resources: Option<BTreeMap<String, u32>>,
        lease_seconds: f64,
        max_store_bytes: Option<u64>,
        blob_file_threshold: Option<u64>,
        read_only: bool,
        blob_dir: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        if max_concurrency == Some(0) {
            return Err(to_py(resumeflow_core::Error::InvalidArgument {
                field: "max_concurrency".into(),
                message: "must be at least 1, or None for no limit".into(),
            }));
        }
        if !(lease_seconds.is_finite() && lease_seconds > 0.0) {
            return Err(to_py(resumeflow_core::Error::InvalidArgument {
                field: "lease_seconds".into(),
                message: format!("must be a positive number of seconds, got {lease_seconds}"),
            }));
        }
        let options = EngineOptions {
            max_concurrency,
            durability: Durability::parse(durability).map_err(to_py)?,
            resources: resources.unwrap_or_default(),
            lease_ttl: Duration::from_secs_f64(lease_seconds),
            max_store_bytes,
            blob_file_threshold,
            read_only,
            blob_dir,
        };
        let engine = detached(py, || Engine::open(&path, options))?;
        Ok(Self { engine })
    }

    #[getter]
    fn owner(&self) -> &str {
        self.engine.owner()
    }

    #[pyo3(signature = (graph, runner, inputs, run_id=None, until=None, labels=None))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        py: Python<'_>,
        graph: &PyGraph,
        runner: Py<PyAny>,
        inputs: &Bound<'_, PyDict>,
        run_id: Option<String>,
        until: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    ) -> PyResult<PyRun> {
        let inputs = bytes_map(Some(inputs))?;
        let graph = graph.graph.clone();
        let exec = executor(runner);
        let options = StartOptions {
            run_id,
            until,
            labels: labels.unwrap_or_default(),
        };
        let handle = detached(py, || self.engine.start(graph, exec, inputs, options))?;
        Ok(PyRun { handle })
    }

    #[pyo3(signature = (run_id, graph, runner, checkpoint_id=None, updates=None, rerun=None, until=None, allow_mismatch=false))]
    #[allow(clippy::too_many_arguments)]
    fn resume(
        &self,
        py: Python<'_>,
        run_id: String,
        graph: &PyGraph,
        runner: Py<PyAny>,
        checkpoint_id: Option<i64>,
        updates: Option<&Bound<'_, PyDict>>,
        rerun: Option<Vec<String>>,
        until: Option<String>,
        allow_mismatch: bool,
    ) -> PyResult<PyRun> {
        let options = ResumeOptions {
            checkpoint_id,
            updates: bytes_map(updates)?,
            rerun: rerun.unwrap_or_default(),
            until,
            allow_mismatch,
            only_crashed: false,
        };
        let graph = graph.graph.clone();
        let exec = executor(runner);
        let handle = detached(py, || self.engine.resume(&run_id, graph, exec, options))?;
        Ok(PyRun { handle })
    }

    fn get_current_state<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let state = detached(py, || self.engine.get_current_state(run_id))?;
        state_dict(py, &state)
    }

    fn get_partial_results<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let state = detached(py, || self.engine.get_current_state(run_id))?;
        let d = PyDict::new(py);
        for id in state.completed() {
            if let Some(value) = state.nodes[&id].output.as_ref() {
                d.set_item(id, self.value_bytes(py, value)?)?;
            }
        }
        Ok(d)
    }

    /// Loads a stored value by `(hash, size)` as found in a node state's `output`.
    fn load_value<'py>(
        &self,
        py: Python<'py>,
        hash: &Bound<'py, PyBytes>,
        size: u64,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let value = resumeflow_core::ValueRef {
            hash: hash.as_bytes().to_vec(),
            size,
        };
        self.value_bytes(py, &value)
    }

    fn save_partial_state(
        &self,
        py: Python<'_>,
        run_id: &str,
        node_id: &str,
        state: &Bound<'_, PyBytes>,
    ) -> PyResult<()> {
        let bytes = state.as_bytes().to_vec();
        detached(py, || {
            self.engine.save_partial_state(run_id, node_id, bytes)
        })
    }

    /// Saves a node's progress given as parts (`_codec.encode_parts`): a large state's
    /// tensor memory goes to a blob file with the GIL released, never joined or copied.
    fn save_partial_state_parts(
        &self,
        py: Python<'_>,
        run_id: &str,
        node_id: &str,
        parts: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let buffers = crate::buffers::contiguous(&parts, "save_partial_state_parts")?;
        let segments = crate::buffers::segments(&buffers);
        detached(py, || {
            self.engine
                .save_partial_state_parts(run_id, node_id, &segments)
        })
    }

    fn get_partial_state<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        node_id: &str,
    ) -> PyResult<Option<Bound<'py, PyByteArray>>> {
        let found = detached(py, || self.engine.partial_state_ref(run_id, node_id))?;
        crate::convert::partial_bytearray(py, found, |file, buf| {
            self.engine.read_partial_file_into(file, buf)
        })
    }

    fn history<'py>(&self, py: Python<'py>, run_id: &str) -> PyResult<Bound<'py, PyList>> {
        let history = detached(py, || self.engine.history(run_id))?;
        let list = PyList::empty(py);
        for cp in &history {
            list.append(checkpoint_dict(py, cp)?)?;
        }
        Ok(list)
    }

    /// The run's events as `(seq, at, kind, node_id)` tuples, oldest first.
    fn events(&self, py: Python<'_>, run_id: &str) -> PyResult<Vec<EventRow>> {
        let events = detached(py, || self.engine.events(run_id))?;
        Ok(events
            .into_iter()
            .map(|e| {
                (
                    e.seq,
                    e.at,
                    e.kind.name().to_string(),
                    e.kind.node().map(str::to_string),
                )
            })
            .collect())
    }

    #[pyo3(signature = (run_id=None, keep_last=1, older_than=None))]
    fn cleanup(
        &self,
        py: Python<'_>,
        run_id: Option<String>,
        keep_last: i64,
        older_than: Option<f64>,
    ) -> PyResult<usize> {
        if keep_last < 1 {
            return Err(to_py(resumeflow_core::Error::InvalidArgument {
                field: "keep_last".into(),
                message: format!("must be at least 1 (a run's newest checkpoint is always kept), got {keep_last}"),
            }));
        }
        detached(py, || {
            self.engine
                .cleanup(run_id.as_deref(), keep_last as usize, older_than)
        })
    }

    #[pyo3(signature = (status=None))]
    fn list_runs<'py>(
        &self,
        py: Python<'py>,
        status: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        let status = status.map(parse_status).transpose()?;
        let runs = detached(py, || self.engine.list_runs(status))?;
        state_list(py, &runs)
    }

    /// Records a run as `queued`; returns its id.
    #[pyo3(signature = (graph, inputs, run_id=None, labels=None))]
    fn submit(
        &self,
        py: Python<'_>,
        graph: &PyGraph,
        inputs: &Bound<'_, PyDict>,
        run_id: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    ) -> PyResult<String> {
        let inputs = bytes_map(Some(inputs))?;
        let graph = graph.graph.clone();
        let options = StartOptions {
            run_id,
            until: None,
            labels: labels.unwrap_or_default(),
        };
        detached(py, || self.engine.submit(&graph, inputs, options))
    }

    /// Claims and starts the oldest queued run of `workflows` (`[(CoreGraph, runner)]`) and
    /// appends its handle to `into` before returning (so a Ctrl-C that lands right after the
    /// call cannot lose track of a claimed run); False if none is queued.
    fn claim(
        &self,
        py: Python<'_>,
        workflows: Vec<(PyRef<'_, PyGraph>, Py<PyAny>)>,
        into: &Bound<'_, PyList>,
    ) -> PyResult<bool> {
        let served: Vec<(Arc<Graph>, Arc<dyn NodeExecutor>)> = workflows
            .into_iter()
            .map(|(g, runner)| (g.graph.clone(), executor(runner)))
            .collect();
        let handle = detached(py, || self.engine.claim(&served))?;
        match handle {
            Some(handle) => {
                into.append(Py::new(py, PyRun { handle })?)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Asks the run's worker (any process) to `"interrupt"` or `"cancel"` it; returns the
    /// run's status after the request.
    fn request_control(&self, py: Python<'_>, run_id: &str, kind: &str) -> PyResult<String> {
        let request = resumeflow_core::control::ControlRequest::parse(kind).ok_or_else(|| {
            to_py(resumeflow_core::Error::InvalidArgument {
                field: "kind".into(),
                message: format!(
                    "{kind:?} is not a control request: use \"interrupt\" or \"cancel\""
                ),
            })
        })?;
        let status = detached(py, || self.engine.request_control(run_id, request))?;
        Ok(status.as_str().to_string())
    }

    /// Puts a paused, unheld run back in the queue; False if it is not paused.
    fn requeue(&self, py: Python<'_>, run_id: &str) -> PyResult<bool> {
        detached(py, || self.engine.requeue(run_id))
    }

    /// Waits (GIL released) until the run is no longer queued or running, by whichever
    /// worker; its state dict, or None on timeout.
    #[pyo3(signature = (run_id, timeout=None))]
    fn wait_for_end<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let deadline =
            timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        // In slices, so that Ctrl-C is noticed between them.
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(std::time::Instant::now())
                    .min(Duration::from_millis(200)),
                None => Duration::from_millis(200),
            };
            let state = detached(py, || self.engine.wait_for_end(run_id, Some(slice)))?;
            if let Some(state) = state {
                return state_dict(py, &state).map(Some);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Up to `limit` events after `after_seq`: `(seq, at, kind, node_id, payload)` tuples,
    /// `payload` being the event's fields as msgpack (a map keyed by the kind).
    #[pyo3(signature = (run_id, after_seq=0, limit=1000))]
    fn events_after<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> PyResult<Vec<TypedEventRow<'py>>> {
        let events = detached(py, || self.engine.events_after(run_id, after_seq, limit))?;
        Ok(events
            .into_iter()
            .map(|e| {
                (
                    e.seq,
                    e.at,
                    e.kind.name().to_string(),
                    e.kind.node().map(str::to_string),
                    PyBytes::new(py, &e.kind.encode()),
                )
            })
            .collect())
    }

    /// Runs matching the filters, as state dicts (no value is loaded).
    #[pyo3(signature = (status=None, workflow=None, labels=None, limit=None, after=None, newest_first=false, offset=0))]
    #[allow(clippy::too_many_arguments)]
    fn list_runs_filtered<'py>(
        &self,
        py: Python<'py>,
        status: Option<&str>,
        workflow: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        limit: Option<usize>,
        after: Option<String>,
        newest_first: bool,
        offset: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let status = status.map(parse_status).transpose()?;
        let filter = resumeflow_core::store::RunFilter {
            status,
            workflow,
            labels: labels.unwrap_or_default(),
            limit,
            after,
            newest_first,
            offset,
        };
        let runs = detached(py, || self.engine.list_runs_filtered(&filter))?;
        state_list(py, &runs)
    }

    /// Latencies the store measured: `{"commit": series, "state_load": series}` with each
    /// series `{"bounds", "cumulative", "sum", "count", "recent_p95"}` (seconds), or None.
    fn store_latency<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(latency) = self.engine.store_latency() else {
            return Ok(None);
        };
        let series =
            |s: &resumeflow_core::store::latency::LatencySnapshot| -> PyResult<Bound<'py, PyDict>> {
                let d = PyDict::new(py);
                d.set_item("bounds", resumeflow_core::store::latency::BOUNDS_S.to_vec())?;
                d.set_item("cumulative", s.cumulative.clone())?;
                d.set_item("sum", s.sum_s)?;
                d.set_item("count", s.count)?;
                d.set_item("recent_p95", s.recent_p95_s)?;
                Ok(d)
            };
        let d = PyDict::new(py);
        d.set_item("commit", series(&latency.commit)?)?;
        d.set_item("state_load", series(&latency.state_load)?)?;
        Ok(Some(d))
    }

    /// The item segments a streaming node saved: `[(first, bytes), ...]` in order.
    fn partial_segments<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        node_id: &str,
    ) -> PyResult<Vec<(u64, Bound<'py, PyBytes>)>> {
        let segments = detached(py, || self.engine.partial_segments(run_id, node_id))?;
        Ok(segments
            .into_iter()
            .map(|(first, data)| (first, PyBytes::new(py, &data)))
            .collect())
    }

    /// The run's lease: `{"owner": str | None, "expires": float}` (seconds since the epoch).
    fn run_lease<'py>(&self, py: Python<'py>, run_id: &str) -> PyResult<Bound<'py, PyDict>> {
        let (owner, expires) = detached(py, || self.engine.run_lease(run_id))?;
        let d = PyDict::new(py);
        d.set_item("owner", owner)?;
        d.set_item("expires", expires)?;
        Ok(d)
    }

    /// Store-wide aggregates: `{"runs": [{"workflow", "status", "runs", "recent"}], "nodes":
    /// [{"workflow", "node", "status", "started", "attempts", "oom", "duration_buckets",
    /// "duration_sum_s"}], "duration_bounds": [...]}` (`recent`: runs updated at or after
    /// `recent_since`; `duration_buckets`: per bound, not cumulative, then the overflow).
    fn store_summary<'py>(
        &self,
        py: Python<'py>,
        recent_since: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let summary = detached(py, || self.engine.store_summary(recent_since))?;
        let runs = PyList::empty(py);
        for r in &summary.runs {
            let d = PyDict::new(py);
            d.set_item("workflow", &r.workflow)?;
            d.set_item("status", &r.status)?;
            d.set_item("runs", r.runs)?;
            d.set_item("recent", r.recent)?;
            runs.append(d)?;
        }
        let nodes = PyList::empty(py);
        for n in &summary.nodes {
            let d = PyDict::new(py);
            d.set_item("workflow", &n.workflow)?;
            d.set_item("node", &n.node)?;
            d.set_item("status", &n.status)?;
            d.set_item("started", n.started)?;
            d.set_item("attempts", n.attempts)?;
            d.set_item("oom", n.oom)?;
            d.set_item("duration_buckets", n.duration_buckets.clone())?;
            d.set_item("duration_sum_s", n.duration_sum_s)?;
            nodes.append(d)?;
        }
        let d = PyDict::new(py);
        d.set_item("runs", runs)?;
        d.set_item("nodes", nodes)?;
        d.set_item(
            "duration_bounds",
            resumeflow_core::store::summary::DURATION_BOUNDS_S.to_vec(),
        )?;
        Ok(d)
    }

    /// Waits (GIL released) up to `timeout` seconds for the store to change after marker
    /// `seen`; returns the new marker.
    fn wait_for_change(&self, py: Python<'_>, seen: u64, timeout: f64) -> PyResult<u64> {
        let timeout = Duration::from_secs_f64(timeout.max(0.0));
        detached(py, || self.engine.wait_for_change(seen, timeout))
    }

    /// Resumes crashed runs; `workflows` maps a workflow name to `(CoreGraph, runner)`.
    fn recover(&self, py: Python<'_>, workflows: &Bound<'_, PyDict>) -> PyResult<Vec<PyRun>> {
        let mut known: BTreeMap<String, (Arc<Graph>, Arc<dyn NodeExecutor>)> = BTreeMap::new();
        for (name, pair) in workflows.iter() {
            let (graph, runner): (PyRef<'_, PyGraph>, Py<PyAny>) = pair.extract()?;
            known.insert(name.extract()?, (graph.graph.clone(), executor(runner)));
        }
        let handles = detached(py, || self.engine.recover(|name| known.get(name).cloned()))?;
        Ok(handles.into_iter().map(|handle| PyRun { handle }).collect())
    }

    /// `PRAGMA integrity_check` of the store: "ok", or the problems found.
    fn check_integrity(&self, py: Python<'_>) -> PyResult<String> {
        detached(py, || self.engine.check_integrity())
    }

    /// Ids of the runs this engine is executing now.
    fn active_runs(&self) -> Vec<String> {
        self.engine
            .active_runs()
            .iter()
            .map(|h| h.id().to_string())
            .collect()
    }

    /// Interrupts active runs, waits for them to pause, closes the store.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.engine.close());
    }
}
