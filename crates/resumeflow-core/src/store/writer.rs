//! The single writer thread: owns the write connection and commits queued operations in
//! groups (group commit). Operations that arrive while a commit is in flight share the next
//! transaction; each runs in its own savepoint, so a refused operation (a stale fencing
//! token, say) leaves no trace and does not undo the others.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, DropBehavior, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{Error, Result, StoreError};
use crate::lease::now;

use super::Durability;

/// One queued operation.
trait WriteJob: Send {
    /// Runs inside a savepoint; returns true if the savepoint should be kept.
    fn run(&mut self, conn: &Connection, at: f64) -> bool;
    /// Records a failure that happened before the job could run.
    fn fail(&mut self, error: Error);
    /// Sends the reply once the commit outcome is known.
    fn deliver(self: Box<Self>, commit_error: Option<&Error>);
}

struct TypedJob<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteJob for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection, f64) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Connection, at: f64) -> bool {
        let work = self.work.take().expect("a job runs once");
        let result = work(conn, at);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, error: Error) {
        self.result = Some(Err(error));
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

enum Msg {
    Job(Box<dyn WriteJob>),
    Close,
}

/// Handle to the writer thread.
pub struct Writer {
    tx: Mutex<Option<Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

/// Most operations one transaction takes.
const MAX_GROUP: usize = 1024;

impl Writer {
    /// Starts the writer thread on `conn`.
    pub fn spawn(conn: Connection, path: PathBuf, durability: Durability) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("resumeflow-writer".into())
            .spawn(move || run(conn, &rx, &thread_path, durability))
            .expect("spawn writer thread");
        Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            path,
        }
    }

    /// Queues `work`; its result arrives on the returned receiver after the commit.
    pub fn submit<T, F>(&self, work: F) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, f64) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply,
        });
        let guard = self.tx.lock().expect("writer lock");
        let refused: Option<Box<dyn WriteJob>> = match guard.as_ref() {
            Some(tx) => match tx.send(Msg::Job(job)) {
                Ok(()) => None,
                Err(std::sync::mpsc::SendError(Msg::Job(job))) => Some(job),
                Err(_) => unreachable!("only jobs are sent here"),
            },
            None => Some(job),
        };
        if let Some(mut job) = refused {
            job.fail(self.closed());
            job.deliver(None);
        }
        rx
    }

    /// Queues `work` and waits for the commit.
    pub fn call<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, f64) -> Result<T> + Send + 'static,
    {
        self.submit(work)
            .blocking_recv()
            .unwrap_or(Err(Error::Shutdown))
    }

    fn closed(&self) -> Error {
        StoreError::Closed {
            path: self.path.clone(),
        }
        .into()
    }

    /// Commits what is queued and stops the thread.
    pub fn close(&self) {
        if let Some(tx) = self.tx.lock().expect("writer lock").take() {
            let _ = tx.send(Msg::Close);
        }
        let thread = self.thread.lock().expect("writer lock").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn run(mut conn: Connection, rx: &Receiver<Msg>, path: &Path, durability: Durability) {
    // No artificial window: work that arrives while a commit is in flight shares the next
    // one (group commit), and a caller waiting for its commit is never delayed on purpose.
    // `durability` only sets the connection's `synchronous` level (see `SqliteStore::open`).
    let _ = durability;
    let window = Duration::ZERO;
    loop {
        let Ok(first) = rx.recv() else { return };
        let Msg::Job(first) = first else { break };
        let mut jobs = vec![first];
        let deadline = Instant::now() + window;
        let mut closing = false;
        while jobs.len() < MAX_GROUP {
            let next = if window.is_zero() {
                rx.try_recv().ok()
            } else {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok()
            };
            match next {
                Some(Msg::Job(j)) => jobs.push(j),
                Some(Msg::Close) => {
                    closing = true;
                    break;
                }
                None => break,
            }
        }
        commit_group(&mut conn, path, jobs);
        if closing {
            break;
        }
    }
    let rest: Vec<Box<dyn WriteJob>> = rx
        .try_iter()
        .filter_map(|m| match m {
            Msg::Job(j) => Some(j),
            Msg::Close => None,
        })
        .collect();
    if !rest.is_empty() {
        commit_group(&mut conn, path, rest);
    }
}

fn sqlite_error(path: &Path, what: &str, e: &rusqlite::Error) -> Error {
    StoreError::Sqlite {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    }
    .into()
}

fn commit_group(conn: &mut Connection, path: &Path, mut jobs: Vec<Box<dyn WriteJob>>) {
    let at = now();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let err = sqlite_error(path, "cannot begin a write transaction", &e);
            for job in jobs {
                job.deliver(Some(&err));
            }
            return;
        }
    };
    for job in &mut jobs {
        match tx.savepoint() {
            Ok(mut sp) => {
                if job.run(&sp, at) {
                    if let Err(e) = sp.commit() {
                        job.fail(sqlite_error(path, "release savepoint", &e));
                    }
                } else {
                    sp.set_drop_behavior(DropBehavior::Rollback);
                }
            }
            Err(e) => job.fail(sqlite_error(path, "savepoint", &e)),
        }
    }
    let commit_error = tx
        .commit()
        .err()
        .map(|e| sqlite_error(path, "commit failed", &e));
    for job in jobs {
        job.deliver(commit_error.as_ref());
    }
}
