//! The PostgreSQL store's tables (in their own schema), their migrations and the version
//! check. Same tables and meanings as SQLite's (see `store/schema.rs`); large values may be
//! split into `blob_chunks` (`blobs.location = 2`); the `changes` sequence advances right
//! after every group commit (the change feed's marker).

use postgres::Client;

use super::target::PgTarget;
use crate::error::{Result, StoreError};

/// The PostgreSQL schema version this build reads and writes.
pub const PG_SCHEMA_VERSION: i64 = 2;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id          TEXT COLLATE "C" PRIMARY KEY,
    workflow        TEXT NOT NULL,
    graph_hash      TEXT NOT NULL,
    status          TEXT NOT NULL,
    error           TEXT,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    head_checkpoint BIGINT,
    last_checkpoint BIGINT NOT NULL DEFAULT 0,
    last_seq        BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_expires   DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_token     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_by_created ON runs (created_at, run_id);
CREATE INDEX runs_queue ON runs (created_at, run_id) WHERE status = 'queued';
CREATE TABLE run_specs (
    run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    graph  BYTEA NOT NULL,
    inputs BYTEA NOT NULL,
    labels BYTEA NOT NULL
);
CREATE TABLE events (
    run_id  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    at      DOUBLE PRECISION NOT NULL,
    kind    TEXT NOT NULL,
    node_id TEXT,
    payload BYTEA NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE node_states (
    run_id          TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempt         BIGINT NOT NULL,
    error           TEXT,
    retryable       BOOLEAN,
    started_at      DOUBLE PRECISION,
    finished_at     DOUBLE PRECISION,
    output_hash     BYTEA,
    output_size     BIGINT,
    inputs_override BYTEA,
    peak_memory     BIGINT,
    PRIMARY KEY (run_id, node_id)
);
CREATE TABLE checkpoints (
    run_id        TEXT NOT NULL,
    checkpoint_id BIGINT NOT NULL,
    parent_id     BIGINT,
    seq           BIGINT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    kind          TEXT NOT NULL,
    PRIMARY KEY (run_id, checkpoint_id)
);
CREATE TABLE checkpoint_nodes (
    run_id        TEXT NOT NULL,
    checkpoint_id BIGINT NOT NULL,
    node_id       TEXT NOT NULL,
    op            BIGINT NOT NULL,
    value_hash    BYTEA,
    value_size    BIGINT,
    PRIMARY KEY (run_id, checkpoint_id, node_id)
);
CREATE TABLE blobs (
    hash     BYTEA PRIMARY KEY,
    size     BIGINT NOT NULL,
    data     BYTEA NOT NULL,
    location SMALLINT NOT NULL DEFAULT 0,
    codec    SMALLINT NOT NULL DEFAULT 0
);
CREATE TABLE blob_chunks (
    hash BYTEA NOT NULL REFERENCES blobs (hash) ON DELETE CASCADE,
    idx  INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (hash, idx)
);
CREATE TABLE partial_states (
    run_id     TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    data       BYTEA NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, node_id)
);
CREATE TABLE partial_segments (
    run_id  TEXT NOT NULL,
    node_id TEXT NOT NULL,
    first   BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (run_id, node_id, first)
);
CREATE TABLE compaction_refs (
    run_id TEXT NOT NULL,
    hash   BYTEA NOT NULL,
    PRIMARY KEY (run_id, hash)
);
CREATE TABLE control_requests (
    run_id       TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL
);
CREATE SEQUENCE changes;
-- Values are stored as given (zstd already where asked; tensors do not compress): no pglz
-- compression of the large columns.
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE partial_states ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE partial_segments ALTER COLUMN data SET STORAGE EXTERNAL;
"#,
    r#"
CREATE TABLE thread_checkpoints (
    thread_id       TEXT COLLATE "C" NOT NULL,
    checkpoint_ns   TEXT COLLATE "C" NOT NULL,
    checkpoint_id   TEXT COLLATE "C" NOT NULL,
    parent_id       TEXT COLLATE "C",
    run_id          TEXT,
    checkpoint_type TEXT NOT NULL,
    checkpoint      BYTEA NOT NULL,
    metadata_type   TEXT NOT NULL,
    metadata        BYTEA NOT NULL,
    versions        BYTEA NOT NULL,
    metadata_json   JSONB,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX thread_checkpoints_by_id ON thread_checkpoints (checkpoint_id);
CREATE INDEX thread_checkpoints_by_run ON thread_checkpoints (run_id) WHERE run_id IS NOT NULL;
CREATE TABLE thread_channel_values (
    thread_id     TEXT COLLATE "C" NOT NULL,
    checkpoint_ns TEXT COLLATE "C" NOT NULL,
    channel       TEXT NOT NULL,
    version       TEXT NOT NULL,
    hash          BYTEA,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);
CREATE INDEX thread_channel_values_by_hash ON thread_channel_values (hash) WHERE hash IS NOT NULL;
CREATE TABLE thread_writes (
    thread_id     TEXT COLLATE "C" NOT NULL,
    checkpoint_ns TEXT COLLATE "C" NOT NULL,
    checkpoint_id TEXT COLLATE "C" NOT NULL,
    task_id       TEXT COLLATE "C" NOT NULL,
    idx           BIGINT NOT NULL,
    channel       TEXT NOT NULL,
    hash          BYTEA NOT NULL,
    task_path     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
CREATE INDEX thread_writes_by_hash ON thread_writes (hash);
CREATE TABLE thread_values (
    hash BYTEA PRIMARY KEY,
    type TEXT NOT NULL,
    data BYTEA NOT NULL
);
ALTER TABLE thread_values ALTER COLUMN data SET STORAGE EXTERNAL;
"#,
];

/// The schema's stored version: `None` if the schema has no store yet.
fn stored_version(client: &mut Client, target: &PgTarget) -> Result<Option<i64>> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                             WHERE table_schema = $1 AND table_name = 'meta')",
            &[&target.schema],
        )
        .map_err(|e| target.db_error("inspect the schema", &e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .map_err(|e| target.db_error("read the schema version", &e))?;
    let text: String = row
        .map(|r| r.get(0))
        .ok_or_else(|| target.error("schema has a meta table but no schema_version"))?;
    text.parse()
        .map(Some)
        .map_err(|_| target.error(format!("schema version {text:?} is not a number")))
}

/// Refuses a store written by a newer version.
fn check_not_newer(target: &PgTarget, version: i64) -> Result<()> {
    if version > PG_SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: target.display.clone().into(),
            found: version,
            supported: PG_SCHEMA_VERSION,
        }
        .into());
    }
    Ok(())
}

/// Creates or migrates the store's schema (one transaction, serialized across processes
/// by an advisory lock), refusing one written by a newer version.
pub fn migrate(client: &mut Client, target: &PgTarget) -> Result<()> {
    let err = |what: &'static str| move |e: postgres::Error| target.db_error(what, &e);
    let mut tx = client.transaction().map_err(err("begin the migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('resumeflow schema ' || $1))",
        &[&target.schema],
    )
    .map_err(err("lock the schema for migration"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{}\"",
        target.schema
    ))
    .map_err(err("create the schema"))?;
    let mut current = {
        let exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                                 WHERE table_schema = $1 AND table_name = 'meta')",
                &[&target.schema],
            )
            .map_err(err("inspect the schema"))?
            .get(0);
        if exists {
            let text: Option<String> = tx
                .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
                .map_err(err("read the schema version"))?
                .map(|r| r.get(0));
            text.and_then(|t| t.parse().ok()).unwrap_or(0)
        } else {
            0
        }
    };
    check_not_newer(target, current)?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version > current {
            tx.batch_execute(sql).map_err(err("migrate the schema"))?;
            current = version;
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&current.to_string()],
    )
    .map_err(err("record the schema version"))?;
    tx.commit().map_err(err("commit the migration"))
}

/// Checks that the schema holds a store of this version (a read-only open migrates nothing).
pub fn check_current(client: &mut Client, target: &PgTarget) -> Result<()> {
    match stored_version(client, target)? {
        None => Err(target.error(
            "no resumeflow store in this schema (a read-only open creates nothing)",
        )),
        Some(v) if v < PG_SCHEMA_VERSION => Err(target.error(format!(
            "has schema version {v}, older than {PG_SCHEMA_VERSION}: open it once with write access to migrate it"
        ))),
        Some(v) => check_not_newer(target, v),
    }
}
