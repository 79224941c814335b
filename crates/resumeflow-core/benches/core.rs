//! Core benchmarks (no criterion: each figure is a median of rounds, printed with ratios
//! measured in the same run). `cargo bench -p resumeflow-core --bench core [-- --quick]`
//! (`-- --w3-only N`: only W3 at N events, 20 resumes, for a profiler)
//!
//! - W1: a durable chain of no-op nodes (`sync`, `batched`): engine time per node, against the
//!   storage floor measured here — one committed rusqlite insert per node, WAL, same pragmas.
//! - W3: resume latency — from `resume()` to the next node starting, for runs with 1k, 10k and
//!   100k events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resumeflow_core::{
    Durability, Engine, EngineOptions, Graph, NodeExecutor, NodeFuture, NodeOutput, NodeSpec,
    NodeTask, ResumeOptions, RetryPolicy, StartOptions,
};

fn chain(k: usize) -> Arc<Graph> {
    let nodes = (0..k)
        .map(|i| {
            let node = NodeSpec::new(format!("n{i}")).with_retry(RetryPolicy::no_retry());
            if i == 0 {
                node
            } else {
                node.after("prev", format!("n{}", i - 1))
            }
        })
        .collect();
    Arc::new(Graph::new("bench", nodes).unwrap())
}

/// A no-op executor that returns at once (no thread hop): engine overhead only.
fn noop() -> Arc<dyn NodeExecutor> {
    Arc::new(|_task: NodeTask| -> NodeFuture {
        Box::pin(async { Ok(NodeOutput::bytes(vec![0xc0])) })
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn w1_engine(k: usize, durability: Durability) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path().join("w1.db"),
        EngineOptions {
            durability,
            ..Default::default()
        },
    )
    .unwrap();
    let graph = chain(k);
    let t0 = Instant::now();
    let run = engine
        .start(graph, noop(), BTreeMap::new(), StartOptions::default())
        .unwrap();
    let outcome = run.wait(None).unwrap();
    let elapsed = t0.elapsed().as_secs_f64();
    assert_eq!(outcome.state.unwrap().status.as_str(), "completed");
    engine.close();
    elapsed / k as f64 * 1e6
}

fn w1_floor(k: usize, synchronous: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("floor.db")).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);"
    ))
    .unwrap();
    let t0 = Instant::now();
    for i in 0..k {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.prepare_cached("INSERT INTO t (id, v) VALUES (?1, ?2)")
            .unwrap()
            .execute((i as i64, &[0xc0u8][..]))
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }
    t0.elapsed().as_secs_f64() / k as f64 * 1e6
}

/// Resume latency: a chain paused after `done` nodes; time from `resume()` to the next start.
fn w3_resume(events_target: usize) -> (usize, f64) {
    // The paused run is written with durability `off` (one batch, one checkpoint), so each
    // completed node has two events: NodeStarted and NodeCompleted.
    let done = events_target / 2;
    let k = done + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w3.db");
    let graph = chain(k);
    let until = format!("n{}", done - 1);
    {
        let engine = Engine::open(
            &path,
            EngineOptions {
                durability: Durability::Off,
                ..Default::default()
            },
        )
        .unwrap();
        let run = engine
            .execute_until(
                graph.clone(),
                noop(),
                &until,
                BTreeMap::new(),
                Some("w3".into()),
            )
            .unwrap();
        run.wait(None).unwrap().state.unwrap();
        engine.close();
    }
    let engine = Engine::open(&path, EngineOptions::default()).unwrap();
    let events = engine.events("w3").unwrap().len();
    let started: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mark = started.clone();
    let exec: Arc<dyn NodeExecutor> = Arc::new(move |_t: NodeTask| -> NodeFuture {
        mark.lock().unwrap().get_or_insert_with(Instant::now);
        Box::pin(async { Ok(NodeOutput::bytes(vec![0xc0])) })
    });
    let t0 = Instant::now();
    let run = engine
        .resume("w3", graph, exec, ResumeOptions::default())
        .unwrap();
    run.wait(Some(Duration::from_secs(600)))
        .unwrap()
        .state
        .unwrap();
    let first = started.lock().unwrap().expect("the last node ran");
    engine.close();
    (events, (first - t0).as_secs_f64() * 1e3)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 7 };
    if let Some(n) = std::env::args()
        .skip_while(|a| a != "--w3-only")
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
    {
        // For profiling a resume (`perf record cargo bench ... -- --w3-only 10000`).
        let lat: Vec<f64> = (0..20).map(|_| w3_resume(n).1).collect();
        println!(
            "W3 {n} events, 20 resumes (ms): {lat:.2?}; median {:.2}",
            median(lat.clone())
        );
        return;
    }
    let k = 1000;
    println!(
        "machine: {} cores; rounds: {rounds} (median)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let mut sync_engine = Vec::new();
    let mut batched_engine = Vec::new();
    let mut floor_full = Vec::new();
    let mut floor_normal = Vec::new();
    for _ in 0..rounds {
        // Interleaved so that machine noise hits every figure alike.
        sync_engine.push(w1_engine(k, Durability::Sync));
        floor_full.push(w1_floor(k, "FULL"));
        batched_engine.push(w1_engine(k, Durability::Batched));
        floor_normal.push(w1_floor(k, "NORMAL"));
    }
    let (se, ff, be, fnm) = (
        median(sync_engine),
        median(floor_full),
        median(batched_engine),
        median(floor_normal),
    );
    println!("W1 chain of {k} no-op nodes (µs per node):");
    println!(
        "  engine sync      {se:8.1}   floor synchronous=FULL   {ff:8.1}   ratio {:.2}x",
        se / ff
    );
    println!(
        "  engine batched   {be:8.1}   floor synchronous=NORMAL {fnm:8.1}   ratio {:.2}x",
        be / fnm
    );
    println!("W3 resume latency (resume() -> next node starts):");
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    for &n in sizes {
        let lat = median(
            (0..if n >= 100_000 { 1 } else { rounds })
                .map(|_| w3_resume(n).1)
                .collect(),
        );
        let events = w3_resume(n).0;
        println!("  {events:>7} events: {lat:8.2} ms");
    }
}
