//! The nine resumption scenarios (`cargo test workflow_resumption`).

mod common;

mod workflow_resumption {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use resumeflow_core::{
        Engine, Error, Graph, NodeSpec, NodeStatus, ResumeOptions, RunStatus, StartOptions,
    };

    use super::common::*;

    #[test]
    fn test_basic_resumption() {
        let store = TempStore::new();
        let engine = store.engine();
        let counter = Counter::new();
        let graph = named_chain(&["a", "b", "c"]);
        let run = engine
            .execute_until(
                graph.clone(),
                counter.executor(),
                "b",
                seed(1),
                Some("r1".into()),
            )
            .unwrap();
        let state = finish(&run);
        assert_eq!(state.status, RunStatus::Paused);
        assert_eq!(state.completed(), vec!["a", "b"]);
        assert_eq!(state.pending(), vec!["c"]);
        assert_eq!(
            values(&engine, "r1"),
            BTreeMap::from([("a".into(), 2), ("b".into(), 3)])
        );
        assert_eq!(
            (counter.count("a"), counter.count("b"), counter.count("c")),
            (1, 1, 0)
        );

        let state = finish(
            &engine
                .resume("r1", graph, counter.executor(), ResumeOptions::default())
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Completed);
        assert_eq!(values(&engine, "r1")["c"], 4);
        assert_eq!(
            (counter.count("a"), counter.count("b"), counter.count("c")),
            (1, 1, 1)
        );
        assert_replay_matches(&engine, "r1");
    }

    #[test]
    fn test_checkpointer_integration() {
        let store = TempStore::new();
        let counter = Counter::new();
        let graph = named_chain(&["a", "b", "c"]);
        let before = {
            let engine = store.engine();
            finish(
                &engine
                    .execute_until(
                        graph.clone(),
                        counter.executor(),
                        "b",
                        seed(5),
                        Some("r".into()),
                    )
                    .unwrap(),
            );
            let state = engine.get_current_state("r").unwrap();
            engine.close();
            state
        };
        let engine = store.engine();
        let after = engine.get_current_state("r").unwrap();
        assert_eq!(after, before, "state survives closing and reopening");
        let latest = engine.history("r").unwrap()[0].clone();
        assert_eq!(
            Some(latest.checkpoint_id),
            after.checkpoint_id,
            "latest checkpoint found by id"
        );
        assert_eq!(latest.completed, vec!["a", "b"]);
        let done = finish(
            &engine
                .resume("r", graph, counter.executor(), ResumeOptions::default())
                .unwrap(),
        );
        assert_eq!(done.status, RunStatus::Completed);
        assert_eq!(values(&engine, "r")["c"], 8);
        assert_eq!(counter.total(), 3);
    }

    #[test]
    fn test_partial_results() {
        let store = TempStore::new();
        let engine = store.engine();
        let counter = Counter::new();
        counter.script("b", Script::FailFatal);
        let graph = Arc::new(
            Graph::new(
                "mixed",
                vec![
                    NodeSpec::new("a").run_input("seed", true),
                    NodeSpec::new("b").after("a", "a").with_retry(fast_retry()),
                    NodeSpec::new("c").after("b", "b"),
                    NodeSpec::new("d").after("a", "a"),
                ],
            )
            .unwrap(),
        );
        let state = finish(
            &engine
                .start(graph, counter.executor(), seed(0), StartOptions::default())
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Failed);
        let results = values(&engine, &state.run_id);
        assert_eq!(results, BTreeMap::from([("a".into(), 1), ("d".into(), 2)]));
        let b = &state.nodes["b"];
        assert_eq!(b.status, NodeStatus::Failed);
        assert!(b
            .error
            .as_deref()
            .unwrap()
            .contains("ValueError: bad input in b"));
        assert_eq!(b.output, None);
        assert_eq!(b.attempt, 1, "non-retryable fails on the first attempt");
        assert_eq!(b.retryable, Some(false));
        assert_eq!(state.nodes["c"].status, NodeStatus::Pending);
        assert_eq!(counter.count("c"), 0);
        assert!(state.error.as_deref().unwrap().contains("\"b\""));
        assert_replay_matches(&engine, &state.run_id);
    }

    #[test]
    fn test_resumption_cleanup() {
        let store = TempStore::new();
        let engine = store.engine();
        let counter = Counter::new();
        let graph = named_chain(&["a", "b", "c", "d"]);
        finish(
            &engine
                .start(
                    graph.clone(),
                    counter.executor(),
                    seed(0),
                    StartOptions {
                        run_id: Some("r".into()),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        assert_eq!(engine.history("r").unwrap().len(), 4);
        let before = engine.get_current_state("r").unwrap();
        let values_before = values(&engine, "r");
        assert!(matches!(
            engine.cleanup(Some("r"), 0, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(engine.cleanup(Some("r"), 1, None).unwrap(), 3);
        let history = engine.history("r").unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            history[0].completed,
            vec!["a", "b", "c", "d"],
            "the kept one holds the folded state"
        );
        assert_eq!(engine.get_current_state("r").unwrap(), before);
        assert_eq!(values(&engine, "r"), values_before);
        assert_replay_matches(&engine, "r");
        assert_eq!(
            engine.cleanup(Some("r"), 1, None).unwrap(),
            0,
            "nothing more to delete"
        );
        // Still resumable: re-run the last node from the kept checkpoint.
        let state = finish(
            &engine
                .resume(
                    "r",
                    graph,
                    counter.executor(),
                    ResumeOptions {
                        rerun: vec!["d".into()],
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Completed);
        assert_eq!(values(&engine, "r"), values_before);
        assert_eq!(counter.count("d"), 2);
        assert_eq!(counter.count("c"), 1);
        assert_replay_matches(&engine, "r");
    }

    #[test]
    fn test_resumption_history() {
        let store = TempStore::new();
        let engine = store.engine();
        let counter = Counter::new();
        let k = 6;
        let graph = chain(k);
        finish(
            &engine
                .execute_until(
                    graph.clone(),
                    counter.executor(),
                    "n2",
                    seed(0),
                    Some("h".into()),
                )
                .unwrap(),
        );
        let history = engine.history("h").unwrap();
        assert_eq!(history.len(), 3, "one checkpoint per completed step");
        finish(
            &engine
                .resume("h", graph, counter.executor(), ResumeOptions::default())
                .unwrap(),
        );
        let history = engine.history("h").unwrap();
        assert_eq!(history.len(), k);
        for (i, cp) in history.iter().enumerate() {
            assert_eq!(cp.completed.len(), k - i, "newest first");
            assert_eq!(cp.run_id, "h");
            match history.get(i + 1) {
                Some(older) => {
                    assert!(older.checkpoint_id < cp.checkpoint_id, "ids increase");
                    assert_eq!(cp.parent_id, Some(older.checkpoint_id), "parent links");
                }
                None => assert_eq!(cp.parent_id, None),
            }
        }
        assert_eq!(
            engine.get_current_state("h").unwrap().checkpoint_id,
            Some(history[0].checkpoint_id)
        );
    }

    #[test]
    fn test_error_recovery() {
        let store = TempStore::new();
        let engine = store.engine();
        let counter = Counter::new();
        counter.script("b", Script::FailRetryable(2));
        let graph = named_chain(&["a", "b", "c"]);
        let state = finish(
            &engine
                .start(
                    graph.clone(),
                    counter.executor(),
                    seed(0),
                    StartOptions {
                        run_id: Some("flaky".into()),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Completed);
        assert_eq!(
            state.nodes["b"].attempt, 3,
            "two retryable failures then success"
        );
        assert_eq!(state.nodes["b"].error, None);
        let started = engine
            .events("flaky")
            .unwrap()
            .iter()
            .filter(|e| matches!(&e.kind, resumeflow_core::EventKind::NodeStarted { node, .. } if node == "b"))
            .count();
        assert_eq!(started, 3, "three durable attempts");

        // A non-retryable failure fails on attempt 1; fixing the cause and resuming re-runs
        // only the failed node and its dependants.
        let counter = Counter::new();
        counter.script("b", Script::FailFatal);
        let graph = named_chain(&["a", "b", "c"]);
        let state = finish(
            &engine
                .start(
                    graph.clone(),
                    counter.executor(),
                    seed(0),
                    StartOptions {
                        run_id: Some("fatal".into()),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Failed);
        assert_eq!(state.nodes["b"].attempt, 1);
        counter.clear_script("b");
        let state = finish(
            &engine
                .resume("fatal", graph, counter.executor(), ResumeOptions::default())
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Completed);
        assert_eq!(
            (counter.count("a"), counter.count("b"), counter.count("c")),
            (1, 2, 1)
        );
        assert_eq!(
            state.nodes["b"].attempt, 2,
            "attempts keep counting across resumes"
        );
        assert_eq!(values(&engine, "fatal")["c"], 3);
        assert_replay_matches(&engine, "fatal");
    }

    #[test]
    fn test_concurrent_resumption() {
        let store = TempStore::new();
        let counter = Counter::new();
        counter.script("b", Script::Sleep(Duration::from_millis(300)));
        let graph = named_chain(&["a", "b", "c"]);
        {
            let engine = store.engine();
            finish(
                &engine
                    .execute_until(
                        graph.clone(),
                        counter.executor(),
                        "a",
                        seed(0),
                        Some("race".into()),
                    )
                    .unwrap(),
            );
            engine.close();
        }
        let engines: Vec<Engine> = (0..2).map(|_| store.engine()).collect();
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<_> = std::thread::scope(|s| {
            let joins: Vec<_> = engines
                .iter()
                .map(|engine| {
                    let barrier = barrier.clone();
                    let graph = graph.clone();
                    let exec = counter.executor();
                    s.spawn(move || {
                        barrier.wait();
                        engine.resume("race", graph, exec, ResumeOptions::default())
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let locked = results
            .iter()
            .filter(|r| matches!(r, Err(Error::RunLocked { .. })))
            .count();
        assert_eq!(winners.len(), 1, "exactly one resumer gets the lease");
        assert_eq!(locked, 1, "the other gets RunLocked");
        let state = finish(winners[0]);
        assert_eq!(state.status, RunStatus::Completed);
        for node in ["a", "b", "c"] {
            assert_eq!(counter.count(node), 1, "{node} executed exactly once");
        }
    }

    #[test]
    fn test_multiple_resumption_points() {
        let counter = Counter::new();
        let graph = Arc::new(
            Graph::new(
                "diamond",
                vec![
                    NodeSpec::new("src").run_input("seed", true),
                    NodeSpec::new("left").after("src", "src"),
                    NodeSpec::new("right").after("src", "src"),
                    NodeSpec::new("join").after("l", "left").after("r", "right"),
                    NodeSpec::new("tail").after("join", "join"),
                ],
            )
            .unwrap(),
        );
        let store = TempStore::new();
        let engine = store.engine();
        finish(
            &engine
                .start(
                    graph.clone(),
                    counter.executor(),
                    seed(3),
                    StartOptions {
                        run_id: Some("reference".into()),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        let expected = values(&engine, "reference");
        for until in graph.node_ids() {
            let counter = Counter::new();
            let run_id = format!("stop-at-{until}");
            let paused = finish(
                &engine
                    .execute_until(
                        graph.clone(),
                        counter.executor(),
                        until,
                        seed(3),
                        Some(run_id.clone()),
                    )
                    .unwrap(),
            );
            assert_eq!(paused.status, RunStatus::Paused, "paused at {until}");
            assert!(paused.completed().contains(&until.to_string()));
            let done = finish(
                &engine
                    .resume(
                        &run_id,
                        graph.clone(),
                        counter.executor(),
                        ResumeOptions::default(),
                    )
                    .unwrap(),
            );
            assert_eq!(done.status, RunStatus::Completed);
            assert_eq!(
                values(&engine, &run_id),
                expected,
                "same result when paused at {until}"
            );
            for node in graph.node_ids() {
                assert_eq!(
                    counter.count(node),
                    1,
                    "{node} ran once when paused at {until}"
                );
            }
            assert_replay_matches(&engine, &run_id);
        }
    }

    #[test]
    fn test_resumption_with_modification() {
        let store = TempStore::new();
        let engine = store.engine();
        let counter = Counter::new();
        let graph = named_chain(&["a", "b", "c"]);
        finish(
            &engine
                .execute_until(
                    graph.clone(),
                    counter.executor(),
                    "b",
                    seed(0),
                    Some("m".into()),
                )
                .unwrap(),
        );
        assert_eq!(values(&engine, "m")["b"], 2);
        let state = finish(
            &engine
                .resume(
                    "m",
                    graph.clone(),
                    counter.executor(),
                    ResumeOptions {
                        updates: BTreeMap::from([("b".to_string(), encode(100))]),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Completed);
        assert_eq!(values(&engine, "m")["b"], 100);
        assert_eq!(values(&engine, "m")["c"], 101, "c sees the new value");
        assert_eq!(counter.count("b"), 1, "b was not executed again");
        let history = engine.history("m").unwrap();
        assert!(
            history.iter().any(|cp| cp.kind == "modified"),
            "the modification is in history"
        );
        assert_eq!(history.len(), 4, "a, b, modification, c");
        // Updating a completed run re-runs the dependants.
        let state = finish(
            &engine
                .resume(
                    "m",
                    graph,
                    counter.executor(),
                    ResumeOptions {
                        updates: BTreeMap::from([("a".to_string(), encode(10))]),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Completed);
        assert_eq!(values(&engine, "m")["c"], 12);
        assert_eq!(counter.count("b"), 2);
        assert_replay_matches(&engine, "m");
    }

    #[test]
    fn test_resume_from_earlier_checkpoint_reruns_later_nodes() {
        let store = TempStore::new();
        let engine = store.engine();
        let counter = Counter::new();
        let graph = named_chain(&["a", "b", "c"]);
        finish(
            &engine
                .start(
                    graph.clone(),
                    counter.executor(),
                    seed(0),
                    StartOptions {
                        run_id: Some("rw".into()),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        let history = engine.history("rw").unwrap();
        let first = history.last().unwrap().checkpoint_id;
        assert!(matches!(
            engine.resume(
                "rw",
                graph.clone(),
                counter.executor(),
                ResumeOptions::default()
            ),
            Err(Error::RunNotResumable { .. })
        ));
        assert!(matches!(
            engine.resume(
                "rw",
                graph.clone(),
                counter.executor(),
                ResumeOptions {
                    checkpoint_id: Some(99),
                    ..Default::default()
                }
            ),
            Err(Error::CheckpointNotFound { .. })
        ));
        let state = finish(
            &engine
                .resume(
                    "rw",
                    graph,
                    counter.executor(),
                    ResumeOptions {
                        checkpoint_id: Some(first),
                        ..Default::default()
                    },
                )
                .unwrap(),
        );
        assert_eq!(state.status, RunStatus::Completed);
        assert_eq!(
            (counter.count("a"), counter.count("b"), counter.count("c")),
            (1, 2, 2)
        );
        let newest = &engine.history("rw").unwrap()[0];
        assert!(newest.parent_id.is_some());
        assert_replay_matches(&engine, "rw");
    }
}
