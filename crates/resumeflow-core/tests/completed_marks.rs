//! Completed marks (`crate::completed_marks`): while a run's marks are valid they are exactly
//! its completed nodes, through every way a run moves (pause, fail, retry, resume, rerun,
//! updates, rewind, each durability mode), and a resume from them reads only the frontier's
//! rows yet runs exactly the nodes that had not completed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use resumeflow_core::{
    Durability, EngineOptions, Graph, NodeSpec, NodeStatus, ResumeOptions, RunStatus, StartOptions,
    Store,
};

use common::*;

/// Asserts the run's marks (if valid) are exactly its completed nodes; returns whether valid.
fn marks_exact(store: &dyn Store, graph: &Graph, run_id: &str) -> bool {
    let state = store.load_run(run_id).unwrap().state;
    let Some((_, marks)) = store.load_run_marked(run_id).unwrap() else {
        return false;
    };
    let mut completed = 0;
    for (i, node) in graph.nodes().iter().enumerate() {
        let done = state
            .nodes
            .get(&node.id)
            .is_some_and(|n| n.status == NodeStatus::Completed);
        completed += usize::from(done);
        assert_eq!(
            marks.contains(graph.canonical_rank(i)),
            done,
            "run {run_id}: the mark of {} disagrees with its row",
            node.id
        );
    }
    assert_eq!(
        marks.len(),
        completed,
        "run {run_id}: marks outside the graph"
    );
    true
}

/// a -> (b, c) -> d -> e
fn diamond() -> Arc<Graph> {
    let retry = fast_retry();
    Arc::new(
        Graph::new(
            "diamond",
            vec![
                NodeSpec::new("a")
                    .run_input("seed", true)
                    .with_retry(retry.clone()),
                NodeSpec::new("b").after("a", "a").with_retry(retry.clone()),
                NodeSpec::new("c").after("a", "a").with_retry(retry.clone()),
                NodeSpec::new("d")
                    .after("b", "b")
                    .after("c", "c")
                    .with_retry(retry.clone()),
                NodeSpec::new("e").after("d", "d").with_retry(retry),
            ],
        )
        .unwrap(),
    )
}

#[test]
fn marks_stay_exact_through_pause_failure_resume_rerun_update_and_rewind() {
    for durability in [Durability::Sync, Durability::Batched, Durability::Off] {
        let dir = TempStore::sqlite();
        let engine = dir.engine_with(EngineOptions {
            durability,
            ..EngineOptions::default()
        });
        let store = engine.store().clone();
        let counter = Counter::new();
        let graph = diamond();
        let paused = finish(
            &engine
                .execute_until(
                    graph.clone(),
                    counter.executor(),
                    "b",
                    seed(1),
                    Some("r".into()),
                )
                .unwrap(),
        );
        assert_eq!(paused.status, RunStatus::Paused);
        assert!(
            marks_exact(store.as_ref(), &graph, "r"),
            "{durability:?}: a new run keeps marks"
        );

        counter.script("d", Script::FailFatal);
        let failed = finish(
            &engine
                .resume(
                    "r",
                    graph.clone(),
                    counter.executor(),
                    ResumeOptions::default(),
                )
                .unwrap(),
        );
        assert_eq!(failed.status, RunStatus::Failed);
        assert!(marks_exact(store.as_ref(), &graph, "r"));

        counter.clear_script("d");
        let done = finish(
            &engine
                .resume(
                    "r",
                    graph.clone(),
                    counter.executor(),
                    ResumeOptions::default(),
                )
                .unwrap(),
        );
        assert_eq!(done.status, RunStatus::Completed);
        assert_eq!(done.nodes["d"].attempt, 2, "attempts keep counting");
        assert!(marks_exact(store.as_ref(), &graph, "r"));
        assert_eq!(
            ["a", "b", "c", "d", "e"].map(|n| counter.count(n)),
            [1, 1, 1, 2, 1]
        );

        // Each modification drops the marks in its lease commit; the resume, having read
        // every row, writes them back with its first batch.
        let rerun = ResumeOptions {
            rerun: vec!["c".into()],
            ..ResumeOptions::default()
        };
        finish(
            &engine
                .resume("r", graph.clone(), counter.executor(), rerun)
                .unwrap(),
        );
        assert!(
            marks_exact(store.as_ref(), &graph, "r"),
            "{durability:?}: rebuilt after rerun"
        );
        let update = ResumeOptions {
            updates: BTreeMap::from([("b".to_string(), encode(40))]),
            ..ResumeOptions::default()
        };
        finish(
            &engine
                .resume("r", graph.clone(), counter.executor(), update)
                .unwrap(),
        );
        assert!(
            marks_exact(store.as_ref(), &graph, "r"),
            "rebuilt after an update"
        );
        assert_eq!(values(&engine, "r")["e"], 1 + 1 + (40 + 3));
        let first = engine.history("r").unwrap()[0].checkpoint_id;
        let rewind = ResumeOptions {
            checkpoint_id: Some(first),
            ..ResumeOptions::default()
        };
        finish(
            &engine
                .resume("r", graph.clone(), counter.executor(), rewind)
                .unwrap(),
        );
        assert!(
            marks_exact(store.as_ref(), &graph, "r"),
            "rebuilt after a rewind"
        );
        assert_replay_matches(&engine, "r");
    }
}

#[test]
fn a_resume_from_marks_reads_only_the_frontier_rows() {
    let dir = TempStore::sqlite();
    let engine = dir.engine();
    let counter = Counter::new();
    let graph = chain(200);
    counter.script("n150", Script::FailFatal);
    let failed = finish(
        &engine
            .start(
                graph.clone(),
                counter.executor(),
                seed(0),
                StartOptions {
                    run_id: Some("long".into()),
                    ..StartOptions::default()
                },
            )
            .unwrap(),
    );
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(marks_exact(engine.store().as_ref(), &graph, "long"));
    // A probe: remove the row of a completed node far behind the frontier. A resume that
    // read every row would take n10 for never started and run it (and all after it) again.
    let conn = rusqlite::Connection::open(dir.path()).unwrap();
    conn.execute(
        "DELETE FROM node_states WHERE run_id = 'long' AND node_id = 'n10'",
        [],
    )
    .unwrap();
    drop(conn);
    counter.clear_script("n150");
    let done = finish(
        &engine
            .resume(
                "long",
                graph.clone(),
                counter.executor(),
                ResumeOptions::default(),
            )
            .unwrap(),
    );
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(
        counter.count("n10"),
        1,
        "the resume read n10's row: not a frontier resume"
    );
    assert_eq!(counter.count("n150"), 2);
    assert_eq!(counter.total(), 201, "every node once, n150 twice");
    assert_eq!(done.nodes["n150"].attempt, 2);
    assert_eq!(values(&engine, "long")["n199"], 200);
}

#[test]
fn a_run_without_valid_marks_resumes_from_every_row_and_gets_them_back() {
    let dir = TempStore::sqlite();
    let counter = Counter::new();
    let graph = chain(6);
    {
        let engine = dir.engine();
        paused_chain(&engine, &counter, 6, "old");
    }
    // As a run written before schema version 8 (or one whose marks were dropped) looks.
    let conn = rusqlite::Connection::open(dir.path()).unwrap();
    conn.execute_batch(
        "UPDATE runs SET marks_valid = 0 WHERE run_id = 'old';
         DELETE FROM run_marks WHERE run_id = 'old';",
    )
    .unwrap();
    drop(conn);
    let engine = dir.engine();
    assert!(engine.store().load_run_marked("old").unwrap().is_none());
    let done = finish(
        &engine
            .resume(
                "old",
                graph.clone(),
                counter.executor(),
                ResumeOptions::default(),
            )
            .unwrap(),
    );
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(counter.total(), 6, "n0 once before, the other five now");
    assert!(
        marks_exact(engine.store().as_ref(), &graph, "old"),
        "valid again"
    );
}

#[test]
fn marks_follow_node_ids_not_the_order_nodes_were_declared_in() {
    let dir = TempStore::sqlite();
    let engine = dir.engine();
    let counter = Counter::new();
    let fan = |order: &[&str]| {
        let nodes = order
            .iter()
            .map(|&id| match id {
                "root" => NodeSpec::new("root").run_input("seed", true),
                leaf => NodeSpec::new(leaf).after("root", "root"),
            })
            .collect();
        Arc::new(Graph::new("fan", nodes).unwrap())
    };
    let first = fan(&["root", "x", "y", "z"]);
    finish(
        &engine
            .execute_until(
                first.clone(),
                counter.executor(),
                "x",
                seed(5),
                Some("f".into()),
            )
            .unwrap(),
    );
    let second = fan(&["root", "z", "y", "x"]);
    assert_eq!(first.structural_hash(), second.structural_hash());
    assert_ne!(first.position("x"), second.position("x"));
    let done = finish(
        &engine
            .resume(
                "f",
                second.clone(),
                counter.executor(),
                ResumeOptions::default(),
            )
            .unwrap(),
    );
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(
        ["root", "x", "y", "z"].map(|n| counter.count(n)),
        [1, 1, 1, 1],
        "x is not run again, y and z run once"
    );
    assert!(marks_exact(engine.store().as_ref(), &second, "f"));
}

#[test]
fn a_resume_with_another_structure_drops_the_marks_instead_of_mixing_ranks() {
    let dir = TempStore::sqlite();
    let engine = dir.engine();
    let counter = Counter::new();
    let stored = named_chain(&["a", "b", "c"]);
    finish(
        &engine
            .execute_until(
                stored.clone(),
                counter.executor(),
                "a",
                seed(1),
                Some("m".into()),
            )
            .unwrap(),
    );
    assert!(marks_exact(engine.store().as_ref(), &stored, "m"));
    // Another structure (a new node sorts first, so every rank moves): its completions carry
    // no ranks, and the first of them drops the marks.
    let other = named_chain(&["a", "b", "c", "aa"]);
    let options = ResumeOptions {
        allow_mismatch: true,
        ..ResumeOptions::default()
    };
    let done = finish(
        &engine
            .resume("m", other, counter.executor(), options)
            .unwrap(),
    );
    assert_eq!(done.status, RunStatus::Completed);
    assert!(engine.store().load_run_marked("m").unwrap().is_none());
    // The next resume reads every row; with the stored structure it writes them back.
    let rerun = ResumeOptions {
        rerun: vec!["c".into()],
        ..ResumeOptions::default()
    };
    finish(
        &engine
            .resume("m", stored.clone(), counter.executor(), rerun)
            .unwrap(),
    );
    assert!(marks_exact(engine.store().as_ref(), &stored, "m"));
}
