//! Checkpoint chains: rebuilding the state as of a checkpoint from deltas, `history`, and
//! `cleanup` (folding deleted checkpoints into the oldest kept ones and compacting events).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::event::{Event, EventKind};
use crate::projection::RunProjection;
use crate::state::{Checkpoint, ValueRef};

use super::apply::{corrupt, sql, OP_COMPLETED, OP_MODIFIED, OP_RESET};

/// A `checkpoints` row.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    pub id: i64,
    pub parent: Option<i64>,
    pub seq: i64,
    pub created_at: f64,
    pub kind: String,
}

pub type Delta = Vec<(String, i64, Option<ValueRef>)>;
/// Completed nodes and their values.
pub type CompletedValues = BTreeMap<String, ValueRef>;

/// Checkpoints of a run in increasing id order, with their deltas.
pub fn load_chain(
    conn: &Connection,
    path: &Path,
    run_id: &str,
) -> Result<(Vec<CheckpointRow>, HashMap<i64, Delta>)> {
    let map = sql(path);
    let mut st = conn
        .prepare_cached(
            "SELECT checkpoint_id, parent_id, seq, created_at, kind FROM checkpoints
             WHERE run_id = ?1 ORDER BY checkpoint_id",
        )
        .map_err(&map)?;
    let rows = st
        .query_map([run_id], |r| {
            Ok(CheckpointRow {
                id: r.get(0)?,
                parent: r.get(1)?,
                seq: r.get(2)?,
                created_at: r.get(3)?,
                kind: r.get(4)?,
            })
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(&map)?;
    let mut st = conn
        .prepare_cached(
            "SELECT checkpoint_id, node_id, op, value_hash, value_size FROM checkpoint_nodes WHERE run_id = ?1",
        )
        .map_err(&map)?;
    let mut deltas: HashMap<i64, Delta> = HashMap::new();
    let mut q = st.query([run_id]).map_err(&map)?;
    while let Some(r) = q.next().map_err(&map)? {
        let hash: Option<Vec<u8>> = r.get(3).map_err(&map)?;
        let size: Option<i64> = r.get(4).map_err(&map)?;
        deltas.entry(r.get(0).map_err(&map)?).or_default().push((
            r.get(1).map_err(&map)?,
            r.get(2).map_err(&map)?,
            hash.map(|hash| ValueRef {
                hash,
                size: size.unwrap_or(0) as u64,
            }),
        ));
    }
    Ok((rows, deltas))
}

fn apply_delta(state: &mut CompletedValues, delta: Option<&Delta>) {
    for (node, op, value) in delta.into_iter().flatten() {
        match (*op, value) {
            (OP_COMPLETED | OP_MODIFIED, Some(v)) => {
                state.insert(node.clone(), v.clone());
            }
            (OP_RESET, _) => {
                state.remove(node);
            }
            _ => {}
        }
    }
}

/// The state as of `target`: its delta applied over its parent's state, back to a root.
pub fn state_at(
    rows: &[CheckpointRow],
    deltas: &HashMap<i64, Delta>,
    target: i64,
) -> Option<CompletedValues> {
    let by_id: HashMap<i64, &CheckpointRow> = rows.iter().map(|r| (r.id, r)).collect();
    let mut chain = Vec::new();
    let mut cur = Some(target);
    while let Some(id) = cur {
        let row = by_id.get(&id)?;
        chain.push(id);
        cur = if row.kind == "snapshot" {
            None
        } else {
            row.parent
        };
        if chain.len() > rows.len() {
            return None; // a loop would be corruption
        }
    }
    let mut state = CompletedValues::new();
    for id in chain.iter().rev() {
        apply_delta(&mut state, deltas.get(id));
    }
    Some(state)
}

/// Every checkpoint's state, computed once each in id order (parents have smaller ids).
fn all_states(
    rows: &[CheckpointRow],
    deltas: &HashMap<i64, Delta>,
) -> HashMap<i64, CompletedValues> {
    let mut states: HashMap<i64, CompletedValues> = HashMap::with_capacity(rows.len());
    for row in rows {
        let mut state = match (row.kind.as_str(), row.parent) {
            ("snapshot", _) | (_, None) => CompletedValues::new(),
            (_, Some(p)) => states.get(&p).cloned().unwrap_or_default(),
        };
        apply_delta(&mut state, deltas.get(&row.id));
        states.insert(row.id, state);
    }
    states
}

/// Checkpoints newest first, with the completed nodes as of each in `order`.
pub fn history(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    order: &[String],
) -> Result<Vec<Checkpoint>> {
    let (rows, deltas) = load_chain(conn, path, run_id)?;
    Ok(history_of(&rows, &deltas, run_id, order))
}

/// Checkpoints newest first from a loaded chain, with the completed nodes as of each.
pub fn history_of(
    rows: &[CheckpointRow],
    deltas: &HashMap<i64, Delta>,
    run_id: &str,
    order: &[String],
) -> Vec<Checkpoint> {
    let states = all_states(rows, deltas);
    rows.iter()
        .rev()
        .map(|row| {
            let state = &states[&row.id];
            Checkpoint {
                run_id: run_id.to_string(),
                checkpoint_id: row.id,
                parent_id: row.parent,
                created_at: row.created_at,
                seq: row.seq,
                completed: order
                    .iter()
                    .filter(|n| state.contains_key(*n))
                    .cloned()
                    .collect(),
                kind: row.kind.clone(),
            }
        })
        .collect()
}

/// What a cleanup of one run deletes and rewrites: no SQL, shared by every store.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupPlan {
    /// Checkpoints deleted (with their deltas).
    pub deleted: BTreeSet<i64>,
    /// Kept checkpoints whose parent goes away: each becomes a snapshot of its full state.
    pub snapshots: Vec<(i64, CompletedValues)>,
    /// Events up to this seq are compacted into one `Compacted` event.
    pub compact_upto: i64,
}

/// Plans deleting all but the newest `keep_last` checkpoints (and the head), only those
/// created before `older_than`; `None` when nothing goes.
pub fn plan_cleanup(
    rows: &[CheckpointRow],
    deltas: &HashMap<i64, Delta>,
    head: Option<i64>,
    keep_last: usize,
    older_than: Option<f64>,
) -> std::result::Result<Option<CleanupPlan>, String> {
    let mut keep: BTreeSet<i64> = rows.iter().rev().take(keep_last).map(|r| r.id).collect();
    keep.extend(head);
    let deleted: Vec<&CheckpointRow> = rows
        .iter()
        .filter(|r| !keep.contains(&r.id) && older_than.is_none_or(|t| r.created_at < t))
        .collect();
    if deleted.is_empty() {
        return Ok(None);
    }
    let deleted_ids: BTreeSet<i64> = deleted.iter().map(|r| r.id).collect();
    let mut snapshots = Vec::new();
    for row in rows.iter().filter(|r| !deleted_ids.contains(&r.id)) {
        if row.kind == "snapshot" || !row.parent.is_some_and(|p| deleted_ids.contains(&p)) {
            continue;
        }
        let state = state_at(rows, deltas, row.id)
            .ok_or_else(|| format!("broken parent chain at {}", row.id))?;
        snapshots.push((row.id, state));
    }
    Ok(Some(CleanupPlan {
        compact_upto: deleted.iter().map(|r| r.seq).max().unwrap_or(0),
        deleted: deleted_ids,
        snapshots,
    }))
}

/// The event that stands for `events` once they are compacted, with its time and the
/// values its snapshot still references; `None` if there is nothing to fold.
pub fn compaction(events: &[Event]) -> Option<(EventKind, f64, Vec<Vec<u8>>)> {
    if events.len() <= 1 {
        return None;
    }
    let snapshot = RunProjection::replay(events);
    let at = snapshot.updated_at;
    let hashes = snapshot
        .nodes
        .values()
        .filter_map(|n| n.output.as_ref().map(|v| v.hash.clone()))
        .collect();
    Some((
        EventKind::Compacted {
            snapshot: Box::new(snapshot),
        },
        at,
        hashes,
    ))
}

/// Deletes old checkpoints of one run inside the open transaction; returns how many.
pub fn cleanup_run(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    keep_last: usize,
    older_than: Option<f64>,
) -> Result<usize> {
    let map = sql(path);
    let (rows, deltas) = load_chain(conn, path, run_id)?;
    let head: Option<i64> = conn
        .query_row(
            "SELECT head_checkpoint FROM runs WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .map_err(&map)?;
    let Some(plan) = plan_cleanup(&rows, &deltas, head, keep_last, older_than)
        .map_err(|e| corrupt(path, "checkpoints", format!("run {run_id:?}: {e}")))?
    else {
        return Ok(0);
    };
    for (id, state) in &plan.snapshots {
        conn.execute(
            "DELETE FROM checkpoint_nodes WHERE run_id = ?1 AND checkpoint_id = ?2",
            params![run_id, id],
        )
        .map_err(&map)?;
        let mut st = conn
            .prepare_cached(
                "INSERT INTO checkpoint_nodes (run_id, checkpoint_id, node_id, op, value_hash, value_size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(&map)?;
        for (node, value) in state {
            st.execute(params![
                run_id,
                id,
                node,
                OP_COMPLETED,
                value.hash,
                value.size as i64
            ])
            .map_err(&map)?;
        }
        conn.execute(
            "UPDATE checkpoints SET parent_id = NULL, kind = 'snapshot' WHERE run_id = ?1 AND checkpoint_id = ?2",
            params![run_id, id],
        )
        .map_err(&map)?;
    }
    for id in &plan.deleted {
        conn.execute(
            "DELETE FROM checkpoint_nodes WHERE run_id = ?1 AND checkpoint_id = ?2",
            params![run_id, id],
        )
        .map_err(&map)?;
        conn.execute(
            "DELETE FROM checkpoints WHERE run_id = ?1 AND checkpoint_id = ?2",
            params![run_id, id],
        )
        .map_err(&map)?;
    }
    compact_events(conn, path, run_id, plan.compact_upto)?;
    Ok(plan.deleted.len())
}

/// Replaces the events up to `upto` with one `Compacted` event holding their fold.
fn compact_events(conn: &Connection, path: &Path, run_id: &str, upto: i64) -> Result<()> {
    let map = sql(path);
    let events = load_events(conn, path, run_id, Some(upto))?;
    let Some((kind, at, hashes)) = compaction(&events) else {
        return Ok(());
    };
    conn.execute(
        "DELETE FROM events WHERE run_id = ?1 AND seq <= ?2",
        params![run_id, upto],
    )
    .map_err(&map)?;
    conn.execute(
        "INSERT INTO events (run_id, seq, at, kind, node_id, payload) VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
        params![run_id, upto, at, kind.name(), kind.encode()],
    )
    .map_err(&map)?;
    conn.execute("DELETE FROM compaction_refs WHERE run_id = ?1", [run_id])
        .map_err(&map)?;
    for hash in hashes {
        conn.execute(
            "INSERT OR IGNORE INTO compaction_refs (run_id, hash) VALUES (?1, ?2)",
            params![run_id, hash],
        )
        .map_err(&map)?;
    }
    Ok(())
}

/// Removes values that no node state, checkpoint or compacted event refers to; returns the
/// hashes of those whose bytes live in blob files (to remove once this commits).
pub fn collect_garbage(conn: &Connection, path: &Path) -> Result<Vec<(Vec<u8>, i64)>> {
    // One pass each: SQLite builds the set of referenced hashes once (no per-blob lookups,
    // and no indexes on the hot write path just for this rare sweep).
    const UNREFERENCED: &str = "hash NOT IN (
            SELECT output_hash FROM node_states WHERE output_hash IS NOT NULL
            UNION SELECT value_hash FROM checkpoint_nodes WHERE value_hash IS NOT NULL
            UNION SELECT hash FROM compaction_refs)";
    let files = conn
        .prepare(&format!(
            "SELECT hash, codec FROM blobs WHERE location = 1 AND {UNREFERENCED}"
        ))
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql(path))?;
    conn.execute(&format!("DELETE FROM blobs WHERE {UNREFERENCED}"), [])
        .map_err(sql(path))?;
    Ok(files)
}

/// A run's events in order, optionally only up to `upto`.
pub fn load_events(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    upto: Option<i64>,
) -> Result<Vec<Event>> {
    events_between(
        conn,
        path,
        run_id,
        i64::MIN,
        upto.unwrap_or(i64::MAX),
        usize::MAX,
    )
}

/// Up to `limit` events of a run with `after < seq <= upto`, in order.
pub fn events_between(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let map = sql(path);
    let mut st = conn
        .prepare_cached(
            "SELECT seq, at, payload FROM events WHERE run_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
        )
        .map_err(&map)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut q = st
        .query(params![run_id, after, upto, limit])
        .map_err(&map)?;
    let mut events = Vec::new();
    while let Some(r) = q.next().map_err(&map)? {
        let seq: i64 = r.get(0).map_err(&map)?;
        let payload: Vec<u8> = r.get(2).map_err(&map)?;
        let kind = EventKind::decode(&payload)
            .map_err(|e| corrupt(path, "events", format!("run {run_id:?} seq {seq}: {e}")))?;
        events.push(Event {
            seq,
            at: r.get(1).map_err(&map)?,
            kind,
        });
    }
    Ok(events)
}

/// `CheckpointNotFound` unless `checkpoint_id` exists for the run.
pub fn require_checkpoint(rows: &[CheckpointRow], run_id: &str, checkpoint_id: i64) -> Result<()> {
    if rows.iter().any(|r| r.id == checkpoint_id) {
        Ok(())
    } else {
        Err(Error::CheckpointNotFound {
            run_id: run_id.to_string(),
            checkpoint_id,
        })
    }
}
