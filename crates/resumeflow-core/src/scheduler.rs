//! The per-run scheduler: a tokio task that starts ready nodes, commits their outcomes,
//! retries with backoff, and stops at completion, failure, an `until` target, an interrupt or
//! a cancel.
//!
//! A node's start is committed together with the completion that made it ready, so a chain
//! costs one commit per node; completions that land while a commit is in flight share the
//! next one (group commit, in the writer).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::event::EventKind;
use crate::executor::{NodeContext, NodeExecutor, NodeFailure, NodeOutput, NodeTask, NodeValue};
use crate::graph::{Graph, InputSource};
use crate::lease::Lease;
use crate::slots::{SlotGuard, Slots};
use crate::state::{NodeState, NodeStatus, ValueRef};
use crate::store::{BatchValue, CommitTicket, Durability, RunBatch, Store};

/// Requests from a run's handle (or the lease keeper) to its scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Run,
    /// Finish in-flight nodes, then pause.
    Interrupt,
    /// Abandon in-flight nodes and stop.
    Cancel,
    /// Another worker took the run: stop without writing.
    LeaseLost,
}

/// How a scheduler ended.
pub struct SchedulerEnd {
    pub error: Option<Error>,
    pub live_values: HashMap<String, crate::executor::LiveObject>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Ready,
    Running,
    Retrying,
    Completed,
    Failed,
}

/// Everything a scheduler needs to drive one run.
pub struct RunSetup {
    pub store: Arc<dyn Store>,
    pub graph: Arc<Graph>,
    pub executor: Arc<dyn NodeExecutor>,
    pub lease: Lease,
    pub lease_ttl_s: f64,
    pub durability: Durability,
    pub slots: Arc<Slots>,
    pub inputs: BTreeMap<String, Arc<[u8]>>,
    /// Node states as committed (after any resume modifications).
    pub nodes: BTreeMap<String, NodeState>,
    /// From a resume that read the run's completed marks instead of every node row: by
    /// position, whether the node is completed. Nodes missing from `nodes` then have their
    /// rows read when they are about to run or their output is needed.
    pub marked_completed: Option<Vec<bool>>,
    /// The run's completed marks to write back with the first batch (a resume that read
    /// every node row rebuilds them; see `crate::completed_marks`).
    pub marks_base: Option<crate::completed_marks::CompletedMarks>,
    /// The graph has the stored run's structure, so its canonical ranks are the run's:
    /// completions carry them. Otherwise (a resume that allowed a mismatch) they carry none,
    /// and the first completion drops the run's marks.
    pub ranked: bool,
    pub until: Option<String>,
    pub control: watch::Receiver<Control>,
    /// Running attempts that must heartbeat: node index -> (last beat, timeout).
    pub heartbeats: Heartbeats,
}

/// Running attempts with a heartbeat timeout, shared with the engine's lease keeper.
pub type Heartbeats = Arc<std::sync::Mutex<HashMap<usize, (Arc<AtomicU64>, std::time::Duration)>>>;

/// True if some running attempt has not shown life within its heartbeat timeout.
pub fn has_stale_heartbeat(heartbeats: &Heartbeats) -> bool {
    let now = crate::executor::monotonic_ms();
    heartbeats
        .lock()
        .expect("heartbeats lock")
        .values()
        .any(|(beat, timeout)| {
            now.saturating_sub(beat.load(Ordering::Relaxed)) > timeout.as_millis() as u64
        })
}

/// An attempt that timed out but whose code is still running (a sync node's thread cannot be
/// stopped): it is polled to its end so that the node's next attempt never overlaps it.
type Straggler = CatchUnwind<crate::executor::NodeFuture>;

type Finished = (
    usize,
    u32,
    Result<NodeOutput, NodeFailure>,
    SlotGuard,
    Option<Straggler>,
);

struct Scheduler {
    setup: RunSetup,
    phase: Vec<Phase>,
    attempt: Vec<u32>,
    session_attempts: Vec<u32>,
    outputs: Vec<Option<ValueRef>>,
    overrides: Vec<Option<Vec<u8>>>,
    missing_deps: Vec<usize>,
    /// Nodes whose stored row was not read yet (see `RunSetup::marked_completed`).
    unread: Vec<bool>,
    /// Some rows are read only when needed (a resume from completed marks).
    lazy: bool,
    in_target: Vec<bool>,
    values: HashMap<usize, NodeValue>,
    ready: VecDeque<usize>,
    retry_at: BTreeMap<usize, Instant>,
    cancel_flags: HashMap<usize, Arc<AtomicBool>>,
    first_error: Option<String>,
    batch: RunBatch,
    deferred: RunBatch,
    tickets: VecDeque<CommitTicket>,
    running: JoinSet<Finished>,
    /// Timed-out attempts still running, by node; each holds its slots until it returns.
    straggling: JoinSet<usize>,
    stragglers_of: Vec<u32>,
}

/// A value this large (or one to compress) makes a `batched` submit leave the runtime's
/// worker thread while it is staged.
const HEAVY_VALUE: usize = 1 << 20;

impl Scheduler {
    fn new(mut setup: RunSetup) -> Self {
        let graph = setup.graph.clone();
        let n = graph.nodes().len();
        let in_target: Vec<bool> = match &setup.until {
            Some(t) => {
                let keep = graph.ancestors_inclusive(t);
                graph
                    .nodes()
                    .iter()
                    .map(|node| keep.contains(&node.id))
                    .collect()
            }
            None => vec![true; n],
        };
        let mut attempt = vec![0; n];
        let mut outputs = vec![None; n];
        let mut overrides = vec![None; n];
        let mut missing_deps = vec![0; n];
        let marked = setup.marked_completed.take();
        // Without marks, a node without a state has none yet; with them, its row is read
        // when it is needed.
        let (mut phase, mut unread) = match &marked {
            Some(marked) => (
                marked
                    .iter()
                    .map(|&done| {
                        if done {
                            Phase::Completed
                        } else {
                            Phase::Waiting
                        }
                    })
                    .collect(),
                vec![true; n],
            ),
            None => (vec![Phase::Waiting; n], vec![false; n]),
        };
        for (id, state) in &setup.nodes {
            // A stored node the graph lacks (a resume that allowed a mismatch) is ignored.
            let Some(i) = graph.position(id) else {
                continue;
            };
            unread[i] = false;
            attempt[i] = state.attempt;
            overrides[i].clone_from(&state.inputs_override);
            if state.status == NodeStatus::Completed {
                phase[i] = Phase::Completed;
                outputs[i].clone_from(&state.output);
            } else {
                phase[i] = Phase::Waiting;
            }
        }
        for (i, missing) in missing_deps.iter_mut().enumerate() {
            *missing = graph
                .upstream_of(i)
                .iter()
                .filter(|&&u| phase[u] != Phase::Completed)
                .count();
        }
        let mut ready = VecDeque::new();
        for i in 0..n {
            if phase[i] == Phase::Waiting && missing_deps[i] == 0 && in_target[i] {
                phase[i] = Phase::Ready;
                ready.push_back(i);
            }
        }
        let run_id = setup.lease.run_id.clone();
        let token = Some(setup.lease.token);
        let mut batch = RunBatch::new(&run_id, token);
        batch.marks_base = setup.marks_base.take();
        Self {
            setup,
            phase,
            attempt,
            session_attempts: vec![0; n],
            outputs,
            overrides,
            missing_deps,
            unread,
            lazy: marked.is_some(),
            in_target,
            values: HashMap::new(),
            ready,
            retry_at: BTreeMap::new(),
            cancel_flags: HashMap::new(),
            first_error: None,
            batch,
            deferred: RunBatch::new(&run_id, token),
            tickets: VecDeque::new(),
            running: JoinSet::new(),
            straggling: JoinSet::new(),
            stragglers_of: vec![0; n],
        }
    }

    fn node_id(&self, i: usize) -> &str {
        &self.setup.graph.nodes()[i].id
    }

    fn push(&mut self, kind: EventKind) {
        self.batch.events.push(kind);
    }

    /// Commits the current batch as the durability mode asks.
    async fn commit(&mut self) -> Result<()> {
        self.check_tickets()?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(
            &mut self.batch,
            RunBatch::new(&self.setup.lease.run_id, Some(self.setup.lease.token)),
        );
        match self.setup.durability {
            // In `sync` mode the submit may commit (and write blob files) on this thread:
            // let the runtime move its other tasks (the lease keeper) elsewhere meanwhile.
            Durability::Sync => tokio::task::block_in_place(|| self.setup.store.submit(batch))
                .await
                .unwrap_or(Err(Error::Shutdown)),
            Durability::Batched => {
                // Not awaited: dependants may start before their producer's commit lands
                // (docs/reliability.md); commits stay in order through the single writer,
                // and a refused batch stops every later batch of this lease. Staging (zstd, a
                // large value's blob file) happens in `submit`: off the runtime's workers
                // when there is real work to do.
                let heavy = batch
                    .values
                    .iter()
                    .any(|v| v.compress || v.bytes.len() >= HEAVY_VALUE);
                let ticket = if heavy {
                    tokio::task::block_in_place(|| self.setup.store.submit(batch))
                } else {
                    self.setup.store.submit(batch)
                };
                self.tickets.push_back(ticket);
                Ok(())
            }
            Durability::Off => {
                self.deferred.extend(batch);
                Ok(())
            }
        }
    }

    /// Surfaces the first refused commit of `batched` mode. Commits land in order, so only
    /// the oldest tickets need looking at (the others cannot be done before them).
    fn check_tickets(&mut self) -> Result<()> {
        while let Some(ticket) = self.tickets.front_mut() {
            match ticket.try_recv() {
                Ok(Ok(())) => {
                    self.tickets.pop_front();
                }
                Ok(Err(e)) => {
                    self.tickets.pop_front();
                    return Err(e);
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    self.tickets.pop_front();
                    return Err(Error::Shutdown);
                }
            }
        }
        Ok(())
    }

    /// Commits everything still deferred or in flight; earlier commits are confirmed before
    /// the final batch goes out, so a run is never marked ended after a refused batch.
    async fn flush(&mut self) -> Result<()> {
        for ticket in std::mem::take(&mut self.tickets) {
            ticket.await.unwrap_or(Err(Error::Shutdown))?;
        }
        self.commit().await?;
        if !self.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.deferred);
            self.setup
                .store
                .submit(deferred)
                .await
                .unwrap_or(Err(Error::Shutdown))?;
        }
        for ticket in std::mem::take(&mut self.tickets) {
            ticket.await.unwrap_or(Err(Error::Shutdown))?;
        }
        Ok(())
    }

    /// Takes slots for ready nodes and records their starts in the batch.
    fn claim_ready(&mut self) -> Vec<(usize, SlotGuard)> {
        let mut claimed = Vec::new();
        while let Some(&i) = self.ready.front() {
            let needs = &self.setup.graph.nodes()[i].resources;
            let Some(guard) = self.setup.slots.try_acquire(needs) else {
                break;
            };
            self.ready.pop_front();
            self.attempt[i] += 1;
            self.session_attempts[i] += 1;
            self.phase[i] = Phase::Running;
            let kind = EventKind::NodeStarted {
                node: self.node_id(i).to_string(),
                attempt: self.attempt[i],
            };
            self.push(kind);
            claimed.push((i, guard));
        }
        claimed
    }

    /// Reads the stored rows of `nodes` not read yet (after a resume from completed marks):
    /// attempt counts, adjusted inputs, and the outputs of completed ones.
    fn read_states(&mut self, nodes: &[usize]) -> Result<()> {
        let unread: Vec<usize> = nodes.iter().copied().filter(|&i| self.unread[i]).collect();
        if unread.is_empty() {
            return Ok(());
        }
        let graph = self.setup.graph.clone();
        let ids: Vec<&str> = unread
            .iter()
            .map(|&i| graph.nodes()[i].id.as_str())
            .collect();
        let store = self.setup.store.clone();
        let run_id = self.setup.lease.run_id.clone();
        let states = tokio::task::block_in_place(|| store.load_nodes(&run_id, &ids))?;
        for i in unread {
            self.unread[i] = false;
            let state = states.get(&graph.nodes()[i].id);
            if let Some(state) = state {
                self.attempt[i] = state.attempt;
                self.overrides[i].clone_from(&state.inputs_override);
            }
            if self.phase[i] == Phase::Completed {
                let output = state.filter(|s| s.status == NodeStatus::Completed);
                self.outputs[i] = output.and_then(|s| s.output.clone());
                if self.outputs[i].is_none() {
                    return Err(crate::error::StoreError::Corrupt {
                        path: store.path().to_path_buf(),
                        table: "run_marks".into(),
                        message: format!(
                            "run {run_id:?} marks node {:?} completed but its row is not",
                            graph.nodes()[i].id
                        ),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    fn input_value(&mut self, source: usize) -> Result<NodeValue> {
        if let Some(v) = self.values.get(&source) {
            return Ok(v.clone());
        }
        self.read_states(&[source])?;
        let value_ref = self.outputs[source]
            .clone()
            .ok_or_else(|| Error::InvalidArgument {
                field: "inputs".into(),
                message: format!("node {:?} has no stored output", self.node_id(source)),
            })?;
        let store = self.setup.store.clone();
        let bytes = tokio::task::block_in_place(|| store.load_value(&value_ref))?;
        let value = NodeValue::Bytes(bytes.into());
        self.values.insert(source, value.clone());
        Ok(value)
    }

    fn spawn(&mut self, i: usize, guard: SlotGuard) -> Result<()> {
        let graph = self.setup.graph.clone();
        let spec = &graph.nodes()[i];
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for binding in &spec.inputs {
            match &binding.source {
                InputSource::Node(src) => {
                    let s = graph.position(src).expect("validated");
                    inputs.push((binding.param.clone(), self.input_value(s)?));
                }
                InputSource::RunInput { name, .. } => {
                    if let Some(bytes) = self.setup.inputs.get(name) {
                        inputs.push((binding.param.clone(), NodeValue::Bytes(bytes.clone())));
                    }
                }
            }
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        self.cancel_flags.insert(i, cancelled.clone());
        let last_beat = Arc::new(AtomicU64::new(crate::executor::monotonic_ms()));
        if let Some(timeout) = spec.heartbeat_timeout {
            self.setup
                .heartbeats
                .lock()
                .expect("heartbeats lock")
                .insert(i, (last_beat.clone(), timeout));
        }
        let attempt = self.attempt[i];
        let task = NodeTask {
            node_id: spec.id.clone(),
            attempt,
            inputs,
            inputs_override: self.overrides[i].clone(),
            context: NodeContext {
                run_id: self.setup.lease.run_id.clone(),
                node_id: spec.id.clone(),
                attempt,
                store: self.setup.store.clone(),
                lease: self.setup.lease.clone(),
                lease_ttl_s: self.setup.lease_ttl_s,
                cancelled: cancelled.clone(),
                last_beat,
            },
        };
        // A panic while the executor builds the attempt fails this node, like one inside it.
        let executor = self.setup.executor.clone();
        let future: crate::executor::NodeFuture =
            match std::panic::catch_unwind(AssertUnwindSafe(move || executor.execute(task))) {
                Ok(future) => future,
                Err(payload) => {
                    let message = panic_message(payload.as_ref());
                    Box::pin(async move { Err(NodeFailure::fatal(format!("panic: {message}"))) })
                }
            };
        let timeout = spec.timeout;
        let node_id = spec.id.clone();
        self.running.spawn(async move {
            // A panic while polling the attempt fails this node (not the scheduler); aborting
            // the task (cancel, lease loss) drops the attempt's future.
            let mut attempt_future = CatchUnwind(future);
            let joined = match timeout {
                None => Some((&mut attempt_future).await),
                Some(limit) => tokio::time::timeout(limit, &mut attempt_future).await.ok(),
            };
            let timed_out = joined.is_none();
            let result = match joined {
                Some(Ok(r)) => r,
                Some(Err(panic)) => Err(NodeFailure::fatal(format!("panic in node {node_id:?}: {panic}"))),
                None => {
                    cancelled.store(true, Ordering::Relaxed);
                    let limit = timeout.unwrap_or_default().as_secs_f64();
                    Err(NodeFailure::retryable(format!(
                        "TimeoutError: node {node_id:?} exceeded its timeout of {limit:.3}s on attempt {attempt}"
                    )))
                }
            };
            // The timed-out attempt was told (`cancelled`); its future still runs.
            let straggler = timed_out.then_some(attempt_future);
            (i, attempt, result, guard, straggler)
        });
        Ok(())
    }

    fn make_ready(&mut self, i: usize) {
        if self.phase[i] == Phase::Waiting && self.missing_deps[i] == 0 && self.in_target[i] {
            self.phase[i] = Phase::Ready;
            self.ready.push_back(i);
        }
    }

    fn on_finished(&mut self, (i, attempt, result, guard, straggler): Finished) {
        match straggler {
            // Its slots stay taken, and the node's retry waits, until the attempt returns.
            Some(straggler) => {
                self.stragglers_of[i] += 1;
                self.straggling.spawn(async move {
                    let _ = straggler.await;
                    drop(guard);
                    i
                });
            }
            None => drop(guard),
        }
        self.cancel_flags.remove(&i);
        self.setup
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .remove(&i);
        let node = self.node_id(i).to_string();
        match result {
            Ok(output) => {
                let bytes = output.bytes;
                let in_file = output.file.is_some();
                if output.compress {
                    // A streaming node's bundle holds every item its saved segments held.
                    self.batch.dropped_segments.push(node.clone());
                }
                let stored = match output.file {
                    Some(value) => BatchValue::in_file(value),
                    None => BatchValue::new(bytes.clone(), output.compress),
                };
                let value_ref = stored.value.clone();
                self.batch.values.push(stored);
                if self.setup.ranked {
                    self.batch
                        .completed_ranks
                        .push(self.setup.graph.canonical_rank(i));
                }
                self.push(EventKind::NodeCompleted {
                    node,
                    attempt,
                    value: value_ref.clone(),
                });
                match (output.live, in_file) {
                    (Some(live), _) => {
                        self.values.insert(i, NodeValue::Live(live));
                    }
                    (None, false) => {
                        self.values.insert(i, NodeValue::Bytes(bytes));
                    }
                    // Only in a blob file: dependants load it from the store.
                    (None, true) => {}
                }
                self.outputs[i] = Some(value_ref);
                self.phase[i] = Phase::Completed;
                let graph = self.setup.graph.clone();
                for &d in graph.downstream_of(i) {
                    self.missing_deps[d] -= 1;
                    self.make_ready(d);
                }
            }
            Err(mut failure) => {
                failure.error = crate::executor::cap_error_text(failure.error);
                let policy = &self.setup.graph.nodes()[i].retry;
                let will_retry =
                    failure.retryable && policy.allows_another(self.session_attempts[i]);
                let delay = policy.delay_after(self.session_attempts[i], failure.retry_after);
                if failure.next_inputs_override.is_some() {
                    self.overrides[i].clone_from(&failure.next_inputs_override);
                }
                self.push(EventKind::NodeFailed {
                    node: node.clone(),
                    attempt,
                    error: failure.error.clone(),
                    retryable: failure.retryable,
                    will_retry,
                    peak_memory: failure.peak_memory,
                    next_inputs_override: failure.next_inputs_override,
                });
                if will_retry {
                    self.push(EventKind::NodeRetryScheduled {
                        node,
                        delay_ms: delay.as_millis() as u64,
                        reason: failure.retry_reason,
                    });
                    self.phase[i] = Phase::Retrying;
                    self.retry_at.insert(i, Instant::now() + delay);
                } else {
                    self.phase[i] = Phase::Failed;
                    self.first_error.get_or_insert_with(|| {
                        format!(
                            "node {node:?} failed on attempt {attempt}: {}",
                            failure.error
                        )
                    });
                }
            }
        }
    }

    /// Retries whose time came and whose earlier attempt has returned.
    fn due_retries(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .retry_at
            .iter()
            .filter(|(&i, &t)| t <= now && self.stragglers_of[i] == 0)
            .map(|(&i, _)| i)
            .collect();
        for i in due {
            self.retry_at.remove(&i);
            self.phase[i] = Phase::Ready;
            self.ready.push_back(i);
        }
    }

    /// The event that ends the run, once nothing is running or waiting to run.
    fn final_event(&self) -> EventKind {
        if let Some(error) = &self.first_error {
            return EventKind::RunFailed {
                error: error.clone(),
            };
        }
        let all_done = self.phase.iter().all(|p| *p == Phase::Completed);
        if self.setup.until.is_some() || !all_done {
            EventKind::RunPaused
        } else {
            EventKind::RunCompleted
        }
    }

    async fn stop(&mut self, last: EventKind) -> Result<()> {
        self.push(last);
        self.push(EventKind::LeaseReleased {
            token: self.setup.lease.token,
        });
        self.flush().await
    }

    async fn abandon_running(&mut self, why: &str) {
        for flag in self.cancel_flags.values() {
            flag.store(true, Ordering::Relaxed);
        }
        self.running.abort_all();
        while self.running.join_next().await.is_some() {}
        self.straggling.abort_all();
        let abandoned: Vec<usize> = (0..self.phase.len())
            .filter(|&i| self.phase[i] == Phase::Running)
            .collect();
        for i in abandoned {
            self.phase[i] = Phase::Failed;
            self.push(EventKind::NodeFailed {
                node: self.node_id(i).to_string(),
                attempt: self.attempt[i],
                error: why.to_string(),
                retryable: true,
                will_retry: false,
                peak_memory: None,
                next_inputs_override: None,
            });
        }
    }

    async fn drive(&mut self) -> Result<()> {
        let slots = self.setup.slots.clone();
        loop {
            let control = *self.setup.control.borrow();
            match control {
                Control::LeaseLost => {
                    self.running.abort_all();
                    return Err(Error::LeaseLost {
                        run_id: self.setup.lease.run_id.clone(),
                        token: self.setup.lease.token,
                    });
                }
                Control::Cancel => {
                    self.abandon_running("Cancelled: the run was cancelled while this attempt ran")
                        .await;
                    return self.stop(EventKind::RunCancelled).await;
                }
                Control::Interrupt | Control::Run => {}
            }
            let interrupted = control == Control::Interrupt;
            self.due_retries();
            let released = slots.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let claimed = if interrupted {
                Vec::new()
            } else {
                if self.lazy && self.ready.iter().any(|&i| self.unread[i]) {
                    let ready: Vec<usize> = self.ready.iter().copied().collect();
                    self.read_states(&ready)?;
                }
                self.claim_ready()
            };
            // A run ends (or pauses) only once no attempt of it runs, timed-out ones included.
            if self.running.is_empty() && claimed.is_empty() && self.straggling.is_empty() {
                let idle = self.ready.is_empty() && self.retry_at.is_empty();
                if interrupted {
                    return self.stop(EventKind::RunPaused).await;
                }
                if idle {
                    let last = self.final_event();
                    return self.stop(last).await;
                }
            }
            self.commit().await?;
            for (i, guard) in claimed {
                self.spawn(i, guard)?;
            }
            let next_retry = self
                .retry_at
                .iter()
                .filter(|(&i, _)| self.stragglers_of[i] == 0)
                .map(|(_, &t)| t)
                .min();
            let waiting_for_slot = !self.ready.is_empty() && !interrupted;
            tokio::select! {
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    self.absorb(joined);
                    while let Some(more) = self.running.try_join_next() {
                        self.absorb(more);
                    }
                }
                Some(returned) = self.straggling.join_next(), if !self.straggling.is_empty() => {
                    if let Ok(i) = returned {
                        self.stragglers_of[i] -= 1;
                    }
                }
                () = sleep_until(next_retry), if next_retry.is_some() => {}
                () = &mut released, if waiting_for_slot => {}
                _ = self.setup.control.changed() => {}
            }
        }
    }

    /// After a refused write (a full store, a failing disk): ends the run `failed` with the
    /// store's error and releases its lease, so that it is not left `running` and locked.
    /// What was committed before stays; the nodes whose results were refused run again on
    /// resume. Best effort: if even this write is refused, the lease expires as after a crash.
    async fn end_after_refusal(&mut self, error: &Error) {
        for ticket in std::mem::take(&mut self.tickets) {
            let _ = ticket.await;
        }
        for flag in self.cancel_flags.values() {
            flag.store(true, Ordering::Relaxed);
        }
        let lease = &self.setup.lease;
        let mut batch = RunBatch::new(&lease.run_id, Some(lease.token));
        batch.events.push(EventKind::RunFailed {
            error: format!("a write of this run was refused: {error}"),
        });
        batch
            .events
            .push(EventKind::LeaseReleased { token: lease.token });
        let store = self.setup.store.clone();
        let _ = tokio::task::block_in_place(|| store.commit_after_refusal(batch));
    }

    fn absorb(&mut self, joined: std::result::Result<Finished, tokio::task::JoinError>) {
        match joined {
            Ok(finished) => self.on_finished(finished),
            // Only an abort gets here (attempt panics are caught inside the task).
            Err(e) => {
                self.first_error
                    .get_or_insert(format!("scheduler task ended: {e}"));
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drives a run to its end and reports how it ended.
pub async fn run(setup: RunSetup) -> SchedulerEnd {
    let mut scheduler = Scheduler::new(setup);
    let error = scheduler.drive().await.err();
    if let Some(e) = &error {
        scheduler.running.abort_all();
        scheduler.straggling.abort_all();
        if matches!(e, Error::Store(_)) {
            scheduler.end_after_refusal(e).await;
        }
    }
    let live_values = scheduler
        .values
        .iter()
        .filter_map(|(&i, v)| match v {
            NodeValue::Live(obj) => Some((scheduler.node_id(i).to_string(), obj.clone())),
            NodeValue::Bytes(_) => None,
        })
        .collect();
    SchedulerEnd { error, live_values }
}

/// Ids of nodes (in `graph`) that are `from` or depend on it, excluding `from` itself.
pub fn downstream_of(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut all = graph.descendants_inclusive(from);
    all.remove(from);
    all
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// Resolves to the inner future's output, or to the panic message if polling it panicked.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}
