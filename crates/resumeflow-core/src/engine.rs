//! The public engine: start, pause, resume and inspect durable runs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::event::{Event, EventKind};
use crate::executor::NodeExecutor;
use crate::graph::Graph;
use crate::lease::{new_owner_id, now, Lease, LeaseRequest};
use crate::options::{EngineOptions, ResumeOptions, StartOptions};
use crate::projection::RunProjection;
use crate::run_handle::{RunHandle, RunOutcome, RunShared};
use crate::runtime::runtime;
use crate::scheduler::{self, Control, RunSetup};
use crate::slots::Slots;
use crate::state::{Checkpoint, RunState, RunStatus};
use crate::store::{CleanupRequest, NewRun, Store};

struct EngineInner {
    store: Arc<dyn Store>,
    options: EngineOptions,
    owner: String,
    slots: Arc<Slots>,
    active: Mutex<HashMap<String, RunHandle>>,
    /// Runs a `resume` of this engine is preparing (so that two resumes in one engine can
    /// never both take the run).
    resuming: Mutex<std::collections::HashSet<String>>,
}

/// The durable execution engine. Cheap to clone; all clones are one worker (one lease owner).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

/// Run ids: 1-200 characters from `[A-Za-z0-9_.:@+-]`.
fn check_run_id(run_id: &str) -> Result<()> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 200
        && run_id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'@' | b'+')
        });
    if ok {
        Ok(())
    } else {
        let shown: String = run_id.chars().take(40).collect();
        Err(Error::InvalidArgument {
            field: "run_id".into(),
            message: format!(
                "{shown:?}{} is not a valid run id: use 1-200 characters from [A-Za-z0-9_.:@+-]",
                if run_id.chars().count() > 40 {
                    "…"
                } else {
                    ""
                }
            ),
        })
    }
}

/// `max_concurrency: Some(0)` could never run a node: refused before any store is opened.
fn check_concurrency(options: &EngineOptions) -> Result<()> {
    if options.max_concurrency == Some(0) {
        return Err(Error::InvalidArgument {
            field: "max_concurrency".into(),
            message: "must be at least 1, or None for no limit".into(),
        });
    }
    Ok(())
}

fn generated_run_id(workflow: &str) -> String {
    let millis = (now() * 1000.0) as u64;
    format!("{workflow}-{millis:x}-{:06x}", fastrand::u32(..0x0100_0000))
}

impl Engine {
    /// Opens (or creates) the SQLite store at `path`.
    ///
    /// ```
    /// use resumeflow_core::{Engine, EngineOptions};
    /// let dir = std::env::temp_dir().join(format!("rf-engine-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let engine = Engine::open(dir.join("runs.db"), EngineOptions::default()).unwrap();
    /// assert!(engine.list_runs(None).unwrap().is_empty());
    /// # engine.close(); std::fs::remove_dir_all(dir).ok();
    /// ```
    pub fn open(path: impl AsRef<Path>, options: EngineOptions) -> Result<Self> {
        if let Some(target) = path.as_ref().to_str() {
            return Self::open_target(target, options);
        }
        // Not UTF-8, so not a URL: a file path as it is.
        check_concurrency(&options)?;
        let store = crate::store::open_sqlite(path.as_ref(), &options.store_options())?;
        Ok(Self::with_store(store, options))
    }

    /// Opens the store `target` names: a `postgresql://` (or `postgres://`) URL opens a
    /// [`PgStore`](crate::PgStore), anything else is a SQLite file path (see
    /// [`open_store`](crate::store::open_store)).
    ///
    /// ```
    /// use resumeflow_core::{Engine, EngineOptions};
    /// let dir = std::env::temp_dir().join(format!("rf-target-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("runs.db");
    /// let engine = Engine::open_target(path.to_str().unwrap(), EngineOptions::default()).unwrap();
    /// assert!(engine.list_runs(None).unwrap().is_empty());
    /// # engine.close(); std::fs::remove_dir_all(dir).ok();
    /// ```
    pub fn open_target(target: &str, options: EngineOptions) -> Result<Self> {
        check_concurrency(&options)?;
        let store = crate::store::open_store(target, &options.store_options())?;
        Ok(Self::with_store(store, options))
    }

    /// An engine on any store.
    ///
    /// `max_concurrency: Some(0)` is treated as `Some(1)` (nothing could ever run otherwise);
    /// [`Engine::open`] rejects it.
    pub fn with_store(store: Arc<dyn Store>, mut options: EngineOptions) -> Self {
        if options.max_concurrency == Some(0) {
            options.max_concurrency = Some(1);
        }
        let inner = Arc::new(EngineInner {
            slots: Arc::new(Slots::new(
                options.max_concurrency,
                options.resources.clone(),
            )),
            store,
            options,
            owner: new_owner_id(),
            active: Mutex::new(HashMap::new()),
            resuming: Mutex::new(std::collections::HashSet::new()),
        });
        spawn_lease_keeper(Arc::downgrade(&inner));
        Self { inner }
    }

    /// This engine's lease owner id (`host:pid:random`).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The store this engine writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    fn lease_request(&self) -> LeaseRequest {
        LeaseRequest {
            owner: self.inner.owner.clone(),
            ttl: self.inner.options.lease_ttl,
        }
    }

    fn check_graph(
        &self,
        graph: &Graph,
        has_input: impl FnMut(&str) -> bool,
        until: Option<&str>,
    ) -> Result<()> {
        if let Some(node) = graph.invalid_retry() {
            node.retry.validate(&node.id)?;
        }
        let slots = self.inner.slots.clone();
        graph.check_inputs(has_input, move |r| slots.capacity(r))?;
        if let Some(until) = until {
            graph.require_node(until, "until")?;
        }
        Ok(())
    }

    /// Starts a new run in the background.
    pub fn start(
        &self,
        graph: Arc<Graph>,
        executor: Arc<dyn NodeExecutor>,
        inputs: BTreeMap<String, Vec<u8>>,
        options: StartOptions,
    ) -> Result<RunHandle> {
        let run_id = match options.run_id {
            Some(id) => {
                check_run_id(&id)?;
                id
            }
            None => generated_run_id(graph.name()),
        };
        self.check_graph(
            &graph,
            |name| inputs.contains_key(name),
            options.until.as_deref(),
        )?;
        let lease = self.inner.store.create_run(
            NewRun {
                run_id: run_id.clone(),
                graph: (*graph).clone(),
                inputs: inputs.clone(),
                labels: options.labels,
            },
            self.lease_request(),
        )?;
        // A new run's nodes have no rows yet: the scheduler starts each from the default.
        let fresh = Resumed {
            nodes: BTreeMap::new(),
            marked_completed: None,
            marks_base: None,
            ranked: true,
        };
        Ok(self.launch(graph, executor, lease, inputs, fresh, options.until))
    }

    /// Records a run as `queued` for any worker to claim ([`Engine::claim`]); this engine
    /// does not execute it unless it claims it. Returns the run id. The graph and inputs
    /// are validated first: nothing is stored for a run that could not start.
    pub fn submit(
        &self,
        graph: &Graph,
        inputs: BTreeMap<String, Vec<u8>>,
        options: StartOptions,
    ) -> Result<String> {
        let run_id = match options.run_id {
            Some(id) => {
                check_run_id(&id)?;
                id
            }
            None => generated_run_id(graph.name()),
        };
        self.check_graph(graph, |name| inputs.contains_key(name), None)?;
        self.inner.store.submit_run(NewRun {
            run_id: run_id.clone(),
            graph: graph.clone(),
            inputs,
            labels: options.labels,
        })?;
        Ok(run_id)
    }

    /// Claims the oldest queued run of one of `workflows` (matched by name and structure)
    /// and starts executing it; `None` if nothing is queued for them. The claim and the
    /// lease are one transaction, so no two workers ever run the same queued run.
    pub fn claim(
        &self,
        workflows: &[(Arc<Graph>, Arc<dyn NodeExecutor>)],
    ) -> Result<Option<RunHandle>> {
        let keys: Vec<(String, String)> = workflows
            .iter()
            .map(|(g, _)| (g.name().to_string(), g.structural_hash()))
            .collect();
        let Some(lease) = self.inner.store.claim_run(&keys, self.lease_request())? else {
            return Ok(None);
        };
        let stored = self.inner.store.load_run_without_graph(&lease.run_id)?;
        let (graph, executor) = workflows
            .iter()
            .find(|(g, _)| {
                g.structural_hash() == stored.graph_hash && g.name() == stored.state.workflow
            })
            .cloned()
            .expect("claimed runs match a served workflow");
        // This engine holds the lease now; the resume takes it again under a new token (the
        // same owner may) and plans the run from its stored state, so a run a stopping
        // worker handed back continues where it stopped.
        match self.resume(&lease.run_id, graph, executor, ResumeOptions::default()) {
            Ok(handle) => Ok(Some(handle)),
            Err(e) => {
                self.release_after_error(&lease);
                Err(e)
            }
        }
    }

    /// Asks for an interrupt or a cancel of `run_id`, wherever it executes: applied at once
    /// if this engine runs it or no worker holds it (a queued run), otherwise recorded for
    /// the worker holding its lease, which applies it at its next control check (well
    /// under a second) or lease renewal. Returns the run's status after the request.
    pub fn request_control(
        &self,
        run_id: &str,
        request: crate::control::ControlRequest,
    ) -> Result<RunStatus> {
        let local = self
            .inner
            .active
            .lock()
            .expect("active lock")
            .get(run_id)
            .cloned();
        if let Some(handle) = local {
            apply_control(&handle, request);
            return Ok(RunStatus::Running);
        }
        self.inner.store.request_control(run_id, request)
    }

    /// Puts a paused run that no worker holds back in the queue (what a worker does with
    /// the runs it paused while stopping); false if the run is not paused.
    pub fn requeue(&self, run_id: &str) -> Result<bool> {
        self.inner.store.requeue_run(run_id)
    }

    /// Blocks until `run_id` is no longer queued or running (by any worker, in any
    /// process), or `timeout` passes (then `None`); returns its state.
    pub fn wait_for_end(
        &self,
        run_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<RunState>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut marker = 0;
        loop {
            let state = self.inner.store.load_run_without_graph(run_id)?.state;
            if !matches!(
                state.status,
                RunStatus::Queued | RunStatus::Running | RunStatus::Pending
            ) {
                return Ok(Some(self.get_current_state(run_id)?));
            }
            let wait = match deadline {
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    (d - now).min(Duration::from_millis(250))
                }
                None => Duration::from_millis(250),
            };
            marker = self.inner.store.wait_for_change(marker, wait)?;
        }
    }

    /// Up to `limit` events of `run_id` after `after_seq`, oldest first.
    pub fn events_after(&self, run_id: &str, after_seq: i64, limit: usize) -> Result<Vec<Event>> {
        self.inner.store.events_after(run_id, after_seq, limit)
    }

    /// Runs matching `filter` (no value is loaded).
    pub fn list_runs_filtered(&self, filter: &crate::store::RunFilter) -> Result<Vec<RunState>> {
        Ok(self
            .inner
            .store
            .list_runs_filtered(filter)?
            .into_iter()
            .map(|r| r.state)
            .collect())
    }

    /// Commit and state-load latencies the store measured (for metrics and health).
    pub fn store_latency(&self) -> Option<crate::store::latency::StoreLatency> {
        self.inner.store.latency()
    }

    /// Who holds the run's lease and until when (seconds since the epoch): `(None, _)` when
    /// nobody does. A lease whose time passed belongs to a worker that stopped renewing it.
    pub fn run_lease(&self, run_id: &str) -> Result<(Option<String>, f64)> {
        let run = self.inner.store.load_run_without_graph(run_id)?;
        Ok((run.lease_owner, run.lease_expires))
    }

    /// The item segments a streaming node of the run saved with its cursor, `(first item
    /// index, encoded items)` in order: what a reader in another process sees of the items
    /// while the node runs (they are gone once it completes: its output holds them all).
    pub fn partial_segments(&self, run_id: &str, node_id: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.store.load_partial_segments(run_id, node_id)
    }

    /// Store-wide aggregates for metrics ([`crate::store::Store::summary`]).
    pub fn store_summary(&self, recent_since: f64) -> Result<crate::store::summary::StoreSummary> {
        self.inner.store.summary(recent_since)
    }

    /// Blocks until the store changed since marker `seen` or `timeout`; the new marker.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> Result<u64> {
        self.inner.store.wait_for_change(seen, timeout)
    }

    /// Runs `until` and its ancestors, then leaves the run `paused`. With `run_id` naming an
    /// existing run, continues that run (no inputs needed).
    pub fn execute_until(
        &self,
        graph: Arc<Graph>,
        executor: Arc<dyn NodeExecutor>,
        until: &str,
        inputs: BTreeMap<String, Vec<u8>>,
        run_id: Option<String>,
    ) -> Result<RunHandle> {
        graph.require_node(until, "until")?;
        if let Some(id) = &run_id {
            match self.inner.store.load_run(id) {
                Ok(_) => {
                    return self.resume(
                        id,
                        graph,
                        executor,
                        ResumeOptions {
                            until: Some(until.to_string()),
                            ..ResumeOptions::default()
                        },
                    )
                }
                Err(Error::RunNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.start(
            graph,
            executor,
            inputs,
            StartOptions {
                run_id,
                until: Some(until.to_string()),
                labels: BTreeMap::new(),
            },
        )
    }

    /// Continues a run that stopped (paused, failed, cancelled, crashed); completed nodes are
    /// not executed again.
    pub fn resume(
        &self,
        run_id: &str,
        graph: Arc<Graph>,
        executor: Arc<dyn NodeExecutor>,
        options: ResumeOptions,
    ) -> Result<RunHandle> {
        // The plan is computed from a snapshot; the lease is taken only if the run has not
        // moved since (another worker may have resumed and advanced it meanwhile).
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_resume(run_id, graph.clone(), executor.clone(), &options) {
                Err(Error::RunChanged { .. }) if tries < 20 => {}
                other => return other,
            }
        }
    }

    fn try_resume(
        &self,
        run_id: &str,
        graph: Arc<Graph>,
        executor: Arc<dyn NodeExecutor>,
        options: &ResumeOptions,
    ) -> Result<RunHandle> {
        let modifies = options.checkpoint_id.is_some()
            || !options.updates.is_empty()
            || !options.rerun.is_empty();
        // A plain resume reads the completed marks and the frontier's rows; anything else (or
        // a run without valid marks) reads every node row.
        let marked = if modifies {
            None
        } else {
            self.read_frontier(run_id, &graph)?
        };
        let (stored, marked_completed) = match marked {
            Some((stored, completed)) => (stored, Some(completed)),
            None => (self.inner.store.load_run_without_graph(run_id)?, None),
        };
        if stored.graph_hash != graph.structural_hash() && !options.allow_mismatch {
            let detail = match self.inner.store.load_run(run_id)?.graph {
                Some(stored_graph) => stored_graph.describe_difference(&graph),
                None => "structure differs".to_string(),
            };
            return Err(Error::WorkflowMismatch {
                run_id: run_id.to_string(),
                stored: stored.state.workflow.clone(),
                detail,
            });
        }
        for node in options.updates.keys() {
            graph.require_node(node, "updates")?;
        }
        for node in &options.rerun {
            graph.require_node(node, "rerun")?;
        }
        self.check_graph(
            &graph,
            |name| stored.inputs.contains_key(name),
            options.until.as_deref(),
        )?;
        let _reservation = self.reserve(run_id)?;
        let crashed_only_violated =
            options.only_crashed && stored.state.status != RunStatus::Running;
        if (stored.state.status == RunStatus::Completed && !modifies) || crashed_only_violated {
            return Err(Error::RunNotResumable {
                run_id: run_id.to_string(),
                status: stored.state.status.to_string(),
            });
        }
        let (events, values) =
            crate::resume_plan::resume_events(self.inner.store.as_ref(), &stored, &graph, options)?;
        let projection_events = events.clone();
        let expected = Some(stored.last_seq);
        // The lease, the resume's events and the values they reference: one transaction.
        let lease = self.inner.store.acquire_lease_at(
            run_id,
            self.lease_request(),
            expected,
            events,
            values,
        )?;
        // Fold the same events over the stored nodes (no second read of the store).
        let mut stored = stored;
        let mut projection = RunProjection {
            nodes: std::mem::take(&mut stored.state.nodes),
            ..RunProjection::default()
        };
        for kind in projection_events {
            projection.apply(&Event {
                seq: 0,
                at: now(),
                kind,
            });
        }
        let inputs = stored.inputs.clone();
        // Having read every row, the resume writes the run's marks back (same structure only:
        // marks are ranks of the stored graph's node ids).
        let ranked = stored.graph_hash == graph.structural_hash();
        let marks_base = match &marked_completed {
            None if ranked => Some(crate::resume_plan::marks_of(&graph, &projection.nodes)),
            _ => None,
        };
        Ok(self.launch(
            graph,
            executor,
            lease,
            inputs,
            Resumed {
                nodes: projection.nodes,
                marked_completed,
                marks_base,
                ranked,
            },
            options.until.clone(),
        ))
    }

    /// The run as its completed marks and the rows of its frontier give it (see
    /// [`crate::completed_marks`]), with each position's completed flag; `None` if the store
    /// keeps no valid marks for the run, the graph is not the stored one, or the frontier is
    /// too wide for reading its rows one by one to pay.
    fn read_frontier(
        &self,
        run_id: &str,
        graph: &Graph,
    ) -> Result<Option<(crate::store::StoredRun, Vec<bool>)>> {
        let Some((mut stored, marks)) = self.inner.store.load_run_marked(run_id)? else {
            return Ok(None);
        };
        if stored.graph_hash != graph.structural_hash() {
            return Ok(None);
        }
        let Some(frontier) = crate::resume_plan::frontier(graph, &marks) else {
            return Ok(None);
        };
        if frontier.ready.len() > crate::resume_plan::MAX_FRONTIER {
            return Ok(None);
        }
        let ids: Vec<&str> = frontier
            .ready
            .iter()
            .map(|&i| graph.nodes()[i].id.as_str())
            .collect();
        stored.state.nodes = self.inner.store.load_nodes(run_id, &ids)?;
        Ok(Some((stored, frontier.completed)))
    }

    /// Marks `run_id` as being resumed by this engine until the returned guard drops;
    /// `RunLocked` if this engine already runs or resumes it.
    fn reserve(&self, run_id: &str) -> Result<Reservation<'_>> {
        let mut resuming = self.inner.resuming.lock().expect("resuming lock");
        let busy = resuming.contains(run_id)
            || self
                .inner
                .active
                .lock()
                .expect("active lock")
                .contains_key(run_id);
        if busy {
            return Err(Error::RunLocked {
                run_id: run_id.to_string(),
                owner: self.inner.owner.clone(),
                remaining_s: self.inner.options.lease_ttl.as_secs_f64(),
            });
        }
        resuming.insert(run_id.to_string());
        Ok(Reservation {
            engine: &self.inner,
            run_id: run_id.to_string(),
        })
    }

    fn release_after_error(&self, lease: &Lease) {
        let mut batch = crate::store::RunBatch::new(&lease.run_id, Some(lease.token));
        batch.events.push(EventKind::RunPaused);
        batch
            .events
            .push(EventKind::LeaseReleased { token: lease.token });
        let _ = self.inner.store.commit(batch);
    }

    fn launch(
        &self,
        graph: Arc<Graph>,
        executor: Arc<dyn NodeExecutor>,
        lease: Lease,
        inputs: BTreeMap<String, Vec<u8>>,
        resumed: Resumed,
        until: Option<String>,
    ) -> RunHandle {
        let (control, control_rx) = watch::channel(Control::Run);
        let handle = RunHandle {
            shared: Arc::new(RunShared {
                run_id: lease.run_id.clone(),
                control,
                outcome: Mutex::new(None),
                finished: Condvar::new(),
                lease: lease.clone(),
                heartbeats: scheduler::Heartbeats::default(),
            }),
        };
        self.inner
            .active
            .lock()
            .expect("active lock")
            .insert(lease.run_id.clone(), handle.clone());
        let setup = RunSetup {
            store: self.inner.store.clone(),
            graph,
            executor,
            lease,
            lease_ttl_s: self.inner.options.lease_ttl.as_secs_f64(),
            durability: self.inner.options.durability,
            slots: self.inner.slots.clone(),
            inputs: inputs.into_iter().map(|(k, v)| (k, Arc::from(v))).collect(),
            nodes: resumed.nodes,
            marked_completed: resumed.marked_completed,
            marks_base: resumed.marks_base,
            ranked: resumed.ranked,
            until,
            control: control_rx,
            heartbeats: handle.shared.heartbeats.clone(),
        };
        let inner = Arc::downgrade(&self.inner);
        let finished = handle.clone();
        let store = self.inner.store.clone();
        runtime().spawn(async move {
            // The scheduler runs as its own task: if it panics, the outcome still says so and
            // the run leaves `active` (its lease then expires and another worker can take it).
            let (state, live_values) = match tokio::spawn(scheduler::run(setup)).await {
                Ok(end) => {
                    let run_id = finished.id().to_string();
                    let state = match end.error {
                        Some(e) => Err(e),
                        None => tokio::task::spawn_blocking(move || {
                            store.load_run(&run_id).map(|r| r.state)
                        })
                        .await
                        .unwrap_or(Err(Error::Shutdown)),
                    };
                    (state, end.live_values)
                }
                Err(e) => (
                    Err(Error::InvalidArgument {
                        field: "scheduler".into(),
                        message: format!("the run's scheduler stopped unexpectedly: {e}"),
                    }),
                    HashMap::new(),
                ),
            };
            if let Some(inner) = inner.upgrade() {
                let mut active = inner.active.lock().expect("active lock");
                if active
                    .get(finished.id())
                    .is_some_and(|h| Arc::ptr_eq(&h.shared, &finished.shared))
                {
                    active.remove(finished.id());
                }
            }
            let shared = &finished.shared;
            *shared.outcome.lock().expect("outcome lock") = Some(RunOutcome { state, live_values });
            shared.finished.notify_all();
        });
        handle
    }

    /// The run's latest committed state.
    pub fn get_current_state(&self, run_id: &str) -> Result<RunState> {
        Ok(self.inner.store.load_run(run_id)?.state)
    }

    /// Encoded outputs of the run's completed nodes.
    pub fn get_partial_results(&self, run_id: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let state = self.get_current_state(run_id)?;
        let mut out = BTreeMap::new();
        for id in state.completed() {
            if let Some(value) = state.nodes[&id].output.as_ref() {
                out.insert(id.clone(), self.inner.store.load_value(value)?);
            }
        }
        Ok(out)
    }

    /// Loads one stored value.
    pub fn load_value(&self, value: &crate::state::ValueRef) -> Result<Vec<u8>> {
        self.inner.store.load_value(value)
    }

    /// Loads one stored value into `buf` (exactly `value.size` long).
    pub fn load_value_into(&self, value: &crate::state::ValueRef, buf: &mut [u8]) -> Result<()> {
        self.inner.store.load_value_into(value, buf)
    }

    fn require_node_of_run(&self, run_id: &str, node_id: &str) -> Result<()> {
        match self.inner.store.load_run(run_id)?.graph {
            Some(graph) => Ok(graph.require_node(node_id, "node_id").map(|_| ())?),
            None => Ok(()),
        }
    }

    /// Saves a node's progress from outside the node (an operator write, not fenced).
    pub fn save_partial_state(&self, run_id: &str, node_id: &str, state: Vec<u8>) -> Result<()> {
        self.require_node_of_run(run_id, node_id)?;
        let mut batch = crate::store::RunBatch::new(run_id, None);
        batch.events.push(EventKind::PartialStateSaved {
            node: node_id.to_string(),
            size: state.len() as u64,
            attempt: None,
        });
        batch.partial_states.push((node_id.to_string(), state));
        self.inner.store.commit(batch)
    }

    /// As [`Engine::save_partial_state`], for a state given as parts whose concatenation is
    /// its encoding: a large one goes to a blob file without being joined.
    pub fn save_partial_state_parts(
        &self,
        run_id: &str,
        node_id: &str,
        parts: &[&[u8]],
    ) -> Result<()> {
        self.require_node_of_run(run_id, node_id)?;
        let batch = crate::executor::partial_state_batch(
            self.inner.store.as_ref(),
            run_id,
            None,
            node_id,
            None,
            parts,
        )?;
        self.inner.store.commit(batch)
    }

    /// A node's saved progress, if any.
    pub fn get_partial_state(&self, run_id: &str, node_id: &str) -> Result<Option<Vec<u8>>> {
        self.require_node_of_run(run_id, node_id)?;
        self.inner.store.load_partial_state(run_id, node_id)
    }

    /// Where a node's saved progress is: its bytes, or the blob file that holds them (read
    /// it with [`Engine::read_partial_file_into`] into a buffer of the caller's, no copy).
    pub fn partial_state_ref(
        &self,
        run_id: &str,
        node_id: &str,
    ) -> Result<Option<crate::store::PartialState>> {
        self.require_node_of_run(run_id, node_id)?;
        self.inner.store.partial_state_ref(run_id, node_id)
    }

    /// Reads a partial state's blob file into `buf` (exactly `file.size` long), checked
    /// against its hash.
    pub fn read_partial_file_into(
        &self,
        file: &crate::state::ValueRef,
        buf: &mut [u8],
    ) -> Result<()> {
        self.inner.store.read_partial_file_into(file, buf)
    }

    /// Checkpoints of the run, newest first.
    pub fn history(&self, run_id: &str) -> Result<Vec<Checkpoint>> {
        self.inner.store.history(run_id)
    }

    /// The run's event log, oldest first.
    pub fn events(&self, run_id: &str) -> Result<Vec<Event>> {
        self.inner.store.events(run_id)
    }

    /// Deletes old checkpoints (never a run's newest); returns how many.
    pub fn cleanup(
        &self,
        run_id: Option<&str>,
        keep_last: usize,
        older_than: Option<f64>,
    ) -> Result<usize> {
        self.inner.store.cleanup(CleanupRequest {
            run_id: run_id.map(str::to_string),
            keep_last,
            older_than,
        })
    }

    /// Runs in the store, optionally only those with `status`.
    pub fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunState>> {
        Ok(self
            .inner
            .store
            .list_runs(status)?
            .into_iter()
            .map(|r| r.state)
            .collect())
    }

    /// Resumes every run left `running` whose lease expired or whose owner process on this
    /// host is gone, for the workflows `lookup` knows (by workflow name). Runs another live
    /// worker holds are skipped.
    pub fn recover(
        &self,
        lookup: impl Fn(&str) -> Option<(Arc<Graph>, Arc<dyn NodeExecutor>)>,
    ) -> Result<Vec<RunHandle>> {
        let mut handles = Vec::new();
        for run in self.inner.store.list_runs(Some(RunStatus::Running))? {
            let Some((graph, executor)) = lookup(&run.state.workflow) else {
                continue;
            };
            let stale = run.lease_owner.as_deref().is_none_or(|owner| {
                owner != self.inner.owner
                    && (run.lease_expires <= now() || crate::lease::owner_is_dead(owner))
            });
            if !stale {
                continue;
            }
            let options = ResumeOptions {
                only_crashed: true,
                ..ResumeOptions::default()
            };
            match self.resume(&run.state.run_id, graph, executor, options) {
                Ok(h) => handles.push(h),
                // Another worker got there first (and may have finished it already).
                Err(Error::RunLocked { .. } | Error::RunNotResumable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(handles)
    }

    /// Checks the store file (`PRAGMA integrity_check`): `ok`, or the problems found.
    ///
    /// Use this rather than opening the file with another SQLite library in the same
    /// process: two SQLite copies in one process release each other's POSIX locks.
    pub fn check_integrity(&self) -> Result<String> {
        self.inner.store.integrity_check()
    }

    /// Handles of the runs this engine is executing now.
    pub fn active_runs(&self) -> Vec<RunHandle> {
        self.inner
            .active
            .lock()
            .expect("active lock")
            .values()
            .cloned()
            .collect()
    }

    /// Interrupts active runs, waits for them to pause, and closes the store.
    pub fn close(&self) {
        let active = self.active_runs();
        for handle in &active {
            handle.interrupt();
        }
        for handle in &active {
            handle.wait(None);
        }
        self.inner.store.close();
    }
}

/// What a run starts from: the node states read (all of them, or the frontier's after a
/// resume from completed marks) and the marks' part (see `RunSetup`).
struct Resumed {
    nodes: BTreeMap<String, crate::state::NodeState>,
    marked_completed: Option<Vec<bool>>,
    marks_base: Option<crate::completed_marks::CompletedMarks>,
    /// The graph is the stored run's structure (see `RunSetup::ranked`).
    ranked: bool,
}

/// Holds a run id in `EngineInner::resuming` while a resume prepares and launches it.
struct Reservation<'a> {
    engine: &'a EngineInner,
    run_id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.engine
            .resuming
            .lock()
            .expect("resuming lock")
            .remove(&self.run_id);
    }
}

/// Hands a control request to a run this engine executes.
fn apply_control(handle: &RunHandle, request: crate::control::ControlRequest) {
    match request {
        crate::control::ControlRequest::Interrupt => handle.interrupt(),
        crate::control::ControlRequest::Cancel => handle.cancel(),
    }
}

/// How often the lease keeper looks for control requests from other processes.
const CONTROL_CHECK: Duration = Duration::from_millis(250);

/// Renews the leases of active runs every third of the lease time (telling a run's
/// scheduler to stop if its lease was lost), and applies control requests recorded for
/// them by other processes every [`CONTROL_CHECK`].
fn spawn_lease_keeper(inner: Weak<EngineInner>) {
    let period = inner
        .upgrade()
        .map_or(Duration::from_secs(10), |i| i.options.lease_ttl / 3)
        .max(Duration::from_millis(50));
    runtime().spawn(async move {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period.min(CONTROL_CHECK)).await;
            let Some(engine) = inner.upgrade() else {
                return;
            };
            let handles: Vec<RunHandle> = engine
                .active
                .lock()
                .expect("active lock")
                .values()
                .cloned()
                .collect();
            if handles.is_empty() {
                continue;
            }
            let ids: Vec<String> = handles.iter().map(|h| h.id().to_string()).collect();
            let store = engine.store.clone();
            if let Ok(Ok(requests)) =
                tokio::task::spawn_blocking(move || store.pending_controls(&ids)).await
            {
                for (run_id, request) in requests {
                    if let Some(h) = handles.iter().find(|h| h.id() == run_id) {
                        apply_control(h, request);
                    }
                }
            }
            if last_renewal.elapsed() < period {
                continue;
            }
            last_renewal = tokio::time::Instant::now();
            // A run with a node that stopped heart-beating is left to expire, so that another
            // worker can recover it (this one may be hung).
            let leases: Vec<Lease> = handles
                .iter()
                .filter(|h| !scheduler::has_stale_heartbeat(&h.shared.heartbeats))
                .map(|h| h.shared.lease.clone())
                .collect();
            let store = engine.store.clone();
            let ttl = engine.options.lease_ttl.as_secs_f64();
            drop(engine);
            let Ok(Ok(lost)) =
                tokio::task::spawn_blocking(move || store.renew_leases(leases, ttl)).await
            else {
                continue;
            };
            for lease in lost {
                if let Some(h) = handles.iter().find(|h| h.shared.lease == lease) {
                    h.shared.control.send_replace(Control::LeaseLost);
                }
            }
        }
    });
}
