//! Applying writes inside a transaction: events, the projection tables, checkpoints, leases.
//!
//! Everything here runs on the writer thread inside an open transaction (a savepoint per
//! operation), so a refused operation leaves no trace.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::completed_marks::{chunk_of, CompletedMarks};
use crate::error::{Error, Result, StoreError};
use crate::event::EventKind;
use crate::lease::{Lease, LeaseRequest};
use crate::projection::RunProjection;
use crate::state::{NodeState, NodeStatus, RunStatus, ValueRef};

use super::{NewRun, RunBatch};

use super::plan::{self, MarksWrite, WritePlan};
pub use super::plan::{RunHead, OP_COMPLETED, OP_MODIFIED, OP_RESET};

/// Maps rusqlite errors to a `StoreError` naming the file.
pub fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| {
        full_or(path, &e).unwrap_or_else(|| {
            StoreError::Sqlite {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
            .into()
        })
    }
}

/// `StoreError::Full` if SQLite said the store or the disk is full (the store fills in the
/// cap and the size it knows of), else None.
pub fn full_or(path: &Path, e: &rusqlite::Error) -> Option<Error> {
    (e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)).then(|| {
        StoreError::Full {
            path: path.to_path_buf(),
            max_bytes: None,
            used_bytes: 0,
        }
        .into()
    })
}

/// Builds a `Corrupt` error for an undecodable row.
pub fn corrupt(path: &Path, table: &str, message: impl ToString) -> Error {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        table: table.to_string(),
        message: message.to_string(),
    }
    .into()
}

pub fn load_head(conn: &Connection, path: &Path, run_id: &str) -> Result<RunHead> {
    let row = conn
        .prepare_cached(
            "SELECT status, error, head_checkpoint, updated_at, last_seq, last_checkpoint,
                    lease_owner, lease_expires, lease_token, marks_valid FROM runs WHERE run_id = ?1",
        )
        .and_then(|mut st| {
            st.query_row([run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, f64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, bool>(9)?,
                ))
            })
            .optional()
        })
        .map_err(sql(path))?;
    let Some((
        status,
        error,
        head,
        updated_at,
        last_seq,
        last_checkpoint,
        owner,
        expires,
        token,
        marks_valid,
    )) = row
    else {
        return Err(Error::RunNotFound {
            run_id: run_id.to_string(),
        });
    };
    let status = RunStatus::parse(&status)
        .ok_or_else(|| corrupt(path, "runs", format!("status {status:?}")))?;
    Ok(RunHead {
        run_id: run_id.to_string(),
        projection: RunProjection {
            status,
            head_checkpoint: head,
            error,
            updated_at,
            nodes: BTreeMap::new(),
        },
        last_seq,
        last_checkpoint,
        lease_owner: owner,
        lease_expires: expires,
        lease_token: token,
        marks_valid,
    })
}

/// Reads one `node_states` row (columns in the order of [`NODE_COLUMNS`]).
pub fn node_from_row(r: &Row<'_>, first: usize) -> rusqlite::Result<(String, NodeState)> {
    let status: String = r.get(first + 1)?;
    let output_hash: Option<Vec<u8>> = r.get(first + 7)?;
    let output_size: Option<i64> = r.get(first + 8)?;
    Ok((
        r.get(first)?,
        NodeState {
            status: NodeStatus::parse(&status).unwrap_or(NodeStatus::Pending),
            attempt: r.get::<_, i64>(first + 2)? as u32,
            error: r.get(first + 3)?,
            retryable: r.get::<_, Option<i64>>(first + 4)?.map(|v| v != 0),
            started_at: r.get(first + 5)?,
            finished_at: r.get(first + 6)?,
            output: output_hash.map(|hash| ValueRef {
                hash,
                size: output_size.unwrap_or(0) as u64,
            }),
            inputs_override: r.get(first + 9)?,
            peak_memory: r.get::<_, Option<i64>>(first + 10)?.map(|v| v as u64),
        },
    ))
}

pub const NODE_COLUMNS: &str =
    "node_id, status, attempt, error, retryable, started_at, finished_at, \
     output_hash, output_size, inputs_override, peak_memory";

pub(super) fn load_node(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    node_id: &str,
) -> Result<Option<NodeState>> {
    conn.prepare_cached(&format!(
        "SELECT {NODE_COLUMNS} FROM node_states WHERE run_id = ?1 AND node_id = ?2"
    ))
    .and_then(|mut st| {
        st.query_row([run_id, node_id], |r| node_from_row(r, 0))
            .optional()
    })
    .map(|o| o.map(|(_, s)| s))
    .map_err(sql(path))
}

fn store_node(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    node_id: &str,
    s: &NodeState,
) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO node_states (run_id, {NODE_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            run_id,
            node_id,
            s.status.as_str(),
            i64::from(s.attempt),
            s.error,
            s.retryable.map(i64::from),
            s.started_at,
            s.finished_at,
            s.output.as_ref().map(|v| &v.hash),
            s.output.as_ref().map(|v| v.size as i64),
            s.inputs_override,
            s.peak_memory.map(|v| v as i64),
        ])
    })
    .map_err(sql(path))?;
    Ok(())
}

fn store_head(conn: &Connection, path: &Path, head: &RunHead) -> Result<()> {
    let p = &head.projection;
    conn.prepare_cached(
        "UPDATE runs SET status = ?2, error = ?3, head_checkpoint = ?4, updated_at = ?5,
            last_seq = ?6, last_checkpoint = ?7, lease_owner = ?8, lease_expires = ?9,
            lease_token = ?10, marks_valid = ?11 WHERE run_id = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            head.run_id,
            p.status.as_str(),
            p.error,
            p.head_checkpoint,
            p.updated_at,
            head.last_seq,
            head.last_checkpoint,
            head.lease_owner,
            head.lease_expires,
            head.lease_token,
            head.marks_valid,
        ])
    })
    .map_err(sql(path))?;
    Ok(())
}

/// Writes a plan (see [`plan::WritePlan`]) inside the open transaction.
fn write_plan(conn: &Connection, path: &Path, plan: &WritePlan, now: f64) -> Result<()> {
    let map = sql(path);
    let run_id = &plan.head.run_id;
    for node in &plan.cleared_progress {
        mark_partial_file_stale(conn, path, run_id, node, now)?;
        conn.prepare_cached("DELETE FROM partial_states WHERE run_id = ?1 AND node_id = ?2")
            .and_then(|mut st| st.execute([run_id, node]))
            .map_err(&map)?;
        delete_segments(conn, path, run_id, node)?;
    }
    if plan.settle_controls {
        crate::store::queue::settle_controls(conn, path, run_id)?;
    }
    let mut st = conn
        .prepare_cached(
            "INSERT INTO events (run_id, seq, at, kind, node_id, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(&map)?;
    for event in &plan.events {
        st.execute(params![
            run_id,
            event.seq,
            event.at,
            event.kind.name(),
            event.kind.node(),
            event.kind.encode()
        ])
        .map_err(&map)?;
    }
    if let Some(cp) = &plan.checkpoint {
        conn.prepare_cached(
            "INSERT INTO checkpoints (run_id, checkpoint_id, parent_id, seq, created_at, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![
                run_id,
                cp.id,
                cp.parent,
                cp.seq,
                cp.created_at,
                cp.kind
            ])
        })
        .map_err(&map)?;
        let mut st = conn
            .prepare_cached(
                "INSERT OR REPLACE INTO checkpoint_nodes (run_id, checkpoint_id, node_id, op, value_hash, value_size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(&map)?;
        for (node, op, value) in &cp.delta {
            st.execute(params![
                run_id,
                cp.id,
                node,
                op,
                value.as_ref().map(|v| &v.hash),
                value.as_ref().map(|v| v.size as i64)
            ])
            .map_err(&map)?;
        }
    }
    for (node, state) in &plan.head.projection.nodes {
        store_node(conn, path, run_id, node, state)?;
    }
    write_marks(conn, path, run_id, &plan.marks)?;
    store_head(conn, path, &plan.head)
}

/// Writes a plan's change to the run's completed marks (`run_marks`).
fn write_marks(conn: &Connection, path: &Path, run_id: &str, marks: &MarksWrite) -> Result<()> {
    let map = sql(path);
    let delete_all = || {
        conn.prepare_cached("DELETE FROM run_marks WHERE run_id = ?1")
            .and_then(|mut st| st.execute([run_id]))
            .map_err(&map)
    };
    let put = |chunk: u32, bits: &[u8]| {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO run_marks (run_id, chunk, bits) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut st| st.execute(params![run_id, chunk, bits]))
        .map_err(&map)
    };
    match marks {
        MarksWrite::Keep => {}
        MarksWrite::Drop => {
            delete_all()?;
        }
        MarksWrite::Replace(all) => {
            delete_all()?;
            for (chunk, bits) in all.chunks() {
                put(chunk, bits)?;
            }
        }
        MarksWrite::Set(ranks) => {
            let mut by_chunk: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for &rank in ranks {
                by_chunk.entry(chunk_of(rank)).or_default().push(rank);
            }
            for (chunk, ranks) in by_chunk {
                let mut bits: Vec<u8> = conn
                    .prepare_cached("SELECT bits FROM run_marks WHERE run_id = ?1 AND chunk = ?2")
                    .and_then(|mut st| {
                        st.query_row(params![run_id, chunk], |r| r.get(0))
                            .optional()
                    })
                    .map_err(&map)?
                    .unwrap_or_default();
                for rank in ranks {
                    CompletedMarks::set_in_chunk(&mut bits, rank);
                }
                put(chunk, &bits)?;
            }
        }
    }
    Ok(())
}

/// The stored states of the nodes `events` name.
fn load_named_nodes(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    events: &[EventKind],
) -> Result<BTreeMap<String, NodeState>> {
    let mut nodes = BTreeMap::new();
    for node in plan::nodes_named(events) {
        if let Some(state) = load_node(conn, path, run_id, &node)? {
            nodes.insert(node, state);
        }
    }
    Ok(nodes)
}

/// Values at least this large are written into their row in chunks (incremental blob I/O)
/// rather than bound whole: binding copies the value, and building the record copies it again
/// (two fresh allocations of its size, whose pages the kernel zeroes first).
pub(super) const STREAMED_VALUE: usize = 1 << 20;
/// The size of each write of a streamed value.
const STREAM_CHUNK: usize = 1 << 20;

/// Writes `bytes` into the `column` of the row `rowid` of `table`, which was just inserted
/// with `zeroblob(bytes.len())` there, in 1 MiB chunks.
pub(super) fn write_into_row(
    conn: &Connection,
    path: &Path,
    table: &str,
    column: &str,
    rowid: i64,
    bytes: &[u8],
) -> Result<()> {
    let map = sql(path);
    let mut blob = conn
        .blob_open(rusqlite::MAIN_DB, table, column, rowid, false)
        .map_err(&map)?;
    for (i, chunk) in bytes.chunks(STREAM_CHUNK).enumerate() {
        blob.write_at(chunk, i * STREAM_CHUNK).map_err(&map)?;
    }
    Ok(())
}

/// Inserts a large value's row with a zero-filled `data` of its length, then writes the bytes
/// into it in 1 MiB chunks (nothing if the value is stored already).
fn insert_streamed(conn: &Connection, path: &Path, v: &super::BatchValue) -> Result<()> {
    let map = sql(path);
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO blobs (hash, size, data, location, codec) VALUES (?1, ?2, zeroblob(?3), ?4, ?5)",
        )
        .and_then(|mut st| {
            st.execute(params![
                v.value.hash,
                v.value.size as i64,
                v.bytes.len() as i64,
                i64::from(v.in_file),
                v.codec.code()
            ])
        })
        .map_err(&map)?;
    if inserted == 0 {
        return Ok(());
    }
    write_into_row(
        conn,
        path,
        "blobs",
        "data",
        conn.last_insert_rowid(),
        &v.bytes,
    )
}

pub(super) fn append_all(
    conn: &Connection,
    path: &Path,
    head: RunHead,
    batch: &RunBatch,
    now: f64,
) -> Result<()> {
    let map = sql(path);
    if !batch.values.is_empty() {
        let mut st = conn
            .prepare_cached(
                "INSERT OR IGNORE INTO blobs (hash, size, data, location, codec) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(&map)?;
        for v in &batch.values {
            if v.bytes.len() >= STREAMED_VALUE {
                insert_streamed(conn, path, v)?;
                continue;
            }
            st.execute(params![
                v.value.hash,
                v.value.size as i64,
                &v.bytes[..],
                i64::from(v.in_file),
                v.codec.code()
            ])
            .map_err(&map)?;
        }
    }
    let nodes = load_named_nodes(conn, path, &batch.run_id, &batch.events)?;
    if !batch.partial_states.is_empty()
        || !batch.partial_files.is_empty()
        || !batch.partial_segments.is_empty()
    {
        plan::check_attempts(&batch.run_id, &nodes, &batch.events)?;
    }
    for (node, first, data) in &batch.partial_segments {
        conn.prepare_cached(
            "DELETE FROM partial_segments WHERE run_id = ?1 AND node_id = ?2 AND first >= ?3",
        )
        .and_then(|mut st| st.execute(params![batch.run_id, node, *first as i64]))
        .map_err(&map)?;
        conn.prepare_cached(
            "INSERT INTO partial_segments (run_id, node_id, first, data) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut st| st.execute(params![batch.run_id, node, *first as i64, data]))
        .map_err(&map)?;
    }
    for node in &batch.dropped_segments {
        delete_segments(conn, path, &batch.run_id, node)?;
    }
    if !batch.partial_states.is_empty() {
        let mut st = conn
            .prepare_cached(
                "INSERT OR REPLACE INTO partial_states (run_id, node_id, data, updated_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(&map)?;
        for (node, data) in &batch.partial_states {
            mark_partial_file_stale(conn, path, &batch.run_id, node, now)?;
            st.execute(params![batch.run_id, node, data, now])
                .map_err(&map)?;
        }
    }
    for (node, file) in &batch.partial_files {
        mark_partial_file_stale(conn, path, &batch.run_id, node, now)?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO partial_states (run_id, node_id, data, updated_at, file_hash, file_size)
             VALUES (?1, ?2, x'', ?3, ?4, ?5)",
        )
        .and_then(|mut st| {
            st.execute(params![batch.run_id, node, now, file.hash, file.size as i64])
        })
        .map_err(&map)?;
        // A file saved again (the same state twice) is not stale.
        conn.prepare_cached("DELETE FROM stale_files WHERE hash = ?1")
            .and_then(|mut st| st.execute([&file.hash]))
            .map_err(&map)?;
    }
    write_plan(
        conn,
        path,
        &plan::plan_marked(
            head,
            nodes,
            &batch.events,
            &batch.completed_ranks,
            batch.marks_base.as_ref(),
            now,
        ),
        now,
    )
}

/// Records the blob file of a node's partial state, about to be replaced or deleted, as
/// stale: it is removed by a later write transaction once nothing references it.
fn mark_partial_file_stale(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    node: &str,
    now: f64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO stale_files (hash, marked_at) SELECT file_hash, ?3 FROM partial_states
          WHERE run_id = ?1 AND node_id = ?2 AND file_hash IS NOT NULL",
    )
    .and_then(|mut st| st.execute(params![run_id, node, now]))
    .map_err(sql(path))?;
    Ok(())
}

/// Removes the blob files of replaced partial states that nothing references any more;
/// runs inside a write transaction (so no commit of any process can reference one of them
/// meanwhile), and only for files marked by an earlier transaction (`marked_at < now`, the
/// group's time: one that committed), never by this one, which could still roll back.
pub fn sweep_stale_files(
    conn: &Connection,
    path: &Path,
    files: &super::blob_files::BlobFiles,
    now: f64,
) -> Result<()> {
    let map = sql(path);
    let stale: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT hash FROM stale_files WHERE marked_at < ?1 LIMIT 64")
        .and_then(|mut st| st.query_map([now], |r| r.get(0))?.collect())
        .map_err(&map)?;
    for hash in stale {
        let used = conn
            .prepare_cached("SELECT 1 FROM partial_states WHERE file_hash = ?1")
            .and_then(|mut st| st.exists([&hash]))
            .map_err(&map)?
            || conn
                .prepare_cached("SELECT 1 FROM blobs WHERE hash = ?1 AND location = 1")
                .and_then(|mut st| st.exists([&hash]))
                .map_err(&map)?;
        if !used {
            files.remove(&hash, super::ValueCodec::Raw);
        }
        conn.prepare_cached("DELETE FROM stale_files WHERE hash = ?1")
            .and_then(|mut st| st.execute([&hash]))
            .map_err(&map)?;
    }
    Ok(())
}

/// Removes a node's streaming segments.
fn delete_segments(conn: &Connection, path: &Path, run_id: &str, node: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM partial_segments WHERE run_id = ?1 AND node_id = ?2")
        .and_then(|mut st| st.execute([run_id, node]))
        .map_err(sql(path))?;
    Ok(())
}

/// Applies a batch, refusing it if its fencing token is stale or its lease was released.
pub fn apply_batch(conn: &Connection, path: &Path, batch: &RunBatch, now: f64) -> Result<()> {
    let head = load_head(conn, path, &batch.run_id)?;
    plan::check_token(&head, batch.token)?;
    append_all(conn, path, head, batch, now)
}

/// Takes the lease of a run and appends `events` (with the `values` they reference) under
/// the new token.
pub fn acquire(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    request: &LeaseRequest,
    events: Vec<EventKind>,
    values: Vec<super::BatchValue>,
    now: f64,
) -> Result<Lease> {
    let mut head = load_head(conn, path, run_id)?;
    let token = plan::take_lease(&mut head, request, now)?;
    let batch = plan::lease_batch(run_id, &request.owner, token, events, values);
    append_all(conn, path, head, &batch, now)?;
    Ok(Lease {
        run_id: run_id.to_string(),
        owner: request.owner.clone(),
        token,
    })
}

/// Inserts a new run and takes its lease.
pub fn create(
    conn: &Connection,
    path: &Path,
    run: &NewRun,
    request: &LeaseRequest,
    now: f64,
) -> Result<Lease> {
    insert_run(conn, path, run, now)?;
    acquire(
        conn,
        path,
        &run.run_id,
        request,
        Vec::new(),
        Vec::new(),
        now,
    )
}

/// Inserts a new run with its `RunCreated` event (and no lease).
pub fn insert_run(conn: &Connection, path: &Path, run: &NewRun, now: f64) -> Result<()> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")
        .and_then(|mut st| st.query_row([&run.run_id], |r| r.get(0)).optional())
        .map_err(sql(path))?;
    if exists.is_some() {
        return Err(Error::RunExists {
            run_id: run.run_id.clone(),
        });
    }
    let graph = rmp_serde::to_vec_named(&run.graph).expect("graphs encode");
    let inputs = rmp_serde::to_vec_named(&EncodedInputs(&run.inputs)).expect("inputs encode");
    let labels = rmp_serde::to_vec_named(&run.labels).expect("labels encode");
    conn.prepare_cached(
        "INSERT INTO runs (run_id, workflow, graph_hash, status, created_at, updated_at, marks_valid)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4, 1)",
    )
    .and_then(|mut st| {
        st.execute(params![
            run.run_id,
            run.graph.name(),
            run.graph.structural_hash(),
            now
        ])
    })
    .map_err(sql(path))?;
    conn.prepare_cached(
        "INSERT INTO run_specs (run_id, graph, inputs, labels) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![run.run_id, graph, inputs, labels]))
    .map_err(sql(path))?;
    let created = plan::run_created(&run.graph);
    // RunCreated goes first, before the lease event that `acquire` adds.
    let head = load_head(conn, path, &run.run_id)?;
    append_all(
        conn,
        path,
        head,
        &RunBatch {
            run_id: run.run_id.clone(),
            token: None,
            events: vec![created],
            ..RunBatch::default()
        },
        now,
    )
}

/// The stored form of run inputs.
pub fn encode_inputs(inputs: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    rmp_serde::to_vec_named(&EncodedInputs(inputs)).expect("inputs encode")
}

/// Run inputs are stored as a msgpack map of binary values.
struct EncodedInputs<'a>(&'a BTreeMap<String, Vec<u8>>);

impl serde::Serialize for EncodedInputs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, serde_bytes::Bytes::new(v))?;
        }
        m.end()
    }
}

/// Decodes the stored run inputs.
pub fn decode_inputs(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, rmp_serde::decode::Error> {
    let map: BTreeMap<String, serde_bytes::ByteBuf> = rmp_serde::from_slice(bytes)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.into_vec())).collect())
}

/// Extends the listed leases; returns those that were lost.
pub fn renew(conn: &Connection, path: &Path, leases: &[Lease], expires: f64) -> Result<Vec<Lease>> {
    let mut lost = Vec::new();
    let mut st = conn
        .prepare_cached(
            "UPDATE runs SET lease_expires = ?4 WHERE run_id = ?1 AND lease_token = ?2 AND lease_owner = ?3",
        )
        .map_err(sql(path))?;
    for lease in leases {
        let n = st
            .execute(params![lease.run_id, lease.token, lease.owner, expires])
            .map_err(sql(path))?;
        if n == 0 {
            lost.push(lease.clone());
        }
    }
    Ok(lost)
}
