//! The domain rules of a write, with no SQL: what appending a batch of events to a run
//! changes (events numbered, node states, the checkpoint it makes and its kind, the saved
//! progress it discards, the lease it clears), whether a batch may be written at all (its
//! fencing token, stale attempts), and what taking a lease does. Every store computes a
//! [`WritePlan`] from the run's head and the rows it read, then writes the plan in one
//! transaction; the rules are tested here without a database (see `docs/stores.md`).

use std::collections::{BTreeMap, BTreeSet};

use crate::completed_marks::CompletedMarks;
use crate::error::{Error, Result};
use crate::event::{Event, EventKind, ResetReason};
use crate::lease::{owner_is_dead, LeaseRequest};
use crate::projection::RunProjection;
use crate::state::{NodeState, NodeStatus, ValueRef};

/// Checkpoint delta operations (`checkpoint_nodes.op`).
pub const OP_COMPLETED: i64 = 0;
pub const OP_MODIFIED: i64 = 1;
pub const OP_RESET: i64 = 2;

/// One node's entry in a checkpoint's delta: `(node, op, value)`.
pub type DeltaEntry = (String, i64, Option<ValueRef>);

/// The `runs` row fields a write needs.
#[derive(Debug, Clone)]
pub struct RunHead {
    pub run_id: String,
    /// Run-level state, and the states of the nodes the write touches.
    pub projection: RunProjection,
    pub last_seq: i64,
    pub last_checkpoint: i64,
    pub lease_owner: Option<String>,
    pub lease_expires: f64,
    pub lease_token: i64,
    /// The run's completed marks are kept and exact (see [`crate::completed_marks`]).
    pub marks_valid: bool,
}

/// What a batch does to the run's completed marks (the store writes it after the node rows).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum MarksWrite {
    /// Nothing: no node entered or left `completed`, or the run keeps no valid marks.
    #[default]
    Keep,
    /// Set these ranks in the stored chunks.
    Set(Vec<u32>),
    /// Replace every stored chunk with these marks (a rebuild, plus this batch's completions).
    Replace(CompletedMarks),
    /// Delete the run's marks: they could no longer be kept exact.
    Drop,
}
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCheckpoint {
    pub id: i64,
    pub parent: Option<i64>,
    /// The seq of its `CheckpointCommitted` event.
    pub seq: i64,
    /// `completed` (only completions) or `modified` (an update or a reset too).
    pub kind: &'static str,
    /// When it was made (the batch's time).
    pub created_at: f64,
    pub delta: Vec<DeltaEntry>,
}

/// Everything a batch of events writes, in the order a store writes it: delete the saved
/// progress of `cleared_progress`, insert `events`, the checkpoint, store every node of
/// `head.projection.nodes` and the head row; drop the run's control requests if
/// `settle_controls`.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub head: RunHead,
    pub events: Vec<Event>,
    pub checkpoint: Option<PlannedCheckpoint>,
    /// Nodes whose partial state and streaming segments are discarded.
    pub cleared_progress: Vec<String>,
    /// The lease was released: requests to its holder are settled (or moot).
    pub settle_controls: bool,
    /// The completed marks' change; `head.marks_valid` is their validity after it.
    pub marks: MarksWrite,
}

/// The first event of a new run.
pub fn run_created(graph: &crate::graph::Graph) -> EventKind {
    EventKind::RunCreated {
        workflow: graph.name().to_string(),
        graph_hash: graph.structural_hash(),
        nodes: graph.node_ids().into_iter().map(str::to_string).collect(),
    }
}

/// The batch that takes a lease: `LeaseAcquired` under the new token, then `events` and the
/// `values` they reference.
pub fn lease_batch(
    run_id: &str,
    owner: &str,
    token: i64,
    events: Vec<EventKind>,
    values: Vec<crate::store::BatchValue>,
) -> crate::store::RunBatch {
    let mut batch = crate::store::RunBatch::new(run_id, Some(token));
    batch.events.push(EventKind::LeaseAcquired {
        owner: owner.to_string(),
        token,
    });
    batch.events.extend(events);
    batch.values = values;
    batch
}

/// The nodes `events` name: the node rows a store reads before planning.
pub fn nodes_named(events: &[EventKind]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(EventKind::node)
        .map(str::to_string)
        .collect()
}

/// Plans appending `events` to the run of `head` at time `now`; `nodes` holds the stored
/// states of (at least) the nodes the events name: a node missing from it has none yet.
///
/// ```
/// use std::collections::BTreeMap;
/// use resumeflow_core::store::plan::{plan, RunHead};
/// use resumeflow_core::{EventKind, RunProjection, ValueRef};
/// let head = RunHead { run_id: "r".into(), projection: RunProjection::default(), last_seq: 1,
///     last_checkpoint: 0, lease_owner: None, lease_expires: 0.0, lease_token: 1,
///     marks_valid: false };
/// let done = EventKind::NodeCompleted { node: "a".into(), attempt: 1, value: ValueRef::of(b"1") };
/// let p = plan(head, BTreeMap::new(), &[done], 5.0);
/// assert_eq!(p.events.len(), 2); // the completion and its CheckpointCommitted
/// assert_eq!(p.checkpoint.unwrap().kind, "completed");
/// ```
pub fn plan(
    head: RunHead,
    nodes: BTreeMap<String, NodeState>,
    events: &[EventKind],
    now: f64,
) -> WritePlan {
    plan_marked(head, nodes, events, &[], None, now)
}

/// [`plan`] for a batch that also says the ranks of the nodes its `NodeCompleted` events
/// complete (`ranks`, in order) and, after a resume that read every node row, the run's marks
/// before its events (`base`): the plan then keeps the run's completed marks exact, or drops
/// them. The rule: a node that enters `completed` by a `NodeCompleted` with its rank sets its
/// mark; any other entry into `completed`, and any exit from it, drops the marks.
///
/// ```
/// use std::collections::BTreeMap;
/// use resumeflow_core::store::plan::{plan_marked, MarksWrite, RunHead};
/// use resumeflow_core::{EventKind, RunProjection, ValueRef};
/// let head = RunHead { run_id: "r".into(), projection: RunProjection::default(), last_seq: 1,
///     last_checkpoint: 0, lease_owner: None, lease_expires: 0.0, lease_token: 1, marks_valid: true };
/// let done = EventKind::NodeCompleted { node: "a".into(), attempt: 1, value: ValueRef::of(b"1") };
/// let p = plan_marked(head.clone(), BTreeMap::new(), &[done.clone()], &[3], None, 5.0);
/// assert_eq!(p.marks, MarksWrite::Set(vec![3]));
/// let p = plan_marked(head, BTreeMap::new(), &[done], &[], None, 5.0); // no rank given
/// assert_eq!(p.marks, MarksWrite::Drop);
/// assert!(!p.head.marks_valid);
/// ```
pub fn plan_marked(
    head: RunHead,
    nodes: BTreeMap<String, NodeState>,
    events: &[EventKind],
    ranks: &[u32],
    base: Option<&CompletedMarks>,
    now: f64,
) -> WritePlan {
    let completions = events
        .iter()
        .filter(|e| matches!(e, EventKind::NodeCompleted { .. }))
        .count();
    let valid_before = head.marks_valid || base.is_some();
    let mut planner = Planner {
        plan: WritePlan {
            head,
            events: Vec::with_capacity(events.len() + 1),
            checkpoint: None,
            cleared_progress: Vec::new(),
            settle_controls: false,
            marks: MarksWrite::Keep,
        },
        stored: nodes,
        now,
        delta: Vec::new(),
        ranks: (completions == ranks.len()).then(|| ranks.iter().copied()),
        marked: Vec::new(),
        marks_broken: false,
    };
    for kind in events {
        planner.append(kind.clone());
    }
    planner.checkpoint();
    let (marked, broken) = (std::mem::take(&mut planner.marked), planner.marks_broken);
    let mut plan = planner.plan;
    plan.marks = match (valid_before, broken, base) {
        (false, _, _) => MarksWrite::Keep,
        (true, true, _) => MarksWrite::Drop,
        (true, false, Some(base)) => {
            let mut all = base.clone();
            for rank in marked {
                all.insert(rank);
            }
            MarksWrite::Replace(all)
        }
        (true, false, None) if marked.is_empty() => MarksWrite::Keep,
        (true, false, None) => MarksWrite::Set(marked),
    };
    plan.head.marks_valid = valid_before && !broken;
    plan
}

struct Planner<'a> {
    plan: WritePlan,
    stored: BTreeMap<String, NodeState>,
    now: f64,
    delta: Vec<DeltaEntry>,
    /// The ranks of the `NodeCompleted` events still to come; `None` if they were not given.
    ranks: Option<std::iter::Copied<std::slice::Iter<'a, u32>>>,
    /// Ranks of the nodes this batch completed.
    marked: Vec<u32>,
    /// A node entered or left `completed` in a way the marks cannot follow.
    marks_broken: bool,
}

impl Planner<'_> {
    fn append(&mut self, kind: EventKind) {
        let projection = &mut self.plan.head.projection;
        let mut was_completed = false;
        if let Some(node) = kind.node() {
            if !projection.nodes.contains_key(node) {
                let state = self.stored.get(node).cloned().unwrap_or_default();
                projection.nodes.insert(node.to_string(), state);
            }
            was_completed = projection.nodes[node].status == NodeStatus::Completed;
        }
        match &kind {
            EventKind::NodeCompleted { node, value, .. } => {
                self.delta
                    .push((node.clone(), OP_COMPLETED, Some(value.clone())));
            }
            EventKind::StateUpdated { node, value } => {
                self.delta
                    .push((node.clone(), OP_MODIFIED, Some(value.clone())));
            }
            EventKind::NodeReset { node, reason } => {
                if was_completed && matches!(reason, ResetReason::Rerun | ResetReason::Upstream) {
                    self.delta.push((node.clone(), OP_RESET, None));
                }
                // A node that will run again from scratch must not find the progress of the
                // execution whose result was just discarded; a node resumed after a failure
                // or a crash keeps its progress.
                if *reason == ResetReason::Rerun
                    || (was_completed
                        && matches!(reason, ResetReason::Upstream | ResetReason::Rewind))
                {
                    self.plan.cleared_progress.push(node.clone());
                }
            }
            EventKind::LeaseReleased { .. } => {
                self.plan.settle_controls = true;
                self.plan.head.lease_owner = None;
                self.plan.head.lease_expires = 0.0;
            }
            _ => {}
        }
        self.plan.head.last_seq += 1;
        let event = Event {
            seq: self.plan.head.last_seq,
            at: self.now,
            kind,
        };
        self.plan.head.projection.apply(&event);
        self.follow_marks(&event.kind, was_completed);
        self.plan.events.push(event);
    }

    /// Keeps the completed marks exact across `kind` (already applied), or breaks them.
    fn follow_marks(&mut self, kind: &EventKind, was_completed: bool) {
        let rank = match kind {
            EventKind::NodeCompleted { .. } => self.ranks.as_mut().and_then(Iterator::next),
            _ => None,
        };
        let Some(node) = kind.node() else { return };
        let completed = self.plan.head.projection.nodes[node].status == NodeStatus::Completed;
        match (was_completed, completed, rank) {
            (false, true, Some(rank)) => self.marked.push(rank),
            (false, true, None) | (true, false, _) => self.marks_broken = true,
            _ => {}
        }
    }

    /// The checkpoint of this batch, if it completed or modified anything.
    fn checkpoint(&mut self) {
        if self.delta.is_empty() {
            return;
        }
        let delta = std::mem::take(&mut self.delta);
        let id = self.plan.head.last_checkpoint + 1;
        let parent = self.plan.head.projection.head_checkpoint;
        self.append(EventKind::CheckpointCommitted {
            checkpoint_id: id,
            parent_id: parent,
        });
        self.plan.head.last_checkpoint = id;
        let kind = if delta.iter().any(|(_, op, _)| *op != OP_COMPLETED) {
            "modified"
        } else {
            "completed"
        };
        self.plan.checkpoint = Some(PlannedCheckpoint {
            id,
            parent,
            seq: self.plan.head.last_seq,
            kind,
            created_at: self.now,
            delta,
        });
    }
}

/// Refuses a batch whose fencing token is not the run's current one, or whose lease was
/// released (`LeaseLost`); a batch without a token (an operator's write) always passes.
pub fn check_token(head: &RunHead, token: Option<i64>) -> Result<()> {
    match token {
        Some(token) if head.lease_token != token || head.lease_owner.is_none() => {
            Err(Error::LeaseLost {
                run_id: head.run_id.clone(),
                token,
            })
        }
        _ => Ok(()),
    }
}

/// Refuses partial-state saves from an attempt that is no longer the node's running one (a
/// timed-out or cancelled attempt whose thread kept going); `nodes` are the stored states.
pub fn check_attempts(
    run_id: &str,
    nodes: &BTreeMap<String, NodeState>,
    events: &[EventKind],
) -> Result<()> {
    for event in events {
        if let EventKind::PartialStateSaved {
            node,
            attempt: Some(attempt),
            ..
        } = event
        {
            let state = nodes.get(node).cloned().unwrap_or_default();
            if state.status != NodeStatus::Running || state.attempt != *attempt {
                return Err(Error::StaleAttempt {
                    run_id: run_id.to_string(),
                    node: node.clone(),
                    attempt: *attempt,
                });
            }
        }
    }
    Ok(())
}

/// Takes the run's lease for `request` at `now` (the store's clock): refused with
/// `RunLocked` while another live owner holds an unexpired lease; returns the new token.
pub fn take_lease(head: &mut RunHead, request: &LeaseRequest, now: f64) -> Result<i64> {
    if let Some(owner) = &head.lease_owner {
        if *owner != request.owner && head.lease_expires > now && !owner_is_dead(owner) {
            return Err(Error::RunLocked {
                run_id: head.run_id.clone(),
                owner: owner.clone(),
                remaining_s: head.lease_expires - now,
            });
        }
    }
    head.lease_token += 1;
    head.lease_owner = Some(request.owner.clone());
    head.lease_expires = now + request.ttl.as_secs_f64();
    Ok(head.lease_token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RunStatus;
    use std::time::Duration;

    fn head() -> RunHead {
        RunHead {
            run_id: "r".into(),
            projection: RunProjection::default(),
            last_seq: 3,
            last_checkpoint: 2,
            lease_owner: Some("h:1:a".into()),
            lease_expires: 100.0,
            lease_token: 7,
            marks_valid: false,
        }
    }

    fn completed(value: &[u8]) -> NodeState {
        NodeState {
            status: NodeStatus::Completed,
            attempt: 1,
            output: Some(ValueRef::of(value)),
            ..NodeState::default()
        }
    }

    #[test]
    fn a_completion_makes_a_completed_checkpoint_after_the_events() {
        let mut h = head();
        h.projection.head_checkpoint = Some(2);
        let events = [
            EventKind::NodeStarted {
                node: "a".into(),
                attempt: 1,
            },
            EventKind::NodeCompleted {
                node: "a".into(),
                attempt: 1,
                value: ValueRef::of(b"x"),
            },
        ];
        let p = plan(h, BTreeMap::new(), &events, 9.0);
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        let cp = p.checkpoint.expect("a checkpoint");
        assert_eq!(
            (cp.id, cp.parent, cp.seq, cp.kind),
            (3, Some(2), 6, "completed")
        );
        assert_eq!(p.head.last_checkpoint, 3);
        assert_eq!(p.head.projection.head_checkpoint, Some(3));
        assert_eq!(p.head.projection.nodes["a"].status, NodeStatus::Completed);
        assert!(p.cleared_progress.is_empty() && !p.settle_controls);
    }

    #[test]
    fn resetting_a_completed_node_is_a_modified_checkpoint_and_clears_its_progress() {
        let nodes = BTreeMap::from([("a".to_string(), completed(b"x"))]);
        let events = [EventKind::NodeReset {
            node: "a".into(),
            reason: ResetReason::Upstream,
        }];
        let p = plan(head(), nodes, &events, 1.0);
        let cp = p.checkpoint.expect("a checkpoint");
        assert_eq!(cp.kind, "modified");
        assert_eq!(cp.delta, vec![("a".to_string(), OP_RESET, None)]);
        assert_eq!(p.cleared_progress, ["a"]);
    }

    #[test]
    fn a_failed_node_resumed_keeps_its_progress_and_makes_no_checkpoint() {
        let failed = NodeState {
            status: NodeStatus::Failed,
            attempt: 2,
            ..NodeState::default()
        };
        let nodes = BTreeMap::from([("a".to_string(), failed)]);
        let events = [EventKind::NodeReset {
            node: "a".into(),
            reason: ResetReason::Resume,
        }];
        let p = plan(head(), nodes, &events, 1.0);
        assert!(p.checkpoint.is_none());
        assert!(p.cleared_progress.is_empty());
        assert_eq!(p.events.len(), 1);
    }

    #[test]
    fn a_rerun_clears_progress_even_of_a_node_not_completed() {
        let events = [EventKind::NodeReset {
            node: "a".into(),
            reason: ResetReason::Rerun,
        }];
        let p = plan(head(), BTreeMap::new(), &events, 1.0);
        assert_eq!(p.cleared_progress, ["a"]);
        assert!(p.checkpoint.is_none(), "nothing completed was reset");
    }

    #[test]
    fn releasing_the_lease_clears_it_and_settles_requests() {
        let events = [
            EventKind::RunCompleted,
            EventKind::LeaseReleased { token: 7 },
        ];
        let p = plan(head(), BTreeMap::new(), &events, 1.0);
        assert!(p.settle_controls);
        assert_eq!(p.head.lease_owner, None);
        assert_eq!(p.head.projection.status, RunStatus::Completed);
        assert_eq!(p.head.lease_token, 7, "the token stays: later writes fail");
        assert!(check_token(&p.head, Some(7)).is_err());
    }

    #[test]
    fn tokens_and_attempts_are_checked() {
        let h = head();
        assert!(check_token(&h, Some(7)).is_ok());
        assert!(check_token(&h, None).is_ok());
        assert!(matches!(
            check_token(&h, Some(6)),
            Err(Error::LeaseLost { token: 6, .. })
        ));
        let running = NodeState {
            status: NodeStatus::Running,
            attempt: 2,
            ..NodeState::default()
        };
        let nodes = BTreeMap::from([("a".to_string(), running)]);
        let save = |attempt| EventKind::PartialStateSaved {
            node: "a".into(),
            size: 1,
            attempt: Some(attempt),
        };
        assert!(check_attempts("r", &nodes, &[save(2)]).is_ok());
        assert!(matches!(
            check_attempts("r", &nodes, &[save(1)]),
            Err(Error::StaleAttempt { attempt: 1, .. })
        ));
    }

    #[test]
    fn a_live_unexpired_lease_is_refused_an_expired_one_taken() {
        let request = LeaseRequest {
            owner: "other-host:2:b".into(),
            ttl: Duration::from_secs(30),
        };
        let mut h = head();
        h.lease_owner = Some("far-host:1:a".into());
        assert!(matches!(
            take_lease(&mut h, &request, 50.0),
            Err(Error::RunLocked { .. })
        ));
        assert_eq!(take_lease(&mut h, &request, 100.5).unwrap(), 8);
        assert_eq!(h.lease_owner.as_deref(), Some("other-host:2:b"));
        assert!((h.lease_expires - 130.5).abs() < 1e-9);
    }

    fn completion(node: &str) -> EventKind {
        EventKind::NodeCompleted {
            node: node.into(),
            attempt: 1,
            value: ValueRef::of(node.as_bytes()),
        }
    }

    #[test]
    fn completions_with_their_ranks_set_marks_while_they_are_valid() {
        let valid = RunHead {
            marks_valid: true,
            ..head()
        };
        let events = [completion("a"), completion("b")];
        let p = plan_marked(valid.clone(), BTreeMap::new(), &events, &[4, 9], None, 1.0);
        assert_eq!(p.marks, MarksWrite::Set(vec![4, 9]));
        assert!(p.head.marks_valid);
        // Not valid (an old run, or dropped): nothing is written, and they stay invalid.
        let p = plan_marked(head(), BTreeMap::new(), &events, &[4, 9], None, 1.0);
        assert_eq!(p.marks, MarksWrite::Keep);
        assert!(!p.head.marks_valid);
        // One rank for two completions: they cannot be matched, so the marks go.
        let p = plan_marked(valid, BTreeMap::new(), &events, &[4], None, 1.0);
        assert_eq!(p.marks, MarksWrite::Drop);
        assert!(!p.head.marks_valid);
    }

    #[test]
    fn leaving_completed_or_entering_it_without_a_rank_drops_the_marks() {
        let valid = RunHead {
            marks_valid: true,
            ..head()
        };
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "a".to_string(),
            NodeState {
                status: NodeStatus::Completed,
                attempt: 1,
                output: Some(ValueRef::of(b"a")),
                ..NodeState::default()
            },
        );
        let reset = EventKind::NodeReset {
            node: "a".into(),
            reason: ResetReason::Rerun,
        };
        let p = plan_marked(valid.clone(), nodes.clone(), &[reset], &[], None, 1.0);
        assert_eq!(p.marks, MarksWrite::Drop);
        let update = EventKind::StateUpdated {
            node: "b".into(),
            value: ValueRef::of(b"b"),
        };
        let p = plan_marked(valid.clone(), nodes.clone(), &[update], &[], None, 1.0);
        assert_eq!(p.marks, MarksWrite::Drop);
        // A crashed attempt reset for the resume never was completed: the marks stay.
        let running = EventKind::NodeReset {
            node: "c".into(),
            reason: ResetReason::Resume,
        };
        let p = plan_marked(valid, nodes, &[running], &[], None, 1.0);
        assert_eq!(p.marks, MarksWrite::Keep);
        assert!(p.head.marks_valid);
    }

    #[test]
    fn a_base_makes_the_marks_valid_again_with_the_batch_completions_on_top() {
        let mut base = CompletedMarks::default();
        base.insert(1);
        let p = plan_marked(
            head(),
            BTreeMap::new(),
            &[completion("z")],
            &[30],
            Some(&base),
            1.0,
        );
        let mut want = base.clone();
        want.insert(30);
        assert_eq!(p.marks, MarksWrite::Replace(want));
        assert!(p.head.marks_valid);
    }
}
