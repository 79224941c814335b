//! resumeflow-core: a durable, resumable DAG execution engine.
//!
//! A run's progress is committed to an embedded SQLite store (see [`store`]) so that it can
//! be stopped anywhere — `execute_until`, interrupt, crash — and resumed without losing or
//! repeating finished work. Node work goes through the [`NodeExecutor`] trait; this crate
//! knows nothing of Python.

pub mod completed_marks;
pub mod control;
pub mod engine;
pub mod error;
pub mod event;
pub mod executor;
pub mod graph;
pub mod lease;
mod options;
pub mod process_local;
pub mod projection;
mod resume_plan;
pub mod retry;
mod run_handle;
mod runtime;
mod scheduler;
mod slots;
pub mod state;
pub mod store;
pub mod threads;

pub use engine::Engine;
pub use error::{Error, GraphError, Result, StoreError};
pub use event::{Event, EventKind, ResetReason};
pub use executor::{
    LiveObject, NodeContext, NodeExecutor, NodeFailure, NodeFuture, NodeOutput, NodeTask, NodeValue,
};
pub use graph::{Graph, InputBinding, InputSource, NodeSpec};
pub use options::{EngineOptions, ResumeOptions, StartOptions};
pub use projection::RunProjection;
pub use retry::RetryPolicy;
pub use run_handle::{RunHandle, RunOutcome};
pub use state::{Checkpoint, NodeState, NodeStatus, RunState, RunStatus, ValueRef};
pub use store::{open_store, Durability, PgStore, SqliteStore, Store, StoreOptions};
