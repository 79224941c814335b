//! Store-level tests: unusable files, schema versions, leases and fencing.

mod common;

use std::time::Duration;

use common::*;
use resumeflow_core::lease::LeaseRequest;
use resumeflow_core::store::RunBatch;
use resumeflow_core::{
    Durability, Engine, EngineOptions, Error, EventKind, SqliteStore, StoreError,
};

fn open_err(path: &std::path::Path) -> StoreError {
    match SqliteStore::open(path, Durability::Sync) {
        Err(Error::Store(e)) => e,
        Err(other) => panic!("expected a StoreError, got {other:?}"),
        Ok(_) => panic!("expected {} to be refused", path.display()),
    }
}

#[test]
fn non_sqlite_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    let content = b"this is not a database, just text that must survive".repeat(100);
    std::fs::write(&path, &content).unwrap();
    let err = open_err(&path);
    assert!(err.to_string().contains("notes.db"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), content, "file untouched");
    assert!(!dir.path().join("notes.db-wal").exists());
}

#[test]
fn truncated_store_is_refused() {
    let store = TempStore::sqlite();
    {
        let engine = store.engine();
        let counter = Counter::new();
        finish(
            &engine
                .start(chain(3), counter.executor(), seed(0), Default::default())
                .unwrap(),
        );
        engine.close();
    }
    let bytes = std::fs::read(store.path()).unwrap();
    std::fs::write(store.path(), &bytes[..50]).unwrap();
    let err = open_err(&store.path());
    assert!(err.to_string().contains("runs.db"), "{err}");
    assert_eq!(
        std::fs::read(store.path()).unwrap().len(),
        50,
        "file untouched"
    );
}

#[test]
fn directory_and_foreign_sqlite_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(open_err(dir.path()).to_string().contains("directory"));
    let foreign = dir.path().join("other.sqlite");
    make_foreign_sqlite(&foreign);
    assert!(open_err(&foreign)
        .to_string()
        .contains("not a resumeflow store"));
}

/// Makes a SQLite file with an unrelated table, written by Python's sqlite3 module.
fn make_foreign_sqlite(path: &std::path::Path) {
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table t(x)'); c.commit()",
            path.to_str().unwrap(),
        ])
        .status()
        .expect("python3 is available on the build machine");
    assert!(status.success());
}

#[test]
fn newer_schema_is_refused_with_both_versions() {
    let store = TempStore::sqlite();
    drop(store.engine());
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('pragma user_version=99'); c.commit()",
            store.path().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    match open_err(&store.path()) {
        StoreError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!(found, 99);
            assert_eq!(supported, resumeflow_core::store::SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other}"),
    }
}

#[cfg(unix)]
#[test]
fn new_store_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let store = TempStore::sqlite();
    drop(store.engine());
    let mode = std::fs::metadata(store.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn stale_fencing_token_is_refused_and_writes_nothing() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    paused_chain(&engine, &counter, 3, "f");
    let raw = store.raw();
    let request = |owner: &str| LeaseRequest {
        owner: owner.to_string(),
        ttl: Duration::from_millis(50),
    };
    let first = raw
        .acquire_lease("f", request("host:1:old"), vec![])
        .unwrap();
    std::thread::sleep(Duration::from_millis(80)); // first lease expires
    let second = raw
        .acquire_lease("f", request("host:2:new"), vec![])
        .unwrap();
    assert!(
        second.token > first.token,
        "tokens increase on every acquisition"
    );
    let events_before = engine.events("f").unwrap().len();
    let mut stale = RunBatch::new("f", Some(first.token));
    stale.events.push(EventKind::RunPaused);
    match raw.commit(stale) {
        Err(Error::LeaseLost { token, .. }) => assert_eq!(token, first.token),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert_eq!(
        engine.events("f").unwrap().len(),
        events_before,
        "nothing written"
    );
    assert_eq!(
        raw.renew_leases(vec![first.clone()], 10.0).unwrap(),
        vec![first]
    );
    assert!(raw.renew_leases(vec![second], 10.0).unwrap().is_empty());
}

#[test]
fn live_lease_blocks_and_expired_lease_is_taken_over() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    paused_chain(&engine, &counter, 2, "l");
    let raw = store.raw();
    // An owner on this host whose process is alive (this one) holds a live lease.
    let alive_owner = format!(
        "{}:{}:x",
        resumeflow_core::lease::hostname(),
        std::process::id()
    );
    raw.acquire_lease(
        "l",
        LeaseRequest {
            owner: alive_owner,
            ttl: Duration::from_millis(300),
        },
        vec![],
    )
    .unwrap();
    let other = LeaseRequest {
        owner: "elsewhere:7:y".into(),
        ttl: Duration::from_secs(5),
    };
    assert!(matches!(
        raw.acquire_lease("l", other.clone(), vec![]),
        Err(Error::RunLocked { .. })
    ));
    std::thread::sleep(Duration::from_millis(350));
    assert!(
        raw.acquire_lease("l", other, vec![]).is_ok(),
        "expired lease is taken over"
    );
    // An owner on this host whose process is gone is taken over at once, long before expiry.
    paused_chain(&engine, &counter, 2, "l2");
    let dead_owner = format!("{}:4194000:z", resumeflow_core::lease::hostname());
    raw.acquire_lease(
        "l2",
        LeaseRequest {
            owner: dead_owner,
            ttl: Duration::from_secs(600),
        },
        vec![],
    )
    .unwrap();
    let taken = raw.acquire_lease(
        "l2",
        LeaseRequest {
            owner: "elsewhere:7:y".into(),
            ttl: Duration::from_secs(5),
        },
        vec![],
    );
    assert!(
        taken.is_ok(),
        "a dead owner's lease is taken over: {taken:?}"
    );
}

#[test]
fn unknown_runs_are_reported_by_every_call() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    let not_found =
        |r: Result<(), Error>| assert!(matches!(r, Err(Error::RunNotFound { .. })), "{r:?}");
    not_found(engine.get_current_state("nope").map(drop));
    not_found(engine.get_partial_results("nope").map(drop));
    not_found(engine.history("nope").map(drop));
    not_found(engine.cleanup(Some("nope"), 1, None).map(drop));
    not_found(engine.save_partial_state("nope", "n0", vec![1]));
    not_found(engine.get_partial_state("nope", "n0").map(drop));
    not_found(
        engine
            .resume("nope", chain(1), counter.executor(), Default::default())
            .map(drop),
    );
}

#[test]
fn durability_modes_all_complete_and_replay() {
    for durability in [Durability::Sync, Durability::Batched, Durability::Off] {
        let store = TempStore::new();
        let engine = store.engine_with(EngineOptions {
            durability,
            ..Default::default()
        });
        let counter = Counter::new();
        let state = finish(
            &engine
                .start(chain(20), counter.executor(), seed(0), Default::default())
                .unwrap(),
        );
        assert_eq!(
            state.status,
            resumeflow_core::RunStatus::Completed,
            "{durability:?}"
        );
        assert_eq!(values(&engine, &state.run_id)["n19"], 20);
        assert_replay_matches(&engine, &state.run_id);
    }
}

#[test]
fn partial_state_round_trips_and_survives_completion() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    let state = paused_chain(&engine, &counter, 2, "p");
    assert_eq!(engine.get_partial_state(&state.run_id, "n1").unwrap(), None);
    engine
        .save_partial_state("p", "n1", b"epoch=3".to_vec())
        .unwrap();
    assert_eq!(
        engine.get_partial_state("p", "n1").unwrap().unwrap(),
        b"epoch=3"
    );
    assert!(matches!(
        engine.save_partial_state("p", "zzz", vec![]),
        Err(Error::Graph(
            resumeflow_core::GraphError::UnknownNode { .. }
        ))
    ));
}

#[test]
fn a_panicking_node_fails_alone_and_the_run_continues() {
    use resumeflow_core::{NodeFuture, NodeTask};
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    let inner = counter.executor();
    let exec: std::sync::Arc<dyn resumeflow_core::NodeExecutor> =
        std::sync::Arc::new(move |task: NodeTask| -> NodeFuture {
            if task.node_id == "n1" {
                Box::pin(async { panic!("boom in n1") })
            } else {
                inner.execute(task)
            }
        });
    let state = finish(
        &engine
            .start(chain(3), exec, seed(0), Default::default())
            .unwrap(),
    );
    assert_eq!(state.status, resumeflow_core::RunStatus::Failed);
    let n1 = &state.nodes["n1"];
    assert!(
        n1.error.as_deref().unwrap().contains("boom in n1"),
        "{n1:?}"
    );
    assert_eq!(n1.retryable, Some(false));
    assert_replay_matches(&engine, &state.run_id);
}

#[test]
fn lease_is_refused_when_the_run_moved_since_the_plan_was_made() {
    // Regression: a resumer that planned from a stale snapshot (another worker resumed and
    // advanced the run meanwhile) must not take the lease and redo finished nodes.
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    paused_chain(&engine, &counter, 3, "s");
    let raw = store.raw();
    let snapshot = raw.load_run("s").unwrap();
    finish(
        &engine
            .resume("s", chain(3), counter.executor(), Default::default())
            .unwrap(),
    );
    let events_before = engine.events("s").unwrap().len();
    let request = LeaseRequest {
        owner: "elsewhere:9:z".into(),
        ttl: Duration::from_secs(5),
    };
    let stale = raw.acquire_lease_at(
        "s",
        request.clone(),
        Some(snapshot.last_seq),
        vec![EventKind::RunPaused],
        vec![],
    );
    assert!(matches!(stale, Err(Error::RunChanged { .. })), "{stale:?}");
    assert_eq!(
        engine.events("s").unwrap().len(),
        events_before,
        "nothing written"
    );
    let current = raw.load_run("s").unwrap().last_seq;
    assert!(raw
        .acquire_lease_at("s", request, Some(current), vec![], vec![])
        .is_ok());
    assert_eq!(counter.total(), 3, "each node ran once");
}

#[test]
fn a_panic_while_building_the_attempt_fails_the_node_and_wait_returns() {
    // Regression: a panic in `execute()` itself (not in its future) used to kill the
    // scheduler task, leaving `wait()` blocked forever and the run locked.
    use resumeflow_core::{NodeFuture, NodeTask};
    let store = TempStore::new();
    let engine = store.engine();
    let exec: std::sync::Arc<dyn resumeflow_core::NodeExecutor> =
        std::sync::Arc::new(|task: NodeTask| -> NodeFuture {
            assert!(task.node_id != "n0", "executor refuses n0");
            Box::pin(async { Ok(resumeflow_core::NodeOutput::bytes(b"1".to_vec())) })
        });
    let handle = engine
        .start(chain(2), exec, seed(0), Default::default())
        .unwrap();
    let state = finish(&handle);
    assert_eq!(state.status, resumeflow_core::RunStatus::Failed);
    assert!(state.nodes["n0"]
        .error
        .as_deref()
        .unwrap()
        .contains("executor refuses n0"));
}

#[test]
fn a_stale_attempt_cannot_save_partial_state() {
    // Regression: a timed-out attempt whose thread kept going could overwrite the progress
    // of the attempt that replaced it.
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    paused_chain(&engine, &counter, 3, "p");
    let raw = store.raw();
    let lease = raw
        .acquire_lease(
            "p",
            LeaseRequest {
                owner: "elsewhere:3:q".into(),
                ttl: Duration::from_secs(5),
            },
            vec![],
        )
        .unwrap();
    let mut batch = RunBatch::new("p", Some(lease.token));
    batch.events.push(EventKind::PartialStateSaved {
        node: "n1".into(),
        size: 1,
        attempt: Some(1),
    });
    batch.partial_states.push(("n1".into(), vec![1]));
    assert!(
        matches!(raw.commit(batch), Err(Error::StaleAttempt { .. })),
        "n1 is not running attempt 1"
    );
    assert_eq!(engine.get_partial_state("p", "n1").unwrap(), None);
}

#[test]
fn dependants_rerun_by_an_update_start_without_old_progress() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    let state = finish(
        &engine
            .start(
                chain(3),
                counter.executor(),
                seed(0),
                resumeflow_core::StartOptions {
                    run_id: Some("u".into()),
                    ..Default::default()
                },
            )
            .unwrap(),
    );
    assert_eq!(state.status, resumeflow_core::RunStatus::Completed);
    engine
        .save_partial_state("u", "n2", b"epoch=9".to_vec())
        .unwrap();
    engine
        .save_partial_state("u", "n0", b"kept".to_vec())
        .unwrap();
    let updates = std::collections::BTreeMap::from([("n1".to_string(), encode(40))]);
    let done = finish(
        &engine
            .resume(
                "u",
                chain(3),
                counter.executor(),
                resumeflow_core::ResumeOptions {
                    updates,
                    ..Default::default()
                },
            )
            .unwrap(),
    );
    assert_eq!(values(&engine, "u")["n2"], 41);
    assert_eq!(done.status, resumeflow_core::RunStatus::Completed);
    assert_eq!(
        engine.get_partial_state("u", "n2").unwrap(),
        None,
        "progress of the discarded result is gone"
    );
    assert_eq!(
        engine.get_partial_state("u", "n0").unwrap().unwrap(),
        b"kept"
    );
    // The lease, the update and the value it references landed in one transaction: the
    // same commit time from the resume's `LeaseAcquired` to its checkpoint.
    let events = engine.events("u").unwrap();
    let from = events
        .iter()
        .rposition(|e| matches!(e.kind, EventKind::RunResumed { .. }))
        .expect("a resume")
        - 1;
    assert!(matches!(events[from].kind, EventKind::LeaseAcquired { .. }));
    let upto = from
        + events[from..]
            .iter()
            .position(|e| matches!(e.kind, EventKind::CheckpointCommitted { .. }))
            .expect("the update's checkpoint");
    assert!(
        events[from..=upto]
            .iter()
            .all(|e| e.at.to_bits() == events[from].at.to_bits()),
        "one transaction: {:?}",
        &events[from..=upto]
    );
}

#[test]
fn two_resumes_in_one_engine_cannot_both_take_the_run() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    counter.script("n1", Script::Sleep(Duration::from_millis(300)));
    paused_chain(&engine, &counter, 3, "twice");
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let joins: Vec<_> = (0..2)
            .map(|_| {
                let exec = counter.executor();
                let engine = &engine;
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    engine.resume("twice", chain(3), exec, Default::default())
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        results.iter().map(|r| r.as_ref().err()).collect::<Vec<_>>()
    );
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(Error::RunLocked { .. }))));
    finish(won[0]);
    assert_eq!((counter.count("n1"), counter.count("n2")), (1, 1));
}

#[test]
fn zero_max_concurrency_is_rejected() {
    let store = TempStore::new();
    let err = Engine::open_target(
        &store.target(),
        EngineOptions {
            max_concurrency: Some(0),
            ..Default::default()
        },
    );
    assert!(matches!(err, Err(Error::InvalidArgument { .. })));
}

#[test]
fn one_leases_batches_land_in_order_and_a_refusal_refuses_the_rest() {
    use resumeflow_core::store::BatchValue;
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    paused_chain(&engine, &counter, 2, "o");
    let raw = store.raw();
    let lease = raw
        .acquire_lease(
            "o",
            LeaseRequest {
                owner: "elsewhere:1:a".into(),
                ttl: Duration::from_secs(30),
            },
            vec![],
        )
        .unwrap();
    // Submitted without waiting: they commit in submission order.
    let tickets: Vec<_> = (0..20u64)
        .map(|i| {
            let mut batch = RunBatch::new("o", Some(lease.token));
            batch.events.push(EventKind::PartialStateSaved {
                node: "n1".into(),
                size: i,
                attempt: None,
            });
            raw.submit(batch)
        })
        .collect();
    for ticket in tickets {
        ticket.blocking_recv().unwrap().unwrap();
    }
    let sizes: Vec<u64> = engine
        .events("o")
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::PartialStateSaved { size, .. } => Some(size),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, (0..20).collect::<Vec<_>>(), "in submission order");
    // A batch refused under a valid token (its value's blob file is missing) ...
    let mut bad = RunBatch::new("o", Some(lease.token));
    bad.values
        .push(BatchValue::in_file(resumeflow_core::ValueRef::of(b"gone")));
    bad.events.push(EventKind::RunPaused);
    assert!(raw.commit(bad).is_err());
    // ... refuses every later batch of that lease, token still current,
    let mut later = RunBatch::new("o", Some(lease.token));
    later.events.push(EventKind::RunPaused);
    assert!(matches!(raw.commit(later), Err(Error::LeaseLost { .. })));
    // except the one that ends the run and releases the lease.
    let mut end = RunBatch::new("o", Some(lease.token));
    end.events.push(EventKind::RunPaused);
    end.events
        .push(EventKind::LeaseReleased { token: lease.token });
    raw.commit_after_refusal(end).unwrap();
    let state = engine.get_current_state("o").unwrap();
    assert_eq!(state.status, resumeflow_core::RunStatus::Paused);
}

#[test]
fn the_store_can_be_called_from_async_code_on_a_runtime_worker() {
    // Regression (PostgreSQL): the client blocks on a runtime of its own, which panicked when
    // started on a worker thread of another (a node's async code calling the store).
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    paused_chain(&engine, &counter, 2, "rt");
    let raw = store.raw();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let events = runtime.block_on(async move {
        tokio::spawn(async move {
            let run = raw.load_run("rt").unwrap();
            assert_eq!(run.state.run_id, "rt");
            let mut batch = RunBatch::new("rt", None);
            batch.events.push(EventKind::RunPaused);
            raw.commit(batch).unwrap();
            let events = raw.events("rt").unwrap().len();
            raw.close();
            drop(raw);
            events
        })
        .await
        .unwrap()
    });
    assert_eq!(engine.events("rt").unwrap().len(), events);
}
