//! `CoreThreadStore`: the store's thread checkpoints (`resumeflow_core::threads`) as the
//! LangGraph saver (`resumeflow.langgraph`) sees them. Converts and releases the GIL; no
//! saver logic lives here.

use std::sync::Arc;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use resumeflow_core::threads::{
    FilterValue, NewThreadCheckpoint, NewThreadWrites, PruneStrategy, ThreadCheckpoint,
    ThreadQuery, ThreadStore, TypedBytes,
};
use resumeflow_core::{Durability, SqliteStore, Store};

use crate::engine::PyEngine;
use crate::errors::to_py;
use crate::gil::detached;

/// `(type, bytes)` as given by the serializer.
type PyTyped<'py> = (String, Bound<'py, PyBytes>);
/// `(thread_id, ns, checkpoint_id, parent_id, checkpoint, metadata, values, writes,
/// versions)`.
type PyCheckpoint<'py> = (
    String,
    String,
    String,
    Option<String>,
    PyTyped<'py>,
    PyTyped<'py>,
    Vec<(String, PyTyped<'py>)>,
    Vec<(String, String, PyTyped<'py>, String)>,
    Vec<(String, String)>,
);

/// The serializer's bytes, lent to the store (the `bytes` object is kept alive, not copied).
fn typed(value: &PyTyped<'_>) -> TypedBytes {
    let lent = PyBackedBytes::from(value.1.clone());
    TypedBytes::new(value.0.clone(), Bytes::from_owner(lent))
}

fn py_typed<'py>(py: Python<'py>, value: &TypedBytes) -> PyTyped<'py> {
    (value.type_tag.clone(), PyBytes::new(py, &value.data))
}

fn py_checkpoint<'py>(py: Python<'py>, cp: ThreadCheckpoint) -> PyCheckpoint<'py> {
    let values = cp
        .values
        .iter()
        .map(|(channel, v)| (channel.clone(), py_typed(py, v)))
        .collect();
    let writes = cp
        .writes
        .iter()
        .map(|w| {
            (
                w.task_id.clone(),
                w.channel.clone(),
                py_typed(py, &w.value),
                w.task_path.clone(),
            )
        })
        .collect();
    (
        cp.thread_id,
        cp.checkpoint_ns,
        cp.checkpoint_id,
        cp.parent_id,
        py_typed(py, &cp.checkpoint),
        py_typed(py, &cp.metadata),
        values,
        writes,
        cp.versions,
    )
}

/// Thread checkpoints in a resumeflow store: opened on a path, or shared with an engine.
#[pyclass(module = "resumeflow._core", name = "CoreThreadStore", frozen)]
pub struct PyThreadStore {
    store: Arc<dyn Store>,
    /// Whether `close` closes the store (false when it belongs to an engine).
    owned: bool,
}

impl PyThreadStore {
    fn threads(&self) -> PyResult<&dyn ThreadStore> {
        self.store.threads().ok_or_else(|| {
            to_py(resumeflow_core::Error::InvalidArgument {
                field: "store".into(),
                message: "this store keeps no thread checkpoints".into(),
            })
        })
    }
}

/// A metadata filter's SQL operand: None, an int (a bool is 0/1; beyond 64 bits, its
/// decimal text), a float or a str (the Python layer turns every other value into one).
fn filter_value(value: &Bound<'_, PyAny>) -> PyResult<FilterValue> {
    if value.is_none() {
        return Ok(FilterValue::Null);
    }
    if let Ok(b) = value.cast::<pyo3::types::PyBool>() {
        return Ok(FilterValue::Int(i64::from(b.is_true())));
    }
    if value.is_instance_of::<pyo3::types::PyInt>() {
        return Ok(match value.extract::<i64>() {
            Ok(v) => FilterValue::Int(v),
            Err(_) => FilterValue::Text(value.str()?.to_string()),
        });
    }
    if let Ok(v) = value.extract::<f64>() {
        return Ok(FilterValue::Real(v));
    }
    Ok(FilterValue::Text(value.extract::<String>()?))
}

#[pymethods]
impl PyThreadStore {
    #[new]
    #[pyo3(signature = (path, durability="sync"))]
    fn new(py: Python<'_>, path: std::path::PathBuf, durability: &str) -> PyResult<Self> {
        let durability = Durability::parse(durability).map_err(to_py)?;
        let target = path.to_string_lossy().into_owned();
        let store: Arc<dyn Store> = if resumeflow_core::store::postgres::is_postgres_url(&target) {
            let options = resumeflow_core::store::PgOptions {
                durability,
                ..Default::default()
            };
            Arc::new(detached(py, || {
                resumeflow_core::PgStore::open(&target, &options)
            })?)
        } else {
            Arc::new(detached(py, || SqliteStore::open(&path, durability))?)
        };
        Ok(Self { store, owned: true })
    }

    /// Shares the store of an open engine (one writer for both).
    #[staticmethod]
    fn of_engine(engine: &PyEngine) -> Self {
        Self {
            store: engine.store(),
            owned: false,
        }
    }

    #[getter]
    fn path(&self) -> String {
        self.store.path().to_string_lossy().into_owned()
    }

    #[pyo3(signature = (thread_id, checkpoint_ns, checkpoint_id, parent_id, run_id, checkpoint, metadata, versions, new_values, metadata_json=None))]
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        py: Python<'_>,
        thread_id: String,
        checkpoint_ns: String,
        checkpoint_id: String,
        parent_id: Option<String>,
        run_id: Option<String>,
        checkpoint: PyTyped<'_>,
        metadata: PyTyped<'_>,
        versions: Vec<(String, String)>,
        new_values: Vec<(String, String, Option<PyTyped<'_>>)>,
        metadata_json: Option<String>,
    ) -> PyResult<()> {
        let cp = NewThreadCheckpoint {
            thread_id,
            checkpoint_ns,
            checkpoint_id,
            parent_id,
            run_id,
            checkpoint: typed(&checkpoint),
            metadata: typed(&metadata),
            metadata_json,
            versions,
            new_values: new_values
                .iter()
                .map(|(c, v, value)| (c.clone(), v.clone(), value.as_ref().map(typed)))
                .collect(),
        };
        let threads = self.threads()?;
        detached(py, || threads.put_checkpoint(cp))
    }

    #[allow(clippy::too_many_arguments)]
    fn put_writes(
        &self,
        py: Python<'_>,
        thread_id: String,
        checkpoint_ns: String,
        checkpoint_id: String,
        task_id: String,
        task_path: String,
        writes: Vec<(i64, String, PyTyped<'_>)>,
    ) -> PyResult<()> {
        let w = NewThreadWrites {
            thread_id,
            checkpoint_ns,
            checkpoint_id,
            task_id,
            task_path,
            writes: writes
                .iter()
                .map(|(idx, c, v)| (*idx, c.clone(), typed(v)))
                .collect(),
        };
        let threads = self.threads()?;
        detached(py, || threads.put_writes(w))
    }

    #[pyo3(signature = (thread_id, checkpoint_ns, checkpoint_id=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        thread_id: &str,
        checkpoint_ns: &str,
        checkpoint_id: Option<&str>,
    ) -> PyResult<Option<PyCheckpoint<'py>>> {
        let threads = self.threads()?;
        let found = detached(py, || {
            threads.get_checkpoint(thread_id, checkpoint_ns, checkpoint_id)
        })?;
        Ok(found.map(|cp| py_checkpoint(py, cp)))
    }

    #[pyo3(signature = (thread_id=None, checkpoint_ns=None, checkpoint_id=None, before=None, after=None, limit=None, with_contents=true, metadata_filter=None))]
    #[allow(clippy::too_many_arguments)]
    fn list_checkpoints<'py>(
        &self,
        py: Python<'py>,
        thread_id: Option<String>,
        checkpoint_ns: Option<String>,
        checkpoint_id: Option<String>,
        before: Option<String>,
        after: Option<(String, String, String)>,
        limit: Option<usize>,
        with_contents: bool,
        metadata_filter: Option<Vec<(String, Bound<'py, PyAny>)>>,
    ) -> PyResult<Vec<PyCheckpoint<'py>>> {
        let metadata_filter = metadata_filter
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| Ok((key, filter_value(&value)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let query = ThreadQuery {
            thread_id,
            checkpoint_ns,
            checkpoint_id,
            before,
            after,
            limit,
            with_contents,
            metadata_filter,
        };
        let threads = self.threads()?;
        let found = detached(py, || threads.list_checkpoints(&query))?;
        Ok(found.into_iter().map(|cp| py_checkpoint(py, cp)).collect())
    }

    fn delete_threads(&self, py: Python<'_>, thread_ids: Vec<String>) -> PyResult<usize> {
        let threads = self.threads()?;
        detached(py, || threads.delete_threads(&thread_ids))
    }

    fn delete_runs(&self, py: Python<'_>, run_ids: Vec<String>) -> PyResult<usize> {
        let threads = self.threads()?;
        detached(py, || threads.delete_runs(&run_ids))
    }

    fn copy_thread(&self, py: Python<'_>, source: &str, target: &str) -> PyResult<usize> {
        let threads = self.threads()?;
        detached(py, || threads.copy_thread(source, target))
    }

    fn prune(&self, py: Python<'_>, thread_ids: Vec<String>, strategy: &str) -> PyResult<usize> {
        let strategy = PruneStrategy::parse(strategy).map_err(to_py)?;
        let threads = self.threads()?;
        detached(py, || threads.prune(&thread_ids, strategy))
    }

    /// Closes the store if this object opened it (an engine's store stays open).
    fn close(&self, py: Python<'_>) {
        if self.owned {
            py.detach(|| self.store.close());
        }
    }
}
