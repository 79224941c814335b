//! Events: the append-only log of a run's state transitions.
//!
//! Encoded with rmp-serde using named fields, so rows written by an older version stay
//! readable when fields are added (new fields must be `Option` or `#[serde(default)]`).

use serde::{Deserialize, Serialize};

use crate::projection::RunProjection;
use crate::state::ValueRef;

/// Why a node went back to `pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetReason {
    /// Named in `rerun`: re-executed from scratch, partial state dropped.
    Rerun,
    /// Downstream of a rerun or an update.
    Upstream,
    /// Completed after the checkpoint a resume rewound to.
    Rewind,
    /// Failed, running or retrying when the run stopped; continues on resume.
    Resume,
}

/// One state transition of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    RunCreated {
        workflow: String,
        graph_hash: String,
        nodes: Vec<String>,
    },
    LeaseAcquired {
        owner: String,
        token: i64,
    },
    LeaseReleased {
        token: i64,
    },
    RunResumed {
        from_checkpoint: Option<i64>,
    },
    NodeStarted {
        node: String,
        attempt: u32,
    },
    NodeCompleted {
        node: String,
        attempt: u32,
        value: ValueRef,
    },
    NodeFailed {
        node: String,
        attempt: u32,
        error: String,
        retryable: bool,
        /// True when another attempt follows in this session.
        will_retry: bool,
        #[serde(default)]
        peak_memory: Option<u64>,
        #[serde(default, with = "serde_bytes")]
        next_inputs_override: Option<Vec<u8>>,
    },
    NodeRetryScheduled {
        node: String,
        delay_ms: u64,
        /// Why the wait is as long as it is, when the failure said (e.g. a `Retry-After`).
        #[serde(default)]
        reason: Option<String>,
    },
    NodeReset {
        node: String,
        reason: ResetReason,
    },
    PartialStateSaved {
        node: String,
        size: u64,
        /// The attempt that saved it (`None` for operator writes through the engine).
        #[serde(default)]
        attempt: Option<u32>,
    },
    /// A caller replaced a node's output (`updates`).
    StateUpdated {
        node: String,
        value: ValueRef,
    },
    /// A rewind put back a node's output as of the checkpoint resumed from.
    NodeRestored {
        node: String,
        value: ValueRef,
    },
    CheckpointCommitted {
        checkpoint_id: i64,
        parent_id: Option<i64>,
    },
    /// Resume from an earlier checkpoint: the head moves back to it.
    Rewound {
        checkpoint_id: i64,
    },
    RunPaused,
    /// Submitted (or handed back by a stopping worker) for any worker to claim.
    RunQueued,
    RunCompleted,
    RunFailed {
        error: String,
    },
    RunCancelled,
    /// Stands for every event up to its seq after `cleanup` compacted them.
    Compacted {
        snapshot: Box<RunProjection>,
    },
}

impl EventKind {
    /// Short name stored in the `kind` column.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RunCreated { .. } => "RunCreated",
            Self::LeaseAcquired { .. } => "LeaseAcquired",
            Self::LeaseReleased { .. } => "LeaseReleased",
            Self::RunResumed { .. } => "RunResumed",
            Self::NodeStarted { .. } => "NodeStarted",
            Self::NodeCompleted { .. } => "NodeCompleted",
            Self::NodeFailed { .. } => "NodeFailed",
            Self::NodeRetryScheduled { .. } => "NodeRetryScheduled",
            Self::NodeReset { .. } => "NodeReset",
            Self::PartialStateSaved { .. } => "PartialStateSaved",
            Self::StateUpdated { .. } => "StateUpdated",
            Self::NodeRestored { .. } => "NodeRestored",
            Self::CheckpointCommitted { .. } => "CheckpointCommitted",
            Self::Rewound { .. } => "Rewound",
            Self::RunPaused => "RunPaused",
            Self::RunQueued => "RunQueued",
            Self::RunCompleted => "RunCompleted",
            Self::RunFailed { .. } => "RunFailed",
            Self::RunCancelled => "RunCancelled",
            Self::Compacted { .. } => "Compacted",
        }
    }

    /// The node an event is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::NodeStarted { node, .. }
            | Self::NodeCompleted { node, .. }
            | Self::NodeFailed { node, .. }
            | Self::NodeRetryScheduled { node, .. }
            | Self::NodeReset { node, .. }
            | Self::PartialStateSaved { node, .. }
            | Self::StateUpdated { node, .. }
            | Self::NodeRestored { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Encodes with named fields.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("events always encode")
    }

    /// Decodes a stored payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// An event with its position in the run's log and its commit time.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: i64,
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub kind: EventKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_named_fields() {
        let e = EventKind::NodeFailed {
            node: "train".into(),
            attempt: 2,
            error: "OutOfMemoryError: CUDA out of memory".into(),
            retryable: true,
            will_retry: true,
            peak_memory: Some(1 << 30),
            next_inputs_override: Some(vec![1, 2, 3]),
        };
        let bytes = e.encode();
        assert!(
            bytes.windows(5).any(|w| w == b"error"),
            "field names are stored"
        );
        assert_eq!(EventKind::decode(&bytes).unwrap(), e);
    }
}
