//! Large values as files beside the database: `<db>.blobs/<first two hex digits>/<hash>`.
//!
//! A value at or above the file threshold (64 MiB by default) is written to a temporary name,
//! fsynced, renamed into place and its directory fsynced **before** the batch that references
//! it is queued for commit, so a committed reference always finds its file. A crash between
//! the file write and the commit leaves an orphan file that no row references;
//! [`BlobFiles::sweep_orphans`] (run by `cleanup`) removes orphans older than a grace period
//! (an in-flight commit in another process never takes that long).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result, StoreError};
use crate::state::ValueRef;

/// Default size from which a value is stored as a file.
pub const DEFAULT_FILE_THRESHOLD: u64 = 64 << 20;

/// The blob directory of one store.
pub struct BlobFiles {
    dir: PathBuf,
    db: PathBuf,
    threshold: AtomicU64,
}

fn hex(hash: &[u8]) -> String {
    use std::fmt::Write as _;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
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

    /// Where the value with this hash lives.
    pub fn path_of(&self, hash: &[u8]) -> PathBuf {
        let name = hex(hash);
        self.dir.join(&name[..2]).join(name)
    }

    /// Writes `data` (the stored form of `value`) durably, unless a file of the same length
    /// is already there (same content: the name is its hash).
    pub fn write(&self, value: &ValueRef, data: &[u8]) -> Result<()> {
        let target = self.path_of(&value.hash);
        if fs::metadata(&target).is_ok_and(|m| m.len() == data.len() as u64) {
            return Ok(());
        }
        let sub = target.parent().expect("blob paths have a parent");
        if !sub.is_dir() {
            fs::create_dir_all(sub).map_err(|e| self.error("directory", &e))?;
            fsync_dir(&self.dir).map_err(|e| self.error("directory fsync", &e))?;
            if let Some(top) = self.dir.parent() {
                let _ = fsync_dir(top);
            }
        }
        let tmp = sub.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            fastrand::u64(..),
            hex(&value.hash[..8])
        ));
        let result = (|| -> std::io::Result<()> {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(data)?;
            file.sync_all()?;
            fs::rename(&tmp, &target)?;
            fsync_dir(sub)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(&format!("write {}", target.display()), &e));
        }
        Ok(())
    }

    /// Writes a value given as consecutive segments (never joined in memory): the BLAKE3 hash
    /// is computed on a second thread while this one writes a temporary file, which is then
    /// fsynced and renamed to the hash's name. Returns the value's reference.
    pub fn write_segments(&self, segments: &[&[u8]]) -> Result<ValueRef> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.error("directory", &e))?;
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", std::process::id(), fastrand::u64(..)));
        let (hash, written) = std::thread::scope(|scope| {
            let hasher = scope.spawn(|| {
                let mut h = blake3::Hasher::new();
                for s in segments {
                    h.update(s);
                }
                h.finalize()
            });
            let written = (|| -> std::io::Result<()> {
                let mut options = OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&tmp)?;
                for s in segments {
                    file.write_all(s)?;
                }
                file.sync_all()
            })();
            (hasher.join().expect("hashing does not panic"), written)
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(&format!("write {}", tmp.display()), &e));
        }
        let value = ValueRef {
            hash: hash.as_bytes().to_vec(),
            size: segments.iter().map(|s| s.len() as u64).sum(),
        };
        let target = self.path_of(&value.hash);
        let sub = target.parent().expect("blob paths have a parent");
        let placed = (|| -> std::io::Result<()> {
            if !sub.is_dir() {
                fs::create_dir_all(sub)?;
                fsync_dir(&self.dir)?;
            }
            if fs::metadata(&target).is_ok_and(|m| m.len() == value.size) {
                fs::remove_file(&tmp)?; // the same content is there already
            } else {
                fs::rename(&tmp, &target)?;
            }
            fsync_dir(sub)
        })();
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(&format!("place {}", target.display()), &e));
        }
        Ok(value)
    }

    /// Reads a value's stored form into `buf` (exactly its length).
    pub fn read_into(&self, hash: &[u8], buf: &mut [u8]) -> Result<()> {
        use std::io::Read;
        let path = self.path_of(hash);
        let corrupt = |e: std::io::Error| -> Error {
            StoreError::Corrupt {
                path: self.db.clone(),
                table: "blobs".into(),
                message: format!("blob file {} cannot be read: {e}", path.display()),
            }
            .into()
        };
        let mut file = File::open(&path).map_err(corrupt)?;
        let len = file.metadata().map_err(corrupt)?.len();
        if len != buf.len() as u64 {
            return Err(corrupt(std::io::Error::other(format!(
                "{len} bytes, expected {}",
                buf.len()
            ))));
        }
        file.read_exact(buf).map_err(corrupt)
    }

    /// Reads a value's stored form.
    pub fn read(&self, hash: &[u8]) -> Result<Vec<u8>> {
        let path = self.path_of(hash);
        fs::read(&path).map_err(|e| {
            StoreError::Corrupt {
                path: self.db.clone(),
                table: "blobs".into(),
                message: format!("blob file {} cannot be read: {e}", path.display()),
            }
            .into()
        })
    }

    /// True if the value's file exists.
    pub fn exists(&self, hash: &[u8]) -> bool {
        self.path_of(hash).is_file()
    }

    /// Removes a value's file (missing is fine).
    pub fn remove(&self, hash: &[u8]) {
        let _ = fs::remove_file(self.path_of(hash));
    }

    /// Removes files (and leftover temporary files) that `referenced` does not name and that
    /// are older than `grace`; returns how many.
    pub fn sweep_orphans(&self, referenced: &HashSet<String>, grace: Duration) -> usize {
        let Ok(subs) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for sub in subs.flatten() {
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if referenced.contains(&name) {
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

/// The hex name of a hash (a blob file's name).
pub fn file_name(hash: &[u8]) -> String {
    hex(hash)
}
