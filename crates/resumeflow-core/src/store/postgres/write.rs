//! Writes inside a PostgreSQL group transaction: the SQL that carries out a
//! [`WritePlan`](crate::store::plan::WritePlan), lease changes, the queue and control
//! requests. The run's row is locked (`FOR UPDATE`) before anything is planned from it, so
//! writers on other hosts see each other's commits in order and a stale fencing token is
//! refused against the row as committed.

use std::collections::{BTreeMap, BTreeSet};

use postgres::Row;

use super::conn::PgConn;
use crate::control::{ControlEffect, ControlRequest};
use crate::error::{Error, Result};
use crate::event::EventKind;
use crate::lease::{Lease, LeaseRequest};
use crate::projection::RunProjection;
use crate::state::{NodeState, NodeStatus, RunStatus, ValueRef};
use crate::store::plan::{self, RunHead, WritePlan, OP_COMPLETED};
use crate::store::{checkpoints, NewRun, RunBatch};

/// Values of at least this many stored bytes go into `blob_chunks`, this many per row.
pub const CHUNK: usize = 8 << 20;

/// Value locations in `blobs.location`.
pub const IN_ROW: i16 = 0;
pub const IN_FILE: i16 = 1;
pub const IN_CHUNKS: i16 = 2;

/// The run's head, its row locked for the rest of the transaction.
pub fn load_head(c: &mut PgConn, run_id: &str) -> Result<RunHead> {
    let row = c.row(
        "SELECT status, error, head_checkpoint, updated_at, last_seq, last_checkpoint,
                lease_owner, lease_expires, lease_token FROM runs WHERE run_id = $1 FOR UPDATE",
        &[&run_id],
    )?;
    let Some(r) = row else {
        return Err(Error::RunNotFound {
            run_id: run_id.to_string(),
        });
    };
    let status: String = r.get(0);
    let status = RunStatus::parse(&status).ok_or_else(|| {
        c.target
            .error(format!("corrupt record in runs: status {status:?}"))
    })?;
    Ok(RunHead {
        run_id: run_id.to_string(),
        projection: RunProjection {
            status,
            head_checkpoint: r.get(2),
            error: r.get(1),
            updated_at: r.get(3),
            nodes: BTreeMap::new(),
        },
        last_seq: r.get(4),
        last_checkpoint: r.get(5),
        lease_owner: r.get(6),
        lease_expires: r.get(7),
        lease_token: r.get(8),
        // This store keeps no completed marks: a resume reads every node row.
        marks_valid: false,
    })
}

/// One `node_states` row.
pub fn node_from_row(r: &Row) -> (String, NodeState) {
    let status: String = r.get(1);
    let hash: Option<Vec<u8>> = r.get(7);
    let size: Option<i64> = r.get(8);
    (
        r.get(0),
        NodeState {
            status: NodeStatus::parse(&status).unwrap_or(NodeStatus::Pending),
            attempt: r.get::<_, i64>(2) as u32,
            error: r.get(3),
            retryable: r.get(4),
            started_at: r.get(5),
            finished_at: r.get(6),
            output: hash.map(|hash| ValueRef {
                hash,
                size: size.unwrap_or(0) as u64,
            }),
            inputs_override: r.get(9),
            peak_memory: r.get::<_, Option<i64>>(10).map(|v| v as u64),
        },
    )
}

fn load_nodes(
    c: &mut PgConn,
    run_id: &str,
    names: &BTreeSet<String>,
) -> Result<BTreeMap<String, NodeState>> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows = c.rows(
        "SELECT node_id, status, attempt, error, retryable, started_at, finished_at,
                output_hash, output_size, inputs_override, peak_memory
           FROM node_states WHERE run_id = $1 AND node_id = ANY($2)",
        &[&run_id, &names],
    )?;
    Ok(rows.iter().map(node_from_row).collect())
}

/// Carries out a plan: one statement per table, whatever the batch's size.
fn write_plan(c: &mut PgConn, plan: &WritePlan) -> Result<()> {
    let run_id = plan.head.run_id.as_str();
    if !plan.cleared_progress.is_empty() {
        let nodes: Vec<&str> = plan.cleared_progress.iter().map(String::as_str).collect();
        c.exec(
            "DELETE FROM partial_states WHERE run_id = $1 AND node_id = ANY($2)",
            &[&run_id, &nodes],
        )?;
        c.exec(
            "DELETE FROM partial_segments WHERE run_id = $1 AND node_id = ANY($2)",
            &[&run_id, &nodes],
        )?;
    }
    if plan.settle_controls {
        c.exec("DELETE FROM control_requests WHERE run_id = $1", &[&run_id])?;
    }
    if !plan.events.is_empty() {
        let seqs: Vec<i64> = plan.events.iter().map(|e| e.seq).collect();
        let ats: Vec<f64> = plan.events.iter().map(|e| e.at).collect();
        let kinds: Vec<&str> = plan.events.iter().map(|e| e.kind.name()).collect();
        let nodes: Vec<Option<&str>> = plan.events.iter().map(|e| e.kind.node()).collect();
        let payloads: Vec<Vec<u8>> = plan.events.iter().map(|e| e.kind.encode()).collect();
        c.exec(
            "INSERT INTO events (run_id, seq, at, kind, node_id, payload)
             SELECT $1, * FROM unnest($2::bigint[], $3::float8[], $4::text[], $5::text[], $6::bytea[])",
            &[&run_id, &seqs, &ats, &kinds, &nodes, &payloads],
        )?;
    }
    if let Some(cp) = &plan.checkpoint {
        c.exec(
            "INSERT INTO checkpoints (run_id, checkpoint_id, parent_id, seq, created_at, kind)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &run_id,
                &cp.id,
                &cp.parent,
                &cp.seq,
                &cp.created_at,
                &cp.kind,
            ],
        )?;
        insert_delta(c, run_id, cp.id, &cp.delta)?;
    }
    store_nodes(c, run_id, &plan.head.projection.nodes)?;
    let p = &plan.head.projection;
    let h = &plan.head;
    c.exec(
        "UPDATE runs SET status = $2, error = $3, head_checkpoint = $4, updated_at = $5,
            last_seq = $6, last_checkpoint = $7, lease_owner = $8, lease_expires = $9,
            lease_token = $10 WHERE run_id = $1",
        &[
            &run_id,
            &p.status.as_str(),
            &p.error,
            &p.head_checkpoint,
            &p.updated_at,
            &h.last_seq,
            &h.last_checkpoint,
            &h.lease_owner,
            &h.lease_expires,
            &h.lease_token,
        ],
    )?;
    Ok(())
}

/// Inserts (or replaces) a checkpoint's delta rows.
pub fn insert_delta(
    c: &mut PgConn,
    run_id: &str,
    checkpoint_id: i64,
    delta: &[plan::DeltaEntry],
) -> Result<()> {
    if delta.is_empty() {
        return Ok(());
    }
    let nodes: Vec<&str> = delta.iter().map(|(n, _, _)| n.as_str()).collect();
    let ops: Vec<i64> = delta.iter().map(|(_, op, _)| *op).collect();
    let hashes: Vec<Option<&[u8]>> = delta
        .iter()
        .map(|(_, _, v)| v.as_ref().map(|v| &v.hash[..]))
        .collect();
    let sizes: Vec<Option<i64>> = delta
        .iter()
        .map(|(_, _, v)| v.as_ref().map(|v| v.size as i64))
        .collect();
    c.exec(
        "INSERT INTO checkpoint_nodes (run_id, checkpoint_id, node_id, op, value_hash, value_size)
         SELECT $1, $2, * FROM unnest($3::text[], $4::bigint[], $5::bytea[], $6::bigint[])
         ON CONFLICT (run_id, checkpoint_id, node_id) DO UPDATE SET op = EXCLUDED.op,
            value_hash = EXCLUDED.value_hash, value_size = EXCLUDED.value_size",
        &[&run_id, &checkpoint_id, &nodes, &ops, &hashes, &sizes],
    )?;
    Ok(())
}

fn store_nodes(c: &mut PgConn, run_id: &str, nodes: &BTreeMap<String, NodeState>) -> Result<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = nodes.keys().map(String::as_str).collect();
    let states: Vec<&NodeState> = nodes.values().collect();
    let status: Vec<&str> = states.iter().map(|s| s.status.as_str()).collect();
    let attempt: Vec<i64> = states.iter().map(|s| i64::from(s.attempt)).collect();
    let error: Vec<Option<&str>> = states.iter().map(|s| s.error.as_deref()).collect();
    let retryable: Vec<Option<bool>> = states.iter().map(|s| s.retryable).collect();
    let started: Vec<Option<f64>> = states.iter().map(|s| s.started_at).collect();
    let finished: Vec<Option<f64>> = states.iter().map(|s| s.finished_at).collect();
    let hash: Vec<Option<&[u8]>> = states
        .iter()
        .map(|s| s.output.as_ref().map(|v| &v.hash[..]))
        .collect();
    let size: Vec<Option<i64>> = states
        .iter()
        .map(|s| s.output.as_ref().map(|v| v.size as i64))
        .collect();
    let overrides: Vec<Option<&[u8]>> = states
        .iter()
        .map(|s| s.inputs_override.as_deref())
        .collect();
    let peak: Vec<Option<i64>> = states
        .iter()
        .map(|s| s.peak_memory.map(|v| v as i64))
        .collect();
    c.exec(
        "INSERT INTO node_states (run_id, node_id, status, attempt, error, retryable, started_at,
                                  finished_at, output_hash, output_size, inputs_override, peak_memory)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::bool[],
                                  $7::float8[], $8::float8[], $9::bytea[], $10::bigint[],
                                  $11::bytea[], $12::bigint[])
         ON CONFLICT (run_id, node_id) DO UPDATE SET status = EXCLUDED.status,
            attempt = EXCLUDED.attempt, error = EXCLUDED.error, retryable = EXCLUDED.retryable,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            output_hash = EXCLUDED.output_hash, output_size = EXCLUDED.output_size,
            inputs_override = EXCLUDED.inputs_override, peak_memory = EXCLUDED.peak_memory",
        &[
            &run_id, &ids, &status, &attempt, &error, &retryable, &started, &finished, &hash,
            &size, &overrides, &peak,
        ],
    )?;
    Ok(())
}

/// Stores the batch's values (content-addressed: a value stored already is skipped).
fn insert_values(c: &mut PgConn, batch: &RunBatch) -> Result<()> {
    for v in &batch.values {
        let hash = &v.value.hash[..];
        let size = v.value.size as i64;
        let codec = v.codec.code() as i16;
        if v.in_file || v.bytes.len() < CHUNK {
            let location = if v.in_file { IN_FILE } else { IN_ROW };
            c.exec(
                "INSERT INTO blobs (hash, size, data, location, codec) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (hash) DO NOTHING",
                &[&hash, &size, &&v.bytes[..], &location, &codec],
            )?;
            continue;
        }
        let empty: &[u8] = &[];
        let inserted = c.exec(
            "INSERT INTO blobs (hash, size, data, location, codec) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (hash) DO NOTHING",
            &[&hash, &size, &empty, &IN_CHUNKS, &codec],
        )?;
        if inserted == 0 {
            continue;
        }
        for (i, chunk) in v.bytes.chunks(CHUNK).enumerate() {
            let idx = i as i32;
            c.exec(
                "INSERT INTO blob_chunks (hash, idx, data) VALUES ($1, $2, $3)",
                &[&hash, &idx, &chunk],
            )?;
        }
    }
    Ok(())
}

/// Appends a batch to the run of `head` (whose row is locked).
pub fn append_all(c: &mut PgConn, head: RunHead, batch: &RunBatch, now: f64) -> Result<()> {
    insert_values(c, batch)?;
    let run_id = batch.run_id.as_str();
    let nodes = load_nodes(c, run_id, &plan::nodes_named(&batch.events))?;
    if !batch.partial_states.is_empty() || !batch.partial_segments.is_empty() {
        plan::check_attempts(run_id, &nodes, &batch.events)?;
    }
    for (node, first, data) in &batch.partial_segments {
        let first = *first as i64;
        c.exec(
            "DELETE FROM partial_segments WHERE run_id = $1 AND node_id = $2 AND first >= $3",
            &[&run_id, node, &first],
        )?;
        c.exec(
            "INSERT INTO partial_segments (run_id, node_id, first, data) VALUES ($1, $2, $3, $4)",
            &[&run_id, node, &first, data],
        )?;
    }
    if !batch.dropped_segments.is_empty() {
        c.exec(
            "DELETE FROM partial_segments WHERE run_id = $1 AND node_id = ANY($2)",
            &[&run_id, &batch.dropped_segments],
        )?;
    }
    for (node, data) in &batch.partial_states {
        c.exec(
            "INSERT INTO partial_states (run_id, node_id, data, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, node_id) DO UPDATE SET data = EXCLUDED.data,
                updated_at = EXCLUDED.updated_at",
            &[&run_id, node, data, &now],
        )?;
    }
    write_plan(c, &plan::plan(head, nodes, &batch.events, now))
}

/// Applies a batch, refusing it if its fencing token is stale or its lease was released.
pub fn apply_batch(c: &mut PgConn, batch: &RunBatch, now: f64) -> Result<()> {
    let head = load_head(c, &batch.run_id)?;
    plan::check_token(&head, batch.token)?;
    append_all(c, head, batch, now)
}

/// Takes the lease of a run and appends `events` under the new token; with
/// `expected_seq`, refused with `RunChanged` unless the run's last event is still that one.
pub fn acquire(
    c: &mut PgConn,
    run_id: &str,
    request: &LeaseRequest,
    expected_seq: Option<i64>,
    events: Vec<EventKind>,
    values: Vec<crate::store::BatchValue>,
    now: f64,
) -> Result<Lease> {
    let mut head = load_head(c, run_id)?;
    if expected_seq.is_some_and(|seq| seq != head.last_seq) {
        return Err(Error::RunChanged {
            run_id: run_id.to_string(),
        });
    }
    for event in &events {
        if let EventKind::Rewound { checkpoint_id } = event {
            let exists = c
                .row(
                    "SELECT 1 FROM checkpoints WHERE run_id = $1 AND checkpoint_id = $2",
                    &[&run_id, checkpoint_id],
                )?
                .is_some();
            if !exists {
                return Err(Error::CheckpointNotFound {
                    run_id: run_id.to_string(),
                    checkpoint_id: *checkpoint_id,
                });
            }
        }
    }
    let token = plan::take_lease(&mut head, request, now)?;
    let batch = plan::lease_batch(run_id, &request.owner, token, events, values);
    append_all(c, head, &batch, now)?;
    Ok(Lease {
        run_id: run_id.to_string(),
        owner: request.owner.clone(),
        token,
    })
}

/// Inserts a new run with its `RunCreated` event (and no lease).
pub fn insert_run(c: &mut PgConn, run: &NewRun, now: f64) -> Result<()> {
    let graph = rmp_serde::to_vec_named(&run.graph).expect("graphs encode");
    let inputs = crate::store::apply::encode_inputs(&run.inputs);
    let labels = rmp_serde::to_vec_named(&run.labels).expect("labels encode");
    let inserted = c.exec(
        "INSERT INTO runs (run_id, workflow, graph_hash, status, created_at, updated_at)
         VALUES ($1, $2, $3, 'pending', $4, $4) ON CONFLICT (run_id) DO NOTHING",
        &[
            &run.run_id,
            &run.graph.name(),
            &run.graph.structural_hash(),
            &now,
        ],
    )?;
    if inserted == 0 {
        return Err(Error::RunExists {
            run_id: run.run_id.clone(),
        });
    }
    c.exec(
        "INSERT INTO run_specs (run_id, graph, inputs, labels) VALUES ($1, $2, $3, $4)",
        &[&run.run_id, &graph, &inputs, &labels],
    )?;
    let created = plan::run_created(&run.graph);
    let head = load_head(c, &run.run_id)?;
    let mut batch = RunBatch::new(&run.run_id, None);
    batch.events.push(created);
    append_all(c, head, &batch, now)
}

/// Records a new run as `queued` (no lease: any worker may claim it).
pub fn submit(c: &mut PgConn, run: &NewRun, now: f64) -> Result<()> {
    insert_run(c, run, now)?;
    append_event(c, &run.run_id, EventKind::RunQueued, now)
}

/// Appends one operator event (no token) to a run.
fn append_event(c: &mut PgConn, run_id: &str, kind: EventKind, now: f64) -> Result<()> {
    let head = load_head(c, run_id)?;
    let mut batch = RunBatch::new(run_id, None);
    batch.events.push(kind);
    append_all(c, head, &batch, now)
}

/// Takes the lease of the oldest queued run of `workflows`; rows another worker is
/// claiming right now are skipped (`FOR UPDATE SKIP LOCKED`), so no two claim one run.
pub fn claim(
    c: &mut PgConn,
    workflows: &[(String, String)],
    request: &LeaseRequest,
    now: f64,
) -> Result<Option<Lease>> {
    if workflows.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = workflows.iter().map(|(n, _)| n.as_str()).collect();
    let hashes: Vec<&str> = workflows.iter().map(|(_, h)| h.as_str()).collect();
    let row = c.row(
        "SELECT run_id FROM runs
          WHERE status = 'queued'
            AND (workflow, graph_hash) IN (SELECT * FROM unnest($1::text[], $2::text[]))
          ORDER BY created_at, run_id LIMIT 1 FOR UPDATE SKIP LOCKED",
        &[&names, &hashes],
    )?;
    match row {
        Some(r) => {
            let run_id: String = r.get(0);
            acquire(c, &run_id, request, None, Vec::new(), Vec::new(), now).map(Some)
        }
        None => Ok(None),
    }
}

/// Applies or records `request` for `run_id`; returns the run's status afterwards.
pub fn request_control(
    c: &mut PgConn,
    run_id: &str,
    request: ControlRequest,
    now: f64,
) -> Result<RunStatus> {
    let head = load_head(c, run_id)?;
    let status = head.projection.status;
    match request.effect_on(status) {
        ControlEffect::EndNow(end) => {
            let mut batch = RunBatch::new(run_id, None);
            batch.events.push(match end {
                RunStatus::Cancelled => EventKind::RunCancelled,
                _ => EventKind::RunPaused,
            });
            append_all(c, head, &batch, now)?;
            Ok(end)
        }
        ControlEffect::Record => {
            c.exec(
                "INSERT INTO control_requests (run_id, kind, requested_at) VALUES ($1, $2, $3)
                 ON CONFLICT (run_id) DO UPDATE SET
                   kind = CASE WHEN control_requests.kind = 'cancel' OR EXCLUDED.kind = 'cancel'
                               THEN 'cancel' ELSE 'interrupt' END,
                   requested_at = EXCLUDED.requested_at",
                &[&run_id, &request.as_str(), &now],
            )?;
            Ok(status)
        }
        ControlEffect::Nothing => Ok(status),
    }
}

/// Puts a paused run that no worker holds back in the queue; false if it is not paused
/// or is held.
pub fn requeue(c: &mut PgConn, run_id: &str, now: f64) -> Result<bool> {
    let head = load_head(c, run_id)?;
    if head.projection.status != RunStatus::Paused || head.lease_owner.is_some() {
        return Ok(false);
    }
    let mut batch = RunBatch::new(run_id, None);
    batch.events.push(EventKind::RunQueued);
    append_all(c, head, &batch, now)?;
    Ok(true)
}

/// Extends the listed leases to `expires` (the database's clock); returns those lost.
pub fn renew(c: &mut PgConn, leases: &[Lease], expires: f64) -> Result<Vec<Lease>> {
    let mut lost = Vec::new();
    for lease in leases {
        let n = c.exec(
            "UPDATE runs SET lease_expires = $4 WHERE run_id = $1 AND lease_token = $2 AND lease_owner = $3",
            &[&lease.run_id, &lease.token, &lease.owner, &expires],
        )?;
        if n == 0 {
            lost.push(lease.clone());
        }
    }
    Ok(lost)
}

/// Deletes old checkpoints of one run (folding kept ones into snapshots, compacting the
/// events they covered); returns how many.
pub fn cleanup_run(
    c: &mut PgConn,
    run_id: &str,
    keep_last: usize,
    older_than: Option<f64>,
) -> Result<usize> {
    let head = load_head(c, run_id)?;
    let (rows, deltas) = super::read::load_chain(c, run_id)?;
    let Some(plan) = checkpoints::plan_cleanup(
        &rows,
        &deltas,
        head.projection.head_checkpoint,
        keep_last,
        older_than,
    )
    .map_err(|e| {
        c.target
            .error(format!("corrupt checkpoints of run {run_id:?}: {e}"))
    })?
    else {
        return Ok(0);
    };
    for (id, state) in &plan.snapshots {
        c.exec(
            "DELETE FROM checkpoint_nodes WHERE run_id = $1 AND checkpoint_id = $2",
            &[&run_id, id],
        )?;
        let delta: Vec<plan::DeltaEntry> = state
            .iter()
            .map(|(node, v)| (node.clone(), OP_COMPLETED, Some(v.clone())))
            .collect();
        insert_delta(c, run_id, *id, &delta)?;
        c.exec(
            "UPDATE checkpoints SET parent_id = NULL, kind = 'snapshot' WHERE run_id = $1 AND checkpoint_id = $2",
            &[&run_id, id],
        )?;
    }
    let deleted: Vec<i64> = plan.deleted.iter().copied().collect();
    c.exec(
        "DELETE FROM checkpoint_nodes WHERE run_id = $1 AND checkpoint_id = ANY($2)",
        &[&run_id, &deleted],
    )?;
    c.exec(
        "DELETE FROM checkpoints WHERE run_id = $1 AND checkpoint_id = ANY($2)",
        &[&run_id, &deleted],
    )?;
    let events = super::read::events_between(c, run_id, i64::MIN, plan.compact_upto, usize::MAX)?;
    if let Some((kind, at, hashes)) = checkpoints::compaction(&events) {
        c.exec(
            "DELETE FROM events WHERE run_id = $1 AND seq <= $2",
            &[&run_id, &plan.compact_upto],
        )?;
        c.exec(
            "INSERT INTO events (run_id, seq, at, kind, node_id, payload) VALUES ($1, $2, $3, $4, NULL, $5)",
            &[&run_id, &plan.compact_upto, &at, &kind.name(), &kind.encode()],
        )?;
        c.exec("DELETE FROM compaction_refs WHERE run_id = $1", &[&run_id])?;
        c.exec(
            "INSERT INTO compaction_refs (run_id, hash) SELECT $1, h FROM unnest($2::bytea[]) h
             ON CONFLICT DO NOTHING",
            &[&run_id, &hashes],
        )?;
    }
    Ok(deleted.len())
}

/// Removes values nothing references any more; returns the hashes and codecs of those
/// kept in blob files (to remove once this commits).
pub fn collect_garbage(c: &mut PgConn) -> Result<Vec<(Vec<u8>, i16)>> {
    let rows = c.rows(
        "DELETE FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM node_states n WHERE n.output_hash = b.hash)
            AND NOT EXISTS (SELECT 1 FROM checkpoint_nodes k WHERE k.value_hash = b.hash)
            AND NOT EXISTS (SELECT 1 FROM compaction_refs r WHERE r.hash = b.hash)
         RETURNING hash, codec, location",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter(|r| r.get::<_, i16>(2) == IN_FILE)
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
