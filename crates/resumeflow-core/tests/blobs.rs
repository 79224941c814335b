//! Large values: blob files beside the database, zstd-compressed values, dedup, garbage
//! collection of unreferenced files and of orphans a crash left behind.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use resumeflow_core::store::PartialState;
use resumeflow_core::{
    Engine, EngineOptions, Graph, NodeExecutor, NodeFuture, NodeOutput, NodeSpec, NodeTask,
    ResumeOptions, RetryPolicy, StartOptions,
};
use rusqlite::Connection;

fn engine(path: &Path, threshold: u64) -> Engine {
    Engine::open(
        path,
        EngineOptions {
            blob_file_threshold: Some(threshold),
            ..Default::default()
        },
    )
    .unwrap()
}

/// `big` returns `size` bytes derived from a generation counter; `copy` returns its input.
fn graph() -> Arc<Graph> {
    Arc::new(
        Graph::new(
            "blobs",
            vec![
                NodeSpec::new("big").with_retry(RetryPolicy::no_retry()),
                NodeSpec::new("copy")
                    .after("x", "big")
                    .with_retry(RetryPolicy::no_retry()),
            ],
        )
        .unwrap(),
    )
}

fn executor(size: usize, generation: Arc<AtomicU32>, compress: bool) -> Arc<dyn NodeExecutor> {
    Arc::new(move |task: NodeTask| -> NodeFuture {
        let out = if task.node_id == "big" {
            let g = generation.load(Ordering::SeqCst) as u8;
            (0..size).map(|i| (i % 251) as u8 ^ g).collect()
        } else {
            task.inputs[0].1.bytes().unwrap().to_vec()
        };
        Box::pin(async move {
            let mut output = NodeOutput::bytes(out);
            output.compress = compress;
            Ok(output)
        })
    })
}

/// Runs [`graph`] to the end with `exec`.
fn start(engine: &Engine, exec: Arc<dyn NodeExecutor>) -> resumeflow_core::RunState {
    finish(
        &engine
            .start(graph(), exec, BTreeMap::new(), StartOptions::default())
            .unwrap(),
    )
}

fn blob_files(path: &Path) -> Vec<PathBuf> {
    let dir = PathBuf::from(format!("{}.blobs", path.display()));
    let Ok(subs) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    subs.flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).unwrap().flatten())
        .map(|f| f.path())
        .collect()
}

fn rows(path: &Path, query: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(query, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_large_value_is_one_file_shared_by_every_node_that_returns_it() {
    let store = TempStore::sqlite();
    let path = store.path();
    let engine = engine(&path, 64 << 10);
    let size = 1 << 20;
    let state = start(&engine, executor(size, Arc::default(), false));
    let out = engine.get_partial_results(&state.run_id).unwrap();
    assert_eq!(out["big"].len(), size);
    assert_eq!(out["big"], out["copy"]);
    engine.close();
    let files = blob_files(&path);
    assert_eq!(files.len(), 1, "same bytes from two nodes: one file");
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), size as u64);
    assert_eq!(
        rows(&path, "SELECT count(*) FROM blobs WHERE location = 1"),
        1
    );
    assert!(
        std::fs::metadata(&path).unwrap().len() < size as u64,
        "the bytes are not in the database"
    );
}

#[test]
fn compressed_values_round_trip_and_take_less_room() {
    let store = TempStore::sqlite();
    let path = store.path();
    let engine = engine(&path, u64::MAX);
    let state = start(&engine, executor(4 << 20, Arc::default(), true));
    let out = engine.get_partial_results(&state.run_id).unwrap();
    assert_eq!(out["big"].len(), 4 << 20);
    assert_eq!(out["big"][1000], (1000 % 251) as u8);
    engine.close();
    assert_eq!(rows(&path, "SELECT count(*) FROM blobs WHERE codec = 1"), 1);
    let stored: i64 = rows(&path, "SELECT length(data) FROM blobs WHERE codec = 1");
    assert!(
        stored < (4 << 20) / 20,
        "a periodic pattern compresses: {stored} B"
    );
}

#[test]
fn cleanup_removes_files_no_kept_checkpoint_references() {
    let store = TempStore::sqlite();
    let path = store.path();
    let engine = engine(&path, 64 << 10);
    let generation = Arc::new(AtomicU32::new(1));
    let exec = executor(256 << 10, generation.clone(), false);
    let state = start(&engine, exec.clone());
    generation.store(2, Ordering::SeqCst);
    finish(
        &engine
            .resume(
                &state.run_id,
                graph(),
                exec,
                ResumeOptions {
                    rerun: vec!["big".into()],
                    ..Default::default()
                },
            )
            .unwrap(),
    );
    assert_eq!(blob_files(&path).len(), 2, "both generations stored");
    let deleted = engine.cleanup(Some(&state.run_id), 1, None).unwrap();
    assert!(deleted >= 1);
    let left = blob_files(&path);
    assert_eq!(left.len(), 1, "the first generation's file is gone");
    let out = engine.get_partial_results(&state.run_id).unwrap();
    assert_eq!(out["big"][0], 2, "the kept value still loads");
    engine.close();
}

#[test]
fn orphan_files_are_removed_once_older_than_the_grace_period() {
    let store = TempStore::sqlite();
    let path = store.path();
    let engine = engine(&path, 64 << 10);
    start(&engine, executor(128 << 10, Arc::default(), false));
    // What a crash between a blob file's write and its commit leaves: a file nothing names.
    let kept = blob_files(&path)[0].clone();
    let sub = kept.parent().unwrap();
    let fresh = sub.join("ab".repeat(32));
    let stale = sub.join("cd".repeat(32));
    std::fs::write(&fresh, b"fresh orphan").unwrap();
    std::fs::write(&stale, b"stale orphan").unwrap();
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    engine.cleanup(None, 1, None).unwrap();
    assert!(kept.exists(), "a referenced file stays");
    assert!(
        fresh.exists(),
        "a young orphan may belong to a commit in flight"
    );
    assert!(!stale.exists(), "an old orphan is collected");
    engine.close();
}

#[test]
fn a_compressed_and_a_raw_copy_of_one_value_do_not_overwrite_each_other() {
    // Regression: both stored forms of one value used to share a file name, so the raw copy
    // replaced the compressed file that the value's row (codec zstd) pointed at.
    let store = TempStore::sqlite();
    let path = store.path();
    let engine = engine(&path, 64 << 10);
    let size = 1 << 20;
    let exec: Arc<dyn NodeExecutor> = Arc::new(move |task: NodeTask| -> NodeFuture {
        let compress = task.node_id == "big";
        let out: Vec<u8> = if compress {
            noise(size)
        } else {
            task.inputs[0].1.bytes().unwrap().to_vec()
        };
        Box::pin(async move {
            let mut output = NodeOutput::bytes(out);
            output.compress = compress;
            Ok(output)
        })
    });
    let big = noise(size);
    for _ in 0..2 {
        let state = start(&engine, exec.clone());
        let out = engine.get_partial_results(&state.run_id).unwrap();
        assert_eq!(out["big"], big);
        assert_eq!(out["copy"], big);
    }
    engine.close();
    let names: Vec<String> = blob_files(&path)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| std::path::Path::new(n)
            .extension()
            .is_some_and(|e| e == "zst")),
        "{names:?}"
    );
}

/// Bytes zstd cannot shrink much (so the compressed form is still above the threshold).
fn noise(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_large_partial_state_is_a_blob_file_replaced_files_are_removed_and_a_rerun_drops_it() {
    let store = TempStore::sqlite();
    let path = store.path();
    let engine = engine(&path, 64 << 10);
    let state = start(&engine, executor(16, Arc::default(), false));
    let run = state.run_id.clone();
    let big = |g: u8| -> Vec<u8> { (0..(1u32 << 20)).map(|i| (i % 241) as u8 ^ g).collect() };
    engine.save_partial_state(&run, "big", big(1)).unwrap();
    assert_eq!(blob_files(&path).len(), 1, "at the threshold: a file");
    assert_eq!(
        rows(&path, "SELECT length(data) FROM partial_states"),
        0,
        "the bytes are not in the database"
    );
    assert_eq!(
        engine.get_partial_state(&run, "big").unwrap().unwrap(),
        big(1)
    );
    // Saved again: the old file is stale and goes with the next write transaction.
    engine.save_partial_state(&run, "big", big(2)).unwrap();
    engine
        .save_partial_state(&run, "copy", vec![7; 10])
        .unwrap();
    assert_eq!(blob_files(&path).len(), 1, "the replaced file was removed");
    // The same state saved twice keeps its file.
    engine.save_partial_state(&run, "big", big(2)).unwrap();
    engine
        .save_partial_state(&run, "copy", vec![8; 10])
        .unwrap();
    assert_eq!(blob_files(&path).len(), 1);
    assert_eq!(
        engine.get_partial_state(&run, "big").unwrap().unwrap(),
        big(2)
    );
    assert_eq!(engine.check_integrity().unwrap(), "ok");
    engine.close();
    // Reopened: still there; a missing file is named by the integrity check.
    let engine = self::engine(&path, 64 << 10);
    assert_eq!(
        engine.get_partial_state(&run, "big").unwrap().unwrap(),
        big(2)
    );
    let file = blob_files(&path).pop().unwrap();
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(engine.get_partial_state(&run, "big").is_err());
    assert!(engine.check_integrity().unwrap().contains("is missing"));
    std::fs::write(&file, saved).unwrap();
    // A rerun of the node discards its progress, and its file with the next write.
    finish(
        &engine
            .resume(
                &run,
                graph(),
                executor(16, Arc::default(), false),
                ResumeOptions {
                    rerun: vec!["big".into()],
                    ..Default::default()
                },
            )
            .unwrap(),
    );
    assert_eq!(engine.get_partial_state(&run, "big").unwrap(), None);
    engine
        .save_partial_state(&run, "copy", vec![9; 10])
        .unwrap();
    assert!(blob_files(&path).is_empty(), "no file left behind");
}

#[test]
fn a_partial_state_given_as_parts_is_written_unjoined_to_a_file_or_joined_inline() {
    // `save_partial_state_parts` (what Python uses: the codec's header and tensor buffers):
    // at the threshold the parts go to one blob file whose bytes are their concatenation;
    // below it they are joined into the row.
    let store = TempStore::sqlite();
    let path = store.path();
    let engine = engine(&path, 64 << 10);
    let state = start(&engine, executor(16, Arc::default(), false));
    let run = state.run_id.clone();
    let (head, body, tail) = (noise(100), noise(1 << 20), vec![3u8; 17]);
    engine
        .save_partial_state_parts(&run, "big", &[&head, &body, &tail])
        .unwrap();
    let joined = [head.as_slice(), &body, &tail].concat();
    assert_eq!(blob_files(&path).len(), 1, "at the threshold: a file");
    assert_eq!(rows(&path, "SELECT length(data) FROM partial_states"), 0);
    assert_eq!(
        rows(&path, "SELECT file_size FROM partial_states"),
        joined.len() as i64
    );
    assert_eq!(
        engine.get_partial_state(&run, "big").unwrap().unwrap(),
        joined
    );
    // Read straight into a caller's buffer (what Python's bytearray gets), hash-checked.
    let Some(PartialState::File(file)) = engine.partial_state_ref(&run, "big").unwrap() else {
        panic!("the large state is a file");
    };
    let mut buf = vec![0u8; file.size as usize];
    engine.read_partial_file_into(&file, &mut buf).unwrap();
    assert_eq!(buf, joined);
    let mut short = vec![0u8; buf.len() - 1];
    assert!(engine.read_partial_file_into(&file, &mut short).is_err());
    engine
        .save_partial_state_parts(&run, "copy", &[b"ab", b"", b"c"])
        .unwrap();
    assert_eq!(
        engine.partial_state_ref(&run, "copy").unwrap(),
        Some(PartialState::Inline(b"abc".to_vec()))
    );
    assert_eq!(
        engine.get_partial_state(&run, "copy").unwrap().unwrap(),
        b"abc"
    );
    assert_eq!(blob_files(&path).len(), 1, "below the threshold: inline");
    let saved: Vec<u64> = engine
        .events(&run)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            resumeflow_core::EventKind::PartialStateSaved { size, .. } => Some(size),
            _ => None,
        })
        .collect();
    assert_eq!(
        saved,
        vec![joined.len() as u64, 3],
        "each event has the state's size"
    );
    assert_eq!(engine.check_integrity().unwrap(), "ok");
    engine.close();
}
