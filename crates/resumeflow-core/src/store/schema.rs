//! The SQLite schema, its version and migrations.
//!
//! Tables (all keyed by `run_id` first so one run's rows sit together):
//! - `runs`: one row per run: workflow name, structural hash, the run-level projection (`status`, `error`, `head_checkpoint`,
//!   `updated_at`), counters (`last_seq`, `last_checkpoint`) and the lease
//!   (`lease_owner`, `lease_expires`, `lease_token` — the fencing token).
//! - `run_specs` (version 3): what never changes after creation: the graph (msgpack), the
//!   encoded inputs and the labels (kept out of `runs`, whose row every commit rewrites).
//! - `events`: the append-only log, `(run_id, seq)`, kind name and rmp-serde payload.
//! - `node_states`: the node-level projection, updated in the same transaction as each event.
//! - `checkpoints` + `checkpoint_nodes`: one checkpoint per committed step with its parent and
//!   its delta (`op` 0 = completed, 1 = modified, 2 = reset; value hash), never a snapshot,
//!   except `kind = 'snapshot'` rows that `cleanup` folded older checkpoints into.
//! - `blobs`: output values, content-addressed by BLAKE3 (of the uncompressed bytes) and
//!   stored once; `location` 1 means the bytes are in `<db>.blobs/xx/<hash>` (large values),
//!   `codec` 1 means zstd-compressed (chunk bundles of streaming nodes).
//! - `partial_states`: a node's own saved progress.
//! - `partial_segments` (version 5): items a streaming node saved with its cursor, one row
//!   per save, keyed by the index of the segment's first item.
//! - `control_requests` (version 5): the interrupt or cancel asked of a run's executing
//!   worker, read at its lease renewals; removed when the lease is released.
//! - `compaction_refs`: values referenced by a run's `Compacted` event (kept by blob GC).
//! - `run_marks` (version 8): a run's completed marks, one bit per node by canonical rank in
//!   chunks of 4,096 (see [`crate::completed_marks`]), exact while `runs.marks_valid` is 1;
//!   runs from before version 8 start without them.
//! - `thread_checkpoints`, `thread_channel_values`, `thread_writes`, `thread_values`
//!   (version 2): checkpoints of external graph frameworks (the LangGraph saver), see
//!   [`crate::threads`]: channel values are stored once per `(thread, namespace, channel,
//!   version)` and content-addressed in `thread_values`, never as a snapshot per step.
//!
//! `PRAGMA application_id` marks the file as ours; `PRAGMA user_version` is the schema version.

use rusqlite::Connection;

/// 'RFLW'
pub const APPLICATION_ID: i64 = 0x5246_4C57;
/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 8;

/// Migrations by target version; index 0 creates version 1, index 1 adds the thread
/// checkpoint tables of version 2 (see [`crate::threads`]), index 2 (version 3) moves a run's
/// graph, inputs and labels out of `runs` into `run_specs`: they never change, and as columns of
/// `runs` every commit that updated the run's head rewrote them (a 5,000-node graph is ~200 KB);
/// index 3 (version 4) gives `blobs` a `location` (0 in the row, 1 in a blob file beside the
/// database, see `store::blob_files`) and a `codec` (0 raw, 1 zstd); index 4 (version 5)
/// adds `partial_segments`: the items a streaming node saved with its cursor, appended one
/// segment per save (keyed by the index of the segment's first item) instead of rewritten,
/// `control_requests` (interrupt/cancel asked of the worker holding a run's lease, from any
/// process) and the `runs_queue` index of queued runs, oldest first; index 5 (version 6)
/// makes `thread_values` a rowid table (its rows can be megabytes: in a `WITHOUT ROWID` table
/// they sit in the key's b-tree, and every insert and search among them paid for it — small
/// threads slowed 8× once a few threads held 10 MB values) and gives `thread_checkpoints` a
/// `metadata_json` column (the metadata's JSON form, which metadata filters query in SQL);
/// index 6 (version 7) moves large partial states to blob files (`file_hash`, `file_size`,
/// `stale_files`); index 7 (version 8) adds the completed marks (`run_marks`,
/// `runs.marks_valid`): a resume reads them instead of every node row, and puts the graph
/// last in `run_specs` (reading the inputs after a 10 MB graph walked its overflow pages).
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    graph_hash      TEXT NOT NULL,
    graph           BLOB NOT NULL,
    inputs          BLOB NOT NULL,
    labels          BLOB NOT NULL,
    status          TEXT NOT NULL,
    error           TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    head_checkpoint INTEGER,
    last_checkpoint INTEGER NOT NULL DEFAULT 0,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_expires   REAL NOT NULL DEFAULT 0,
    lease_token     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_status ON runs(status);
CREATE TABLE events (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    at      REAL NOT NULL,
    kind    TEXT NOT NULL,
    node_id TEXT,
    payload BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE node_states (
    run_id          TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    error           TEXT,
    retryable       INTEGER,
    started_at      REAL,
    finished_at     REAL,
    output_hash     BLOB,
    output_size     INTEGER,
    inputs_override BLOB,
    peak_memory     INTEGER,
    PRIMARY KEY (run_id, node_id)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    run_id        TEXT NOT NULL,
    checkpoint_id INTEGER NOT NULL,
    parent_id     INTEGER,
    seq           INTEGER NOT NULL,
    created_at    REAL NOT NULL,
    kind          TEXT NOT NULL,
    PRIMARY KEY (run_id, checkpoint_id)
) WITHOUT ROWID;
CREATE TABLE checkpoint_nodes (
    run_id        TEXT NOT NULL,
    checkpoint_id INTEGER NOT NULL,
    node_id       TEXT NOT NULL,
    op            INTEGER NOT NULL,
    value_hash    BLOB,
    value_size    INTEGER,
    PRIMARY KEY (run_id, checkpoint_id, node_id)
) WITHOUT ROWID;
CREATE TABLE blobs (
    hash BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE partial_states (
    run_id     TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    data       BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_id, node_id)
) WITHOUT ROWID;
CREATE TABLE compaction_refs (
    run_id TEXT NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (run_id, hash)
) WITHOUT ROWID;
",
    r"
CREATE TABLE thread_checkpoints (
    thread_id       TEXT NOT NULL,
    checkpoint_ns   TEXT NOT NULL,
    checkpoint_id   TEXT NOT NULL,
    parent_id       TEXT,
    run_id          TEXT,
    checkpoint_type TEXT NOT NULL,
    checkpoint      BLOB NOT NULL,
    metadata_type   TEXT NOT NULL,
    metadata        BLOB NOT NULL,
    versions        BLOB NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
) WITHOUT ROWID;
CREATE INDEX thread_checkpoints_by_id ON thread_checkpoints(checkpoint_id);
CREATE INDEX thread_checkpoints_by_run ON thread_checkpoints(run_id) WHERE run_id IS NOT NULL;
CREATE TABLE thread_channel_values (
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    channel       TEXT NOT NULL,
    version       TEXT NOT NULL,
    hash          BLOB,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
) WITHOUT ROWID;
CREATE INDEX thread_channel_values_by_hash ON thread_channel_values(hash) WHERE hash IS NOT NULL;
CREATE TABLE thread_writes (
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    channel       TEXT NOT NULL,
    hash          BLOB NOT NULL,
    task_path     TEXT NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
) WITHOUT ROWID;
CREATE INDEX thread_writes_by_hash ON thread_writes(hash);
CREATE TABLE thread_values (
    hash BLOB PRIMARY KEY,
    type TEXT NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;
",
    r"
CREATE TABLE run_specs (
    run_id TEXT PRIMARY KEY,
    graph  BLOB NOT NULL,
    inputs BLOB NOT NULL,
    labels BLOB NOT NULL
);
INSERT INTO run_specs (run_id, graph, inputs, labels) SELECT run_id, graph, inputs, labels FROM runs;
ALTER TABLE runs DROP COLUMN graph;
ALTER TABLE runs DROP COLUMN inputs;
ALTER TABLE runs DROP COLUMN labels;
",
    r"
ALTER TABLE blobs ADD COLUMN location INTEGER NOT NULL DEFAULT 0;
ALTER TABLE blobs ADD COLUMN codec INTEGER NOT NULL DEFAULT 0;
",
    r"
CREATE TABLE partial_segments (
    run_id  TEXT NOT NULL,
    node_id TEXT NOT NULL,
    first   INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (run_id, node_id, first)
) WITHOUT ROWID;
CREATE TABLE control_requests (
    run_id       TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    requested_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX runs_queue ON runs(created_at, run_id) WHERE status = 'queued';
",
    r"
CREATE TABLE thread_values_v6 (
    hash BLOB NOT NULL UNIQUE,
    type TEXT NOT NULL,
    data BLOB NOT NULL
);
INSERT INTO thread_values_v6 (hash, type, data) SELECT hash, type, data FROM thread_values;
DROP TABLE thread_values;
ALTER TABLE thread_values_v6 RENAME TO thread_values;
ALTER TABLE thread_checkpoints ADD COLUMN metadata_json TEXT;
",
    r"
ALTER TABLE partial_states ADD COLUMN file_hash BLOB;
ALTER TABLE partial_states ADD COLUMN file_size INTEGER;
CREATE TABLE stale_files (hash BLOB PRIMARY KEY, marked_at REAL NOT NULL) WITHOUT ROWID;
",
    r"
CREATE TABLE run_specs_v8 (
    run_id TEXT PRIMARY KEY,
    labels BLOB NOT NULL,
    inputs BLOB NOT NULL,
    graph  BLOB NOT NULL
);
INSERT INTO run_specs_v8 (run_id, labels, inputs, graph) SELECT run_id, labels, inputs, graph FROM run_specs;
DROP TABLE run_specs;
ALTER TABLE run_specs_v8 RENAME TO run_specs;
ALTER TABLE runs ADD COLUMN marks_valid INTEGER NOT NULL DEFAULT 0;
CREATE TABLE run_marks (
    run_id TEXT NOT NULL,
    chunk  INTEGER NOT NULL,
    bits   BLOB NOT NULL,
    PRIMARY KEY (run_id, chunk)
) WITHOUT ROWID;
",
];

/// The SQL of each migration (index `i` creates version `i + 1`), for migration tests.
#[doc(hidden)]
pub fn migrations() -> &'static [&'static str] {
    MIGRATIONS
}

/// What the file holds before we touch it.
pub enum Existing {
    /// No tables, no marks: a new file.
    Empty,
    /// Ours, at this version.
    Version(i64),
    /// Tables but not ours.
    Foreign,
}

/// Reads the marks without writing anything (so a foreign or corrupt file stays untouched).
pub fn inspect(conn: &Connection) -> rusqlite::Result<Existing> {
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok(if app == APPLICATION_ID {
        Existing::Version(version)
    } else if app == 0 && version == 0 && tables == 0 {
        Existing::Empty
    } else {
        Existing::Foreign
    })
}

/// Brings the schema from `from` to [`SCHEMA_VERSION`] in one transaction.
pub fn migrate(conn: &mut Connection, from: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have migrated while we waited for the write lock.
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let app: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let start = if app == APPLICATION_ID { current } else { from };
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let target = i as i64 + 1;
        if target > start {
            tx.execute_batch(sql)?;
        }
    }
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
    ))?;
    tx.commit()
}
