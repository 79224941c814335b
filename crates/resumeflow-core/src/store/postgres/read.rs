//! Reads from a PostgreSQL store: runs with their node states, events, checkpoint chains,
//! values, saved progress and control requests.

use std::collections::{BTreeMap, HashMap};

use super::conn::PgConn;
use super::write::node_from_row;
use crate::control::ControlRequest;
use crate::error::{Error, Result};
use crate::event::{Event, EventKind};
use crate::graph::Graph;
use crate::state::{RunState, RunStatus, ValueRef};
use crate::store::checkpoints::{CheckpointRow, Delta};
use crate::store::{RunFilter, StoredRun};

/// `RunNotFound` unless the run exists.
pub fn require_run(c: &mut PgConn, run_id: &str) -> Result<()> {
    match c.row("SELECT 1 FROM runs WHERE run_id = $1", &[&run_id])? {
        Some(_) => Ok(()),
        None => Err(Error::RunNotFound {
            run_id: run_id.to_string(),
        }),
    }
}

/// The run's row, spec and node states (read in one snapshot by the caller's transaction,
/// or as two statements outside one); the graph is decoded only `with_graph`.
pub fn stored_run(c: &mut PgConn, run_id: &str, with_graph: bool) -> Result<StoredRun> {
    let row = c.row(
        "SELECT r.workflow, r.graph_hash, CASE WHEN $2 THEN s.graph ELSE ''::bytea END, s.inputs,
                s.labels, r.status, r.error, r.created_at, r.updated_at, r.head_checkpoint,
                r.lease_owner, r.lease_expires, r.lease_token, r.last_seq
           FROM runs r JOIN run_specs s ON s.run_id = r.run_id WHERE r.run_id = $1",
        &[&run_id, &with_graph],
    )?;
    let Some(r) = row else {
        return Err(Error::RunNotFound {
            run_id: run_id.to_string(),
        });
    };
    let target = c.target.clone();
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        target.error(format!(
            "corrupt record in runs: run {run_id:?} {what}: {e}"
        ))
    };
    let graph: Option<Graph> = if with_graph {
        let bytes: Vec<u8> = r.get(2);
        Some(
            rmp_serde::from_slice::<Graph>(&bytes)
                .map_err(|e| bad("graph", &e))?
                .reindex(),
        )
    } else {
        None
    };
    let inputs: Vec<u8> = r.get(3);
    let inputs = crate::store::apply::decode_inputs(&inputs).map_err(|e| bad("inputs", &e))?;
    let labels: Vec<u8> = r.get(4);
    let labels: BTreeMap<String, String> =
        rmp_serde::from_slice(&labels).map_err(|e| bad("labels", &e))?;
    let status: String = r.get(5);
    let status = RunStatus::parse(&status).ok_or_else(|| bad("status", &status))?;
    let nodes = c
        .rows(
            "SELECT node_id, status, attempt, error, retryable, started_at, finished_at,
                    output_hash, output_size, inputs_override, peak_memory
               FROM node_states WHERE run_id = $1",
            &[&run_id],
        )?
        .iter()
        .map(node_from_row)
        .collect();
    Ok(StoredRun {
        state: RunState {
            run_id: run_id.to_string(),
            workflow: r.get(0),
            status,
            nodes,
            node_order: graph.as_ref().map_or_else(Vec::new, |g| {
                g.node_ids().into_iter().map(str::to_string).collect()
            }),
            checkpoint_id: r.get(9),
            error: r.get(6),
            created_at: r.get(7),
            updated_at: r.get(8),
            labels,
        },
        graph,
        graph_hash: r.get(1),
        inputs,
        lease_owner: r.get(10),
        lease_expires: r.get(11),
        lease_token: r.get(12),
        last_seq: r.get(13),
    })
}

/// Run ids matching the SQL part of `filter` (status, workflow, keyset cursor), in order.
pub fn filtered_ids(c: &mut PgConn, filter: &RunFilter) -> Result<Vec<String>> {
    let status = filter.status.map(RunStatus::as_str);
    let params: [&(dyn postgres::types::ToSql + Sync); 3] =
        [&status, &filter.workflow, &filter.after];
    let rows = if filter.newest_first {
        c.rows(
            "SELECT run_id FROM runs
              WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR workflow = $2)
                AND ($3::text IS NULL OR (created_at, run_id) <
                     (SELECT created_at, run_id FROM runs WHERE run_id = $3))
              ORDER BY created_at DESC, run_id DESC",
            &params,
        )?
    } else {
        c.rows(
            "SELECT run_id FROM runs
              WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR workflow = $2)
                AND ($3::text IS NULL OR (created_at, run_id) >
                     (SELECT created_at, run_id FROM runs WHERE run_id = $3))
              ORDER BY created_at, run_id",
            &params,
        )?
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Up to `limit` events of a run with `after < seq <= upto`, in order.
pub fn events_between(
    c: &mut PgConn,
    run_id: &str,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c.rows(
        "SELECT seq, at, payload FROM events WHERE run_id = $1 AND seq > $2 AND seq <= $3
          ORDER BY seq LIMIT $4",
        &[&run_id, &after, &upto, &limit],
    )?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            let payload: Vec<u8> = r.get(2);
            let kind = EventKind::decode(&payload).map_err(|e| {
                c.target.error(format!(
                    "corrupt record in events: run {run_id:?} seq {seq}: {e}"
                ))
            })?;
            Ok(Event {
                seq,
                at: r.get(1),
                kind,
            })
        })
        .collect()
}

/// Checkpoints of a run in increasing id order, with their deltas.
pub fn load_chain(
    c: &mut PgConn,
    run_id: &str,
) -> Result<(Vec<CheckpointRow>, HashMap<i64, Delta>)> {
    let rows = c
        .rows(
            "SELECT checkpoint_id, parent_id, seq, created_at, kind FROM checkpoints
              WHERE run_id = $1 ORDER BY checkpoint_id",
            &[&run_id],
        )?
        .iter()
        .map(|r| CheckpointRow {
            id: r.get(0),
            parent: r.get(1),
            seq: r.get(2),
            created_at: r.get(3),
            kind: r.get(4),
        })
        .collect();
    let mut deltas: HashMap<i64, Delta> = HashMap::new();
    for r in c.rows(
        "SELECT checkpoint_id, node_id, op, value_hash, value_size FROM checkpoint_nodes
          WHERE run_id = $1",
        &[&run_id],
    )? {
        let hash: Option<Vec<u8>> = r.get(3);
        let size: Option<i64> = r.get(4);
        deltas.entry(r.get(0)).or_default().push((
            r.get(1),
            r.get(2),
            hash.map(|hash| ValueRef {
                hash,
                size: size.unwrap_or(0) as u64,
            }),
        ));
    }
    Ok((rows, deltas))
}

/// A value's row: its stored bytes (joined from its chunks), location and codec.
pub fn blob(c: &mut PgConn, value: &ValueRef) -> Result<(Vec<u8>, i16, i64)> {
    let row = c.row(
        "SELECT data, location, codec FROM blobs WHERE hash = $1",
        &[&value.hash],
    )?;
    let Some(r) = row else {
        return Err(c.target.error(format!(
            "corrupt record in blobs: value {} is missing",
            value.hex()
        )));
    };
    let location: i16 = r.get(1);
    let codec: i16 = r.get(2);
    let mut data: Vec<u8> = r.get(0);
    if location == super::write::IN_CHUNKS {
        for chunk in c.rows(
            "SELECT data FROM blob_chunks WHERE hash = $1 ORDER BY idx",
            &[&value.hash],
        )? {
            data.extend_from_slice(chunk.get::<_, &[u8]>(0));
        }
    }
    Ok((data, location, i64::from(codec)))
}

/// A node's saved partial state.
pub fn partial_state(c: &mut PgConn, run_id: &str, node_id: &str) -> Result<Option<Vec<u8>>> {
    require_run(c, run_id)?;
    Ok(c.row(
        "SELECT data FROM partial_states WHERE run_id = $1 AND node_id = $2",
        &[&run_id, &node_id],
    )?
    .map(|r| r.get(0)))
}

/// A streaming node's saved segments in order.
pub fn partial_segments(
    c: &mut PgConn,
    run_id: &str,
    node_id: &str,
) -> Result<Vec<(u64, Vec<u8>)>> {
    require_run(c, run_id)?;
    Ok(c
        .rows(
            "SELECT first, data FROM partial_segments WHERE run_id = $1 AND node_id = $2 ORDER BY first",
            &[&run_id, &node_id],
        )?
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
        .collect())
}

/// Control requests recorded for any of `run_ids`.
pub fn pending_controls(
    c: &mut PgConn,
    run_ids: &[String],
) -> Result<Vec<(String, ControlRequest)>> {
    let rows = c.rows(
        "SELECT run_id, kind FROM control_requests WHERE run_id = ANY($1)",
        &[&run_ids],
    )?;
    rows.iter()
        .map(|r| {
            let kind: String = r.get(1);
            let request = ControlRequest::parse(&kind).ok_or_else(|| {
                c.target
                    .error(format!("corrupt record in control_requests: kind {kind:?}"))
            })?;
            Ok((r.get(0), request))
        })
        .collect()
}

/// True if some run of `workflows` (by name) is queued.
pub fn any_queued(c: &mut PgConn, workflows: &[(String, String)]) -> Result<bool> {
    if workflows.is_empty() {
        return Ok(false);
    }
    let names: Vec<&str> = workflows.iter().map(|(n, _)| n.as_str()).collect();
    Ok(c.row(
        "SELECT 1 FROM runs WHERE status = 'queued' AND workflow = ANY($1) LIMIT 1",
        &[&names],
    )?
    .is_some())
}

/// The change feed's marker: the `changes` sequence, advanced by every writer right after
/// each commit (in the commit's round trip), so a reader that sees it move sees the commit.
pub fn change_marker(c: &mut PgConn) -> Result<u64> {
    let row = c.row(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM changes",
        &[],
    )?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
}
