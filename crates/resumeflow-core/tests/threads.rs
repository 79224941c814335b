//! Thread checkpoints (the LangGraph saver's storage): round trips, values stored once per
//! version and content-addressed, write idempotence, garbage collection on prune / delete,
//! copies sharing values, concurrent writers, and the v1 → v2 schema migration.

use std::path::Path;
use std::sync::Arc;

use resumeflow_core::threads::{
    NewThreadCheckpoint, NewThreadWrites, PruneStrategy, ThreadQuery, ThreadStore, TypedBytes,
};
use resumeflow_core::{Durability, SqliteStore, Store};
use rusqlite::Connection;

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, Durability::Sync).unwrap()
}

fn val(s: &str) -> TypedBytes {
    TypedBytes::new("json", s.as_bytes().to_vec())
}

/// A checkpoint `id` on `thread` whose channel `x` is at version `id` with value `x`, and
/// whose channel `big` stays at version "1".
fn checkpoint(
    thread: &str,
    id: &str,
    parent: Option<&str>,
    x: &str,
    run: &str,
) -> NewThreadCheckpoint {
    let mut new_values = vec![("x".to_string(), id.to_string(), Some(val(x)))];
    if parent.is_none() {
        new_values.push(("big".into(), "1".into(), Some(val(&"B".repeat(100_000)))));
    }
    NewThreadCheckpoint {
        thread_id: thread.into(),
        checkpoint_ns: String::new(),
        checkpoint_id: id.into(),
        parent_id: parent.map(str::to_string),
        run_id: Some(run.into()),
        checkpoint: val(&format!("{{\"id\":\"{id}\"}}")),
        metadata: val("{}"),
        metadata_json: Some(format!("{{\"run\":\"{run}\",\"id\":\"{id}\"}}")),
        versions: vec![("x".into(), id.into()), ("big".into(), "1".into())],
        new_values,
    }
}

fn count(path: &Path, table: &str) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn chain(store: &SqliteStore, thread: &str, n: usize, run: &str) {
    let mut parent: Option<String> = None;
    for i in 0..n {
        let id = format!("{i:04}");
        store
            .put_checkpoint(checkpoint(
                thread,
                &id,
                parent.as_deref(),
                &format!("v{i}"),
                run,
            ))
            .unwrap();
        parent = Some(id);
    }
}

#[test]
fn checkpoints_round_trip_with_values_from_earlier_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("t.db"));
    chain(&store, "t", 3, "r");
    let latest = store.get_checkpoint("t", "", None).unwrap().unwrap();
    assert_eq!(latest.checkpoint_id, "0002");
    assert_eq!(latest.parent_id.as_deref(), Some("0001"));
    let mut values = latest.values.clone();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(values[1], ("x".to_string(), val("v2")));
    assert_eq!(
        values[0].1.data.len(),
        100_000,
        "big comes from checkpoint 0000's version"
    );
    let first = store
        .get_checkpoint("t", "", Some("0000"))
        .unwrap()
        .unwrap();
    assert!(first.values.contains(&("x".to_string(), val("v0"))));
    assert!(store
        .get_checkpoint("t", "other-ns", None)
        .unwrap()
        .is_none());
    assert!(store.get_checkpoint("nobody", "", None).unwrap().is_none());
    store.close();
}

#[test]
fn an_unchanged_channel_is_stored_once_and_equal_values_share_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    chain(&store, "t", 50, "r");
    chain(&store, "u", 50, "r"); // same values on another thread: bytes shared
    store.close();
    assert_eq!(count(&path, "thread_checkpoints"), 100);
    assert_eq!(count(&path, "thread_channel_values"), 2 * (50 + 1));
    assert_eq!(
        count(&path, "thread_values"),
        50 + 1,
        "one row per distinct value"
    );
}

#[test]
fn regular_writes_are_idempotent_and_special_ones_replace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("t.db"));
    chain(&store, "t", 1, "r");
    let writes = |task: &str, items: Vec<(i64, &str, &str)>| NewThreadWrites {
        thread_id: "t".into(),
        checkpoint_ns: String::new(),
        checkpoint_id: "0000".into(),
        task_id: task.into(),
        task_path: String::new(),
        writes: items
            .into_iter()
            .map(|(i, c, v)| (i, c.to_string(), val(v)))
            .collect(),
    };
    store
        .put_writes(writes("b", vec![(0, "x", "1"), (1, "y", "2")]))
        .unwrap();
    store
        .put_writes(writes("b", vec![(0, "x", "changed")]))
        .unwrap();
    store
        .put_writes(writes("a", vec![(-1, "__error__", "first")]))
        .unwrap();
    store
        .put_writes(writes("a", vec![(-1, "__error__", "second")]))
        .unwrap();
    let got = store.get_checkpoint("t", "", None).unwrap().unwrap().writes;
    let seen: Vec<(&str, &str, &[u8])> = got
        .iter()
        .map(|w| (w.task_id.as_str(), w.channel.as_str(), &w.value.data[..]))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a", "__error__", b"second".as_slice()),
            ("b", "x", b"1".as_slice()),
            ("b", "y", b"2".as_slice())
        ]
    );
    store.close();
}

#[test]
fn prune_keep_latest_collects_dead_versions_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    chain(&store, "t", 20, "r");
    chain(&store, "keep", 3, "r");
    let deleted = store
        .prune(&["t".into()], PruneStrategy::KeepLatest)
        .unwrap();
    assert_eq!(deleted, 19);
    let latest = store.get_checkpoint("t", "", None).unwrap().unwrap();
    assert_eq!(latest.checkpoint_id, "0019");
    assert_eq!(
        latest.values.len(),
        2,
        "the kept checkpoint still reads both channels"
    );
    store.close();
    assert_eq!(count(&path, "thread_checkpoints"), 1 + 3);
    // t keeps x@0019 and big@1; "keep" keeps its 3 + big. Values v0..v2 are shared with
    // "keep", so they survive; v3..v18 are gone.
    assert_eq!(count(&path, "thread_channel_values"), 2 + 4);
    assert_eq!(count(&path, "thread_values"), 3 + 1 + 1);
}

#[test]
fn delete_runs_and_threads_remove_what_only_they_referenced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    chain(&store, "t", 4, "run-a");
    let mut later = checkpoint("t", "0004", Some("0003"), "v-later", "run-b");
    later.versions = vec![("x".into(), "0004".into()), ("big".into(), "1".into())];
    store.put_checkpoint(later).unwrap();
    assert_eq!(store.delete_runs(&["run-a".into()]).unwrap(), 4);
    let left = store
        .list_checkpoints(&ThreadQuery {
            thread_id: Some("t".into()),
            with_contents: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].values.len(),
        2,
        "big@1 was created by run-a but is still referenced"
    );
    assert_eq!(store.delete_threads(&["t".into()]).unwrap(), 1);
    store.close();
    for table in [
        "thread_checkpoints",
        "thread_channel_values",
        "thread_writes",
        "thread_values",
    ] {
        assert_eq!(count(&path, table), 0, "{table}");
    }
}

#[test]
fn copies_share_value_bytes_and_survive_the_source_being_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    chain(&store, "src", 5, "r");
    assert_eq!(store.copy_thread("src", "dst").unwrap(), 5);
    assert_eq!(store.copy_thread("nobody", "dst2").unwrap(), 0);
    store.delete_threads(&["src".into()]).unwrap();
    let copied = store
        .get_checkpoint("dst", "", Some("0002"))
        .unwrap()
        .unwrap();
    assert!(copied.values.contains(&("x".to_string(), val("v2"))));
    store.close();
    assert_eq!(count(&path, "thread_values"), 5 + 1);
}

#[test]
fn list_pages_newest_first_with_before_and_keyset_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("t.db"));
    chain(&store, "t", 10, "r");
    let page = |after: Option<(String, String, String)>| {
        store
            .list_checkpoints(&ThreadQuery {
                thread_id: Some("t".into()),
                before: Some("0008".into()),
                after,
                limit: Some(3),
                ..Default::default()
            })
            .unwrap()
    };
    let first = page(None);
    let ids: Vec<_> = first.iter().map(|c| c.checkpoint_id.as_str()).collect();
    assert_eq!(ids, ["0007", "0006", "0005"]);
    assert!(first[0].values.is_empty(), "contents only when asked for");
    let last = first.last().unwrap();
    let second = page(Some((
        last.checkpoint_id.clone(),
        "t".into(),
        String::new(),
    )));
    let ids: Vec<_> = second.iter().map(|c| c.checkpoint_id.as_str()).collect();
    assert_eq!(ids, ["0004", "0003", "0002"]);
    store.close();
}

#[test]
fn sixteen_threads_put_at_once_through_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("t.db")));
    let handles: Vec<_> = (0..16)
        .map(|k| {
            let store = store.clone();
            std::thread::spawn(move || chain(&store, &format!("t{k}"), 25, "r"))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for k in 0..16 {
        let all = store
            .list_checkpoints(&ThreadQuery {
                thread_id: Some(format!("t{k}")),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 25);
    }
    store.close();
}

#[test]
fn a_version_1_store_is_migrated_and_keeps_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let graph =
        resumeflow_core::Graph::new("wf", vec![resumeflow_core::NodeSpec::new("a")]).unwrap();
    {
        // A store exactly as version 1 wrote it, with one run.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(resumeflow_core::store::migrations()[0])
            .unwrap();
        conn.execute(
            "INSERT INTO runs (run_id, workflow, graph_hash, graph, inputs, labels, status, created_at, updated_at)
               VALUES ('old', 'wf', ?1, ?2, ?3, ?4, 'paused', 0, 0)",
            rusqlite::params![
                graph.structural_hash(),
                rmp_serde::to_vec_named(&graph).unwrap(),
                rmp_serde::to_vec_named(&std::collections::BTreeMap::<String, Vec<u8>>::new()).unwrap(),
                rmp_serde::to_vec_named(&std::collections::BTreeMap::from([("team", "ml")])).unwrap(),
            ],
        )
        .unwrap();
        conn.execute_batch("PRAGMA application_id = 1380338775; PRAGMA user_version = 1;")
            .unwrap();
    }
    let store = open(&path);
    let run = store.load_run("old").unwrap();
    assert_eq!(
        run.graph.unwrap(),
        graph,
        "the graph moved to run_specs intact"
    );
    assert_eq!(run.state.labels.get("team").map(String::as_str), Some("ml"));
    chain(&store, "t", 2, "r");
    assert!(store.get_checkpoint("t", "", None).unwrap().is_some());
    store.close();
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, resumeflow_core::store::SCHEMA_VERSION);
    assert_eq!(count(&path, "runs"), 1);
}

fn write(thread: &str, checkpoint: &str, task: &str, idx: i64, value: &str) -> NewThreadWrites {
    NewThreadWrites {
        thread_id: thread.into(),
        checkpoint_ns: String::new(),
        checkpoint_id: checkpoint.into(),
        task_id: task.into(),
        task_path: String::new(),
        writes: vec![(idx, "x".into(), val(value))],
    }
}

#[test]
fn a_skipped_duplicate_write_leaves_no_bytes_behind() {
    // Regression: the bytes of a write kept out as a duplicate were stored anyway, referenced
    // by nothing and never collected.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    chain(&store, "t", 1, "r");
    store
        .put_writes(write("t", "0000", "task", 0, "first"))
        .unwrap();
    store
        .put_writes(write("t", "0000", "task", 0, "second"))
        .unwrap();
    let writes = store.get_checkpoint("t", "", None).unwrap().unwrap().writes;
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].value, val("first"));
    store.delete_threads(&["t".into()]).unwrap();
    store.close();
    assert_eq!(count(&path, "thread_values"), 0);
}

#[test]
fn writes_stored_before_their_checkpoint_survive_a_prune() {
    // Regression: LangGraph may store a step's writes before the step's checkpoint lands; a
    // prune in between deleted them as orphans.
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("t.db"));
    chain(&store, "t", 2, "r");
    store
        .put_writes(write("t", "0002", "task", 0, "early"))
        .unwrap();
    store
        .prune(&["t".into()], PruneStrategy::KeepLatest)
        .unwrap();
    store
        .put_checkpoint(checkpoint("t", "0002", Some("0001"), "v2", "r"))
        .unwrap();
    let writes = store
        .get_checkpoint("t", "", Some("0002"))
        .unwrap()
        .unwrap()
        .writes;
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].value, val("early"));
    store.close();
}

/// `len` bytes that differ from one MiB chunk to the next (a chunk written at the wrong
/// offset, or twice, shows).
fn large(len: usize, seed: u8) -> TypedBytes {
    let data: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ seed ^ (i >> 20) as u8)
        .collect();
    TypedBytes::new("bytes", data)
}

#[test]
fn values_over_a_mebibyte_are_written_in_chunks_whole_and_once() {
    // Large values are inserted as a zeroblob and then written in 1 MiB chunks (not bound
    // whole): the bytes read back must be the bytes given, at every size around the chunk
    // boundaries, for channel values and pending writes, and a value stored already is kept.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    let sizes = [(1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 7];
    for (k, &len) in sizes.iter().enumerate() {
        let value = large(len, k as u8);
        for thread in ["a", "b"] {
            let mut cp = checkpoint(thread, &format!("{k:04}"), None, "x", "r");
            cp.new_values = vec![("big".into(), format!("{k}"), Some(value.clone()))];
            cp.versions = vec![("big".into(), format!("{k}"))];
            store.put_checkpoint(cp).unwrap();
            let mut w = write(thread, &format!("{k:04}"), "task", 0, "");
            w.writes = vec![(0, "big".into(), value.clone())];
            store.put_writes(w).unwrap();
        }
        for thread in ["a", "b"] {
            let got = store
                .get_checkpoint(thread, "", Some(&format!("{k:04}")))
                .unwrap()
                .unwrap();
            assert_eq!(
                got.values,
                vec![("big".to_string(), value.clone())],
                "{len} B"
            );
            assert_eq!(got.writes[0].value, value, "{len} B write");
        }
    }
    store.delete_threads(&["a".into()]).unwrap();
    let kept = store
        .get_checkpoint("b", "", Some("0003"))
        .unwrap()
        .unwrap();
    assert_eq!(kept.values[0].1, large(sizes[3], 3));
    store.close();
    assert_eq!(
        count(&path, "thread_values"),
        sizes.len() as i64,
        "each large value once, shared by both threads and the writes"
    );
}
