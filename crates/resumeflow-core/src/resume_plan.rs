//! Planning a resume: which events turn the stored state into the one to continue from.

use std::collections::HashMap;
use std::sync::Arc;

use crate::completed_marks::CompletedMarks;
use crate::error::Result;
use crate::event::{EventKind, ResetReason};
use crate::graph::Graph;
use crate::options::ResumeOptions;
use crate::scheduler;
use crate::state::NodeStatus;
use crate::store::{Store, StoredRun};

/// The events a resume appends: rewind, updates, reruns, and resetting unfinished nodes.
/// Pure planning: it reads the store (checkpoint states) but writes nothing.
#[allow(clippy::type_complexity)]
pub(crate) fn resume_events(
    store: &dyn Store,
    stored: &StoredRun,
    graph: &Graph,
    options: &ResumeOptions,
) -> Result<(Vec<EventKind>, Vec<crate::store::BatchValue>)> {
    let run_id = &stored.state.run_id;
    let mut status: HashMap<String, NodeStatus> = stored
        .state
        .nodes
        .iter()
        .map(|(id, n)| (id.clone(), n.status))
        .collect();
    let mut events = vec![EventKind::RunResumed {
        from_checkpoint: options.checkpoint_id.or(stored.state.checkpoint_id),
    }];
    let mut values = Vec::new();
    let reset = |events: &mut Vec<EventKind>,
                 status: &mut HashMap<String, NodeStatus>,
                 node: &str,
                 reason| {
        events.push(EventKind::NodeReset {
            node: node.to_string(),
            reason,
        });
        status.insert(node.to_string(), NodeStatus::Pending);
    };
    if let Some(checkpoint_id) = options.checkpoint_id {
        let at_checkpoint = store.state_at(run_id, checkpoint_id)?;
        events.push(EventKind::Rewound { checkpoint_id });
        for (id, node) in &stored.state.nodes {
            let then = at_checkpoint.get(id);
            let same = node.status == NodeStatus::Completed && node.output.as_ref() == then;
            if same {
                continue;
            }
            if let Some(value) = then {
                events.push(EventKind::NodeRestored {
                    node: id.clone(),
                    value: value.clone(),
                });
                status.insert(id.clone(), NodeStatus::Completed);
            } else if node.status == NodeStatus::Completed {
                reset(&mut events, &mut status, id, ResetReason::Rewind);
            }
        }
    }
    for (node, bytes) in &options.updates {
        let stored = crate::store::BatchValue::new(Arc::from(bytes.as_slice()), false);
        let value = stored.value.clone();
        values.push(stored);
        events.push(EventKind::StateUpdated {
            node: node.clone(),
            value,
        });
        status.insert(node.clone(), NodeStatus::Completed);
        for down in scheduler::downstream_of(graph, node) {
            if status.get(&down) == Some(&NodeStatus::Completed)
                && !options.updates.contains_key(&down)
            {
                reset(&mut events, &mut status, &down, ResetReason::Upstream);
            }
        }
    }
    for node in &options.rerun {
        reset(&mut events, &mut status, node, ResetReason::Rerun);
        for down in scheduler::downstream_of(graph, node) {
            if status.get(&down) == Some(&NodeStatus::Completed) {
                reset(&mut events, &mut status, &down, ResetReason::Upstream);
            }
        }
    }
    for (id, st) in status.clone() {
        if matches!(
            st,
            NodeStatus::Running | NodeStatus::Retrying | NodeStatus::Failed
        ) {
            reset(&mut events, &mut status, &id, ResetReason::Resume);
        }
    }
    Ok((events, values))
}

/// At most this many nodes may be ready for a resume to read their rows one by one; a wider
/// frontier reads every node row instead (one scan costs less than that many lookups).
pub(crate) const MAX_FRONTIER: usize = 1024;

/// Where a run stands by its completed marks: each position's completed flag, and the nodes
/// that are not completed but whose producers all are (the only ones that can hold a running,
/// retrying or failed attempt while the marks are valid: a node runs only once its producers
/// completed, and un-completing a producer drops the marks).
pub(crate) struct Frontier {
    pub completed: Vec<bool>,
    pub ready: Vec<usize>,
}

/// The frontier of `graph` under `marks`; `None` if the marks name a rank the graph lacks.
pub(crate) fn frontier(graph: &Graph, marks: &CompletedMarks) -> Option<Frontier> {
    let n = graph.nodes().len();
    let mut completed = vec![false; n];
    let mut marked = 0;
    for (i, done) in completed.iter_mut().enumerate() {
        if marks.contains(graph.canonical_rank(i)) {
            *done = true;
            marked += 1;
        }
    }
    if marked != marks.len() {
        return None;
    }
    let ready = (0..n)
        .filter(|&i| !completed[i] && graph.upstream_of(i).iter().all(|&u| completed[u]))
        .collect();
    Some(Frontier { completed, ready })
}

/// The marks of the completed nodes among `nodes` (stored nodes the graph lacks, left by a
/// resume that allowed a mismatch, have no rank and no mark).
pub(crate) fn marks_of(
    graph: &Graph,
    nodes: &std::collections::BTreeMap<String, crate::state::NodeState>,
) -> CompletedMarks {
    let mut marks = CompletedMarks::default();
    for (id, state) in nodes {
        if let (NodeStatus::Completed, Some(i)) = (state.status, graph.position(id)) {
            marks.insert(graph.canonical_rank(i));
        }
    }
    marks
}
