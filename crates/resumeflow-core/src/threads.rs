//! Thread checkpoints: durable storage for the checkpoints of external graph frameworks
//! (LangGraph's `BaseCheckpointSaver` is the first user, see `resumeflow.langgraph`).
//!
//! The model is LangGraph's: a *thread* holds checkpoints per *namespace*, each with an
//! opaque serialized body, opaque metadata, a parent, and a map channel → version; channel
//! values are stored once per `(thread, namespace, channel, version)` — an unchanged channel
//! costs nothing at the next checkpoint — and their bytes are content-addressed (BLAKE3), so
//! the same value written by two threads, a copied thread, or a pending write that becomes a
//! channel value is stored once. Pending writes hang off the checkpoint they follow.
//!
//! Every write goes through the store's single writer (group commit), so many threads or
//! tasks writing at once never see "database is locked". Everything here is bytes and
//! strings: this crate still knows nothing of Python.

use bytes::Bytes;

use crate::error::Result;

/// A serialized value with the tag its serializer gave it (LangGraph's `dumps_typed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedBytes {
    /// The serializer's type tag (`"msgpack"`, `"json"`, `"bytes"`, …).
    pub type_tag: String,
    /// The serialized bytes, shared, not copied (a binding can lend the caller's buffer:
    /// a large channel value then crosses into the store without a copy).
    pub data: Bytes,
}

impl TypedBytes {
    /// Builds a typed value.
    ///
    /// ```
    /// use resumeflow_core::threads::TypedBytes;
    /// let v = TypedBytes::new("json", b"1".to_vec());
    /// assert_eq!(v.type_tag, "json");
    /// ```
    pub fn new(type_tag: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            type_tag: type_tag.into(),
            data: data.into(),
        }
    }
}

/// One checkpoint to store.
#[derive(Debug, Clone)]
pub struct NewThreadCheckpoint {
    /// The thread.
    pub thread_id: String,
    /// The namespace within the thread (`""` is the root graph).
    pub checkpoint_ns: String,
    /// The checkpoint's id; ids sort in creation order.
    pub checkpoint_id: String,
    /// The checkpoint this one follows, if any.
    pub parent_id: Option<String>,
    /// The run that created it (for `delete_runs`).
    pub run_id: Option<String>,
    /// The serialized checkpoint without its channel values.
    pub checkpoint: TypedBytes,
    /// The serialized metadata.
    pub metadata: TypedBytes,
    /// The metadata as JSON text, if it has a JSON form: what metadata filters query.
    pub metadata_json: Option<String>,
    /// The checkpoint's whole channel → version map (versions as text).
    pub versions: Vec<(String, String)>,
    /// Values of the channels whose version is new in this checkpoint; `None` records that
    /// the channel has no value at that version.
    pub new_values: Vec<(String, String, Option<TypedBytes>)>,
}

/// What a metadata filter compares a JSON path's value with (SQL semantics: `Null` matches
/// a missing key or a JSON null; `true`/`false` are the integers 1/0; objects and arrays
/// compare as compact JSON text).
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// Writes a task made after a checkpoint (LangGraph's `put_writes`).
#[derive(Debug, Clone)]
pub struct NewThreadWrites {
    /// The thread.
    pub thread_id: String,
    /// The namespace.
    pub checkpoint_ns: String,
    /// The checkpoint the writes follow.
    pub checkpoint_id: String,
    /// The task that wrote them.
    pub task_id: String,
    /// The task's path (sort key of pending writes).
    pub task_path: String,
    /// `(idx, channel, value)`: a write whose `(task_id, idx)` is already stored is kept as
    /// it was when `idx >= 0` and replaced when `idx < 0` (special channels: errors,
    /// interrupts, resume values).
    pub writes: Vec<(i64, String, TypedBytes)>,
}

/// A stored pending write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// The task that wrote it.
    pub task_id: String,
    /// The channel written.
    pub channel: String,
    /// The value.
    pub value: TypedBytes,
    /// The task's path.
    pub task_path: String,
}

/// A stored checkpoint, with its channel values and pending writes when asked for.
#[derive(Debug, Clone)]
pub struct ThreadCheckpoint {
    /// The thread.
    pub thread_id: String,
    /// The namespace.
    pub checkpoint_ns: String,
    /// The checkpoint's id.
    pub checkpoint_id: String,
    /// The parent checkpoint's id.
    pub parent_id: Option<String>,
    /// The serialized checkpoint without channel values.
    pub checkpoint: TypedBytes,
    /// The serialized metadata.
    pub metadata: TypedBytes,
    /// The checkpoint's channel → version map, as stored.
    pub versions: Vec<(String, String)>,
    /// Channel values at this checkpoint (channels with no value are left out).
    pub values: Vec<(String, TypedBytes)>,
    /// Pending writes, ordered by `(task_path, task_id, idx)`.
    pub writes: Vec<PendingWrite>,
}

/// Which checkpoints `list` returns, newest first (by checkpoint id, then thread and namespace).
#[derive(Debug, Clone, Default)]
pub struct ThreadQuery {
    /// Only this thread.
    pub thread_id: Option<String>,
    /// Only this namespace.
    pub checkpoint_ns: Option<String>,
    /// Only this checkpoint id.
    pub checkpoint_id: Option<String>,
    /// Only checkpoints with an id below this one.
    pub before: Option<String>,
    /// Continue after this `(checkpoint_id, thread_id, checkpoint_ns)` (keyset paging).
    pub after: Option<(String, String, String)>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Load channel values and pending writes too.
    pub with_contents: bool,
    /// Metadata filters: `(dotted path, value)`, all of which must match. A checkpoint
    /// stored without a JSON form of its metadata (by an older version) always passes: the
    /// caller checks those itself.
    pub metadata_filter: Vec<(String, FilterValue)>,
}

/// What `prune` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneStrategy {
    /// The newest checkpoint of each namespace (and its pending writes).
    KeepLatest,
    /// Nothing.
    DeleteAll,
}

impl PruneStrategy {
    /// Parses `keep_latest` or `delete`.
    ///
    /// ```
    /// use resumeflow_core::threads::PruneStrategy;
    /// assert_eq!(PruneStrategy::parse("delete").unwrap(), PruneStrategy::DeleteAll);
    /// assert!(PruneStrategy::parse("newest").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "keep_latest" => Ok(Self::KeepLatest),
            "delete" => Ok(Self::DeleteAll),
            other => Err(crate::Error::InvalidArgument {
                field: "strategy".into(),
                message: format!("{other:?} is not one of \"keep_latest\", \"delete\""),
            }),
        }
    }
}

/// Storage of thread checkpoints; [`crate::SqliteStore`] implements it in its own tables.
pub trait ThreadStore: Send + Sync {
    /// Stores a checkpoint and its new channel values in one transaction (replacing a
    /// checkpoint with the same key).
    fn put_checkpoint(&self, checkpoint: NewThreadCheckpoint) -> Result<()>;
    /// Stores pending writes in one transaction. In `sync` durability the commit is not
    /// fsynced on its own: it rides on the next durable commit (the step's checkpoint), one
    /// fsync per step instead of two. A kill -9 loses nothing (the log is written, only not
    /// flushed); a power loss before the next checkpoint may lose these writes, which then
    /// costs a re-run of the tasks that made them — never a checkpoint.
    fn put_writes(&self, writes: NewThreadWrites) -> Result<()>;
    /// The checkpoint `checkpoint_id` (or the newest of the namespace), with contents.
    fn get_checkpoint(
        &self,
        thread_id: &str,
        checkpoint_ns: &str,
        checkpoint_id: Option<&str>,
    ) -> Result<Option<ThreadCheckpoint>>;
    /// Checkpoints matching `query`, newest first.
    fn list_checkpoints(&self, query: &ThreadQuery) -> Result<Vec<ThreadCheckpoint>>;
    /// Deletes every checkpoint, write and channel value of these threads; returns the
    /// number of checkpoints deleted.
    fn delete_threads(&self, thread_ids: &[String]) -> Result<usize>;
    /// Deletes the checkpoints (and their writes) these runs created; returns how many.
    fn delete_runs(&self, run_ids: &[String]) -> Result<usize>;
    /// Copies every checkpoint, write and channel value of `source` to `target`; returns the
    /// number of checkpoints copied (0 for an unknown source).
    fn copy_thread(&self, source: &str, target: &str) -> Result<usize>;
    /// Prunes these threads; returns the number of checkpoints deleted.
    fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<usize>;
}

/// The content address of a typed value: BLAKE3 over the tag, a NUL and the bytes.
pub fn value_hash(value: &TypedBytes) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(value.type_tag.as_bytes());
    h.update(&[0]);
    h.update(&value.data);
    h.finalize().as_bytes().to_vec()
}

/// A checkpoint's channel → version map as stored.
pub fn encode_versions(versions: &[(String, String)]) -> Vec<u8> {
    rmp_serde::to_vec(versions).expect("a list of string pairs encodes")
}

/// The stored version map back.
pub fn decode_versions(bytes: &[u8]) -> Result<Vec<(String, String)>, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}
