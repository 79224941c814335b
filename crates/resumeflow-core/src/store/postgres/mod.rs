//! `PgStore`: the store in a PostgreSQL database, shared by workers on many hosts.
//!
//! The same tables and rules as the SQLite store (the write rules are the shared
//! [`plan`](crate::store::plan)); what differs is how they hold across hosts: every write
//! locks its run's row before planning from it, leases expire on the database's clock,
//! queue claims use `FOR UPDATE SKIP LOCKED`, and each writer commits in groups (one
//! transaction, one savepoint per operation) on its own connection. See `docs/stores.md`.

mod conn;
mod read;
mod schema;
mod target;
mod threads;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::ControlRequest;
use crate::error::{Error, Result, StoreError};
use crate::event::{Event, EventKind};
use crate::lease::{Lease, LeaseRequest};
use crate::state::{Checkpoint, RunStatus, ValueRef};

use super::blob_files::BlobFiles;
use super::off_runtime;
use super::staging::{failpoint, stage_loose, stage_values, unpack, Refusals};
use super::writer::Writer;
use super::{
    checkpoints, CleanupRequest, CommitTicket, Durability, NewRun, RunBatch, RunFilter, Store,
    StoredRun, ValueCodec,
};

use conn::PgConn;
pub use schema::PG_SCHEMA_VERSION;
pub use target::{is_postgres_url, PgTarget, DEFAULT_SCHEMA};

/// How often [`Store::wait_for_change`] looks for other processes' commits.
const CHANGE_POLL: Duration = Duration::from_millis(20);

/// Reader connections kept open for reuse.
const IDLE_READERS: usize = 8;

/// How a PostgreSQL store is opened.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    pub durability: Durability,
    /// Refuse every write (inspecting a store this process should not change).
    pub read_only: bool,
    /// A directory every host mounts: values whose stored form reaches
    /// `blob_file_threshold` are kept there as files. `None`: every value in the database.
    pub blob_dir: Option<PathBuf>,
    pub blob_file_threshold: Option<u64>,
}

/// The PostgreSQL store.
pub struct PgStore {
    target: Arc<PgTarget>,
    /// The store's name in messages: the URL without its password.
    name: PathBuf,
    writer: Writer<PgConn>,
    readers: Mutex<Vec<PgConn>>,
    refusals: Refusals,
    /// Blob files, when a shared `blob_dir` was given.
    files: Option<Arc<BlobFiles>>,
    closed: AtomicBool,
    load_latency: super::latency::Latency,
}

impl PgStore {
    /// Opens (creating or migrating its schema) the store at a `postgresql://` URL.
    ///
    /// An unreachable server, a failed authentication, a missing database or a schema
    /// written by a newer version is a `StoreError` naming host, port and database (never
    /// the password).
    pub fn open(url: &str, options: &PgOptions) -> Result<Self> {
        let target = Arc::new(PgTarget::parse(url)?);
        let mut writer_conn = PgConn::open(target.clone(), options.durability, options.read_only)?;
        let client = writer_conn.client()?;
        if options.read_only {
            schema::check_current(client, &target)?;
        } else {
            schema::migrate(client, &target)?;
        }
        let name = PathBuf::from(&target.display);
        let files = options.blob_dir.as_ref().map(|dir| {
            let files = BlobFiles::in_dir(dir, &name);
            if let Some(bytes) = options.blob_file_threshold {
                files.set_threshold(bytes);
            }
            Arc::new(files)
        });
        Ok(Self {
            writer: Writer::spawn(writer_conn, name.clone(), options.durability),
            readers: Mutex::new(Vec::new()),
            refusals: Refusals::default(),
            files,
            closed: AtomicBool::new(false),
            load_latency: super::latency::Latency::default(),
            name,
            target,
        })
    }

    /// The store's address without the password.
    pub fn display_name(&self) -> &str {
        &self.target.display
    }

    fn closed_error(&self) -> Error {
        StoreError::Closed {
            path: self.name.clone(),
        }
        .into()
    }

    /// A write through the group-commit writer (`Writer::call`).
    fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PgConn, f64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        off_runtime(|| self.writer.call(work))
    }

    /// A lazy write (`Writer::call_lazy`).
    fn write_lazy<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PgConn, f64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        off_runtime(|| self.writer.call_lazy(work))
    }

    /// Runs `f` on a reader connection from the pool (a new one if none is idle); a read
    /// that failed because its pooled connection was lost (a server restart since it was
    /// last used) runs once more on a new one: reads are safe to repeat.
    fn read<T>(&self, f: impl Fn(&mut PgConn) -> Result<T>) -> Result<T> {
        off_runtime(|| self.read_on_pool(f))
    }

    fn read_on_pool<T>(&self, f: impl Fn(&mut PgConn) -> Result<T>) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let idle = self.readers.lock().expect("reader pool").pop();
        let pooled = idle.is_some();
        let mut conn = match idle {
            Some(conn) => conn,
            None => PgConn::open(self.target.clone(), Durability::Sync, true)?,
        };
        let mut result = f(&mut conn);
        if result.is_err() && pooled && conn.is_broken() {
            conn = PgConn::open(self.target.clone(), Durability::Sync, true)?;
            result = f(&mut conn);
        }
        if !conn.is_broken() && !self.closed.load(Ordering::Acquire) {
            let mut pool = self.readers.lock().expect("reader pool");
            if pool.len() < IDLE_READERS {
                pool.push(conn);
            }
        }
        result
    }

    /// Runs `f` in one repeatable-read snapshot (a run's row and its nodes agree).
    fn read_snapshot<T>(&self, f: impl Fn(&mut PgConn) -> Result<T>) -> Result<T> {
        self.read(|c| {
            c.batch(
                "begin a read",
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            )?;
            let result = f(c);
            c.batch("end a read", "COMMIT")?;
            result
        })
    }

    fn file_threshold(&self) -> u64 {
        self.files.as_ref().map_or(u64::MAX, |f| f.threshold())
    }

    fn decode(
        &self,
        value: &ValueRef,
        data: Vec<u8>,
        location: i16,
        codec: i64,
    ) -> Result<Vec<u8>> {
        let codec = ValueCodec::from_code(codec).ok_or_else(|| {
            self.target.error(format!(
                "corrupt record in blobs: value {} has unknown codec {codec}",
                value.hex()
            ))
        })?;
        let stored = if location == write::IN_FILE {
            let files = self.files.as_ref().ok_or_else(|| {
                self.target.error(format!(
                    "value {} is kept in a blob file, but this engine was opened without blob_dir",
                    value.hex()
                ))
            })?;
            files.read(&value.hash, codec)?
        } else {
            data
        };
        unpack(&self.name, value, stored, codec)
    }
}

impl Store for PgStore {
    fn path(&self) -> &Path {
        &self.name
    }

    fn create_run(&self, run: NewRun, lease: LeaseRequest) -> Result<Lease> {
        self.write(move |c, at| {
            write::insert_run(c, &run, at)?;
            write::acquire(c, &run.run_id, &lease, None, Vec::new(), Vec::new(), at)
        })
    }

    fn acquire_lease_at(
        &self,
        run_id: &str,
        lease: LeaseRequest,
        expected_seq: Option<i64>,
        events: Vec<EventKind>,
        values: Vec<super::BatchValue>,
    ) -> Result<Lease> {
        let values = stage_loose(values, self.files.as_deref(), &self.name)?;
        let run_id = run_id.to_string();
        self.write(move |c, at| {
            write::acquire(c, &run_id, &lease, expected_seq, events, values, at)
        })
    }

    fn renew_leases(&self, leases: Vec<Lease>, ttl_s: f64) -> Result<Vec<Lease>> {
        self.write(move |c, at| write::renew(c, &leases, at + ttl_s))
    }

    fn submit(&self, mut batch: RunBatch) -> CommitTicket {
        if let Err(e) = stage_values(&mut batch, self.files.as_deref(), false, &self.name) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Err(e));
            return rx;
        }
        let refusals = self.refusals.clone();
        let files = self.files.clone();
        let target = self.target.clone();
        off_runtime(|| {
            self.writer.submit(move |c, at| {
                refusals.check(&batch)?;
                let missing = batch.values.iter().find(|v| {
                    v.in_file
                        && files
                            .as_ref()
                            .is_none_or(|f| !f.exists(&v.value.hash, v.codec))
                });
                let result = match missing {
                    Some(v) => Err(target.error(format!(
                        "blob file of value {} vanished before its commit",
                        v.value.hex()
                    ))),
                    None => write::apply_batch(c, &batch, at),
                };
                refusals.record(&batch, &result);
                result
            })
        })
    }

    fn submit_run(&self, run: NewRun) -> Result<()> {
        self.write(move |c, at| write::submit(c, &run, at))
    }

    fn claim_run(
        &self,
        workflows: &[(String, String)],
        lease: LeaseRequest,
    ) -> Result<Option<Lease>> {
        if !self.read(|c| read::any_queued(c, workflows))? {
            return Ok(None);
        }
        let workflows = workflows.to_vec();
        self.write(move |c, at| write::claim(c, &workflows, &lease, at))
    }

    fn request_control(&self, run_id: &str, request: ControlRequest) -> Result<RunStatus> {
        let run_id = run_id.to_string();
        self.write(move |c, at| write::request_control(c, &run_id, request, at))
    }

    fn pending_controls(&self, run_ids: &[String]) -> Result<Vec<(String, ControlRequest)>> {
        self.read(|c| read::pending_controls(c, run_ids))
    }

    fn requeue_run(&self, run_id: &str) -> Result<bool> {
        let run_id = run_id.to_string();
        self.write(move |c, at| write::requeue(c, &run_id, at))
    }

    fn events_after(&self, run_id: &str, after_seq: i64, limit: usize) -> Result<Vec<Event>> {
        self.read_snapshot(|c| {
            read::require_run(c, run_id)?;
            read::events_between(c, run_id, after_seq, i64::MAX, limit)
        })
    }

    fn list_runs_filtered(&self, filter: &RunFilter) -> Result<Vec<StoredRun>> {
        self.read_snapshot(|c| {
            let ids = read::filtered_ids(c, filter)?;
            super::page_runs(ids.into_iter().map(Ok), filter, |id| {
                read::stored_run(c, id, true)
            })
        })
    }

    fn wait_for_change(&self, seen: u64, timeout: Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let local = self.writer.commits();
            let marker = self.read(read::change_marker)? ^ local;
            let now = std::time::Instant::now();
            if marker != seen || now >= deadline {
                return Ok(marker);
            }
            self.writer
                .wait_for_commit(local, (deadline - now).min(CHANGE_POLL));
        }
    }

    fn summary(&self, recent_since: f64) -> Result<super::summary::StoreSummary> {
        use super::summary::{
            node_summary_sql, Dialect, NodeCount, RunCount, StoreSummary, DURATION_BOUNDS_S,
        };
        let node_query = node_summary_sql(Dialect::Postgres);
        self.read_snapshot(|c| {
            let runs = c
                .rows(
                    "SELECT workflow, status, COUNT(*),
                            COALESCE(SUM(CASE WHEN updated_at >= $1 THEN 1 ELSE 0 END), 0)::bigint
                       FROM runs GROUP BY workflow, status ORDER BY workflow, status",
                    &[&recent_since],
                )?
                .iter()
                .map(|r| RunCount {
                    workflow: r.get(0),
                    status: r.get(1),
                    runs: r.get::<_, i64>(2) as u64,
                    recent: r.get::<_, i64>(3) as u64,
                })
                .collect();
            let nodes = c
                .rows(&node_query, &[])?
                .iter()
                .map(|r| NodeCount {
                    workflow: r.get(0),
                    node: r.get(1),
                    status: r.get(2),
                    attempts: r.get::<_, i64>(3) as u64,
                    oom: r.get::<_, i64>(4) as u64,
                    duration_sum_s: r.get(5),
                    duration_buckets: (0..=DURATION_BOUNDS_S.len())
                        .map(|i| r.get::<_, i64>(6 + i) as u64)
                        .collect(),
                    started: r.get::<_, i64>(7 + DURATION_BOUNDS_S.len()) as u64,
                })
                .collect();
            Ok(StoreSummary { runs, nodes })
        })
    }

    fn latency(&self) -> Option<super::latency::StoreLatency> {
        Some(super::latency::StoreLatency {
            commit: self.writer.latency(),
            state_load: self.load_latency.snapshot(),
        })
    }

    fn commit_after_refusal(&self, batch: RunBatch) -> Result<()> {
        self.write(move |c, at| write::apply_batch(c, &batch, at))
    }

    fn load_run(&self, run_id: &str) -> Result<StoredRun> {
        let started = std::time::Instant::now();
        let run = self.read_snapshot(|c| read::stored_run(c, run_id, true));
        self.load_latency.record(started.elapsed());
        run
    }

    fn load_run_without_graph(&self, run_id: &str) -> Result<StoredRun> {
        let started = std::time::Instant::now();
        let run = self.read_snapshot(|c| read::stored_run(c, run_id, false));
        self.load_latency.record(started.elapsed());
        run
    }

    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<StoredRun>> {
        self.list_runs_filtered(&RunFilter {
            status,
            ..RunFilter::default()
        })
    }

    fn load_value(&self, value: &ValueRef) -> Result<Vec<u8>> {
        let (data, location, codec) = self.read(|c| read::blob(c, value))?;
        self.decode(value, data, location, codec)
    }

    fn load_partial_state(&self, run_id: &str, node_id: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| read::partial_state(c, run_id, node_id))
    }

    fn load_partial_segments(&self, run_id: &str, node_id: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        self.read(|c| read::partial_segments(c, run_id, node_id))
    }

    fn events(&self, run_id: &str) -> Result<Vec<Event>> {
        self.read_snapshot(|c| {
            read::require_run(c, run_id)?;
            read::events_between(c, run_id, i64::MIN, i64::MAX, usize::MAX)
        })
    }

    fn history(&self, run_id: &str) -> Result<Vec<Checkpoint>> {
        self.read_snapshot(|c| {
            let run = read::stored_run(c, run_id, true)?;
            let (rows, deltas) = read::load_chain(c, run_id)?;
            Ok(checkpoints::history_of(
                &rows,
                &deltas,
                run_id,
                &run.state.node_order,
            ))
        })
    }

    fn state_at(&self, run_id: &str, checkpoint_id: i64) -> Result<BTreeMap<String, ValueRef>> {
        self.read_snapshot(|c| {
            read::require_run(c, run_id)?;
            let (rows, deltas) = read::load_chain(c, run_id)?;
            checkpoints::require_checkpoint(&rows, run_id, checkpoint_id)?;
            checkpoints::state_at(&rows, &deltas, checkpoint_id).ok_or_else(|| {
                c.target.error(format!(
                    "corrupt record in checkpoints: run {run_id:?}: broken chain at {checkpoint_id}"
                ))
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
        let (deleted, files) = self.write(move |c, _at| {
            let run_ids: Vec<String> = match &request.run_id {
                Some(id) => vec![id.clone()],
                None => read::filtered_ids(c, &RunFilter::default())?,
            };
            let mut deleted = 0;
            for run_id in &run_ids {
                deleted += write::cleanup_run(c, run_id, request.keep_last, request.older_than)?;
            }
            Ok((deleted, write::collect_garbage(c)?))
        })?;
        if let Some(blob_files) = &self.files {
            for (hash, codec) in files {
                blob_files.remove(
                    &hash,
                    ValueCodec::from_code(i64::from(codec)).unwrap_or_default(),
                );
            }
        }
        Ok(deleted)
    }

    fn integrity_check(&self) -> Result<String> {
        self.read_snapshot(|c| {
            let mut problems = Vec::new();
            let checks: [(&'static str, &str); 3] = [
                (
                    "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = e.run_id)",
                    "events of runs that do not exist",
                ),
                (
                    "SELECT count(*) FROM node_states n WHERE n.output_hash IS NOT NULL AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = n.output_hash)",
                    "node outputs whose value is missing",
                ),
                (
                    "SELECT count(*) FROM runs r WHERE r.last_seq <> (SELECT coalesce(max(seq), 0) FROM events e WHERE e.run_id = r.run_id)",
                    "runs whose last event is missing",
                ),
            ];
            for (sql, what) in checks {
                let n: i64 = c.row(sql, &[])?.map_or(0, |r| r.get(0));
                if n > 0 {
                    problems.push(format!("{n} {what}"));
                }
            }
            if let Some(files) = &self.files {
                for r in c.rows(
                    "SELECT hash, codec, size FROM blobs WHERE location = 1",
                    &[],
                )? {
                    let hash: Vec<u8> = r.get(0);
                    let codec = ValueCodec::from_code(i64::from(r.get::<_, i16>(1))).unwrap_or_default();
                    if !files.exists(&hash, codec) {
                        problems.push(format!(
                            "blob file {} is missing (a value of {} bytes stored outside the database)",
                            files.path_of(&hash, codec).display(),
                            r.get::<_, i64>(2)
                        ));
                    }
                }
            }
            Ok(if problems.is_empty() {
                "ok".to_string()
            } else {
                problems.join("\n")
            })
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        off_runtime(|| {
            self.writer.close();
            self.readers.lock().expect("reader pool").clear();
        });
    }

    fn stage_file(&self, segments: &[&[u8]]) -> Result<Option<ValueRef>> {
        let total: u64 = segments.iter().map(|s| s.len() as u64).sum();
        let Some(files) = self
            .files
            .as_ref()
            .filter(|_| total >= self.file_threshold())
        else {
            return Ok(None);
        };
        let value = files.write_segments(segments)?;
        failpoint("after_blob_write");
        Ok(Some(value))
    }

    fn threads(&self) -> Option<&dyn crate::threads::ThreadStore> {
        Some(self)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        off_runtime(|| {
            self.writer.close();
            self.readers.lock().expect("reader pool").clear();
        });
    }
}
