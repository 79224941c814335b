//! Options of the engine and of its calls.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::store::Durability;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most nodes running at once across this engine's runs (`None`: no limit).
    pub max_concurrency: Option<usize>,
    pub durability: Durability,
    /// Named resource capacities, e.g. `{"gpu": 1}`; resources not named are unlimited.
    pub resources: BTreeMap<String, u32>,
    /// How long a lease lasts without renewal (renewed every third of it).
    pub lease_ttl: Duration,
    /// Cap on the store file's size; writes past it fail with a `StoreError`.
    pub max_store_bytes: Option<u64>,
    /// Values whose stored form is at least this large live in files beside the database
    /// (`None`: 64 MiB).
    pub blob_file_threshold: Option<u64>,
    /// Open an existing store for reading only ([`SqliteStore::open_read_only`]): for
    /// inspecting a store this process may not write.
    ///
    /// [`SqliteStore::open_read_only`]: crate::SqliteStore::open_read_only
    pub read_only: bool,
    /// A PostgreSQL store's blob directory (one every host mounts); `None`: every value in
    /// the database. A SQLite store keeps its blob files beside its file.
    pub blob_dir: Option<std::path::PathBuf>,
}

impl EngineOptions {
    /// The store's part of these options.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            durability: self.durability,
            read_only: self.read_only,
            max_store_bytes: self.max_store_bytes,
            blob_file_threshold: self.blob_file_threshold,
            blob_dir: self.blob_dir.clone(),
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_concurrency: None,
            durability: Durability::Sync,
            resources: BTreeMap::new(),
            lease_ttl: Duration::from_secs(30),
            max_store_bytes: None,
            blob_file_threshold: None,
            read_only: false,
            blob_dir: None,
        }
    }
}

/// Options of [`Engine::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub run_id: Option<String>,
    /// Run only this node and its ancestors, then pause.
    pub until: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Options of [`Engine::resume`].
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    /// Resume from this earlier checkpoint: nodes completed after it run again.
    pub checkpoint_id: Option<i64>,
    /// Replace completed nodes' outputs (encoded); their dependants run again.
    pub updates: BTreeMap<String, Vec<u8>>,
    /// Re-execute these nodes and their dependants.
    pub rerun: Vec<String>,
    pub until: Option<String>,
    /// Resume even if the workflow's structure differs from the stored one.
    pub allow_mismatch: bool,
    /// Resume only a run still marked `running` (left by a dead or expired worker), else
    /// `RunNotResumable`; `recover` sets it so that it never restarts a paused or failed run.
    pub only_crashed: bool,
}
