//! The queue and control requests on SQLite: submitting a run without a lease, claiming the
//! oldest queued run of a set of workflows together with its lease (one `BEGIN IMMEDIATE`
//! transaction, the writer's), recording interrupt/cancel requests for the lease holder, and
//! reading a run's events after a cursor. The rules (what a request does to a run in each
//! status) are in [`crate::control`]; this file holds only the SQL.

use std::path::Path;

use rusqlite::{params, params_from_iter, Connection};

use super::apply::{acquire, append_all, corrupt, insert_run, load_head, sql};
use super::{NewRun, RunBatch};
use crate::control::{ControlEffect, ControlRequest};
use crate::error::Result;
use crate::event::{Event, EventKind};
use crate::lease::{Lease, LeaseRequest};
use crate::state::RunStatus;

/// Records a new run as `queued` (no lease: any worker may claim it).
pub fn submit(conn: &Connection, path: &Path, run: &NewRun, now: f64) -> Result<()> {
    insert_run(conn, path, run, now)?;
    let head = load_head(conn, path, &run.run_id)?;
    let mut batch = RunBatch::new(&run.run_id, None);
    batch.events.push(EventKind::RunQueued);
    append_all(conn, path, head, &batch, now)
}

/// True if some run of `workflows` (by name) is queued: a read, so that an idle worker's
/// polling costs no write transaction.
pub fn any_queued(conn: &Connection, path: &Path, workflows: &[(String, String)]) -> Result<bool> {
    if workflows.is_empty() {
        return Ok(false);
    }
    let placeholders = vec!["?"; workflows.len()].join(", ");
    let query = format!(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'queued' AND workflow IN ({placeholders}))"
    );
    conn.prepare_cached(&query)
        .and_then(|mut st| {
            st.query_row(params_from_iter(workflows.iter().map(|(n, _)| n)), |r| {
                r.get::<_, bool>(0)
            })
        })
        .map_err(sql(path))
}

/// Takes the lease of the oldest queued run whose `(workflow, structural hash)` is one of
/// `workflows`, in the caller's write transaction; `None` if there is none.
pub fn claim(
    conn: &Connection,
    path: &Path,
    workflows: &[(String, String)],
    request: &LeaseRequest,
    now: f64,
) -> Result<Option<Lease>> {
    if workflows.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = workflows.iter().map(|(name, _)| name.as_str()).collect();
    let placeholders = vec!["?"; names.len()].join(", ");
    let query = format!(
        "SELECT run_id, workflow, graph_hash FROM runs
         WHERE status = 'queued' AND workflow IN ({placeholders})
         ORDER BY created_at, run_id"
    );
    let map = sql(path);
    let mut st = conn.prepare_cached(&query).map_err(&map)?;
    let mut rows = st.query(params_from_iter(names.iter())).map_err(&map)?;
    let mut chosen = None;
    while let Some(row) = rows.next().map_err(&map)? {
        let run_id: String = row.get(0).map_err(&map)?;
        let workflow: String = row.get(1).map_err(&map)?;
        let hash: String = row.get(2).map_err(&map)?;
        // A run submitted with another structure of the workflow waits for a worker that
        // serves that structure.
        if workflows.iter().any(|(n, h)| *n == workflow && *h == hash) {
            chosen = Some(run_id);
            break;
        }
    }
    drop(rows);
    match chosen {
        Some(run_id) => {
            acquire(conn, path, &run_id, request, Vec::new(), Vec::new(), now).map(Some)
        }
        None => Ok(None),
    }
}

/// Applies or records `request` for `run_id`; returns the run's status afterwards.
pub fn request_control(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    request: ControlRequest,
    now: f64,
) -> Result<RunStatus> {
    let head = load_head(conn, path, run_id)?;
    let status = head.projection.status;
    match request.effect_on(status) {
        ControlEffect::EndNow(end) => {
            let mut batch = RunBatch::new(run_id, None);
            batch.events.push(match end {
                RunStatus::Cancelled => EventKind::RunCancelled,
                _ => EventKind::RunPaused,
            });
            append_all(conn, path, head, &batch, now)?;
            Ok(end)
        }
        ControlEffect::Record => {
            conn.prepare_cached(
                "INSERT INTO control_requests (run_id, kind, requested_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run_id) DO UPDATE SET
                   kind = CASE WHEN kind = 'cancel' OR excluded.kind = 'cancel'
                               THEN 'cancel' ELSE 'interrupt' END,
                   requested_at = excluded.requested_at",
            )
            .and_then(|mut st| st.execute(params![run_id, request.as_str(), now]))
            .map_err(sql(path))?;
            Ok(status)
        }
        ControlEffect::Nothing => Ok(status),
    }
}

/// Requests recorded for any of `run_ids`.
pub fn pending_controls(
    conn: &Connection,
    path: &Path,
    run_ids: &[String],
) -> Result<Vec<(String, ControlRequest)>> {
    let map = sql(path);
    // The table holds only unsettled requests: a handful of rows.
    let mut st = conn
        .prepare_cached("SELECT run_id, kind FROM control_requests")
        .map_err(&map)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(&map)?;
    let mut out = Vec::new();
    for row in rows {
        let (run_id, kind) = row.map_err(&map)?;
        if run_ids.contains(&run_id) {
            let kind = ControlRequest::parse(&kind)
                .ok_or_else(|| corrupt(path, "control_requests", format!("kind {kind:?}")))?;
            out.push((run_id, kind));
        }
    }
    Ok(out)
}

/// Drops the requests of a run whose lease is being released (same transaction).
pub fn settle_controls(conn: &Connection, path: &Path, run_id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM control_requests WHERE run_id = ?1")
        .and_then(|mut st| st.execute([run_id]))
        .map_err(sql(path))?;
    Ok(())
}

/// Puts a paused run that no worker holds back in the queue (a stopping worker hands back
/// the runs it paused); false if the run is not paused or is held.
pub fn requeue(conn: &Connection, path: &Path, run_id: &str, now: f64) -> Result<bool> {
    let head = load_head(conn, path, run_id)?;
    if head.projection.status != RunStatus::Paused || head.lease_owner.is_some() {
        return Ok(false);
    }
    let mut batch = RunBatch::new(run_id, None);
    batch.events.push(EventKind::RunQueued);
    append_all(conn, path, head, &batch, now)?;
    Ok(true)
}

/// Up to `limit` events of `run_id` with `seq > after_seq`, oldest first. Events that a
/// `cleanup` compacted are gone: a cursor inside a compacted range gets the `Compacted`
/// event (whose seq is the end of that range, and whose snapshot stands for them) first.
pub fn events_after(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    super::checkpoints::events_between(conn, path, run_id, after_seq, i64::MAX, limit)
}
