//! Durable storage of runs, events, node states, checkpoints, values and partial states.
//!
//! [`Store`] is the seam the engine writes through; [`SqliteStore`] is the embedded
//! implementation (one writer thread with group commit, WAL, `BEGIN IMMEDIATE`), [`PgStore`]
//! the one in PostgreSQL shared by many hosts. Both compute their writes with the pure
//! [`plan`] and commit through the same group-commit writer (`writer.rs`); `docs/stores.md` lists the
//! rules every store keeps and the tests that hold each to them.

mod apply;
pub mod blob_files;
mod checkpoints;
pub mod latency;
pub mod plan;
pub mod postgres;
pub(crate) mod queue;
mod schema;
mod sqlite;
mod staging;
pub mod summary;
mod threads_sqlite;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::Result;
use crate::event::{Event, EventKind};
use crate::graph::Graph;
use crate::lease::{Lease, LeaseRequest};
use crate::state::{Checkpoint, RunState, RunStatus, ValueRef};

pub use postgres::{PgOptions, PgStore};
pub use schema::{migrations, SCHEMA_VERSION};
pub use sqlite::SqliteStore;

/// The engine's commit policy: whether a node's dependants wait for its commit, and how
/// hard each store pushes a commit to disk (SQLite: `synchronous=FULL`/`NORMAL`/`OFF`;
/// PostgreSQL: `synchronous_commit` on, or off for the other two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A completion is durable (fsynced) before its dependants start.
    #[default]
    Sync,
    /// Commits not awaited: dependants may start before their producer's commit lands, but
    /// commits stay in order (a crash re-runs at most the uncommitted tail, and an attempt
    /// that was in flight but not yet recorded may reuse its number).
    Batched,
    /// Nothing is written until the run stops (tests and benchmarks only).
    Off,
}

impl Durability {
    /// Parses `sync`, `batched` or `off`.
    ///
    /// ```
    /// use resumeflow_core::Durability;
    /// assert_eq!(Durability::parse("batched").unwrap(), Durability::Batched);
    /// assert!(Durability::parse("fast").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "sync" => Ok(Self::Sync),
            "batched" => Ok(Self::Batched),
            "off" => Ok(Self::Off),
            other => Err(crate::Error::InvalidArgument {
                field: "durability".into(),
                message: format!("{other:?} is not one of \"sync\", \"batched\", \"off\""),
            }),
        }
    }
}

/// How a store is opened (the store's own settings, apart from the engine's).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub durability: Durability,
    /// Open an existing store for reading only: nothing is created, every write fails.
    pub read_only: bool,
    /// SQLite only: cap on the file's size.
    pub max_store_bytes: Option<u64>,
    /// Values whose stored form is at least this large go to blob files (`None`: 64 MiB).
    pub blob_file_threshold: Option<u64>,
    /// PostgreSQL only: the blob directory every host mounts (`None`: values in the database).
    pub blob_dir: Option<std::path::PathBuf>,
}

/// Opens the store `target` names: a `postgresql://` (or `postgres://`) URL opens a
/// [`PgStore`], anything else is the path of a SQLite file ([`SqliteStore`]). Options that
/// do not apply to that store are refused (`InvalidArgument`), not ignored.
///
/// ```
/// use resumeflow_core::store::{open_store, StoreOptions};
/// let dir = std::env::temp_dir().join(format!("rf-open-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = open_store(dir.join("runs.db").to_str().unwrap(), &StoreOptions::default()).unwrap();
/// assert!(store.list_runs(None).unwrap().is_empty());
/// # store.close(); std::fs::remove_dir_all(dir).ok();
/// ```
pub fn open_store(target: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let refuse = |field: &str, message: &str| crate::Error::InvalidArgument {
        field: field.into(),
        message: message.into(),
    };
    if postgres::is_postgres_url(target) {
        if options.max_store_bytes.is_some() {
            return Err(refuse(
                "max_store_bytes",
                "caps a SQLite file; a PostgreSQL store is bounded by the database's own limits",
            ));
        }
        let store = PgStore::open(
            target,
            &PgOptions {
                durability: options.durability,
                read_only: options.read_only,
                blob_dir: options.blob_dir.clone(),
                blob_file_threshold: options.blob_file_threshold,
            },
        )?;
        return Ok(Arc::new(store));
    }
    open_sqlite(Path::new(target), options)
}

/// Opens the SQLite store at `path` with `options` (see [`open_store`]).
pub fn open_sqlite(path: &Path, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    if options.blob_dir.is_some() {
        return Err(crate::Error::InvalidArgument {
            field: "blob_dir".into(),
            message:
                "is for a PostgreSQL store; a SQLite store keeps its blob files beside its file"
                    .into(),
        });
    }
    let store = if options.read_only {
        SqliteStore::open_read_only(path)?
    } else {
        SqliteStore::open(path, options.durability)?
    };
    if let Some(bytes) = options.max_store_bytes.filter(|_| !options.read_only) {
        store.set_max_bytes(bytes)?;
    }
    if let Some(bytes) = options.blob_file_threshold {
        store.set_blob_file_threshold(bytes);
    }
    Ok(Arc::new(store))
}

/// Runs `f`, which blocks (on a commit, or on the PostgreSQL client's own runtime), outside
/// the tokio runtime's scheduling when called from one of its worker threads (a node's async
/// code calling the store, say); elsewhere it just runs `f`.
pub(crate) fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: String,
    pub graph: Graph,
    /// Encoded run inputs by name.
    pub inputs: BTreeMap<String, Vec<u8>>,
    pub labels: BTreeMap<String, String>,
}

/// Events of one run committed together, with the values and partial states they reference.
#[derive(Debug, Clone, Default)]
pub struct RunBatch {
    pub run_id: String,
    /// Fencing token; `None` for operator writes made without a lease.
    pub token: Option<i64>,
    pub events: Vec<EventKind>,
    pub values: Vec<BatchValue>,
    pub partial_states: Vec<(String, Vec<u8>)>,
    /// Partial states moved to blob files by staging (at or above the file threshold):
    /// `(node, value)`, the file already durable.
    pub partial_files: Vec<(String, ValueRef)>,
    /// Items a streaming node appends to its saved progress: `(node, first, segment)`, the
    /// encoded items from index `first` on; segments at or after `first` saved earlier (by
    /// an attempt that went further before it failed) are replaced. Each save costs what it
    /// adds, not everything saved so far.
    pub partial_segments: Vec<(String, u64, Vec<u8>)>,
    /// Nodes whose segments are dropped (a streaming node completed: its output holds them).
    pub dropped_segments: Vec<String>,
    /// The canonical ranks ([`Graph::canonical_rank`]) of the nodes this batch's
    /// `NodeCompleted` events complete, in the same order (the scheduler fills it, never a
    /// rank without its completion). If their number differs from the completions', the
    /// run's completed marks are dropped instead of set (see [`crate::completed_marks`]).
    pub completed_ranks: Vec<u32>,
    /// The run's completed marks as of before this batch's events: a resume that read every
    /// node row writes them back with its first batch, making them valid again.
    pub marks_base: Option<crate::completed_marks::CompletedMarks>,
}

impl RunBatch {
    /// An empty batch for `run_id` under `token`.
    pub fn new(run_id: &str, token: Option<i64>) -> Self {
        Self {
            run_id: run_id.to_string(),
            token,
            ..Self::default()
        }
    }

    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.values.is_empty()
            && self.partial_states.is_empty()
            && self.partial_files.is_empty()
            && self.partial_segments.is_empty()
            && self.dropped_segments.is_empty()
            && self.marks_base.is_none()
    }

    /// Appends another batch of the same run.
    pub fn extend(&mut self, other: RunBatch) {
        // Ranks are only ever pushed with their completion, so a completion without its rank
        // anywhere leaves fewer ranks than completions in the whole, and the plan drops the
        // marks (no recount here: `off` durability extends one batch per step of the run).
        self.completed_ranks.extend(other.completed_ranks);
        // A base describes the run before every event of the batch that carries it.
        if self.marks_base.is_none() && self.events.is_empty() {
            self.marks_base = other.marks_base;
        }
        self.events.extend(other.events);
        self.values.extend(other.values);
        self.partial_states.extend(other.partial_states);
        self.partial_files.extend(other.partial_files);
        self.partial_segments.extend(other.partial_segments);
        self.dropped_segments.extend(other.dropped_segments);
    }
}

/// How a stored value's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueCodec {
    /// As given.
    #[default]
    Raw,
    /// zstd-compressed.
    Zstd,
}

impl ValueCodec {
    /// The `blobs.codec` column value.
    pub fn code(self) -> i64 {
        match self {
            Self::Raw => 0,
            Self::Zstd => 1,
        }
    }

    /// From the `blobs.codec` column value.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// A value a batch stores (content-addressed: stored once whatever references it).
#[derive(Debug, Clone)]
pub struct BatchValue {
    /// Hash and size of the value's bytes.
    pub value: ValueRef,
    /// What to store: the value's bytes, or once staged their stored form (compressed, or
    /// empty when the value went to a file).
    pub bytes: Arc<[u8]>,
    /// Compress with zstd when stored (chunk bundles; off for dense tensors).
    pub compress: bool,
    /// Set by staging: how `bytes` is encoded.
    pub codec: ValueCodec,
    /// Set by staging: the stored form lives in a blob file, already durable.
    pub in_file: bool,
}

impl BatchValue {
    /// A value already durable in a blob file (see [`Store::stage_file`]).
    pub fn in_file(value: ValueRef) -> Self {
        Self {
            value,
            bytes: Arc::from(&[][..]),
            compress: false,
            codec: ValueCodec::Raw,
            in_file: true,
        }
    }

    /// A value to store, compressed or not.
    ///
    /// ```
    /// use resumeflow_core::store::BatchValue;
    /// let v = BatchValue::new(b"abc".to_vec().into(), false);
    /// assert_eq!(v.value.size, 3);
    /// ```
    pub fn new(bytes: Arc<[u8]>, compress: bool) -> Self {
        Self {
            value: ValueRef::of(&bytes),
            bytes,
            compress,
            codec: ValueCodec::Raw,
            in_file: false,
        }
    }
}

/// Resolves once the batch is committed (or refused).
pub type CommitTicket = oneshot::Receiver<Result<()>>;

/// A run as stored: its state plus what a worker needs to resume it.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub state: RunState,
    /// The stored graph; `None` from [`Store::load_run_without_graph`].
    pub graph: Option<Graph>,
    pub graph_hash: String,
    pub inputs: BTreeMap<String, Vec<u8>>,
    pub lease_owner: Option<String>,
    pub lease_expires: f64,
    pub lease_token: i64,
    /// Sequence number of the run's last event.
    pub last_seq: i64,
}

/// A node's saved partial state as [`Store::partial_state_ref`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialState {
    /// Stored in the database row.
    Inline(Vec<u8>),
    /// In a blob file (at or above the file threshold).
    File(ValueRef),
}

/// Which runs [`Store::list_runs_filtered`] returns: all filters must match; runs come
/// oldest first (`created_at`, then `run_id`) or, with `newest_first`, in the reverse order;
/// the first `offset` matching runs are skipped, then at most `limit` come, after the run
/// `after` (in that order).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub workflow: Option<String>,
    /// Labels the run must carry with these values.
    pub labels: BTreeMap<String, String>,
    pub limit: Option<usize>,
    /// Keyset paging: only runs after this run id in the order above.
    pub after: Option<String>,
    /// Newest first (`created_at` then `run_id`, both descending).
    pub newest_first: bool,
    /// Matching runs skipped before the first one returned.
    pub offset: usize,
}

/// The runs of `filter` from the ids its SQL part selected, in order: labels checked on the
/// loaded run, `offset` skipped (without loading when no label is asked for), at most
/// `limit` kept. Shared by every store; `load` reads one run.
pub fn page_runs(
    ids: impl IntoIterator<Item = Result<String>>,
    filter: &RunFilter,
    mut load: impl FnMut(&str) -> Result<StoredRun>,
) -> Result<Vec<StoredRun>> {
    let mut out = Vec::new();
    let mut skip = filter.offset;
    for id in ids {
        if filter.limit.is_some_and(|limit| out.len() >= limit) {
            break;
        }
        let id = id?;
        if filter.labels.is_empty() && skip > 0 {
            skip -= 1; // skipped without loading it
            continue;
        }
        let run = load(&id)?;
        let labelled = filter
            .labels
            .iter()
            .all(|(k, v)| run.state.labels.get(k) == Some(v));
        if !labelled {
            continue;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        out.push(run);
    }
    Ok(out)
}

/// What a `cleanup` call should delete.
#[derive(Debug, Clone)]
pub struct CleanupRequest {
    pub run_id: Option<String>,
    /// Newest checkpoints kept per run (at least 1).
    pub keep_last: usize,
    /// Only checkpoints created before this time (seconds since the epoch) are deleted.
    pub older_than: Option<f64>,
}

/// The storage seam of the engine.
///
/// Rules every implementation keeps (tested on both stores, see `docs/stores.md`): each
/// write is one transaction; a batch commits only under the run's current fencing token;
/// the batches of one lease land in submission order, and once one is refused every later
/// one of that lease is refused (but [`Store::commit_after_refusal`]); lease expiry is
/// computed and compared on the store's clock; [`Store::submit`] returns at once and the
/// ticket resolves after the commit, except that with `Durability::Sync` it may commit the
/// group on the calling thread before returning.
pub trait Store: Send + Sync + 'static {
    /// Where the store lives (for messages).
    fn path(&self) -> &Path;
    /// Creates a run and takes its lease in one transaction.
    fn create_run(&self, run: NewRun, lease: LeaseRequest) -> Result<Lease>;
    /// Takes a run's lease (refused with `RunLocked` while a live worker holds it) and appends
    /// `events` under the new token, in one transaction.
    fn acquire_lease(
        &self,
        run_id: &str,
        lease: LeaseRequest,
        events: Vec<EventKind>,
    ) -> Result<Lease> {
        self.acquire_lease_at(run_id, lease, None, events, Vec::new())
    }
    /// As [`Store::acquire_lease`], but refused with `RunChanged` unless the run's last event
    /// is still `expected_seq` (the state the caller computed `events` from); `values` (those
    /// the events reference: a resume's `updates`) are stored in the same transaction.
    fn acquire_lease_at(
        &self,
        run_id: &str,
        lease: LeaseRequest,
        expected_seq: Option<i64>,
        events: Vec<EventKind>,
        values: Vec<BatchValue>,
    ) -> Result<Lease>;
    /// Extends the leases still held; returns the ones that were lost.
    fn renew_leases(&self, leases: Vec<Lease>, ttl_s: f64) -> Result<Vec<Lease>>;
    /// Queues a batch for the next group commit.
    fn submit(&self, batch: RunBatch) -> CommitTicket;
    /// Queues a batch and waits for its commit.
    fn commit(&self, batch: RunBatch) -> Result<()> {
        off_runtime(|| {
            self.submit(batch)
                .blocking_recv()
                .unwrap_or(Err(crate::Error::Shutdown))
        })
    }
    /// Records a new run as `queued` without taking its lease (`RunExists` if the id is
    /// taken); a worker claims it with [`Store::claim_run`].
    fn submit_run(&self, run: NewRun) -> Result<()>;
    /// Takes the lease of the oldest queued run whose `(workflow name, structural hash)` is
    /// in `workflows`, atomically (no two workers ever claim one run); `None` if none is
    /// queued. On PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED` in the same transaction.
    fn claim_run(
        &self,
        workflows: &[(String, String)],
        lease: LeaseRequest,
    ) -> Result<Option<Lease>>;
    /// Records an interrupt or cancel for the run's lease holder, or ends a run no worker
    /// holds (queued, paused) at once; returns the run's status after the request.
    fn request_control(
        &self,
        run_id: &str,
        request: crate::control::ControlRequest,
    ) -> Result<RunStatus>;
    /// The requests recorded for any of `run_ids` (read by the lease holder).
    fn pending_controls(
        &self,
        run_ids: &[String],
    ) -> Result<Vec<(String, crate::control::ControlRequest)>>;
    /// Puts a paused run no worker holds back in the queue; false if it is not paused.
    fn requeue_run(&self, run_id: &str) -> Result<bool>;
    /// Up to `limit` events with `seq > after_seq`, oldest first (see `docs/queue.md` for
    /// a cursor inside a range `cleanup` compacted).
    fn events_after(&self, run_id: &str, after_seq: i64, limit: usize) -> Result<Vec<Event>>;
    /// Runs matching `filter`.
    fn list_runs_filtered(&self, filter: &RunFilter) -> Result<Vec<StoredRun>>;
    /// A marker of the store's committed content: it differs from `seen` once anything was
    /// committed since, by this process or another. Blocks up to `timeout` for that to
    /// happen (woken at once by this process's commits; other processes' are noticed within
    /// a few milliseconds); returns the current marker either way.
    fn wait_for_change(&self, seen: u64, timeout: std::time::Duration) -> Result<u64>;

    /// Store-wide aggregates (runs by workflow and status, node attempts, OOM failures and
    /// durations): what metrics scrape. `recent_since` (seconds since the epoch) splits off
    /// the runs updated since. The default folds every loaded run; a store overrides it
    /// with one grouped query.
    fn summary(&self, recent_since: f64) -> Result<summary::StoreSummary> {
        let runs = self.list_runs(None)?;
        let states: Vec<RunState> = runs.into_iter().map(|r| r.state).collect();
        Ok(summary::summarize(&states, recent_since))
    }

    /// Commit and state-load latencies the store measured, if it measures them.
    fn latency(&self) -> Option<latency::StoreLatency> {
        None
    }

    /// Commits the batch that ends a run after one of its writes was refused (a full store,
    /// a failing disk): later batches of a lease whose batch was refused are refused too,
    /// except this one, which may also use space the store keeps in reserve for it. Fenced
    /// by the batch's token like any other.
    fn commit_after_refusal(&self, batch: RunBatch) -> Result<()> {
        self.commit(batch)
    }
    fn load_run(&self, run_id: &str) -> Result<StoredRun>;
    /// [`Store::load_run`] without decoding the stored graph (`graph` is `None` and
    /// `state.node_order` empty): what a resume needs, as it has the caller's graph.
    fn load_run_without_graph(&self, run_id: &str) -> Result<StoredRun> {
        self.load_run(run_id)
    }
    /// The run without its node rows, and its completed marks
    /// ([`crate::completed_marks`]): what a resume needs to find the nodes still to run
    /// without reading every node row. `None` where the store keeps no exact marks for the
    /// run (a run from before schema version 8, one whose completed nodes were reset, a store
    /// without marks such as PostgreSQL's); the caller then reads every row.
    fn load_run_marked(
        &self,
        run_id: &str,
    ) -> Result<Option<(StoredRun, crate::completed_marks::CompletedMarks)>> {
        let _ = run_id;
        Ok(None)
    }
    /// The stored states of `nodes` of the run (a node without a row is absent).
    fn load_nodes(
        &self,
        run_id: &str,
        nodes: &[&str],
    ) -> Result<BTreeMap<String, crate::state::NodeState>> {
        let mut all = self.load_run_without_graph(run_id)?.state.nodes;
        all.retain(|id, _| nodes.contains(&id.as_str()));
        Ok(all)
    }
    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<StoredRun>>;
    fn load_value(&self, value: &ValueRef) -> Result<Vec<u8>>;
    fn load_partial_state(&self, run_id: &str, node_id: &str) -> Result<Option<Vec<u8>>>;
    /// Where a node's partial state is: its bytes, or the blob file that holds them (read it
    /// with [`Store::read_partial_file_into`] into a buffer of the caller's, no copy between).
    fn partial_state_ref(&self, run_id: &str, node_id: &str) -> Result<Option<PartialState>> {
        Ok(self
            .load_partial_state(run_id, node_id)?
            .map(PartialState::Inline))
    }
    /// Reads a partial state's blob file ([`PartialState::File`]) into `buf`, which is
    /// exactly `file.size` long, and checks it against its hash.
    fn read_partial_file_into(&self, file: &ValueRef, buf: &mut [u8]) -> Result<()> {
        let _ = (file, buf);
        Err(crate::Error::InvalidArgument {
            field: "partial state".into(),
            message: "this store keeps no partial states in files".into(),
        })
    }
    /// A streaming node's saved segments, `(first, segment)` in order of `first`.
    fn load_partial_segments(&self, run_id: &str, node_id: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        let _ = (run_id, node_id);
        Ok(Vec::new())
    }
    fn events(&self, run_id: &str) -> Result<Vec<Event>>;
    /// Checkpoints of a run, newest first.
    fn history(&self, run_id: &str) -> Result<Vec<Checkpoint>>;
    /// Completed nodes and their values as of a checkpoint.
    fn state_at(&self, run_id: &str, checkpoint_id: i64) -> Result<BTreeMap<String, ValueRef>>;
    /// Deletes old checkpoints; returns how many.
    fn cleanup(&self, request: CleanupRequest) -> Result<usize>;
    /// The store's consistency verdict: `ok`, or the problems found (SQLite: `PRAGMA
    /// integrity_check` and missing blob files; PostgreSQL: orphaned rows, missing values
    /// and blob files).
    fn integrity_check(&self) -> Result<String>;
    /// Stops the writer after draining what was submitted, and releases the file.
    fn close(&self);

    /// Writes a large value given as segments straight to durable storage outside the
    /// database (a blob file), before any commit references it; `None` if the value is
    /// below the store's file threshold (or the store keeps no files): store it as bytes.
    fn stage_file(&self, segments: &[&[u8]]) -> Result<Option<ValueRef>> {
        let _ = segments;
        Ok(None)
    }

    /// Loads a stored value into `buf`, which is exactly `value.size` long (no intermediate
    /// copy for a value in a blob file).
    fn load_value_into(&self, value: &ValueRef, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(&self.load_value(value)?);
        Ok(())
    }

    /// The store's thread checkpoints (external graph frameworks' checkpoints), if it keeps
    /// them.
    fn threads(&self) -> Option<&dyn crate::threads::ThreadStore> {
        None
    }
}
