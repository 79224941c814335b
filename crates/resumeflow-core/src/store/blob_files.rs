//! Large values as files beside the database: `<db>.blobs/<first two hex digits>/<hash>`
//! (`<hash>.zst` when stored zstd-compressed: the name says the stored form, so a raw and a
//! compressed copy of one value never overwrite each other).
//!
//! A value at or above the file threshold (64 MiB by default) is written to a temporary file
//! in `<db>.blobs/tmp/`, fsynced, renamed into place and its directory fsynced **before** the
//! batch that references it is queued for commit, so a committed reference always finds its
//! file. A crash between the file write and the commit leaves an orphan file (or a temporary
//! one) that no row references; [`BlobFiles::sweep_orphans`] (run by `cleanup`, inside a write
//! transaction) removes those older than a grace period. Reusing an existing file (same
//! content) refreshes its modification time, so a file about to be referenced again is never
//! old enough to be swept.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result, StoreError};
use crate::state::ValueRef;

use super::ValueCodec;

/// Default size from which a value is stored as a file.
pub const DEFAULT_FILE_THRESHOLD: u64 = 64 << 20;

/// Bytes hashed and written per step of [`BlobFiles::write_segments`]: each chunk is copied
/// once into a private buffer, so what is hashed is exactly what is written even if the
/// caller's memory changes meanwhile.
const CHUNK: usize = 8 << 20;

/// The blob directory of one store.
pub struct BlobFiles {
    dir: PathBuf,
    db: PathBuf,
    threshold: AtomicU64,
    /// Set once the blob directory (and its tmp/) exist durably.
    created: OnceLock<()>,
}

fn hex(hash: &[u8]) -> String {
    use std::fmt::Write as _;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The file name of a value stored in `codec`.
pub fn file_name(hash: &[u8], codec: ValueCodec) -> String {
    match codec {
        ValueCodec::Raw => hex(hash),
        ValueCodec::Zstd => format!("{}.zst", hex(hash)),
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` if needed and fsyncs it and its parent (so the new entry is durable).
/// Creates `dir` (and missing parents) readable by the owner only, like the database's
/// 0600 files, whatever the umask.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    // The mode given at creation is filtered by the umask; set it exactly.
    #[cfg(unix)]
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(())
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        create_private_dir(dir)?;
    }
    fsync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    Ok(())
}

fn touch(path: &Path) -> std::io::Result<()> {
    File::options()
        .write(true)
        .open(path)?
        .set_modified(SystemTime::now())
}

impl BlobFiles {
    /// The blob directory beside `db` (created on first write).
    pub fn new(db: &Path) -> Self {
        let mut name = db.as_os_str().to_owned();
        name.push(".blobs");
        Self {
            dir: PathBuf::from(name),
            db: db.to_path_buf(),
            threshold: AtomicU64::new(DEFAULT_FILE_THRESHOLD),
            created: OnceLock::new(),
        }
    }

    /// Blob files in `dir` for the store named `store` (in messages): a directory every
    /// host of a shared store mounts.
    pub fn in_dir(dir: &Path, store: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            db: store.to_path_buf(),
            threshold: AtomicU64::new(DEFAULT_FILE_THRESHOLD),
            created: OnceLock::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Values of at least this many stored bytes go to files.
    pub fn threshold(&self) -> u64 {
        self.threshold.load(Ordering::Relaxed)
    }

    /// Sets the threshold.
    pub fn set_threshold(&self, bytes: u64) {
        self.threshold.store(bytes.max(1), Ordering::Relaxed);
    }

    fn error(&self, what: &str, e: &std::io::Error) -> Error {
        StoreError::Unusable {
            path: self.db.clone(),
            message: format!("blob file {what}: {e}"),
        }
        .into()
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Makes sure the blob directory and its tmp/ exist durably (once per store).
    fn prepare(&self) -> Result<()> {
        if self.created.get().is_some() {
            return Ok(());
        }
        ensure_dir(&self.dir)
            .and_then(|()| ensure_dir(&self.tmp_dir()))
            .map_err(|e| self.error("directory", &e))?;
        let _ = self.created.set(());
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp_dir()
            .join(format!("{}-{}", std::process::id(), fastrand::u64(..)))
    }

    /// Where the value with this hash lives in `codec`.
    pub fn path_of(&self, hash: &[u8], codec: ValueCodec) -> PathBuf {
        let name = hex(hash);
        self.dir.join(&name[..2]).join(file_name(hash, codec))
    }

    /// Moves a durable temporary file into place as `target` (or, when the same content is
    /// there already, keeps that one and refreshes its time), then fsyncs the directory.
    fn place(&self, tmp: &Path, target: &Path, len: u64) -> std::io::Result<()> {
        let sub = target.parent().expect("blob paths have a parent");
        if !sub.is_dir() {
            create_private_dir(sub)?;
            fsync_dir(&self.dir)?;
        }
        if fs::metadata(target).is_ok_and(|m| m.len() == len) && touch(target).is_ok() {
            fs::remove_file(tmp)?;
        } else {
            fs::rename(tmp, target)?;
        }
        fsync_dir(sub)
    }

    /// Writes `data` (the stored form of `value`, in `codec`) durably. An existing file of
    /// the same name and length has the same content; it is kept, its time refreshed.
    pub fn write(&self, value: &ValueRef, codec: ValueCodec, data: &[u8]) -> Result<()> {
        self.prepare()?;
        let target = self.path_of(&value.hash, codec);
        let tmp = self.tmp_path();
        let result = (|| -> std::io::Result<()> {
            if fs::metadata(&target).is_ok_and(|m| m.len() == data.len() as u64)
                && touch(&target).is_ok()
            {
                return fsync_dir(target.parent().expect("blob paths have a parent"));
            }
            let mut file = create_private(&tmp)?;
            file.write_all(data)?;
            file.sync_all()?;
            self.place(&tmp, &target, data.len() as u64)
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.error(&format!("write {}", target.display()), &e)
        })
    }

    /// Writes a value given as consecutive segments (never joined in memory) and returns its
    /// reference. Each chunk is copied once into a private buffer that a second thread hashes
    /// while this one writes it, so the hash is of exactly the bytes written.
    pub fn write_segments(&self, segments: &[&[u8]]) -> Result<ValueRef> {
        self.prepare()?;
        let tmp = self.tmp_path();
        let size: u64 = segments.iter().map(|s| s.len() as u64).sum();
        let written = (|| -> std::io::Result<blake3::Hash> {
            let mut file = create_private(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK.min(size as usize));
            let mut flush = |chunk: &mut Vec<u8>, hasher: &mut blake3::Hasher| {
                let result = std::thread::scope(|scope| {
                    let hashing = scope.spawn(|| {
                        hasher.update(chunk);
                    });
                    let wrote = file.write_all(chunk);
                    hashing.join().expect("hashing does not panic");
                    wrote
                });
                chunk.clear();
                result
            };
            for segment in segments {
                let mut rest = *segment;
                while !rest.is_empty() {
                    let take = (CHUNK - chunk.len()).min(rest.len());
                    chunk.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if chunk.len() == CHUNK {
                        flush(&mut chunk, &mut hasher)?;
                    }
                }
            }
            if !chunk.is_empty() {
                flush(&mut chunk, &mut hasher)?;
            }
            file.sync_all()?;
            Ok(hasher.finalize())
        })();
        let hash = match written {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(self.error(&format!("write {}", tmp.display()), &e));
            }
        };
        let value = ValueRef {
            hash: hash.as_bytes().to_vec(),
            size,
        };
        let target = self.path_of(&value.hash, ValueCodec::Raw);
        self.place(&tmp, &target, size).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.error(&format!("place {}", target.display()), &e)
        })?;
        Ok(value)
    }

    /// Reads a value's stored form into `buf` (exactly its length).
    pub fn read_into(&self, hash: &[u8], codec: ValueCodec, buf: &mut [u8]) -> Result<()> {
        use std::io::Read;
        let path = self.path_of(hash, codec);
        let mut file = File::open(&path).map_err(|e| self.unreadable(&path, &e))?;
        let len = file
            .metadata()
            .map_err(|e| self.unreadable(&path, &e))?
            .len();
        if len != buf.len() as u64 {
            let e = std::io::Error::other(format!("{len} bytes, expected {}", buf.len()));
            return Err(self.unreadable(&path, &e));
        }
        file.read_exact(buf).map_err(|e| self.unreadable(&path, &e))
    }

    fn unreadable(&self, path: &Path, e: &std::io::Error) -> Error {
        StoreError::Corrupt {
            path: self.db.clone(),
            table: "blobs".into(),
            message: format!("blob file {} cannot be read: {e}", path.display()),
        }
        .into()
    }

    /// Reads a value's stored form.
    pub fn read(&self, hash: &[u8], codec: ValueCodec) -> Result<Vec<u8>> {
        let path = self.path_of(hash, codec);
        fs::read(&path).map_err(|e| self.unreadable(&path, &e))
    }

    /// True if the value's file exists.
    pub fn exists(&self, hash: &[u8], codec: ValueCodec) -> bool {
        self.path_of(hash, codec).is_file()
    }

    /// Removes a value's file (missing is fine).
    pub fn remove(&self, hash: &[u8], codec: ValueCodec) {
        let _ = fs::remove_file(self.path_of(hash, codec));
    }

    /// Removes files (and temporary files) whose name `referenced` does not hold and that
    /// are older than `grace`; returns how many. Run it inside a write transaction, so that
    /// no commit (in any process) can add a reference meanwhile.
    pub fn sweep_orphans(&self, referenced: &HashSet<String>, grace: Duration) -> usize {
        let Ok(subs) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for sub in subs.flatten() {
            let is_tmp = sub.file_name() == "tmp";
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if !is_tmp && referenced.contains(&name) {
                    continue;
                }
                let old = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= grace);
                if old && fs::remove_file(file.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
