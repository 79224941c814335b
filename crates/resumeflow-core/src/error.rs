//! Error types of the engine core: one enum per domain and the crate-wide [`Error`].
//!
//! Every message names the run, node, checkpoint or path at fault and, where there is one,
//! what to do next.

use std::path::PathBuf;

/// Problems with the shape of a workflow graph or with node ids named by a caller.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("invalid workflow name {name:?}: use 1-200 characters from [A-Za-z0-9_.-]")]
    InvalidWorkflowName { name: String },
    #[error("invalid node id {node:?} in workflow {workflow:?}: use 1-200 characters from [A-Za-z0-9_.-]")]
    InvalidNodeId { workflow: String, node: String },
    #[error("duplicate node id {node:?} in workflow {workflow:?}")]
    DuplicateNode { workflow: String, node: String },
    #[error("node {node:?} in workflow {workflow:?}: input {param:?} names unknown node {source_node:?}")]
    UnknownInput {
        workflow: String,
        node: String,
        param: String,
        source_node: String,
    },
    #[error("workflow {workflow:?} has a cycle: {}", cycle.join(" -> "))]
    Cycle {
        workflow: String,
        cycle: Vec<String>,
    },
    #[error("workflow {workflow:?} has no node {node:?} (named in {context})")]
    UnknownNode {
        workflow: String,
        node: String,
        context: String,
    },
    #[error("run input {input:?} is required by node {node:?} of workflow {workflow:?} but was not given")]
    MissingInput {
        workflow: String,
        node: String,
        input: String,
    },
    #[error(
        "node {node:?} needs {needed} of resource {resource:?} but the engine has only {available}"
    )]
    ResourceUnavailable {
        node: String,
        resource: String,
        needed: u32,
        available: u32,
    },
    #[error("workflow {workflow:?} has no nodes")]
    Empty { workflow: String },
}

/// Problems opening, reading or writing the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Unusable { path: PathBuf, message: String },
    #[error("store {path} was written by schema version {found}, newer than this resumeflow ({supported}); upgrade resumeflow to open it")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("store {path}: sqlite error: {message}")]
    Sqlite { path: PathBuf, message: String },
    #[error("store {path}: corrupt record in {table}: {message}")]
    Corrupt {
        path: PathBuf,
        table: String,
        message: String,
    },
    #[error("store {path} is closed")]
    Closed { path: PathBuf },
    #[error("store {path} has no room for a write{}: {used_bytes} bytes in use before it; the write was refused and nothing committed before it was lost (raise max_store_bytes, free disk space or run `cleanup`, then resume the run)", full_cause(*max_bytes))]
    Full {
        path: PathBuf,
        /// The cap set with `max_store_bytes`, if one was set.
        max_bytes: Option<u64>,
        used_bytes: u64,
    },
}

/// Why a store is full, for `StoreError::Full`'s message.
fn full_cause(max_bytes: Option<u64>) -> String {
    match max_bytes {
        Some(b) => format!(" (it reached its size cap max_store_bytes={b})"),
        None => " (the disk or the file system refused to grow it)".to_string(),
    }
}

/// The crate-wide error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {run_id:?} not found in the store")]
    RunNotFound { run_id: String },
    #[error("run {run_id:?} already exists; pick another run_id or resume it")]
    RunExists { run_id: String },
    #[error("run {run_id:?} has no checkpoint {checkpoint_id}")]
    CheckpointNotFound { run_id: String, checkpoint_id: i64 },
    #[error("run {run_id:?} is locked by live worker {owner} (lease valid for {remaining_s:.1}s more); wait or recover it later")]
    RunLocked {
        run_id: String,
        owner: String,
        remaining_s: f64,
    },
    #[error("run {run_id:?} lost its lease (fencing token {token} is stale): another worker took it over; this worker stopped writing")]
    LeaseLost { run_id: String, token: i64 },
    #[error("run {run_id:?} was started by workflow {stored:?} with a different structure ({detail}); resume it with the same node ids and wiring, start a new run, or allow the mismatch explicitly with allow_mismatch=True (CLI: resumeflow resume RUN_ID --allow-mismatch) if the completed nodes' outputs still fit the new graph")]
    WorkflowMismatch {
        run_id: String,
        stored: String,
        detail: String,
    },
    #[error("run {run_id:?} is {status} and cannot be resumed as is; pass checkpoint_id, updates or rerun to run parts of it again")]
    RunNotResumable { run_id: String, status: String },
    #[error("run {run_id:?}: attempt {attempt} of node {node:?} is no longer the running attempt (it timed out, was cancelled or the run moved on); its write was refused")]
    StaleAttempt {
        run_id: String,
        node: String,
        attempt: u32,
    },
    #[error("run {run_id:?} changed while this worker prepared to resume it; try again")]
    RunChanged { run_id: String },
    #[error("invalid argument {field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("engine is shut down")]
    Shutdown,
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
