//! What every store does to a batch before its transaction: compress the values that ask
//! for it and move large ones to blob files (durably, outside the transaction), and the
//! rule that a lease whose batch was refused has every later batch refused too.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result, StoreError};

use super::blob_files::BlobFiles;
use super::{RunBatch, ValueCodec};

/// Fault injection for crash tests: with `RESUMEFLOW_FAILPOINT=<name>` in the environment,
/// the process aborts at that point (`after_blob_write`: a blob file is durable, the commit
/// that references it has not happened).
pub fn failpoint(name: &str) {
    if std::env::var("RESUMEFLOW_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Compresses what asks for it and moves values whose stored form reaches the file
/// threshold to blob files (if the store keeps files); values staged already are left as they
/// are. With `partial_files`, partial states that large go to blob files too
/// (`batch.partial_files`), written and fsynced before the commit that references them.
pub fn stage_values(
    batch: &mut RunBatch,
    files: Option<&BlobFiles>,
    partial_files: bool,
    store: &Path,
) -> Result<()> {
    if let Some(files) = files.filter(|f| {
        partial_files
            && batch
                .partial_states
                .iter()
                .any(|(_, d)| d.len() as u64 >= f.threshold())
    }) {
        let threshold = files.threshold();
        let mut inline = Vec::with_capacity(batch.partial_states.len());
        for (node, data) in std::mem::take(&mut batch.partial_states) {
            if (data.len() as u64) < threshold {
                inline.push((node, data));
                continue;
            }
            let value = files.write_segments(&[&data])?;
            failpoint("after_blob_write");
            batch.partial_files.push((node, value));
        }
        batch.partial_states = inline;
    }
    for v in &mut batch.values {
        if v.codec != ValueCodec::Raw || v.in_file {
            continue; // staged already
        }
        if v.compress {
            let packed = zstd::bulk::compress(&v.bytes, 3).map_err(|e| -> Error {
                StoreError::Unusable {
                    path: store.to_path_buf(),
                    message: format!("cannot compress value {}: {e}", v.value.hex()),
                }
                .into()
            })?;
            v.bytes = packed.into();
            v.codec = ValueCodec::Zstd;
        }
        if let Some(files) = files.filter(|f| v.bytes.len() as u64 >= f.threshold()) {
            files.write(&v.value, v.codec, &v.bytes)?;
            failpoint("after_blob_write");
            v.bytes = Arc::from(&[][..]);
            v.in_file = true;
        }
    }
    Ok(())
}

/// [`stage_values`] for values outside a batch (a resume's `updates`).
pub fn stage_loose(
    values: Vec<super::BatchValue>,
    files: Option<&BlobFiles>,
    store: &Path,
) -> Result<Vec<super::BatchValue>> {
    let mut staged = RunBatch {
        values,
        ..RunBatch::default()
    };
    stage_values(&mut staged, files, false, store)?;
    Ok(staged.values)
}

/// `(run_id, token)` whose batch was refused: later batches under the same lease are
/// refused too, so a run never commits a step after a step it depends on failed to land.
#[derive(Default, Clone)]
pub struct Refusals(Arc<Mutex<HashSet<(String, i64)>>>);

impl Refusals {
    /// `LeaseLost` if an earlier batch of this batch's lease was refused.
    pub fn check(&self, batch: &RunBatch) -> Result<()> {
        if let Some(token) = batch.token {
            let key = (batch.run_id.clone(), token);
            if self.0.lock().expect("refusals").contains(&key) {
                return Err(Error::LeaseLost {
                    run_id: key.0,
                    token,
                });
            }
        }
        Ok(())
    }

    /// Records the outcome of a batch: a refusal poisons its lease, except a stale
    /// attempt's partial state, which says nothing about the run's other batches.
    pub fn record(&self, batch: &RunBatch, result: &Result<()>) {
        if let (Err(e), Some(token)) = (result, batch.token) {
            if !matches!(e, Error::StaleAttempt { .. }) {
                self.0
                    .lock()
                    .expect("refusals")
                    .insert((batch.run_id.clone(), token));
            }
        }
    }
}

/// A value's bytes from their stored form (decompressed), checked against its hash.
pub fn unpack(
    store: &Path,
    value: &super::ValueRef,
    stored: Vec<u8>,
    codec: ValueCodec,
) -> Result<Vec<u8>> {
    let corrupt = |message: String| -> Error {
        StoreError::Corrupt {
            path: store.to_path_buf(),
            table: "blobs".into(),
            message,
        }
        .into()
    };
    let data = match codec {
        ValueCodec::Raw => stored,
        ValueCodec::Zstd => zstd::bulk::decompress(&stored, value.size as usize)
            .map_err(|e| corrupt(format!("value {} does not decompress: {e}", value.hex())))?,
    };
    check_hash(store, value, &data)?;
    Ok(data)
}

/// `Corrupt` unless `data` is the value `value` names (its BLAKE3 hash and size).
pub fn check_hash(store: &Path, value: &super::ValueRef, data: &[u8]) -> Result<()> {
    if blake3::hash(data).as_bytes()[..] == value.hash[..] && data.len() as u64 == value.size {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: store.to_path_buf(),
            table: "blobs".into(),
            message: format!("value {} fails its hash check", value.hex()),
        }
        .into())
    }
}
