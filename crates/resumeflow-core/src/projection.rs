//! The projection: a run's current state, folded from its events.
//!
//! The store keeps this fold materialized in the `runs` and `node_states` tables, updated in
//! the same transaction as each event; [`RunProjection::apply`] is the single definition of
//! what each event does, used by the writer and by the replay check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, ResetReason};
use crate::state::{NodeState, NodeStatus, RunStatus};

/// Run-level and node-level state derived from events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunProjection {
    pub status: RunStatus,
    pub head_checkpoint: Option<i64>,
    pub error: Option<String>,
    pub updated_at: f64,
    pub nodes: BTreeMap<String, NodeState>,
}

impl Default for RunProjection {
    fn default() -> Self {
        Self {
            status: RunStatus::Pending,
            head_checkpoint: None,
            error: None,
            updated_at: 0.0,
            nodes: BTreeMap::new(),
        }
    }
}

impl RunProjection {
    /// Folds a whole log from the empty state.
    ///
    /// ```
    /// use resumeflow_core::{Event, EventKind, RunProjection, RunStatus};
    /// let events = vec![
    ///     Event { seq: 1, at: 1.0, kind: EventKind::RunCreated { workflow: "w".into(), graph_hash: "h".into(), nodes: vec!["a".into()] } },
    ///     Event { seq: 2, at: 2.0, kind: EventKind::RunCompleted },
    /// ];
    /// assert_eq!(RunProjection::replay(&events).status, RunStatus::Completed);
    /// ```
    pub fn replay(events: &[Event]) -> Self {
        let mut p = Self::default();
        for e in events {
            p.apply(e);
        }
        p
    }

    /// Applies one event. Node events touch only the node they name, so callers may hold
    /// a projection with just the nodes they are about to change.
    pub fn apply(&mut self, event: &Event) {
        let at = event.at;
        self.updated_at = at;
        match &event.kind {
            EventKind::RunCreated { nodes, .. } => {
                self.status = RunStatus::Pending;
                for id in nodes {
                    self.nodes.insert(id.clone(), NodeState::default());
                }
            }
            EventKind::LeaseAcquired { .. } => {
                self.status = RunStatus::Running;
                self.error = None;
            }
            EventKind::LeaseReleased { .. }
            | EventKind::RunResumed { .. }
            | EventKind::PartialStateSaved { .. } => {}
            EventKind::NodeStarted { node, attempt } => {
                let n = self.node_mut(node);
                n.status = NodeStatus::Running;
                n.attempt = *attempt;
                n.started_at = Some(at);
                n.finished_at = None;
            }
            EventKind::NodeCompleted {
                node,
                attempt,
                value,
            } => {
                let n = self.node_mut(node);
                n.status = NodeStatus::Completed;
                n.attempt = *attempt;
                n.output = Some(value.clone());
                n.finished_at = Some(at);
                n.error = None;
            }
            EventKind::NodeFailed {
                node,
                attempt,
                error,
                retryable,
                will_retry,
                peak_memory,
                next_inputs_override,
            } => {
                let n = self.node_mut(node);
                n.status = if *will_retry {
                    NodeStatus::Retrying
                } else {
                    NodeStatus::Failed
                };
                n.attempt = *attempt;
                n.error = Some(error.clone());
                n.retryable = Some(*retryable);
                n.finished_at = Some(at);
                if peak_memory.is_some() {
                    n.peak_memory = *peak_memory;
                }
                if next_inputs_override.is_some() {
                    n.inputs_override.clone_from(next_inputs_override);
                }
            }
            EventKind::NodeRetryScheduled { node, .. } => {
                self.node_mut(node).status = NodeStatus::Retrying;
            }
            EventKind::NodeReset { node, reason } => {
                let n = self.node_mut(node);
                n.status = NodeStatus::Pending;
                n.output = None;
                n.started_at = None;
                n.finished_at = None;
                if *reason == ResetReason::Rerun {
                    n.inputs_override = None;
                }
            }
            EventKind::StateUpdated { node, value } | EventKind::NodeRestored { node, value } => {
                let n = self.node_mut(node);
                n.status = NodeStatus::Completed;
                n.output = Some(value.clone());
                n.finished_at = Some(at);
            }
            EventKind::CheckpointCommitted { checkpoint_id, .. }
            | EventKind::Rewound { checkpoint_id } => {
                self.head_checkpoint = Some(*checkpoint_id);
            }
            EventKind::RunPaused => self.status = RunStatus::Paused,
            EventKind::RunQueued => self.status = RunStatus::Queued,
            EventKind::RunCompleted => self.status = RunStatus::Completed,
            EventKind::RunCancelled => self.status = RunStatus::Cancelled,
            EventKind::RunFailed { error } => {
                self.status = RunStatus::Failed;
                self.error = Some(error.clone());
            }
            EventKind::Compacted { snapshot } => {
                *self = (**snapshot).clone();
                self.updated_at = at;
            }
        }
    }

    fn node_mut(&mut self, id: &str) -> &mut NodeState {
        self.nodes.entry(id.to_string()).or_default()
    }
}
