//! resumeflow-core: a durable, resumable DAG execution engine.
//!
//! A run's progress is committed to an embedded SQLite store (see [`store`]) so that it can
//! be stopped anywhere — `execute_until`, interrupt, crash — and resumed without losing or
//! repeating finished work. Node work goes through the [`NodeExecutor`] trait; this crate
//! knows nothing of Python.

pub mod engine;
pub mod error;
pub mod event;
pub mod executor;
pub mod graph;
pub mod lease;
pub mod projection;
pub mod retry;
mod runtime;
mod scheduler;
mod slots;
pub mod state;
pub mod store;

pub use engine::{Engine, EngineOptions, ResumeOptions, RunHandle, RunOutcome, StartOptions};
pub use error::{Error, GraphError, Result, StoreError};
pub use event::{Event, EventKind, ResetReason};
pub use executor::{
    LiveObject, NodeContext, NodeExecutor, NodeFailure, NodeFuture, NodeOutput, NodeTask, NodeValue,
};
pub use graph::{Graph, InputBinding, InputSource, NodeSpec};
pub use projection::RunProjection;
pub use retry::RetryPolicy;
pub use state::{Checkpoint, NodeState, NodeStatus, RunState, RunStatus, ValueRef};
pub use store::{Durability, SqliteStore, Store};
