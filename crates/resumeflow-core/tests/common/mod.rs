//! Test helpers: graphs, a counting executor with scripted failures, value helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resumeflow_core::{
    Engine, EngineOptions, Graph, NodeExecutor, NodeFailure, NodeFuture, NodeOutput, NodeSpec,
    NodeTask, RetryPolicy, RunState,
};

/// What a node does on a given attempt.
#[derive(Clone, Debug)]
pub enum Script {
    /// Fail retryably this many times (per executor), then succeed.
    FailRetryable(u32),
    /// Always fail, not retryable.
    FailFatal,
    /// Sleep, then succeed.
    Sleep(Duration),
}

/// Counts executions per node; a node's output is `1 + sum(inputs)` as decimal text.
#[derive(Default)]
pub struct Counter {
    pub counts: Mutex<HashMap<String, u32>>,
    pub scripts: Mutex<HashMap<String, Script>>,
    pub failures_left: Mutex<HashMap<String, u32>>,
    pub attempts_seen: Mutex<Vec<(String, u32)>>,
}

pub fn encode(v: i64) -> Vec<u8> {
    v.to_string().into_bytes()
}

pub fn decode(b: &[u8]) -> i64 {
    std::str::from_utf8(b).unwrap().parse().unwrap()
}

impl Counter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn script(&self, node: &str, script: Script) {
        if let Script::FailRetryable(n) = &script {
            self.failures_left
                .lock()
                .unwrap()
                .insert(node.to_string(), *n);
        }
        self.scripts
            .lock()
            .unwrap()
            .insert(node.to_string(), script);
    }

    pub fn clear_script(&self, node: &str) {
        self.scripts.lock().unwrap().remove(node);
    }

    pub fn count(&self, node: &str) -> u32 {
        self.counts.lock().unwrap().get(node).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.counts.lock().unwrap().values().sum()
    }

    fn run(&self, task: &NodeTask) -> Result<NodeOutput, NodeFailure> {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(task.node_id.clone())
            .or_default() += 1;
        self.attempts_seen
            .lock()
            .unwrap()
            .push((task.node_id.clone(), task.attempt));
        let script = self.scripts.lock().unwrap().get(&task.node_id).cloned();
        match script {
            Some(Script::FailRetryable(_)) => {
                let mut left = self.failures_left.lock().unwrap();
                let n = left.entry(task.node_id.clone()).or_default();
                if *n > 0 {
                    *n -= 1;
                    return Err(NodeFailure::retryable(format!(
                        "ConnectionError: flaky {}",
                        task.node_id
                    )));
                }
            }
            Some(Script::FailFatal) => {
                return Err(NodeFailure::fatal(format!(
                    "ValueError: bad input in {}",
                    task.node_id
                )))
            }
            Some(Script::Sleep(d)) => std::thread::sleep(d),
            None => {}
        }
        let sum: i64 = task
            .inputs
            .iter()
            .map(|(_, v)| decode(v.bytes().expect("bytes")))
            .sum();
        Ok(NodeOutput::bytes(encode(1 + sum)))
    }

    pub fn executor(self: &Arc<Self>) -> Arc<dyn NodeExecutor> {
        let me = self.clone();
        Arc::new(move |task: NodeTask| -> NodeFuture {
            let me = me.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || me.run(&task))
                    .await
                    .unwrap()
            })
        })
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

/// `n0 -> n1 -> ... -> n{k-1}`; n0 reads run input `seed`.
pub fn chain(k: usize) -> Arc<Graph> {
    let names: Vec<String> = (0..k).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    named_chain(&refs)
}

pub fn named_chain(names: &[&str]) -> Arc<Graph> {
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut node = NodeSpec::new(*name).with_retry(fast_retry());
        node = if i == 0 {
            node.run_input("seed", true)
        } else {
            node.after(names[i - 1], names[i - 1])
        };
        nodes.push(node);
    }
    Arc::new(Graph::new("chain", nodes).unwrap())
}

pub fn seed(v: i64) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("seed".to_string(), encode(v))])
}

/// A fresh store for one test: a SQLite file, or — with `RESUMEFLOW_TEST_PG_URL` set — a
/// fresh schema in that PostgreSQL database, so the same tests run on both stores.
pub struct TempStore {
    pub dir: tempfile::TempDir,
    target: String,
}

impl TempStore {
    /// The store the environment asks for (SQLite unless `RESUMEFLOW_TEST_PG_URL` is set).
    pub fn new() -> Self {
        match std::env::var("RESUMEFLOW_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => Self::postgres(&url),
            _ => Self::sqlite(),
        }
    }

    /// Always a SQLite file (tests of the file itself).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("runs.db").display().to_string();
        Self { dir, target }
    }

    fn postgres(url: &str) -> Self {
        let sep = if url.contains('?') { '&' } else { '?' };
        let schema = format!("t_{:016x}", fastrand::u64(..));
        Self {
            dir: tempfile::tempdir().unwrap(),
            target: format!("{url}{sep}schema={schema}"),
        }
    }

    /// True for a PostgreSQL store.
    pub fn is_postgres(&self) -> bool {
        self.target.starts_with("postgres")
    }

    /// The SQLite file's path (only for a SQLite store).
    pub fn path(&self) -> PathBuf {
        assert!(!self.is_postgres(), "path() of a PostgreSQL store");
        PathBuf::from(&self.target)
    }

    /// What `Engine::open_target` opens.
    pub fn target(&self) -> String {
        self.target.clone()
    }

    pub fn engine(&self) -> Engine {
        self.engine_with(EngineOptions::default())
    }

    pub fn engine_with(&self, options: EngineOptions) -> Engine {
        Engine::open_target(&self.target, options).unwrap()
    }

    /// The bare store (no engine), for trait-level tests.
    pub fn raw(&self) -> Arc<dyn resumeflow_core::Store> {
        if self.is_postgres() {
            Arc::new(resumeflow_core::PgStore::open(&self.target, &Default::default()).unwrap())
        } else {
            Arc::new(
                resumeflow_core::SqliteStore::open(self.path(), resumeflow_core::Durability::Sync)
                    .unwrap(),
            )
        }
    }
}

pub fn finish(handle: &resumeflow_core::RunHandle) -> RunState {
    handle
        .wait(Some(Duration::from_secs(60)))
        .expect("run finished in time")
        .state
        .expect("scheduler ended cleanly")
}

/// Decoded outputs of completed nodes.
pub fn values(engine: &Engine, run_id: &str) -> BTreeMap<String, i64> {
    engine
        .get_partial_results(run_id)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, decode(&v)))
        .collect()
}

/// Asserts that folding the run's events reproduces the stored projection.
pub fn assert_replay_matches(engine: &Engine, run_id: &str) {
    let events = engine.events(run_id).unwrap();
    let replayed = resumeflow_core::RunProjection::replay(&events);
    let state = engine.get_current_state(run_id).unwrap();
    assert_eq!(replayed.status, state.status, "status");
    assert_eq!(
        replayed.head_checkpoint, state.checkpoint_id,
        "head checkpoint"
    );
    assert_eq!(replayed.error, state.error, "error");
    assert_eq!(replayed.nodes, state.nodes, "node states");
}

/// Runs `chain(k)` as `run_id` until its first node, leaving the run paused.
pub fn paused_chain(engine: &Engine, counter: &Arc<Counter>, k: usize, run_id: &str) -> RunState {
    finish(
        &engine
            .execute_until(
                chain(k),
                counter.executor(),
                "n0",
                seed(0),
                Some(run_id.to_string()),
            )
            .unwrap(),
    )
}
