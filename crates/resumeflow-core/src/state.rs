//! The state types callers read: run and node status, node state, run state, checkpoints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A content-addressed reference to a stored output value (BLAKE3 of its bytes).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValueRef {
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    pub size: u64,
}

impl ValueRef {
    /// Hashes `bytes` into a reference.
    ///
    /// ```
    /// let r = resumeflow_core::ValueRef::of(b"abc");
    /// assert_eq!(r.size, 3);
    /// assert_eq!(r.hash.len(), 32);
    /// ```
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hash: blake3::hash(bytes).as_bytes().to_vec(),
            size: bytes.len() as u64,
        }
    }

    /// Hex form of the hash.
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.hash
            .iter()
            .fold(String::with_capacity(64), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
    }
}

impl fmt::Debug for ValueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValueRef({}…, {} B)", &self.hex()[..12], self.size)
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The lowercase name used in the store and the public API.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses the lowercase name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Status of a run.
    RunStatus {
        Pending => "pending",
        Running => "running",
        Queued => "queued",
        Paused => "paused",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// Status of a node within a run.
    NodeStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Retrying => "retrying",
        Skipped => "skipped",
    }
);

impl RunStatus {
    /// True for `completed`, `failed` and `cancelled`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// One node's state as of the latest committed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub status: NodeStatus,
    /// Attempts started so far, durable across retries, resumes and crashes.
    pub attempt: u32,
    pub error: Option<String>,
    pub retryable: Option<bool>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub output: Option<ValueRef>,
    /// Executor-defined adjusted inputs (msgpack from the Python layer), e.g. a shrunk batch size.
    #[serde(with = "serde_bytes")]
    pub inputs_override: Option<Vec<u8>>,
    /// Peak accelerator memory recorded by the executor at the last failure, if any.
    pub peak_memory: Option<u64>,
}

impl Default for NodeState {
    fn default() -> Self {
        Self {
            status: NodeStatus::Pending,
            attempt: 0,
            error: None,
            retryable: None,
            started_at: None,
            finished_at: None,
            output: None,
            inputs_override: None,
            peak_memory: None,
        }
    }
}

/// A run's state: what `get_current_state` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub run_id: String,
    pub workflow: String,
    pub status: RunStatus,
    /// Node states keyed by id.
    pub nodes: BTreeMap<String, NodeState>,
    /// Node ids in topological order.
    pub node_order: Vec<String>,
    pub checkpoint_id: Option<i64>,
    /// The first final failure (`node: error`), if the run failed.
    pub error: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
    /// Free-form labels stored with the run (the CLI keeps `MODULE:WORKFLOW` here).
    pub labels: BTreeMap<String, String>,
}

impl RunState {
    /// Ids of completed nodes, in topological order.
    pub fn completed(&self) -> Vec<String> {
        self.ids_where(|s| s.status == NodeStatus::Completed)
    }

    /// Ids of nodes not completed yet, in topological order.
    pub fn pending(&self) -> Vec<String> {
        self.ids_where(|s| s.status != NodeStatus::Completed)
    }

    fn ids_where(&self, keep: impl Fn(&NodeState) -> bool) -> Vec<String> {
        self.node_order
            .iter()
            .filter(|id| self.nodes.get(*id).is_some_and(&keep))
            .cloned()
            .collect()
    }
}

/// A durable, numbered point in a run's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub run_id: String,
    pub checkpoint_id: i64,
    pub parent_id: Option<i64>,
    pub created_at: f64,
    /// The last event sequence number this checkpoint covers.
    pub seq: i64,
    /// Nodes completed as of this checkpoint, in topological order.
    pub completed: Vec<String>,
    /// What the step did: `completed`, `modified` or `snapshot` (after cleanup folded older ones).
    pub kind: String,
}
