//! Store-wide aggregates for metrics and health checks: runs counted by workflow and status,
//! node attempts, OOM failures and completed-attempt durations by workflow and node. A store
//! computes them in its own query language (one grouped scan, no run state decoded); the
//! generic [`summarize`] folds loaded runs into the same figures for stores without one.

use crate::state::{NodeStatus, RunState};

/// Upper bounds (seconds) of the node-duration histogram buckets.
pub const DURATION_BOUNDS_S: [f64; 8] = [0.005, 0.05, 0.5, 5.0, 60.0, 600.0, 3600.0, 86400.0];

/// Runs of one workflow in one status.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCount {
    pub workflow: String,
    pub status: String,
    pub runs: u64,
    /// Of those, the runs last updated at or after the summary's `recent_since`.
    pub recent: u64,
}

/// The nodes of one workflow's runs that share a node id and a status.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCount {
    pub workflow: String,
    pub node: String,
    pub status: String,
    /// Of those nodes, the ones that started at least once (`attempts - started` of their
    /// attempts were retries).
    pub started: u64,
    /// Attempts started, summed over those nodes.
    pub attempts: u64,
    /// Nodes whose recorded error is an out-of-memory failure.
    pub oom: u64,
    /// Completed nodes with both timings, per bucket of [`DURATION_BOUNDS_S`] (not
    /// cumulative: a duration counts in the first bucket whose bound holds it; the last
    /// entry counts durations over every bound).
    pub duration_buckets: Vec<u64>,
    pub duration_sum_s: f64,
}

impl NodeCount {
    /// Completed nodes with both timings.
    pub fn durations(&self) -> u64 {
        self.duration_buckets.iter().sum()
    }
}

/// What [`crate::store::Store::summary`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSummary {
    pub runs: Vec<RunCount>,
    pub nodes: Vec<NodeCount>,
}

/// SQL dialects of [`node_summary_sql`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The grouped query behind [`NodeCount`]: per workflow, node and status, the attempts, OOM
/// failures, duration sum, one bucket column per bound of [`DURATION_BOUNDS_S`] (`<=` the
/// bound, `>` the previous) then the overflow, and the nodes started; all integers as
/// 64-bit, the sum as a double.
pub fn node_summary_sql(dialect: Dialect) -> String {
    let int = |e: String| match dialect {
        Dialect::Sqlite => e,
        Dialect::Postgres => format!("COALESCE({e}, 0)::bigint"),
    };
    let timed = "n.status = 'completed' AND n.started_at IS NOT NULL AND n.finished_at IS NOT NULL";
    let duration = "n.finished_at - n.started_at";
    let mut lower = String::from("-1e300");
    let mut buckets = String::new();
    for bound in DURATION_BOUNDS_S {
        buckets.push_str(", ");
        buckets.push_str(&int(format!(
            "SUM(CASE WHEN {timed} AND {duration} > {lower} AND {duration} <= {bound:e} THEN 1 ELSE 0 END)"
        )));
        lower = format!("{bound:e}");
    }
    buckets.push_str(", ");
    buckets.push_str(&int(format!(
        "SUM(CASE WHEN {timed} AND {duration} > {lower} THEN 1 ELSE 0 END)"
    )));
    let total = match dialect {
        Dialect::Sqlite => format!("TOTAL(CASE WHEN {timed} THEN {duration} END)"),
        Dialect::Postgres => {
            format!("COALESCE(SUM(CASE WHEN {timed} THEN {duration} END), 0)::float8")
        }
    };
    let attempts = int("SUM(n.attempt)".into());
    let oom = int("SUM(CASE WHEN n.error LIKE '%OutOfMemory%' THEN 1 ELSE 0 END)".into());
    let started = int("SUM(CASE WHEN n.attempt > 0 THEN 1 ELSE 0 END)".into());
    format!(
        "SELECT r.workflow, n.node_id, n.status, {attempts}, {oom}, {total}{buckets}, {started}
           FROM node_states n JOIN runs r ON r.run_id = n.run_id
          GROUP BY r.workflow, n.node_id, n.status
          ORDER BY r.workflow, n.node_id, n.status"
    )
}

/// Whether a recorded error text is an out-of-memory failure.
pub fn is_oom(error: &str) -> bool {
    error.contains("OutOfMemory")
}

/// The bucket of [`DURATION_BOUNDS_S`] a duration falls in (`len()` for beyond the last).
pub fn bucket_of(duration_s: f64) -> usize {
    DURATION_BOUNDS_S
        .iter()
        .position(|b| duration_s <= *b)
        .unwrap_or(DURATION_BOUNDS_S.len())
}

/// The summary of loaded runs (the generic path; rows sorted by their keys).
///
/// ```
/// use resumeflow_core::store::summary::summarize;
/// assert!(summarize(&[], 0.0).runs.is_empty());
/// ```
pub fn summarize(runs: &[RunState], recent_since: f64) -> StoreSummary {
    use std::collections::BTreeMap;
    let mut by_run: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut by_node: BTreeMap<(String, String, String), NodeCount> = BTreeMap::new();
    for run in runs {
        let entry = by_run
            .entry((run.workflow.clone(), run.status.as_str().to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(run.updated_at >= recent_since);
        for (node, ns) in &run.nodes {
            let status = ns.status.as_str().to_string();
            let key = (run.workflow.clone(), node.clone(), status.clone());
            let row = by_node.entry(key).or_insert_with(|| NodeCount {
                workflow: run.workflow.clone(),
                node: node.clone(),
                status,
                started: 0,
                attempts: 0,
                oom: 0,
                duration_buckets: vec![0; DURATION_BOUNDS_S.len() + 1],
                duration_sum_s: 0.0,
            });
            row.started += u64::from(ns.attempt > 0);
            row.attempts += u64::from(ns.attempt);
            row.oom += u64::from(ns.error.as_deref().is_some_and(is_oom));
            if let (NodeStatus::Completed, Some(start), Some(end)) =
                (ns.status, ns.started_at, ns.finished_at)
            {
                let d = end - start;
                row.duration_buckets[bucket_of(d)] += 1;
                row.duration_sum_s += d;
            }
        }
    }
    StoreSummary {
        runs: by_run
            .into_iter()
            .map(|((workflow, status), (runs, recent))| RunCount {
                workflow,
                status,
                runs,
                recent,
            })
            .collect(),
        nodes: by_node.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_bound_and_overflow_goes_last() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.005), 0);
        assert_eq!(bucket_of(0.006), 1);
        assert_eq!(bucket_of(1e9), DURATION_BOUNDS_S.len());
    }
}
