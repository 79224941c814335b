//! [`ThreadStore`] on PostgreSQL (the LangGraph saver's tables, schema version 2): the same
//! model as on SQLite — channel values stored once per `(thread, ns, channel, version)`,
//! bytes content-addressed — with writes on the group-commit writer and reads in one
//! repeatable-read snapshot. Metadata is kept as `jsonb` for filters (`#>` paths).

use std::collections::HashSet;

use postgres::types::ToSql;
use postgres::Row;

use super::conn::PgConn;
use super::PgStore;
use crate::error::Result;
use crate::threads::{
    decode_versions, encode_versions, value_hash, FilterValue, NewThreadCheckpoint,
    NewThreadWrites, PendingWrite, PruneStrategy, ThreadCheckpoint, ThreadQuery, ThreadStore,
    TypedBytes,
};

type Hash = Vec<u8>;
/// A checkpoint's key: `(thread_id, checkpoint_ns, checkpoint_id)`.
type CheckpointKey = (String, String, String);

const HEADER: &str = "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_id, checkpoint_type, \
     checkpoint, metadata_type, metadata, versions FROM thread_checkpoints";

fn store_value(c: &mut PgConn, value: &TypedBytes) -> Result<Hash> {
    let hash = value_hash(value);
    c.exec(
        "INSERT INTO thread_values (hash, type, data) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
        &[&hash, &value.type_tag, &&value.data[..]],
    )?;
    Ok(hash)
}

/// Deletes the value bytes among `candidates` that nothing references any more.
fn drop_unreferenced_values(c: &mut PgConn, candidates: HashSet<Hash>) -> Result<()> {
    if candidates.is_empty() {
        return Ok(());
    }
    let hashes: Vec<Hash> = candidates.into_iter().collect();
    c.exec(
        "DELETE FROM thread_values v WHERE v.hash = ANY($1)
            AND NOT EXISTS (SELECT 1 FROM thread_channel_values c WHERE c.hash = v.hash)
            AND NOT EXISTS (SELECT 1 FROM thread_writes w WHERE w.hash = v.hash)",
        &[&hashes],
    )?;
    Ok(())
}

/// Deletes the writes of these (deleted) checkpoints; returns their value hashes.
fn drop_writes_of(c: &mut PgConn, keys: &[CheckpointKey]) -> Result<Vec<Hash>> {
    let mut hashes = Vec::new();
    for (thread, ns, id) in keys {
        for r in c.rows(
            "DELETE FROM thread_writes WHERE thread_id = $1 AND checkpoint_ns = $2 AND checkpoint_id = $3
             RETURNING hash",
            &[thread, ns, id],
        )? {
            hashes.push(r.get(0));
        }
    }
    Ok(hashes)
}

/// Deletes the channel values of `thread_id` that no remaining checkpoint names.
fn drop_dead_channel_values(c: &mut PgConn, thread_id: &str) -> Result<Vec<Hash>> {
    let mut live: HashSet<(String, String, String)> = HashSet::new();
    for r in c.rows(
        "SELECT checkpoint_ns, versions FROM thread_checkpoints WHERE thread_id = $1",
        &[&thread_id],
    )? {
        let ns: String = r.get(0);
        let versions = versions_of(c, r.get(1))?;
        live.extend(versions.into_iter().map(|(ch, v)| (ns.clone(), ch, v)));
    }
    let mut hashes = Vec::new();
    for r in c.rows(
        "SELECT checkpoint_ns, channel, version, hash FROM thread_channel_values WHERE thread_id = $1",
        &[&thread_id],
    )? {
        let key: (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if live.contains(&key) {
            continue;
        }
        c.exec(
            "DELETE FROM thread_channel_values
              WHERE thread_id = $1 AND checkpoint_ns = $2 AND channel = $3 AND version = $4",
            &[&thread_id, &key.0, &key.1, &key.2],
        )?;
        hashes.extend(r.get::<_, Option<Hash>>(3));
    }
    Ok(hashes)
}

fn collect_garbage(c: &mut PgConn, deleted: &[CheckpointKey]) -> Result<()> {
    let mut candidates: HashSet<Hash> = drop_writes_of(c, deleted)?.into_iter().collect();
    let threads: HashSet<&String> = deleted.iter().map(|(t, _, _)| t).collect();
    for thread_id in threads {
        candidates.extend(drop_dead_channel_values(c, thread_id)?);
    }
    drop_unreferenced_values(c, candidates)
}

fn versions_of(c: &PgConn, bytes: &[u8]) -> Result<Vec<(String, String)>> {
    decode_versions(bytes).map_err(|e| {
        c.target.error(format!(
            "corrupt record in thread_checkpoints: versions: {e}"
        ))
    })
}

/// A checkpoint row without its contents (its version map decoded).
fn header(c: &PgConn, r: &Row) -> Result<ThreadCheckpoint> {
    Ok(ThreadCheckpoint {
        thread_id: r.get(0),
        checkpoint_ns: r.get(1),
        checkpoint_id: r.get(2),
        parent_id: r.get(3),
        checkpoint: TypedBytes::new(r.get::<_, String>(4), r.get::<_, Vec<u8>>(5)),
        metadata: TypedBytes::new(r.get::<_, String>(6), r.get::<_, Vec<u8>>(7)),
        versions: versions_of(c, r.get(8))?,
        values: Vec::new(),
        writes: Vec::new(),
    })
}

/// Loads a checkpoint's channel values and pending writes.
fn load_contents(c: &mut PgConn, mut cp: ThreadCheckpoint) -> Result<ThreadCheckpoint> {
    if !cp.versions.is_empty() {
        let channels: Vec<&str> = cp.versions.iter().map(|(ch, _)| ch.as_str()).collect();
        let versions: Vec<&str> = cp.versions.iter().map(|(_, v)| v.as_str()).collect();
        let rows = c.rows(
            "SELECT k.channel, v.type, v.data
               FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS k(channel, version, ord)
               JOIN thread_channel_values c ON c.thread_id = $1 AND c.checkpoint_ns = $2
                    AND c.channel = k.channel AND c.version = k.version
               JOIN thread_values v ON v.hash = c.hash
              ORDER BY k.ord",
            &[&cp.thread_id, &cp.checkpoint_ns, &channels, &versions],
        )?;
        cp.values = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    TypedBytes::new(r.get::<_, String>(1), r.get::<_, Vec<u8>>(2)),
                )
            })
            .collect();
    }
    let rows = c.rows(
        "SELECT w.task_id, w.channel, v.type, v.data, w.task_path
           FROM thread_writes w JOIN thread_values v ON v.hash = w.hash
          WHERE w.thread_id = $1 AND w.checkpoint_ns = $2 AND w.checkpoint_id = $3
          ORDER BY w.task_path, w.task_id, w.idx",
        &[&cp.thread_id, &cp.checkpoint_ns, &cp.checkpoint_id],
    )?;
    cp.writes = rows
        .iter()
        .map(|r| PendingWrite {
            task_id: r.get(0),
            channel: r.get(1),
            value: TypedBytes::new(r.get::<_, String>(2), r.get::<_, Vec<u8>>(3)),
            task_path: r.get(4),
        })
        .collect();
    Ok(cp)
}

/// The metadata as `jsonb` if it is valid JSON (NaN and the like are not): a checkpoint
/// without it is never excluded by the SQL filter, the caller's exact filter decides.
fn json_or_none(text: Option<&str>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

/// A metadata filter clause on `metadata_json #> path`, with its parameters numbered from
/// `next`.
fn filter_clause(value: &FilterValue, next: usize) -> String {
    let at = format!("(metadata_json #> ${next}::text[])");
    let v = next + 1;
    match value {
        FilterValue::Null => {
            format!("(metadata_json IS NULL OR {at} IS NULL OR {at} = 'null'::jsonb)")
        }
        // SQLite's json_extract reads true/false as 1/0: so does this filter.
        FilterValue::Int(_) => format!(
            "(metadata_json IS NULL OR {at} = to_jsonb(${v}::bigint)
              OR ({at} = 'true'::jsonb AND ${v}::bigint = 1)
              OR ({at} = 'false'::jsonb AND ${v}::bigint = 0))"
        ),
        FilterValue::Real(_) => {
            format!("(metadata_json IS NULL OR {at} = to_jsonb(${v}::float8))")
        }
        FilterValue::Text(_) => format!("(metadata_json IS NULL OR {at} = to_jsonb(${v}::text))"),
    }
}

impl ThreadStore for PgStore {
    fn put_checkpoint(&self, cp: NewThreadCheckpoint) -> Result<()> {
        self.write(move |c, _| {
            let mut replaced = HashSet::new();
            for (channel, version, value) in &cp.new_values {
                let hash = value.as_ref().map(|v| store_value(c, v)).transpose()?;
                let old = c.row(
                    "SELECT hash FROM thread_channel_values
                      WHERE thread_id = $1 AND checkpoint_ns = $2 AND channel = $3 AND version = $4",
                    &[&cp.thread_id, &cp.checkpoint_ns, channel, version],
                )?;
                if let Some(Some(old)) = old.map(|r| r.get::<_, Option<Hash>>(0)) {
                    if Some(&old) != hash.as_ref() {
                        replaced.insert(old);
                    }
                }
                c.exec(
                    "INSERT INTO thread_channel_values (thread_id, checkpoint_ns, channel, version, hash)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO UPDATE SET hash = EXCLUDED.hash",
                    &[&cp.thread_id, &cp.checkpoint_ns, channel, version, &hash],
                )?;
            }
            let metadata_json = json_or_none(cp.metadata_json.as_deref());
            c.exec(
                "INSERT INTO thread_checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_id, run_id,
                     checkpoint_type, checkpoint, metadata_type, metadata, versions, metadata_json)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
                     parent_id = EXCLUDED.parent_id, run_id = EXCLUDED.run_id,
                     checkpoint_type = EXCLUDED.checkpoint_type, checkpoint = EXCLUDED.checkpoint,
                     metadata_type = EXCLUDED.metadata_type, metadata = EXCLUDED.metadata,
                     versions = EXCLUDED.versions, metadata_json = EXCLUDED.metadata_json",
                &[
                    &cp.thread_id,
                    &cp.checkpoint_ns,
                    &cp.checkpoint_id,
                    &cp.parent_id,
                    &cp.run_id,
                    &cp.checkpoint.type_tag,
                    &&cp.checkpoint.data[..],
                    &cp.metadata.type_tag,
                    &&cp.metadata.data[..],
                    &encode_versions(&cp.versions),
                    &metadata_json,
                ],
            )?;
            drop_unreferenced_values(c, replaced)
        })
    }

    fn put_writes(&self, w: NewThreadWrites) -> Result<()> {
        // Pending writes ride on the next checkpoint's WAL flush (see `ThreadStore::put_writes`).
        self.write_lazy(move |c, _| {
            let mut replaced = HashSet::new();
            for (idx, channel, value) in &w.writes {
                let hash = value_hash(value);
                let old = c.row(
                    "SELECT hash FROM thread_writes WHERE thread_id = $1 AND checkpoint_ns = $2
                        AND checkpoint_id = $3 AND task_id = $4 AND idx = $5",
                    &[&w.thread_id, &w.checkpoint_ns, &w.checkpoint_id, &w.task_id, idx],
                )?;
                match old.map(|r| r.get::<_, Hash>(0)) {
                    // A regular write is stored once: a retried task does not duplicate it.
                    Some(_) if *idx >= 0 => continue,
                    Some(old) if old != hash => {
                        replaced.insert(old);
                    }
                    _ => {}
                }
                store_value(c, value)?;
                c.exec(
                    "INSERT INTO thread_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx,
                         channel, hash, task_path) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
                         channel = EXCLUDED.channel, hash = EXCLUDED.hash, task_path = EXCLUDED.task_path",
                    &[
                        &w.thread_id,
                        &w.checkpoint_ns,
                        &w.checkpoint_id,
                        &w.task_id,
                        idx,
                        channel,
                        &hash,
                        &w.task_path,
                    ],
                )?;
            }
            drop_unreferenced_values(c, replaced)
        })
    }

    fn get_checkpoint(
        &self,
        thread_id: &str,
        checkpoint_ns: &str,
        checkpoint_id: Option<&str>,
    ) -> Result<Option<ThreadCheckpoint>> {
        self.read_snapshot(|c| {
            let row = match checkpoint_id {
                Some(id) => c.row(
                    &format!(
                        "{HEADER} WHERE thread_id = $1 AND checkpoint_ns = $2 AND checkpoint_id = $3"
                    ),
                    &[&thread_id, &checkpoint_ns, &id],
                )?,
                None => c.row(
                    &format!(
                        "{HEADER} WHERE thread_id = $1 AND checkpoint_ns = $2
                          ORDER BY checkpoint_id DESC LIMIT 1"
                    ),
                    &[&thread_id, &checkpoint_ns],
                )?,
            };
            match row {
                Some(r) => {
                    let cp = header(c, &r)?;
                    load_contents(c, cp).map(Some)
                }
                None => Ok(None),
            }
        })
    }

    fn list_checkpoints(&self, q: &ThreadQuery) -> Result<Vec<ThreadCheckpoint>> {
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let mut push = |clause: &str, args: &mut Vec<Box<dyn ToSql + Sync>>, v: String| {
            args.push(Box::new(v));
            clauses.push(clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(t) = &q.thread_id {
            push("thread_id = ?", &mut args, t.clone());
        }
        if let Some(ns) = &q.checkpoint_ns {
            push("checkpoint_ns = ?", &mut args, ns.clone());
        }
        if let Some(id) = &q.checkpoint_id {
            push("checkpoint_id = ?", &mut args, id.clone());
        }
        if let Some(before) = &q.before {
            push("checkpoint_id < ?", &mut args, before.clone());
        }
        if let Some((id, thread, ns)) = &q.after {
            let n = args.len();
            args.push(Box::new(id.clone()));
            args.push(Box::new(thread.clone()));
            args.push(Box::new(ns.clone()));
            clauses.push(format!(
                "(checkpoint_id, thread_id, checkpoint_ns) < (${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3
            ));
        }
        for (key, value) in &q.metadata_filter {
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            args.push(Box::new(path));
            clauses.push(filter_clause(value, args.len()));
            match value {
                FilterValue::Null => {}
                FilterValue::Int(v) => args.push(Box::new(*v)),
                FilterValue::Real(v) => args.push(Box::new(*v)),
                FilterValue::Text(v) => args.push(Box::new(v.clone())),
            }
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let limit = q.limit.map(|n| format!("LIMIT {n}")).unwrap_or_default();
        let query = format!(
            "{HEADER} {filter} ORDER BY checkpoint_id DESC, thread_id DESC, checkpoint_ns DESC {limit}"
        );
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(AsRef::as_ref).collect();
        self.read_snapshot(|c| {
            let rows = c.rows(&query, &params)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let cp = header(c, r)?;
                out.push(if q.with_contents {
                    load_contents(c, cp)?
                } else {
                    cp
                });
            }
            Ok(out)
        })
    }

    fn delete_threads(&self, thread_ids: &[String]) -> Result<usize> {
        let thread_ids = thread_ids.to_vec();
        self.write(move |c, _| {
            let mut candidates = HashSet::new();
            for r in c.rows(
                "DELETE FROM thread_channel_values WHERE thread_id = ANY($1) RETURNING hash",
                &[&thread_ids],
            )? {
                candidates.extend(r.get::<_, Option<Hash>>(0));
            }
            for r in c.rows(
                "DELETE FROM thread_writes WHERE thread_id = ANY($1) RETURNING hash",
                &[&thread_ids],
            )? {
                candidates.insert(r.get::<_, Hash>(0));
            }
            let deleted = c.exec(
                "DELETE FROM thread_checkpoints WHERE thread_id = ANY($1)",
                &[&thread_ids],
            )?;
            drop_unreferenced_values(c, candidates)?;
            Ok(deleted as usize)
        })
    }

    fn delete_runs(&self, run_ids: &[String]) -> Result<usize> {
        let run_ids = run_ids.to_vec();
        self.write(move |c, _| {
            let deleted: Vec<CheckpointKey> = c
                .rows(
                    "DELETE FROM thread_checkpoints WHERE run_id = ANY($1)
                     RETURNING thread_id, checkpoint_ns, checkpoint_id",
                    &[&run_ids],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            collect_garbage(c, &deleted)?;
            Ok(deleted.len())
        })
    }

    fn copy_thread(&self, source: &str, target: &str) -> Result<usize> {
        let (source, target) = (source.to_string(), target.to_string());
        self.write(move |c, _| {
            c.exec(
                "INSERT INTO thread_channel_values (thread_id, checkpoint_ns, channel, version, hash)
                 SELECT $2, checkpoint_ns, channel, version, hash FROM thread_channel_values WHERE thread_id = $1
                 ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO UPDATE SET hash = EXCLUDED.hash",
                &[&source, &target],
            )?;
            c.exec(
                "INSERT INTO thread_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, hash, task_path)
                 SELECT $2, checkpoint_ns, checkpoint_id, task_id, idx, channel, hash, task_path
                   FROM thread_writes WHERE thread_id = $1
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
                     channel = EXCLUDED.channel, hash = EXCLUDED.hash, task_path = EXCLUDED.task_path",
                &[&source, &target],
            )?;
            let copied = c.exec(
                "INSERT INTO thread_checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_id, run_id,
                     checkpoint_type, checkpoint, metadata_type, metadata, versions, metadata_json)
                 SELECT $2, checkpoint_ns, checkpoint_id, parent_id, run_id, checkpoint_type, checkpoint,
                        metadata_type, metadata, versions, metadata_json FROM thread_checkpoints WHERE thread_id = $1
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
                     parent_id = EXCLUDED.parent_id, run_id = EXCLUDED.run_id,
                     checkpoint_type = EXCLUDED.checkpoint_type, checkpoint = EXCLUDED.checkpoint,
                     metadata_type = EXCLUDED.metadata_type, metadata = EXCLUDED.metadata,
                     versions = EXCLUDED.versions, metadata_json = EXCLUDED.metadata_json",
                &[&source, &target],
            )?;
            Ok(copied as usize)
        })
    }

    fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<usize> {
        if strategy == PruneStrategy::DeleteAll {
            return self.delete_threads(thread_ids);
        }
        let thread_ids = thread_ids.to_vec();
        self.write(move |c, _| {
            let deleted: Vec<CheckpointKey> = c
                .rows(
                    "DELETE FROM thread_checkpoints t WHERE t.thread_id = ANY($1) AND t.checkpoint_id <
                        (SELECT max(k.checkpoint_id) FROM thread_checkpoints k
                          WHERE k.thread_id = t.thread_id AND k.checkpoint_ns = t.checkpoint_ns)
                     RETURNING thread_id, checkpoint_ns, checkpoint_id",
                    &[&thread_ids],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            collect_garbage(c, &deleted)?;
            Ok(deleted.len())
        })
    }
}
