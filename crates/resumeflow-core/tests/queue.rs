//! The queue and control requests in the core: submit, claim exactly once, control requests
//! applied by the lease holder, events after a cursor, filtered listing, the change marker.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{assert_replay_matches, chain, finish, seed, values, Counter, Script, TempStore};
use resumeflow_core::control::ControlRequest;
use resumeflow_core::store::RunFilter;
use resumeflow_core::{EventKind, NodeExecutor, RunStatus, StartOptions};

fn submit(engine: &resumeflow_core::Engine, run_id: &str, v: i64) {
    engine
        .submit(
            &chain(3),
            seed(v),
            StartOptions {
                run_id: Some(run_id.into()),
                ..StartOptions::default()
            },
        )
        .unwrap();
}

#[test]
fn submitted_runs_are_queued_and_claimed_oldest_first() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    for (i, id) in ["r1", "r2", "r3"].iter().enumerate() {
        submit(&engine, id, i as i64);
    }
    assert_eq!(
        engine.get_current_state("r1").unwrap().status,
        RunStatus::Queued
    );
    let served: Vec<(_, Arc<dyn NodeExecutor>)> = vec![(chain(3), counter.executor())];
    let mut order = Vec::new();
    while let Some(handle) = engine.claim(&served).unwrap() {
        order.push(handle.id().to_string());
        assert_eq!(finish(&handle).status, RunStatus::Completed);
    }
    assert_eq!(order, ["r1", "r2", "r3"]);
    assert_eq!(values(&engine, "r3")["n2"], 5);
    assert_replay_matches(&engine, "r2");
    assert_eq!(counter.total(), 9);
}

#[test]
fn racing_claimers_never_take_one_run_twice() {
    let store = TempStore::new();
    let setup = store.engine();
    for i in 0..40 {
        submit(&setup, &format!("q{i:02}"), i);
    }
    let claimers = 4;
    let barrier = Arc::new(Barrier::new(claimers));
    let target = store.target();
    let threads: Vec<_> = (0..claimers)
        .map(|_| {
            let barrier = barrier.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                // Separate engines: separate lease owners and writer connections.
                let engine =
                    resumeflow_core::Engine::open_target(&target, Default::default()).unwrap();
                let counter = Counter::new();
                let served: Vec<(_, Arc<dyn NodeExecutor>)> = vec![(chain(3), counter.executor())];
                barrier.wait();
                let mut got = Vec::new();
                while let Some(handle) = engine.claim(&served).unwrap() {
                    got.push(handle.id().to_string());
                    finish(&handle);
                }
                engine.close();
                got
            })
        })
        .collect();
    let all: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 40, "every run claimed");
    assert_eq!(unique.len(), 40, "no run claimed twice");
}

#[test]
fn a_run_of_another_structure_or_workflow_is_not_claimed() {
    let store = TempStore::new();
    let engine = store.engine();
    submit(&engine, "three", 1);
    let counter = Counter::new();
    let served: Vec<(_, Arc<dyn NodeExecutor>)> = vec![(chain(4), counter.executor())];
    assert!(engine.claim(&served).unwrap().is_none());
    let queued = engine
        .list_runs_filtered(&RunFilter {
            status: Some(RunStatus::Queued),
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(queued.len(), 1);
}

#[test]
fn control_requests_reach_the_lease_holder_from_another_engine() {
    let store = TempStore::new();
    let worker = store.engine();
    let other = store.engine();
    let counter = Counter::new();
    counter.script("n1", Script::Sleep(Duration::from_secs(30)));
    submit(&worker, "slow", 1);
    let served: Vec<(_, Arc<dyn NodeExecutor>)> = vec![(chain(3), counter.executor())];
    let handle = worker.claim(&served).unwrap().unwrap();
    while counter.count("n1") == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = std::time::Instant::now();
    assert_eq!(
        other
            .request_control("slow", ControlRequest::Cancel)
            .unwrap(),
        RunStatus::Running
    );
    let state = other
        .wait_for_end("slow", Some(Duration::from_secs(10)))
        .unwrap()
        .expect("ended in time");
    assert_eq!(state.status, RunStatus::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = handle.wait(Some(Duration::from_secs(10)));
    // The request was settled with the lease: a new request on the ended run does nothing.
    assert_eq!(
        other
            .request_control("slow", ControlRequest::Interrupt)
            .unwrap(),
        RunStatus::Cancelled
    );
}

#[test]
fn control_of_a_queued_run_ends_it_at_once_and_requeue_hands_a_paused_run_back() {
    let store = TempStore::new();
    let engine = store.engine();
    submit(&engine, "c", 1);
    submit(&engine, "p", 1);
    assert_eq!(
        engine.request_control("c", ControlRequest::Cancel).unwrap(),
        RunStatus::Cancelled
    );
    assert_eq!(
        engine
            .request_control("p", ControlRequest::Interrupt)
            .unwrap(),
        RunStatus::Paused
    );
    assert!(engine.requeue("p").unwrap());
    assert!(!engine.requeue("c").unwrap(), "a cancelled run stays ended");
    let counter = Counter::new();
    let served: Vec<(_, Arc<dyn NodeExecutor>)> = vec![(chain(3), counter.executor())];
    let handle = engine.claim(&served).unwrap().unwrap();
    assert_eq!(handle.id(), "p");
    assert_eq!(finish(&handle).status, RunStatus::Completed);
    assert!(engine.claim(&served).unwrap().is_none());
    assert_replay_matches(&engine, "c");
}

#[test]
fn events_after_a_cursor_page_through_the_log() {
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    let handle = engine
        .start(
            chain(4),
            counter.executor(),
            seed(1),
            StartOptions {
                run_id: Some("ev".into()),
                ..StartOptions::default()
            },
        )
        .unwrap();
    finish(&handle);
    let all = engine.events("ev").unwrap();
    let mut paged = Vec::new();
    let mut cursor = 0;
    loop {
        let page = engine.events_after("ev", cursor, 3).unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert!(matches!(all[0].kind, EventKind::RunCreated { .. }));
    assert!(engine.events_after("nope", 0, 10).is_err());
}

#[test]
fn list_runs_filters_and_pages() {
    let store = TempStore::new();
    let engine = store.engine();
    for i in 0..5 {
        engine
            .submit(
                &chain(2),
                seed(i),
                StartOptions {
                    run_id: Some(format!("l{i}")),
                    labels: BTreeMap::from([(
                        "team".to_string(),
                        if i % 2 == 0 { "a" } else { "b" }.to_string(),
                    )]),
                    ..StartOptions::default()
                },
            )
            .unwrap();
    }
    let ids = |filter: RunFilter| -> Vec<String> {
        engine
            .list_runs_filtered(&filter)
            .unwrap()
            .into_iter()
            .map(|s| s.run_id)
            .collect()
    };
    assert_eq!(
        ids(RunFilter {
            labels: BTreeMap::from([("team".into(), "a".into())]),
            ..RunFilter::default()
        }),
        ["l0", "l2", "l4"]
    );
    assert_eq!(
        ids(RunFilter {
            limit: Some(2),
            after: Some("l1".into()),
            ..RunFilter::default()
        }),
        ["l2", "l3"]
    );
    assert!(ids(RunFilter {
        workflow: Some("other".into()),
        ..RunFilter::default()
    })
    .is_empty());
    assert_eq!(
        ids(RunFilter {
            newest_first: true,
            ..RunFilter::default()
        }),
        ["l4", "l3", "l2", "l1", "l0"]
    );
    assert_eq!(
        ids(RunFilter {
            newest_first: true,
            offset: 1,
            limit: Some(2),
            ..RunFilter::default()
        }),
        ["l3", "l2"]
    );
    // The offset counts matching runs only.
    assert_eq!(
        ids(RunFilter {
            newest_first: true,
            offset: 1,
            labels: BTreeMap::from([("team".into(), "a".into())]),
            ..RunFilter::default()
        }),
        ["l2", "l0"]
    );
    assert_eq!(
        ids(RunFilter {
            newest_first: true,
            after: Some("l3".into()),
            ..RunFilter::default()
        }),
        ["l2", "l1", "l0"]
    );
}

#[test]
fn the_store_summary_query_agrees_with_folding_every_run() {
    use resumeflow_core::store::summary::summarize;
    let store = TempStore::new();
    let engine = store.engine();
    let counter = Counter::new();
    counter.script("n1", Script::FailFatal);
    for i in 0..3 {
        let opts = StartOptions {
            run_id: Some(format!("s{i}")),
            ..StartOptions::default()
        };
        finish(
            &engine
                .start(chain(3), counter.executor(), seed(i), opts)
                .unwrap(),
        );
    }
    counter.clear_script("n1");
    finish(
        &engine
            .start(
                chain(3),
                counter.executor(),
                seed(9),
                StartOptions::default(),
            )
            .unwrap(),
    );
    submit(&engine, "queued", 1);
    let states: Vec<_> = engine.list_runs(None).unwrap();
    let summary = engine.store_summary(0.0).unwrap();
    let folded = summarize(&states, 0.0);
    assert_eq!(summary.runs, folded.runs);
    assert_eq!(summary.nodes.len(), folded.nodes.len());
    for (a, b) in summary.nodes.iter().zip(&folded.nodes) {
        assert!(
            (a.duration_sum_s - b.duration_sum_s).abs() < 1e-9,
            "{a:?} {b:?}"
        );
        let mut a = a.clone();
        a.duration_sum_s = b.duration_sum_s; // summed in another order
        assert_eq!(&a, b);
    }
    let failed = summary.runs.iter().find(|r| r.status == "failed").unwrap();
    assert_eq!((failed.runs, failed.recent), (3, 3));
    let done: u64 = summary
        .nodes
        .iter()
        .filter(|n| n.status == "completed")
        .map(resumeflow_core::store::summary::NodeCount::durations)
        .sum();
    assert_eq!(done, 3 + 3); // n0 of each failed run, n0..n2 of the completed one
    let later = engine.store_summary(f64::MAX).unwrap();
    assert!(later.runs.iter().all(|r| r.recent == 0));
}

#[test]
fn the_change_marker_moves_on_commits_of_this_and_other_engines() {
    let store = TempStore::new();
    let watcher = store.engine();
    let writer = store.engine();
    let marker = watcher.wait_for_change(0, Duration::ZERO).unwrap();
    assert_eq!(
        watcher
            .wait_for_change(marker, Duration::from_millis(50))
            .unwrap(),
        marker,
        "nothing changed"
    );
    submit(&writer, "w", 1);
    let moved = watcher
        .wait_for_change(marker, Duration::from_secs(5))
        .unwrap();
    assert_ne!(moved, marker, "another engine's commit is seen");
}
