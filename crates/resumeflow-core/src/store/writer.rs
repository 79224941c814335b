//! The single writer: one write connection that commits queued operations in groups (group
//! commit). Operations that arrive while a commit is in flight share the next transaction;
//! each runs in its own savepoint, so a refused operation (a stale fencing token, say)
//! leaves no trace and does not undo the others.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{Error, Result, StoreError};
use crate::lease::now;

use super::Durability;

/// A connection the writer commits groups on: one transaction per group, one savepoint
/// per operation. Errors name the store.
pub trait GroupConnection: Send + 'static {
    /// Begins the group's transaction; returns its time (seconds since the epoch) on the
    /// store's clock, which every operation of the group uses. With `durable` false (every
    /// operation of the group is lazy) the commit need not wait for the disk: it becomes
    /// durable with the next durable commit (a process crash loses nothing of it; a power
    /// loss before that commit may).
    fn begin(&mut self, durable: bool) -> Result<f64>;
    fn savepoint(&mut self) -> Result<()>;
    fn release_savepoint(&mut self) -> Result<()>;
    fn rollback_to_savepoint(&mut self) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    /// Abandons the transaction after a failed commit (errors ignored).
    fn rollback(&mut self);
}

/// SQLite's write connection (`BEGIN IMMEDIATE`; the local clock).
pub struct SqliteWriteConnection {
    pub conn: Connection,
    pub path: PathBuf,
    /// The connection runs with `synchronous=FULL`: a lazy group is committed with
    /// `NORMAL` (WAL appended, not fsynced; the next FULL commit fsyncs it too).
    pub full_sync: bool,
    /// The current group is lazy (`synchronous` lowered until it ends).
    lazy: bool,
}

impl SqliteWriteConnection {
    /// The writer's connection; `full_sync` if it was opened with `synchronous=FULL`.
    pub fn new(conn: Connection, path: PathBuf, full_sync: bool) -> Self {
        Self {
            conn,
            path,
            full_sync,
            lazy: false,
        }
    }

    /// Puts `synchronous` back after a lazy group.
    fn end_group(&mut self) {
        if self.lazy {
            self.lazy = false;
            let _ = self.conn.execute_batch("PRAGMA synchronous = FULL");
        }
    }
}

impl std::ops::Deref for SqliteWriteConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl SqliteWriteConnection {
    fn run(&self, what: &str, statement: &str) -> Result<()> {
        self.conn
            .execute_batch(statement)
            .map_err(|e| sqlite_error(&self.path, what, &e))
    }
}

impl GroupConnection for SqliteWriteConnection {
    fn begin(&mut self, durable: bool) -> Result<f64> {
        if !durable && self.full_sync {
            self.run("lower synchronous", "PRAGMA synchronous = NORMAL")?;
            self.lazy = true;
        }
        if let Err(e) = self.run("cannot begin a write transaction", "BEGIN IMMEDIATE") {
            self.end_group();
            return Err(e);
        }
        Ok(now())
    }
    fn savepoint(&mut self) -> Result<()> {
        self.run("savepoint", "SAVEPOINT rf_op")
    }
    fn release_savepoint(&mut self) -> Result<()> {
        self.run("release savepoint", "RELEASE rf_op")
    }
    fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.run("rollback to savepoint", "ROLLBACK TO rf_op; RELEASE rf_op")
    }
    fn commit(&mut self) -> Result<()> {
        let result = self.run("commit failed", "COMMIT");
        if result.is_ok() {
            self.end_group();
        }
        result
    }
    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.end_group();
    }
}

/// One queued operation.
trait WriteJob<C>: Send {
    /// Runs inside a savepoint; returns true if the savepoint should be kept.
    fn run(&mut self, conn: &mut C, at: f64) -> bool;
    /// False for a lazy job: its commit need not reach the disk before it is answered.
    fn durable(&self) -> bool;
    /// Records a failure that happened before the job could run.
    fn fail(&mut self, error: Error);
    /// Sends the reply once the commit outcome is known.
    fn deliver(self: Box<Self>, commit_error: Option<&Error>);
}

struct TypedJob<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    durable: bool,
}

impl<C, T, F> WriteJob<C> for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&mut C, f64) -> Result<T> + Send,
{
    fn run(&mut self, conn: &mut C, at: f64) -> bool {
        let work = self.work.take().expect("a job runs once");
        let result = work(conn, at);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, error: Error) {
        self.result = Some(Err(error));
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn deliver(self: Box<Self>, commit_error: Option<&Error>) {
        let result = match (commit_error, self.result) {
            (Some(e), None | Some(Ok(_))) => Err(e.clone()),
            (_, Some(r)) => r,
            (None, None) => Err(Error::Shutdown),
        };
        let _ = self.reply.send(result);
    }
}

/// Jobs waiting for a commit, and whether the writer is closing.
struct Queue<C> {
    jobs: VecDeque<Box<dyn WriteJob<C>>>,
    closed: bool,
}

struct Shared<C> {
    queue: Mutex<Queue<C>>,
    /// Wakes the background thread when `submit` queued a job.
    wake: Condvar,
    /// The write connection: whoever holds it commits everything queued (the leader).
    conn: Mutex<Option<C>>,
    path: PathBuf,
    /// Group transactions committed so far (the in-process change feed's clock).
    commits: Mutex<u64>,
    /// Notified after every group transaction.
    committed: Condvar,
    /// How long group transactions took.
    latency: super::latency::Latency,
}

impl<C: GroupConnection> Shared<C> {
    /// Takes up to [`MAX_GROUP`] queued jobs.
    fn drain(&self) -> Vec<Box<dyn WriteJob<C>>> {
        let mut queue = self.queue.lock().expect("writer queue");
        let n = queue.jobs.len().min(MAX_GROUP);
        queue.jobs.drain(..n).collect()
    }

    /// Commits what is queued, as one group, if the connection is still open; with the
    /// connection lock held by the caller.
    fn commit_queued(&self, conn: &mut Option<C>) {
        let jobs = self.drain();
        if jobs.is_empty() {
            return;
        }
        let Some(conn) = conn.as_mut() else {
            let err: Error = StoreError::Closed {
                path: self.path.clone(),
            }
            .into();
            for mut job in jobs {
                job.fail(err.clone());
                job.deliver(None);
            }
            return;
        };
        let started = std::time::Instant::now();
        commit_group(conn, &self.path, jobs);
        self.latency.record(started.elapsed());
        *self.commits.lock().expect("commit counter") += 1;
        self.committed.notify_all();
    }
}

/// Handle to the writer: one connection, group commit.
///
/// A blocking [`Writer::call`] commits on the calling thread when the connection is free
/// (leader/follower group commit: whoever holds the connection commits every queued job in
/// one transaction), so an uncontended write costs no thread hand-off. [`Writer::submit`]
/// queues the job for the background thread and returns at once.
pub struct Writer<C> {
    shared: Arc<Shared<C>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    durability: Durability,
}

/// Most operations one transaction takes.
const MAX_GROUP: usize = 1024;

impl<C: GroupConnection> Writer<C> {
    /// Starts the writer's background thread on `conn`.
    pub fn spawn(conn: C, path: PathBuf, durability: Durability) -> Self {
        // There is no artificial window: work that arrives while a commit is in flight
        // shares the next one, and no caller is delayed on purpose.
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            conn: Mutex::new(Some(conn)),
            path,
            commits: Mutex::new(0),
            committed: Condvar::new(),
            latency: super::latency::Latency::default(),
        });
        let background = shared.clone();
        let thread = std::thread::Builder::new()
            .name("resumeflow-writer".into())
            .spawn(move || run(&background))
            .expect("spawn writer thread");
        Self {
            shared,
            thread: Mutex::new(Some(thread)),
            durability,
        }
    }

    /// How long this writer's group transactions took.
    pub fn latency(&self) -> super::latency::LatencySnapshot {
        self.shared.latency.snapshot()
    }

    /// Group transactions this writer finished (committed or rolled back) so far.
    pub fn commits(&self) -> u64 {
        *self.shared.commits.lock().expect("commit counter")
    }

    /// Blocks until the writer finishes a transaction after the `seen`th, or `timeout`.
    pub fn wait_for_commit(&self, seen: u64, timeout: std::time::Duration) {
        let guard = self.shared.commits.lock().expect("commit counter");
        let _ = self
            .shared
            .committed
            .wait_timeout_while(guard, timeout, |n| *n == seen);
    }

    /// Queues `work` (waking the background thread if `wake`); returns its receiver, on
    /// which a closed writer's refusal is already delivered.
    fn enqueue<T, F>(&self, work: F, wake: bool, durable: bool) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut C, f64) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let mut job: Box<dyn WriteJob<C>> = Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply,
            durable,
        });
        let mut queue = self.shared.queue.lock().expect("writer queue");
        if queue.closed {
            drop(queue);
            job.fail(self.closed());
            job.deliver(None);
            return rx;
        }
        queue.jobs.push_back(job);
        drop(queue);
        if wake {
            self.shared.wake.notify_one();
        }
        rx
    }

    /// Queues `work`; its result arrives on the returned receiver after the commit.
    ///
    /// With `Durability::Sync` the caller waits for the commit anyway, so when the
    /// connection is free the commit happens here, before returning (no thread hand-off);
    /// otherwise (and always in the other modes, whose callers do not wait) the background
    /// thread or the current leader commits it.
    pub fn submit<T, F>(&self, work: F) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut C, f64) -> Result<T> + Send + 'static,
    {
        if self.durability != Durability::Sync {
            return self.enqueue(work, true, true);
        }
        let rx = self.enqueue(work, false, true);
        match self.shared.conn.try_lock() {
            Ok(mut conn) => self.shared.commit_queued(&mut conn),
            Err(_) => self.shared.wake.notify_one(),
        }
        rx
    }

    /// Runs `work` and waits for its commit, committing on this thread when the connection
    /// is free (with whatever else is queued).
    pub fn call<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut C, f64) -> Result<T> + Send + 'static,
    {
        self.call_with(work, true)
    }

    /// As [`Writer::call`], but the commit need not reach the disk before it returns: it
    /// rides on the next durable commit (of any job). A process crash loses nothing of it
    /// (the log is in the OS's cache); a power loss before the next durable commit may.
    pub fn call_lazy<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut C, f64) -> Result<T> + Send + 'static,
    {
        self.call_with(work, false)
    }

    fn call_with<T, F>(&self, work: F, durable: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut C, f64) -> Result<T> + Send + 'static,
    {
        let mut rx = self.enqueue(work, false, durable);
        loop {
            match rx.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(Error::Shutdown),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let mut conn = self.shared.conn.lock().expect("writer connection");
            // Another leader may have committed our job while we waited for the lock.
            match rx.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(Error::Shutdown),
                Err(oneshot::error::TryRecvError::Empty) => self.shared.commit_queued(&mut conn),
            }
        }
    }

    fn closed(&self) -> Error {
        StoreError::Closed {
            path: self.shared.path.clone(),
        }
        .into()
    }

    /// Commits what is queued and stops the background thread; later jobs fail with
    /// `StoreError::Closed`.
    pub fn close(&self) {
        self.shared.queue.lock().expect("writer queue").closed = true;
        self.shared.wake.notify_all();
        let thread = self.thread.lock().expect("writer lock").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// The background thread: commits what `submit` queued until the writer closes, then what
/// is left, then closes the connection.
fn run<C: GroupConnection>(shared: &Shared<C>) {
    loop {
        {
            let mut queue = shared.queue.lock().expect("writer queue");
            while queue.jobs.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).expect("writer queue");
            }
            if queue.jobs.is_empty() && queue.closed {
                break;
            }
        }
        let mut conn = shared.conn.lock().expect("writer connection");
        shared.commit_queued(&mut conn);
    }
    let mut conn = shared.conn.lock().expect("writer connection");
    while !shared.queue.lock().expect("writer queue").jobs.is_empty() {
        shared.commit_queued(&mut conn);
    }
    conn.take();
}

fn sqlite_error(path: &Path, what: &str, e: &rusqlite::Error) -> Error {
    if let Some(full) = super::apply::full_or(path, e) {
        return full;
    }
    StoreError::Sqlite {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    }
    .into()
}

fn commit_group<C: GroupConnection>(
    conn: &mut C,
    path: &Path,
    mut jobs: Vec<Box<dyn WriteJob<C>>>,
) {
    let durable = jobs.iter().any(|j| j.durable());
    let at = match conn.begin(durable) {
        Ok(at) => at,
        Err(err) => {
            for job in jobs {
                job.deliver(Some(&err));
            }
            return;
        }
    };
    // A group of one needs no savepoint: its transaction is its savepoint (two statements,
    // two round trips on PostgreSQL, fewer per operation).
    let alone = jobs.len() == 1;
    let mut refused_alone = false;
    for job in &mut jobs {
        if !alone {
            if let Err(e) = conn.savepoint() {
                job.fail(e);
                continue;
            }
        }
        // A panicking operation is refused like a failed one (its savepoint rolls back); it
        // must not unwind through the connection lock of every later writer.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn, at)));
        let ok = ran.unwrap_or_else(|_| {
            job.fail(
                StoreError::Unusable {
                    path: path.to_path_buf(),
                    message: "a write operation panicked; it was rolled back".into(),
                }
                .into(),
            );
            false
        });
        if alone {
            refused_alone = !ok;
            continue;
        }
        if ok {
            if let Err(e) = conn.release_savepoint() {
                job.fail(e);
            }
        } else {
            // The job's own error stands: a failure that already rolled the savepoint (or
            // the transaction) back, such as a full disk, leaves nothing to roll back to.
            let _ = conn.rollback_to_savepoint();
        }
    }
    if refused_alone {
        // Refused: nothing of it stays, and there is nothing else to commit.
        conn.rollback();
        for job in jobs {
            job.deliver(None);
        }
        return;
    }
    let commit_error = conn.commit().err();
    if commit_error.is_some() {
        conn.rollback();
    }
    for job in jobs {
        job.deliver(commit_error.as_ref());
    }
}
