//! Property tests: random DAGs, random interruption points, the same result and
//! exactly-once execution.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use resumeflow_core::{Graph, NodeSpec, ResumeOptions, RunStatus, StartOptions};

/// A random DAG: node i may read from any earlier node (edges chosen by `mask`).
fn dag(n: usize, edges: &[bool]) -> Arc<Graph> {
    let mut nodes = Vec::new();
    let mut k = 0;
    for i in 0..n {
        let mut node = NodeSpec::new(format!("v{i}")).run_input("seed", true);
        for j in 0..i {
            if edges[k % edges.len()] {
                node = node.after(format!("p{j}"), format!("v{j}"));
            }
            k += 1;
        }
        nodes.push(node);
    }
    // Declared in reverse so the graph has to sort them.
    nodes.reverse();
    Arc::new(Graph::new("random", nodes).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn interrupted_runs_match_uninterrupted_ones(
        n in 2usize..9,
        edges in proptest::collection::vec(any::<bool>(), 1..40),
        stops in proptest::collection::vec(0usize..9, 1..4),
    ) {
        let graph = dag(n, &edges);
        let store = TempStore::new();
        let engine = store.engine();
        let reference = Counter::new();
        let done = finish(&engine.start(graph.clone(), reference.executor(), seed(1), StartOptions {
            run_id: Some("ref".into()),
            ..Default::default()
        }).unwrap());
        prop_assert_eq!(done.status, RunStatus::Completed);
        let expected = values(&engine, "ref");

        let counter = Counter::new();
        let ids: Vec<String> = graph.node_ids().into_iter().map(str::to_string).collect();
        let mut first = true;
        for stop in &stops {
            let until = &ids[stop % n];
            let handle = if first {
                first = false;
                engine.execute_until(graph.clone(), counter.executor(), until, seed(1), Some("r".into())).unwrap()
            } else {
                engine.execute_until(graph.clone(), counter.executor(), until, BTreeMap::new(), Some("r".into())).unwrap()
            };
            let state = finish(&handle);
            prop_assert_eq!(state.status, RunStatus::Paused);
            prop_assert!(state.completed().contains(until));
        }
        let state = finish(&engine.resume("r", graph.clone(), counter.executor(), ResumeOptions::default()).unwrap());
        prop_assert_eq!(state.status, RunStatus::Completed);
        prop_assert_eq!(values(&engine, "r"), expected);
        for id in &ids {
            prop_assert_eq!(counter.count(id), 1, "node {} ran once", id);
        }
        assert_replay_matches(&engine, "r");
        // One checkpoint per committed step: nodes that completed together share one.
        let history = engine.history("r").unwrap();
        prop_assert!(!history.is_empty() && history.len() <= n);
        prop_assert_eq!(&history[0].completed, &ids);
    }
}
