//! `SqliteStore`: the embedded store on one SQLite file (WAL, bundled SQLite).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::completed_marks::CompletedMarks;
use crate::error::{Error, Result, StoreError};
use crate::event::{Event, EventKind};
use crate::graph::Graph;
use crate::lease::{Lease, LeaseRequest};
use crate::state::{Checkpoint, NodeState, RunState, RunStatus, ValueRef};

use super::apply::{self, corrupt, sql, NODE_COLUMNS};
use super::blob_files::{self, BlobFiles};
use super::checkpoints;
use super::schema::{self, Existing, SCHEMA_VERSION};
use super::writer::{SqliteWriteConnection, Writer};
use super::{
    CleanupRequest, CommitTicket, Durability, NewRun, PartialState, RunBatch, Store, StoredRun,
    ValueCodec,
};

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Store::wait_for_change`] looks for other processes' commits.
const CHANGE_POLL: Duration = Duration::from_millis(20);

/// The embedded store: one writer thread (group commit) and one reader connection.
pub struct SqliteStore {
    pub(super) path: PathBuf,
    /// Leases whose batch was refused: their later batches are refused too.
    poisoned: Refusals,
    /// `None` once closed (so that the file is released, not only the writer).
    reader: Mutex<Option<Connection>>,
    pub(super) writer: Writer<SqliteWriteConnection>,
    /// Large values, as files beside the database.
    files: Arc<BlobFiles>,
    /// Blob files no row references are removed by `cleanup` once this old (seconds).
    orphan_grace_s: AtomicU64,
    /// The size cap (`max_store_bytes`), 0 for none.
    max_bytes: Arc<AtomicU64>,
    /// How long run-state loads took.
    load_latency: super::latency::Latency,
}

/// Pages kept free below the size cap for the batch that ends a run after a refused write
/// (its `RunFailed` and `LeaseReleased` events), so a full store never leaves a run locked.
const RESERVED_PAGES: i64 = 32;

/// The smallest `max_store_bytes` that can hold a store (schema, a few runs, the reserve).
pub const MIN_STORE_BYTES: u64 = 1 << 20;

use super::staging::{check_hash, failpoint, stage_loose, stage_values, unpack, Refusals};

/// How old an unreferenced blob file must be before `cleanup` removes it by default: far
/// longer than any commit takes, so a file written by another process whose commit is still
/// in flight is never taken for an orphan.
const DEFAULT_ORPHAN_GRACE_S: u64 = 3600;

fn unusable(path: &Path, message: impl ToString) -> Error {
    StoreError::Unusable {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
    .into()
}

/// How many dirty pages (4 KiB) a write transaction keeps in memory before it spills them to
/// the WAL: 256 MiB. Spilled pages that the transaction changes again are written twice.
const WRITER_SPILL_PAGES: u32 = 65_536;

/// Sets `PRAGMA max_page_count` to `max_bytes` less `reserve` pages.
fn set_page_cap(conn: &Connection, path: &Path, max_bytes: u64, reserve: i64) -> Result<()> {
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(sql(path))?;
    let pages = (max_bytes as i64 / page.max(1) - reserve).max(1);
    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(sql(path))?;
    Ok(())
}

/// Fills in the cap and the size a `Full` error reports.
fn with_size(conn: &Connection, error: Error, max_bytes: u64) -> Error {
    match error {
        Error::Store(StoreError::Full { path, .. }) => {
            let used_bytes = conn
                .query_row(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap_or(0) as u64;
            StoreError::Full {
                path,
                max_bytes: (max_bytes > 0).then_some(max_bytes),
                used_bytes,
            }
            .into()
        }
        other => other,
    }
}

fn connect(path: &Path) -> Result<Connection> {
    connect_with(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

fn connect_with(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unusable(path, format!("cannot open: {e}")))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(path))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A read-only connection to an existing store. A WAL store needs its `-shm` file: where it
/// is missing and cannot be created (a read-only directory), the file is opened `immutable`
/// (nobody can be writing it then; a leftover `-wal` would be ignored).
fn connect_read_only(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = connect_with(path, flags)?;
    if conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok()
    {
        return Ok(conn);
    }
    drop(conn);
    let escaped = path
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    let uri = format!("file:{escaped}?immutable=1");
    connect_with(Path::new(&uri), flags | OpenFlags::SQLITE_OPEN_URI)
}

/// Creates the file with mode 0600 if it does not exist (SQLite gives its -wal and -shm
/// files the same mode).
fn create_private_file(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(unusable(
                path,
                format!("directory {} does not exist", parent.display()),
            ));
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(unusable(path, format!("cannot create: {e}"))),
    }
}

impl SqliteStore {
    /// Opens or creates the store at `path`.
    ///
    /// A path that is a directory, a file that is not SQLite, a SQLite file that is not a
    /// resumeflow store, or one written by a newer schema gives a `StoreError`, and the file
    /// is left untouched.
    ///
    /// ```
    /// use resumeflow_core::{Durability, SqliteStore, Store};
    /// let dir = std::env::temp_dir().join(format!("rf-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let store = SqliteStore::open(dir.join("runs.db"), Durability::Sync).unwrap();
    /// assert!(store.list_runs(None).unwrap().is_empty());
    /// # store.close(); std::fs::remove_dir_all(dir).ok();
    /// ```
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            return Err(unusable(&path, "is a directory, not a store file"));
        }
        create_private_file(&path)?;
        let mut writer_conn = connect(&path)?;
        if writer_conn.is_readonly(c"main").unwrap_or(false) {
            return Err(unusable(&path, "is read-only: resumeflow must be able to write its store (check the file's permissions)"));
        }
        let existing = schema::inspect(&writer_conn)
            .map_err(|e| unusable(&path, format!("not a usable SQLite database: {e}")))?;
        match existing {
            Existing::Foreign => {
                return Err(unusable(
                    &path,
                    "is a SQLite database but not a resumeflow store",
                ));
            }
            Existing::Version(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    path,
                    found: v,
                    supported: SCHEMA_VERSION,
                }
                .into());
            }
            _ => {}
        }
        writer_conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .map_err(|e| unusable(&path, format!("cannot enable WAL: {e}")))?;
        let synchronous = match durability {
            Durability::Sync => "FULL",
            Durability::Batched => "NORMAL",
            Durability::Off => "OFF",
        };
        // A transaction's dirty pages stay in the writer's cache up to WRITER_SPILL_PAGES
        // (past the default 2 MiB cache): a large value inserted as a zeroblob and then
        // written in chunks (`apply::write_into_row`) is not sent to the WAL twice.
        writer_conn
            .execute_batch(&format!(
                "PRAGMA synchronous = {synchronous}; PRAGMA temp_store = MEMORY; \
                 PRAGMA cache_spill = {WRITER_SPILL_PAGES};"
            ))
            .map_err(sql(&path))?;
        match existing {
            Existing::Empty => schema::migrate(&mut writer_conn, 0),
            Existing::Version(v) if v < SCHEMA_VERSION => schema::migrate(&mut writer_conn, v),
            _ => Ok(()),
        }
        .map_err(|e| unusable(&path, format!("cannot create or migrate the schema: {e}")))?;
        let reader = connect(&path)?;
        reader
            .execute_batch("PRAGMA query_only = 1;")
            .map_err(sql(&path))?;
        Ok(Self::from_connections(
            writer_conn,
            reader,
            path,
            durability,
        ))
    }

    /// The store on its two connections (the writer's and the reader's).
    fn from_connections(
        writer_conn: Connection,
        reader: Connection,
        path: PathBuf,
        durability: Durability,
    ) -> Self {
        Self {
            writer: Writer::spawn(
                SqliteWriteConnection::new(
                    writer_conn,
                    path.clone(),
                    durability == Durability::Sync,
                ),
                path.clone(),
                durability,
            ),
            reader: Mutex::new(Some(reader)),
            poisoned: Refusals::default(),
            files: Arc::new(BlobFiles::new(&path)),
            orphan_grace_s: AtomicU64::new(DEFAULT_ORPHAN_GRACE_S),
            max_bytes: Arc::default(),
            load_latency: super::latency::Latency::default(),
            path,
        }
    }

    /// Opens an existing store for reading only (for a file this process may not write):
    /// nothing is created, migrated or written, and every write fails with a `StoreError`.
    /// A missing file, a foreign or newer database, or an older schema (which would need a
    /// migration) is a `StoreError`, and the file is left untouched.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(unusable(
                &path,
                "no store file here (a read-only open creates nothing)",
            ));
        }
        let writer_conn = connect_read_only(&path)?;
        let existing = schema::inspect(&writer_conn)
            .map_err(|e| unusable(&path, format!("not a usable SQLite database: {e}")))?;
        match existing {
            Existing::Version(v) if v == SCHEMA_VERSION => {}
            Existing::Version(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    path,
                    found: v,
                    supported: SCHEMA_VERSION,
                }
                .into());
            }
            Existing::Version(v) => {
                return Err(unusable(
                    &path,
                    format!("has schema version {v}, older than {SCHEMA_VERSION}: open it once with write access to migrate it"),
                ));
            }
            Existing::Empty => return Err(unusable(&path, "is empty, not a resumeflow store")),
            Existing::Foreign => {
                return Err(unusable(
                    &path,
                    "is a SQLite database but not a resumeflow store",
                ));
            }
        }
        let reader = connect_read_only(&path)?;
        reader
            .execute_batch("PRAGMA query_only = 1;")
            .map_err(sql(&path))?;
        // Every write the writer is asked for fails with SQLITE_READONLY (a StoreError).
        Ok(Self::from_connections(
            writer_conn,
            reader,
            path,
            Durability::Off,
        ))
    }

    /// Caps the store's size (`PRAGMA max_page_count`): a write past it fails with
    /// `StoreError::Full` naming the cap and changes nothing; a few pages stay reserved so
    /// that the run whose write was refused can still be ended and its lease released.
    /// Caps below [`MIN_STORE_BYTES`] are refused.
    pub fn set_max_bytes(&self, bytes: u64) -> Result<()> {
        if bytes < MIN_STORE_BYTES {
            return Err(Error::InvalidArgument {
                field: "max_store_bytes".into(),
                message: format!(
                    "{bytes} is too small to hold a store: use at least {MIN_STORE_BYTES} bytes (1 MiB), or None for no cap"
                ),
            });
        }
        self.max_bytes.store(bytes, Ordering::Relaxed);
        let path = self.path.clone();
        self.writer
            .call(move |conn, _| set_page_cap(conn, &path, bytes, RESERVED_PAGES))
    }

    /// Values whose stored form is at least `bytes` long are kept as files beside the
    /// database (`<db>.blobs/`), written and fsynced before the commit that references them.
    pub fn set_blob_file_threshold(&self, bytes: u64) {
        self.files.set_threshold(bytes);
    }

    /// How old an unreferenced blob file must be before `cleanup` removes it (default 1 h).
    pub fn set_orphan_grace(&self, grace: Duration) {
        self.orphan_grace_s
            .store(grace.as_secs(), Ordering::Relaxed);
    }

    /// One line per value whose blob file is missing (a value stored in a file that is gone
    /// reads as undecodable; `resume(rerun=[...])` of its node writes it again).
    fn missing_blob_files(&self, conn: &Connection) -> Result<Vec<String>> {
        let map = sql(&self.path);
        let mut st = conn
            .prepare(
                "SELECT hash, codec, size FROM blobs WHERE location = 1
                 UNION ALL SELECT file_hash, 0, file_size FROM partial_states WHERE file_hash IS NOT NULL",
            )
            .map_err(&map)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(&map)?;
        let mut missing = Vec::new();
        for row in rows {
            let (hash, codec, size) = row.map_err(&map)?;
            let codec = ValueCodec::from_code(codec).unwrap_or_default();
            if !self.files.exists(&hash, codec) {
                missing.push(format!(
                    "blob file {} is missing (a value of {} bytes stored outside the database)",
                    self.files.path_of(&hash, codec).display(),
                    size
                ));
            }
        }
        Ok(missing)
    }

    /// The directory of blob files.
    pub fn blob_dir(&self) -> &Path {
        self.files.dir()
    }

    /// Compresses what asks for it and moves large values to blob files, durably, before the
    /// batch is queued (so neither runs inside the writer's transaction).
    fn stage(&self, batch: &mut RunBatch) -> Result<()> {
        stage_values(batch, Some(&self.files), true, &self.path)
    }

    /// Removes the files of values the last garbage collection deleted, then orphan files
    /// older than the grace period; inside a write transaction, so no commit in any process
    /// can reference one of them meanwhile (a later commit that expected a removed file
    /// finds it missing and is refused: never a dangling reference).
    fn collect_files(&self, deleted: Vec<(Vec<u8>, i64)>) -> Result<usize> {
        let grace = Duration::from_secs(self.orphan_grace_s.load(Ordering::Relaxed));
        let files = self.files.clone();
        let path = self.path.clone();
        self.writer.call(move |conn, _| {
            let map = sql(&path);
            let mut removed = 0;
            let mut still = conn
                .prepare_cached("SELECT 1 FROM blobs WHERE hash = ?1 AND location = 1")
                .map_err(&map)?;
            for (hash, codec) in deleted {
                let codec = ValueCodec::from_code(codec).unwrap_or_default();
                if !still.exists([&hash]).map_err(&map)? {
                    files.remove(&hash, codec);
                    removed += 1;
                }
            }
            let referenced: HashSet<String> = conn
                .prepare_cached(
                    "SELECT hash, codec FROM blobs WHERE location = 1
                     UNION SELECT file_hash, 0 FROM partial_states WHERE file_hash IS NOT NULL",
                )
                .and_then(|mut st| {
                    st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(&map)?
                .into_iter()
                .map(|(h, c)| {
                    blob_files::file_name(&h, ValueCodec::from_code(c).unwrap_or_default())
                })
                .collect();
            Ok(removed + files.sweep_orphans(&referenced, grace))
        })
    }

    /// A value's `blobs` row: its inline bytes (empty for a file), whether it is in a blob
    /// file, and its codec.
    fn blob_row(&self, value: &ValueRef) -> Result<(Vec<u8>, bool, ValueCodec)> {
        let row: Option<(Vec<u8>, i64, i64)> = self.read(|conn| {
            conn.prepare_cached("SELECT data, location, codec FROM blobs WHERE hash = ?1")
                .and_then(|mut st| {
                    st.query_row([&value.hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(sql(&self.path))
        })?;
        let bad = |message: String| corrupt(&self.path, "blobs", message);
        let (data, location, codec) =
            row.ok_or_else(|| bad(format!("value {} is missing", value.hex())))?;
        let codec = ValueCodec::from_code(codec)
            .ok_or_else(|| bad(format!("value {} has unknown codec {codec}", value.hex())))?;
        Ok((data, location == 1, codec))
    }

    /// A value's bytes from its row (a blob file is read outside the reader lock: it may be
    /// large), decompressed and hash-checked.
    fn decode_stored(
        &self,
        value: &ValueRef,
        data: Vec<u8>,
        in_file: bool,
        codec: ValueCodec,
    ) -> Result<Vec<u8>> {
        let stored = if in_file {
            self.files.read(&value.hash, codec)?
        } else {
            data
        };
        unpack(&self.path, value, stored, codec)
    }

    fn check_hash(&self, value: &ValueRef, data: &[u8]) -> Result<()> {
        check_hash(&self.path, value, data)
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.reader.lock().expect("reader lock");
        match conn.as_ref() {
            Some(conn) => f(conn),
            None => Err(StoreError::Closed {
                path: self.path.clone(),
            }
            .into()),
        }
    }

    /// The run's row and node states; the stored graph is decoded only `with_graph` (it is
    /// the costliest part for a large graph, and a resume has the caller's graph).
    fn stored_run(&self, conn: &Connection, run_id: &str, with_graph: bool) -> Result<StoredRun> {
        self.stored_run_with(conn, run_id, with_graph, true)
            .map(|(run, _)| run)
    }

    /// [`Self::stored_run`], with the node rows only `with_nodes`; also says whether the run's
    /// completed marks are valid.
    fn stored_run_with(
        &self,
        conn: &Connection,
        run_id: &str,
        with_graph: bool,
        with_nodes: bool,
    ) -> Result<(StoredRun, bool)> {
        let map = sql(&self.path);
        let row = conn
            .prepare_cached(
                "SELECT r.workflow, r.graph_hash, CASE WHEN ?2 THEN s.graph ELSE x'' END, s.inputs, s.labels, r.status, r.error, r.created_at,
                        r.updated_at, r.head_checkpoint, r.lease_owner, r.lease_expires, r.lease_token, r.last_seq,
                        r.marks_valid
                   FROM runs r JOIN run_specs s ON s.run_id = r.run_id WHERE r.run_id = ?1",
            )
            .and_then(|mut st| {
                st.query_row(rusqlite::params![run_id, with_graph], |r| {
                    Ok((
                        (
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                        ),
                        (
                            r.get::<_, String>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, f64>(7)?,
                            r.get::<_, f64>(8)?,
                            r.get::<_, Option<i64>>(9)?,
                        ),
                        (
                            r.get::<_, Option<String>>(10)?,
                            r.get::<_, f64>(11)?,
                            r.get::<_, i64>(12)?,
                            r.get::<_, i64>(13)?,
                        ),
                        r.get::<_, bool>(14)?,
                    ))
                })
                .optional()
            })
            .map_err(&map)?;
        let Some((
            (workflow, graph_hash, graph, inputs, labels),
            (status, error, created_at, updated_at, head),
            lease,
            marks_valid,
        )) = row
        else {
            return Err(Error::RunNotFound {
                run_id: run_id.to_string(),
            });
        };
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            corrupt(&self.path, "runs", format!("run {run_id:?} {what}: {e}"))
        };
        let graph: Option<Graph> = if with_graph {
            Some(
                rmp_serde::from_slice::<Graph>(&graph)
                    .map_err(|e| bad("graph", &e))?
                    .reindex(),
            )
        } else {
            None
        };
        let inputs = apply::decode_inputs(&inputs).map_err(|e| bad("inputs", &e))?;
        let labels: BTreeMap<String, String> =
            rmp_serde::from_slice(&labels).map_err(|e| bad("labels", &e))?;
        let status = RunStatus::parse(&status).ok_or_else(|| bad("status", &status))?;
        let nodes = if with_nodes {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {NODE_COLUMNS} FROM node_states WHERE run_id = ?1"
                ))
                .map_err(&map)?;
            st.query_map([run_id], |r| apply::node_from_row(r, 0))
                .and_then(Iterator::collect::<rusqlite::Result<BTreeMap<_, _>>>)
                .map_err(&map)?
        } else {
            BTreeMap::new()
        };
        let run = StoredRun {
            state: RunState {
                run_id: run_id.to_string(),
                workflow,
                status,
                nodes,
                node_order: graph.as_ref().map_or_else(Vec::new, |g| {
                    g.node_ids().into_iter().map(str::to_string).collect()
                }),
                checkpoint_id: head,
                error,
                created_at,
                updated_at,
                labels,
            },
            graph,
            graph_hash,
            inputs,
            lease_owner: lease.0,
            lease_expires: lease.1,
            lease_token: lease.2,
            last_seq: lease.3,
        };
        Ok((run, marks_valid))
    }

    fn require_run(&self, conn: &Connection, run_id: &str) -> Result<()> {
        let found: Option<i64> = conn
            .prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")
            .and_then(|mut st| st.query_row([run_id], |r| r.get(0)).optional())
            .map_err(sql(&self.path))?;
        found.map(|_| ()).ok_or_else(|| Error::RunNotFound {
            run_id: run_id.to_string(),
        })
    }
}

impl Store for SqliteStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn create_run(&self, run: NewRun, lease: LeaseRequest) -> Result<Lease> {
        let path = self.path.clone();
        self.writer
            .call(move |conn, at| apply::create(conn, &path, &run, &lease, at))
    }

    fn acquire_lease_at(
        &self,
        run_id: &str,
        lease: LeaseRequest,
        expected_seq: Option<i64>,
        events: Vec<EventKind>,
        values: Vec<super::BatchValue>,
    ) -> Result<Lease> {
        let values = stage_loose(values, Some(&self.files), &self.path)?;
        let path = self.path.clone();
        let run_id = run_id.to_string();
        self.writer.call(move |conn, at| {
            if let Some(expected) = expected_seq {
                let head = apply::load_head(conn, &path, &run_id)?;
                if head.last_seq != expected {
                    return Err(Error::RunChanged {
                        run_id: run_id.clone(),
                    });
                }
            }
            // A rewind target must still exist (a cleanup may have removed it since the plan).
            for event in &events {
                if let EventKind::Rewound { checkpoint_id } = event {
                    let (rows, _) = checkpoints::load_chain(conn, &path, &run_id)?;
                    checkpoints::require_checkpoint(&rows, &run_id, *checkpoint_id)?;
                }
            }
            apply::acquire(conn, &path, &run_id, &lease, events, values, at)
        })
    }

    fn submit_run(&self, run: NewRun) -> Result<()> {
        let path = self.path.clone();
        self.writer
            .call(move |conn, at| super::queue::submit(conn, &path, &run, at))
    }

    fn claim_run(
        &self,
        workflows: &[(String, String)],
        lease: LeaseRequest,
    ) -> Result<Option<Lease>> {
        if !self.read(|conn| super::queue::any_queued(conn, &self.path, workflows))? {
            return Ok(None);
        }
        let path = self.path.clone();
        let workflows = workflows.to_vec();
        self.writer
            .call(move |conn, at| super::queue::claim(conn, &path, &workflows, &lease, at))
    }

    fn request_control(
        &self,
        run_id: &str,
        request: crate::control::ControlRequest,
    ) -> Result<RunStatus> {
        let path = self.path.clone();
        let run_id = run_id.to_string();
        self.writer
            .call(move |conn, at| super::queue::request_control(conn, &path, &run_id, request, at))
    }

    fn pending_controls(
        &self,
        run_ids: &[String],
    ) -> Result<Vec<(String, crate::control::ControlRequest)>> {
        self.read(|conn| super::queue::pending_controls(conn, &self.path, run_ids))
    }

    fn requeue_run(&self, run_id: &str) -> Result<bool> {
        let path = self.path.clone();
        let run_id = run_id.to_string();
        self.writer
            .call(move |conn, at| super::queue::requeue(conn, &path, &run_id, at))
    }

    fn events_after(&self, run_id: &str, after_seq: i64, limit: usize) -> Result<Vec<Event>> {
        self.read(|conn| {
            self.require_run(conn, run_id)?;
            super::queue::events_after(conn, &self.path, run_id, after_seq, limit)
        })
    }

    fn list_runs_filtered(&self, filter: &super::RunFilter) -> Result<Vec<StoredRun>> {
        const OLDEST_FIRST: &str = "SELECT run_id FROM runs
              WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workflow = ?2)
                AND (?3 IS NULL OR (created_at, run_id) >
                     (SELECT created_at, run_id FROM runs WHERE run_id = ?3))
              ORDER BY created_at, run_id";
        const NEWEST_FIRST: &str = "SELECT run_id FROM runs
              WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workflow = ?2)
                AND (?3 IS NULL OR (created_at, run_id) <
                     (SELECT created_at, run_id FROM runs WHERE run_id = ?3))
              ORDER BY created_at DESC, run_id DESC";
        self.read(|conn| {
            let map = sql(&self.path);
            let query = if filter.newest_first {
                NEWEST_FIRST
            } else {
                OLDEST_FIRST
            };
            let mut st = conn.prepare_cached(query).map_err(&map)?;
            let ids = st
                .query_map(
                    rusqlite::params![
                        filter.status.map(RunStatus::as_str),
                        filter.workflow,
                        filter.after
                    ],
                    |r| r.get::<_, String>(0),
                )
                .map_err(&map)?;
            super::page_runs(ids.map(|id| id.map_err(&map)), filter, |id| {
                self.stored_run(conn, id, true)
            })
        })
    }

    fn summary(&self, recent_since: f64) -> Result<super::summary::StoreSummary> {
        use super::summary::{
            node_summary_sql, Dialect, NodeCount, RunCount, StoreSummary, DURATION_BOUNDS_S,
        };
        let node_query = node_summary_sql(Dialect::Sqlite);
        self.read(|conn| {
            let map = sql(&self.path);
            let mut st = conn
                .prepare_cached(
                    "SELECT workflow, status, COUNT(*), SUM(CASE WHEN updated_at >= ?1 THEN 1 ELSE 0 END)
                       FROM runs GROUP BY workflow, status ORDER BY workflow, status",
                )
                .map_err(&map)?;
            let runs = st
                .query_map([recent_since], |r| {
                    Ok(RunCount {
                        workflow: r.get(0)?,
                        status: r.get(1)?,
                        runs: r.get::<_, i64>(2)? as u64,
                        recent: r.get::<_, i64>(3)? as u64,
                    })
                })
                .map_err(&map)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&map)?;
            let mut st = conn.prepare_cached(&node_query).map_err(&map)?;
            let nodes = st
                .query_map([], |r| {
                    let mut duration_buckets = Vec::with_capacity(DURATION_BOUNDS_S.len() + 1);
                    for i in 0..=DURATION_BOUNDS_S.len() {
                        duration_buckets.push(r.get::<_, i64>(6 + i)? as u64);
                    }
                    Ok(NodeCount {
                        workflow: r.get(0)?,
                        node: r.get(1)?,
                        status: r.get(2)?,
                        started: r.get::<_, i64>(7 + DURATION_BOUNDS_S.len())? as u64,
                        attempts: r.get::<_, i64>(3)? as u64,
                        oom: r.get::<_, i64>(4)? as u64,
                        duration_sum_s: r.get(5)?,
                        duration_buckets,
                    })
                })
                .map_err(&map)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&map)?;
            Ok(StoreSummary { runs, nodes })
        })
    }

    fn wait_for_change(&self, seen: u64, timeout: Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let local = self.writer.commits();
            let marker = self.read(|conn| {
                let version: i64 = conn
                    .query_row("PRAGMA data_version", [], |r| r.get(0))
                    .map_err(sql(&self.path))?;
                Ok((version as u64) << 32 ^ local)
            })?;
            let now = std::time::Instant::now();
            if marker != seen || now >= deadline {
                return Ok(marker);
            }
            // This process's commits wake the wait at once; other processes' are seen
            // through `data_version` at the next poll.
            let poll = (deadline - now).min(CHANGE_POLL);
            self.writer.wait_for_commit(local, poll);
        }
    }

    fn commit_after_refusal(&self, batch: RunBatch) -> Result<()> {
        let path = self.path.clone();
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        self.writer.call(move |conn, at| {
            if max_bytes > 0 {
                set_page_cap(conn, &path, max_bytes, 0)?;
            }
            let result = apply::apply_batch(conn, &path, &batch, at);
            if max_bytes > 0 {
                set_page_cap(conn, &path, max_bytes, RESERVED_PAGES)?;
            }
            result.map_err(|e| with_size(conn, e, max_bytes))
        })
    }

    fn renew_leases(&self, leases: Vec<Lease>, ttl_s: f64) -> Result<Vec<Lease>> {
        let path = self.path.clone();
        self.writer
            .call(move |conn, at| apply::renew(conn, &path, &leases, at + ttl_s))
    }

    fn submit(&self, mut batch: RunBatch) -> CommitTicket {
        if let Err(e) = self.stage(&mut batch) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Err(e));
            return rx;
        }
        let path = self.path.clone();
        let poisoned = self.poisoned.clone();
        let files = self.files.clone();
        let max_bytes = self.max_bytes.clone();
        self.writer.submit(move |conn, at| {
            poisoned.check(&batch)?;
            apply::sweep_stale_files(conn, &path, &files, at)?;
            // A reference is committed only while its file exists (a cleanup, in any process,
            // sweeps inside a write transaction too, so this check and the commit are atomic
            // with respect to it).
            let missing = batch
                .values
                .iter()
                .filter(|v| v.in_file)
                .map(|v| (&v.value, v.codec))
                .chain(
                    batch
                        .partial_files
                        .iter()
                        .map(|(_, v)| (v, ValueCodec::Raw)),
                )
                .find(|(v, codec)| !files.exists(&v.hash, *codec));
            let result = match missing {
                Some((v, _)) => Err(unusable(
                    &path,
                    format!("blob file of value {} vanished before its commit", v.hex()),
                )),
                None => apply::apply_batch(conn, &path, &batch, at),
            }
            .map_err(|e| with_size(conn, e, max_bytes.load(Ordering::Relaxed)));
            poisoned.record(&batch, &result);
            result
        })
    }

    fn load_run(&self, run_id: &str) -> Result<StoredRun> {
        let started = std::time::Instant::now();
        let run = self.read(|conn| self.stored_run(conn, run_id, true));
        self.load_latency.record(started.elapsed());
        run
    }

    fn load_run_without_graph(&self, run_id: &str) -> Result<StoredRun> {
        let started = std::time::Instant::now();
        let run = self.read(|conn| self.stored_run(conn, run_id, false));
        self.load_latency.record(started.elapsed());
        run
    }

    fn load_run_marked(&self, run_id: &str) -> Result<Option<(StoredRun, CompletedMarks)>> {
        self.read(|conn| {
            // The run's row first: a commit after it changes `last_seq`, which the resume's
            // lease commit checks, so marks read after it cannot be older than the row.
            let (run, valid) = self.stored_run_with(conn, run_id, false, false)?;
            if !valid {
                return Ok(None);
            }
            let chunks = conn
                .prepare_cached("SELECT chunk, bits FROM run_marks WHERE run_id = ?1")
                .and_then(|mut st| {
                    st.query_map([run_id], |r| {
                        Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                })
                .map_err(sql(&self.path))?;
            let marks = CompletedMarks::from_chunks(chunks)
                .map_err(|e| corrupt(&self.path, "run_marks", format!("run {run_id:?}: {e}")))?;
            Ok(Some((run, marks)))
        })
    }

    fn load_nodes(&self, run_id: &str, nodes: &[&str]) -> Result<BTreeMap<String, NodeState>> {
        self.read(|conn| {
            let mut out = BTreeMap::new();
            for &node in nodes {
                if let Some(state) = apply::load_node(conn, &self.path, run_id, node)? {
                    out.insert(node.to_string(), state);
                }
            }
            Ok(out)
        })
    }

    fn latency(&self) -> Option<super::latency::StoreLatency> {
        Some(super::latency::StoreLatency {
            commit: self.writer.latency(),
            state_load: self.load_latency.snapshot(),
        })
    }

    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<StoredRun>> {
        self.read(|conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "SELECT run_id FROM runs WHERE ?1 IS NULL OR status = ?1 ORDER BY created_at, run_id",
                )
                .and_then(|mut st| {
                    st.query_map([status.map(RunStatus::as_str)], |r| r.get(0))?
                        .collect()
                })
                .map_err(sql(&self.path))?;
            ids.iter().map(|id| self.stored_run(conn, id, true)).collect()
        })
    }

    fn load_value(&self, value: &ValueRef) -> Result<Vec<u8>> {
        let (data, in_file, codec) = self.blob_row(value)?;
        self.decode_stored(value, data, in_file, codec)
    }

    fn load_partial_state(&self, run_id: &str, node_id: &str) -> Result<Option<Vec<u8>>> {
        match self.partial_state_ref(run_id, node_id)? {
            None => Ok(None),
            Some(PartialState::Inline(data)) => Ok(Some(data)),
            // In a blob file: read outside the reader lock, checked against its hash.
            Some(PartialState::File(file)) => {
                let data = self.files.read(&file.hash, ValueCodec::Raw)?;
                self.check_hash(&file, &data)?;
                Ok(Some(data))
            }
        }
    }

    fn partial_state_ref(&self, run_id: &str, node_id: &str) -> Result<Option<PartialState>> {
        type Row = (Vec<u8>, Option<Vec<u8>>, Option<i64>);
        let row: Option<Row> = self.read(|conn| {
            self.require_run(conn, run_id)?;
            conn.prepare_cached(
                "SELECT data, file_hash, file_size FROM partial_states WHERE run_id = ?1 AND node_id = ?2",
            )
            .and_then(|mut st| {
                st.query_row([run_id, node_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(sql(&self.path))
        })?;
        match row {
            None => Ok(None),
            Some((data, None, _)) => Ok(Some(PartialState::Inline(data))),
            Some((_, Some(hash), size)) => Ok(Some(PartialState::File(ValueRef {
                hash,
                size: size.unwrap_or(0) as u64,
            }))),
        }
    }

    fn read_partial_file_into(&self, file: &ValueRef, buf: &mut [u8]) -> Result<()> {
        self.files.read_into(&file.hash, ValueCodec::Raw, buf)?;
        self.check_hash(file, buf)
    }

    fn load_partial_segments(&self, run_id: &str, node_id: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        self.read(|conn| {
            self.require_run(conn, run_id)?;
            let mut st = conn
                .prepare_cached(
                    "SELECT first, data FROM partial_segments WHERE run_id = ?1 AND node_id = ?2 ORDER BY first",
                )
                .map_err(sql(&self.path))?;
            let rows = st
                .query_map([run_id, node_id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(sql(&self.path))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql(&self.path))
        })
    }

    fn events(&self, run_id: &str) -> Result<Vec<Event>> {
        self.read(|conn| {
            self.require_run(conn, run_id)?;
            checkpoints::load_events(conn, &self.path, run_id, None)
        })
    }

    fn history(&self, run_id: &str) -> Result<Vec<Checkpoint>> {
        self.read(|conn| {
            let run = self.stored_run(conn, run_id, true)?;
            checkpoints::history(conn, &self.path, run_id, &run.state.node_order)
        })
    }

    fn state_at(&self, run_id: &str, checkpoint_id: i64) -> Result<BTreeMap<String, ValueRef>> {
        self.read(|conn| {
            self.require_run(conn, run_id)?;
            let (rows, deltas) = checkpoints::load_chain(conn, &self.path, run_id)?;
            checkpoints::require_checkpoint(&rows, run_id, checkpoint_id)?;
            checkpoints::state_at(&rows, &deltas, checkpoint_id).ok_or_else(|| {
                corrupt(
                    &self.path,
                    "checkpoints",
                    format!("run {run_id:?}: broken chain at {checkpoint_id}"),
                )
            })
        })
    }

    fn cleanup(&self, request: CleanupRequest) -> Result<usize> {
        if request.keep_last < 1 {
            return Err(Error::InvalidArgument {
                field: "keep_last".into(),
                message: format!(
                    "must be at least 1 (the newest checkpoint is always kept), got {}",
                    request.keep_last
                ),
            });
        }
        let path = self.path.clone();
        let (deleted, files) = self.writer.call(move |conn, _at| {
            let run_ids: Vec<String> = match &request.run_id {
                Some(id) => {
                    apply::load_head(conn, &path, id)?;
                    vec![id.clone()]
                }
                None => conn
                    .prepare("SELECT run_id FROM runs ORDER BY run_id")
                    .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                    .map_err(sql(&path))?,
            };
            let mut deleted = 0;
            for run_id in &run_ids {
                deleted += checkpoints::cleanup_run(
                    conn,
                    &path,
                    run_id,
                    request.keep_last,
                    request.older_than,
                )?;
            }
            let files = checkpoints::collect_garbage(conn, &path)?;
            Ok((deleted, files))
        })?;
        self.collect_files(files)?;
        Ok(deleted)
    }

    fn integrity_check(&self) -> Result<String> {
        self.read(|conn| {
            let rows: Vec<String> = conn
                .prepare("PRAGMA integrity_check")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                .map_err(sql(&self.path))?;
            let mut problems: Vec<String> = rows.into_iter().filter(|r| r != "ok").collect();
            problems.extend(self.missing_blob_files(conn)?);
            Ok(if problems.is_empty() {
                "ok".to_string()
            } else {
                problems.join("\n")
            })
        })
    }

    fn close(&self) {
        self.writer.close();
        self.reader.lock().expect("reader lock").take();
    }

    fn threads(&self) -> Option<&dyn crate::threads::ThreadStore> {
        Some(self)
    }

    fn stage_file(&self, segments: &[&[u8]]) -> Result<Option<ValueRef>> {
        let total: u64 = segments.iter().map(|s| s.len() as u64).sum();
        if total < self.files.threshold() {
            return Ok(None);
        }
        let value = self.files.write_segments(segments)?;
        failpoint("after_blob_write");
        Ok(Some(value))
    }

    fn load_value_into(&self, value: &ValueRef, buf: &mut [u8]) -> Result<()> {
        let (data, in_file, codec) = self.blob_row(value)?;
        if in_file && codec == ValueCodec::Raw {
            // Straight from the file into the caller's buffer: no intermediate copy.
            self.files.read_into(&value.hash, codec, buf)?;
            return self.check_hash(value, buf);
        }
        buf.copy_from_slice(&self.decode_stored(value, data, in_file, codec)?);
        Ok(())
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.writer.close();
    }
}
