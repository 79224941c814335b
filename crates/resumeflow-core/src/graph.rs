//! The workflow graph: nodes, their input wiring, validation and a stable structural hash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::GraphError;
use crate::retry::RetryPolicy;

/// Where a node parameter's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum InputSource {
    /// The output of another node of the same workflow.
    Node(String),
    /// A run input by name; `required == false` means the node has a default for it.
    RunInput { name: String, required: bool },
}

/// One parameter of a node and its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct InputBinding {
    pub param: String,
    pub source: InputSource,
}

/// A node of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: String,
    pub inputs: Vec<InputBinding>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    /// Resource needs, e.g. `{"gpu": 1}`.
    pub resources: BTreeMap<String, u32>,
    /// If set, the node must call `heartbeat()` at least this often; a node that goes quiet
    /// longer stops its run's lease renewal, so another worker can recover the run.
    #[serde(default)]
    pub heartbeat_timeout: Option<Duration>,
}

impl NodeSpec {
    /// A node with no inputs and the default retry policy.
    ///
    /// ```
    /// let node = resumeflow_core::NodeSpec::new("load");
    /// assert_eq!(node.id, "load");
    /// ```
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            inputs: Vec::new(),
            retry: RetryPolicy::default(),
            timeout: None,
            resources: BTreeMap::new(),
            heartbeat_timeout: None,
        }
    }

    /// Wires parameter `param` to the output of node `source` (builder style).
    #[must_use]
    pub fn after(mut self, param: impl Into<String>, source: impl Into<String>) -> Self {
        self.inputs.push(InputBinding {
            param: param.into(),
            source: InputSource::Node(source.into()),
        });
        self
    }

    /// Wires parameter `param` to the run input of the same name (builder style).
    #[must_use]
    pub fn run_input(mut self, param: impl Into<String>, required: bool) -> Self {
        let param = param.into();
        self.inputs.push(InputBinding {
            param: param.clone(),
            source: InputSource::RunInput {
                name: param,
                required,
            },
        });
        self
    }

    /// Sets the retry policy (builder style).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets a per-attempt timeout (builder style).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Ids of the nodes this node reads from, in binding order, without repeats.
    pub fn upstream(&self) -> impl Iterator<Item = &str> {
        let mut seen = BTreeSet::new();
        self.inputs.iter().filter_map(move |b| match &b.source {
            InputSource::Node(n) if seen.insert(n.as_str()) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Names of the run inputs this node requires, in binding order.
    ///
    /// ```
    /// use resumeflow_core::NodeSpec;
    /// let n = NodeSpec::new("a").run_input("seed", true).run_input("extra", false);
    /// assert_eq!(n.required_inputs().collect::<Vec<_>>(), vec!["seed"]);
    /// ```
    pub fn required_inputs(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().filter_map(|b| match &b.source {
            InputSource::RunInput {
                name,
                required: true,
            } => Some(name.as_str()),
            _ => None,
        })
    }
}

/// A validated DAG. Build with [`Graph::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    name: String,
    /// Nodes in topological order (ties broken by declaration order).
    nodes: Vec<NodeSpec>,
    #[serde(skip)]
    index: HashMap<String, usize>,
    #[serde(skip)]
    hash: HashCache,
    #[serde(skip)]
    requirements: RequirementsCache,
    /// Positions of each node's upstream nodes (by position), without repeats.
    #[serde(skip)]
    upstream: Adjacency,
    /// Positions of the nodes that read each node's output (by position), without repeats.
    #[serde(skip)]
    downstream: Adjacency,
}

/// What checking a graph against run inputs and capacities needs, gathered once per graph:
/// a check is then as long as the list of distinct inputs and resources, not the graph.
#[derive(Debug, Clone, Default)]
struct RequirementsCache(std::sync::OnceLock<Requirements>);

#[derive(Debug, Clone)]
struct Requirements {
    /// Distinct run inputs some node requires.
    inputs: Vec<String>,
    /// Each resource's largest need.
    resources: BTreeMap<String, u32>,
    /// The first node (in topological order) whose retry policy does not validate.
    invalid_retry: Option<usize>,
}

impl PartialEq for RequirementsCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Each node's neighbours in one flat array (a resume walks them for every node of a graph
/// of tens of thousands: one allocation per node would be a cache miss per node).
#[derive(Debug, Clone, Default, PartialEq)]
struct Adjacency {
    /// `targets[offsets[i]..offsets[i + 1]]` are node `i`'s neighbours.
    offsets: Vec<usize>,
    targets: Vec<usize>,
}

impl Adjacency {
    fn from_lists(lists: impl Iterator<Item = impl Iterator<Item = usize>>) -> Self {
        let mut adjacency = Self {
            offsets: vec![0],
            targets: Vec::new(),
        };
        for list in lists {
            adjacency.targets.extend(list);
            adjacency.offsets.push(adjacency.targets.len());
        }
        adjacency
    }

    fn of(&self, i: usize) -> &[usize] {
        &self.targets[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// What is derived from the node ids once per graph (a graph is immutable once built): the
/// structural hash and each node's canonical rank. Never part of a graph's equality.
#[derive(Debug, Clone, Default)]
struct HashCache(std::sync::OnceLock<Canonical>);

#[derive(Debug, Clone)]
struct Canonical {
    hash: String,
    /// Position -> rank of the node's id among all ids in byte order.
    rank: Vec<u32>,
    /// Rank -> position.
    by_rank: Vec<usize>,
}

impl PartialEq for HashCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// True if `s` is a usable workflow or node name.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Graph {
    /// Validates the nodes (names, duplicates, unknown inputs, cycles) and orders them.
    ///
    /// ```
    /// use resumeflow_core::{Graph, NodeSpec};
    /// let g = Graph::new("etl", vec![NodeSpec::new("b").after("a", "a"), NodeSpec::new("a")]).unwrap();
    /// assert_eq!(g.node_ids(), vec!["a", "b"]);
    /// ```
    pub fn new(name: impl Into<String>, nodes: Vec<NodeSpec>) -> Result<Self, GraphError> {
        let name = name.into();
        if !is_valid_name(&name) {
            return Err(GraphError::InvalidWorkflowName { name });
        }
        if nodes.is_empty() {
            return Err(GraphError::Empty { workflow: name });
        }
        let mut declared: HashMap<&str, usize> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            if !is_valid_name(&node.id) {
                return Err(GraphError::InvalidNodeId {
                    workflow: name.clone(),
                    node: node.id.clone(),
                });
            }
            if declared.insert(node.id.as_str(), i).is_some() {
                return Err(GraphError::DuplicateNode {
                    workflow: name.clone(),
                    node: node.id.clone(),
                });
            }
        }
        for node in &nodes {
            for b in &node.inputs {
                if let InputSource::Node(src) = &b.source {
                    if !declared.contains_key(src.as_str()) {
                        return Err(GraphError::UnknownInput {
                            workflow: name.clone(),
                            node: node.id.clone(),
                            param: b.param.clone(),
                            source_node: src.clone(),
                        });
                    }
                }
            }
        }
        let order = topological_order(&name, &nodes, &declared)?;
        let mut slots: Vec<Option<NodeSpec>> = nodes.into_iter().map(Some).collect();
        let nodes: Vec<NodeSpec> = order
            .into_iter()
            .map(|i| slots[i].take().expect("each index once"))
            .collect();
        Ok(Self::indexed(name, nodes))
    }

    fn indexed(name: String, nodes: Vec<NodeSpec>) -> Self {
        let index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let upstream = Adjacency::from_lists(
            nodes
                .iter()
                .map(|n| n.upstream().filter_map(|u| index.get(u).copied())),
        );
        let mut downstream = vec![Vec::new(); nodes.len()];
        for i in 0..nodes.len() {
            for &u in upstream.of(i) {
                downstream[u].push(i);
            }
        }
        let downstream = Adjacency::from_lists(downstream.into_iter().map(Vec::into_iter));
        Self {
            name,
            nodes,
            index,
            hash: HashCache::default(),
            requirements: RequirementsCache::default(),
            upstream,
            downstream,
        }
    }

    /// The workflow name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nodes in topological order.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// Node ids in topological order.
    pub fn node_ids(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.id.as_str()).collect()
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// Positions of the upstream nodes of the node at position `i` (a validated graph's
    /// inputs all name nodes of the graph).
    pub fn upstream_of(&self, i: usize) -> &[usize] {
        self.upstream.of(i)
    }

    /// Positions of the nodes that read the output of the node at position `i`.
    pub fn downstream_of(&self, i: usize) -> &[usize] {
        self.downstream.of(i)
    }

    /// The node's rank among all node ids in byte order: the same for every graph of the same
    /// structural hash, whatever order the nodes were declared in (a topological position is
    /// not). Stores mark completed nodes by rank (see `docs/resuming.md`).
    ///
    /// ```
    /// use resumeflow_core::{Graph, NodeSpec};
    /// let g = Graph::new("w", vec![NodeSpec::new("b"), NodeSpec::new("a").after("x", "b")]).unwrap();
    /// assert_eq!(g.position("b"), Some(0));
    /// assert_eq!(g.canonical_rank(0), 1); // "a" < "b"
    /// assert_eq!(g.position_of_rank(1), Some(0));
    /// ```
    pub fn canonical_rank(&self, i: usize) -> u32 {
        self.canonical().rank[i]
    }

    /// The position of the node of canonical rank `rank` (see [`Graph::canonical_rank`]).
    pub fn position_of_rank(&self, rank: u32) -> Option<usize> {
        self.canonical().by_rank.get(rank as usize).copied()
    }

    /// Position of a node in topological order.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Checks that `id` names a node; `context` says which argument named it.
    pub fn require_node(&self, id: &str, context: &str) -> Result<&NodeSpec, GraphError> {
        self.node(id).ok_or_else(|| GraphError::UnknownNode {
            workflow: self.name.clone(),
            node: id.to_string(),
            context: context.to_string(),
        })
    }

    /// `id` and every node it transitively depends on.
    pub fn ancestors_inclusive(&self, id: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![id.to_string()];
        while let Some(cur) = stack.pop() {
            if out.insert(cur.clone()) {
                if let Some(node) = self.node(&cur) {
                    stack.extend(node.upstream().map(str::to_string));
                }
            }
        }
        out
    }

    /// `id` and every node that transitively depends on it.
    pub fn descendants_inclusive(&self, id: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        out.insert(id.to_string());
        let start = self.position(id).unwrap_or(usize::MAX);
        for node in self.nodes.iter().skip(start.saturating_add(1)) {
            if node.upstream().any(|u| out.contains(u)) {
                out.insert(node.id.clone());
            }
        }
        out
    }

    fn requirements(&self) -> &Requirements {
        self.requirements.0.get_or_init(|| {
            let mut inputs = BTreeSet::new();
            let mut resources: BTreeMap<String, u32> = BTreeMap::new();
            for node in &self.nodes {
                inputs.extend(node.required_inputs().map(str::to_string));
                for (resource, &needed) in &node.resources {
                    let max = resources.entry(resource.clone()).or_default();
                    *max = (*max).max(needed);
                }
            }
            Requirements {
                inputs: inputs.into_iter().collect(),
                resources,
                invalid_retry: self
                    .nodes
                    .iter()
                    .position(|n| n.retry.validate(&n.id).is_err()),
            }
        })
    }

    /// The first node (in topological order) whose retry policy is invalid, if any.
    ///
    /// ```
    /// use resumeflow_core::{Graph, NodeSpec, RetryPolicy};
    /// let bad = RetryPolicy { max_attempts: 0, ..RetryPolicy::default() };
    /// let g = Graph::new("w", vec![NodeSpec::new("a"), NodeSpec::new("b").with_retry(bad)]).unwrap();
    /// assert_eq!(g.invalid_retry().map(|n| n.id.as_str()), Some("b"));
    /// ```
    pub fn invalid_retry(&self) -> Option<&NodeSpec> {
        self.requirements().invalid_retry.map(|i| &self.nodes[i])
    }

    /// Checks that every required run input is present and resource needs fit `capacity`;
    /// the error names the first node (in topological order) at fault. Costs the number of
    /// distinct inputs and resources when all is well (what a graph needs is gathered once).
    ///
    /// ```
    /// use resumeflow_core::{Graph, NodeSpec};
    /// let g = Graph::new("w", vec![NodeSpec::new("a").run_input("n", true)]).unwrap();
    /// assert!(g.check_inputs(|name| name == "n", |_| None).is_ok());
    /// assert!(g.check_inputs(|_| false, |_| None).is_err());
    /// ```
    pub fn check_inputs<'a>(
        &self,
        mut has_input: impl FnMut(&str) -> bool,
        capacity: impl Fn(&str) -> Option<u32> + 'a,
    ) -> Result<(), GraphError> {
        let needs = self.requirements();
        let fits = needs.inputs.iter().all(|name| has_input(name))
            && needs
                .resources
                .iter()
                .all(|(resource, &needed)| capacity(resource).is_none_or(|a| needed <= a));
        if fits {
            return Ok(());
        }
        for node in &self.nodes {
            if let Some(name) = node.required_inputs().find(|name| !has_input(name)) {
                return Err(GraphError::MissingInput {
                    workflow: self.name.clone(),
                    node: node.id.clone(),
                    input: name.to_string(),
                });
            }
            for (resource, &needed) in &node.resources {
                if let Some(available) = capacity(resource) {
                    if needed > available {
                        return Err(GraphError::ResourceUnavailable {
                            node: node.id.clone(),
                            resource: resource.clone(),
                            needed,
                            available,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A stable hash of the structure: the name, node ids and wiring (not retry policies,
    /// timeouts or resources, which may change between a crash and a resume).
    ///
    /// ```
    /// use resumeflow_core::{Graph, NodeSpec};
    /// let a = Graph::new("w", vec![NodeSpec::new("x")]).unwrap();
    /// let b = Graph::new("w", vec![NodeSpec::new("x").with_timeout(std::time::Duration::from_secs(1))]).unwrap();
    /// assert_eq!(a.structural_hash(), b.structural_hash());
    /// ```
    pub fn structural_hash(&self) -> String {
        self.canonical().hash.clone()
    }

    fn canonical(&self) -> &Canonical {
        self.hash.0.get_or_init(|| self.compute_canonical())
    }

    fn compute_canonical(&self) -> Canonical {
        let mut by_rank: Vec<usize> = (0..self.nodes.len()).collect();
        by_rank.sort_by(|&a, &b| self.nodes[a].id.cmp(&self.nodes[b].id));
        let mut rank = vec![0u32; self.nodes.len()];
        for (r, &i) in by_rank.iter().enumerate() {
            rank[i] = r as u32;
        }
        let hash = self.compute_hash(&by_rank);
        Canonical {
            hash,
            rank,
            by_rank,
        }
    }

    fn compute_hash(&self, sorted: &[usize]) -> String {
        let mut h = blake3::Hasher::new();
        let mut feed = |s: &str| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        feed("resumeflow-graph-v1");
        feed(&self.name);
        for node in sorted.iter().map(|&i| &self.nodes[i]) {
            feed(&node.id);
            let mut bindings: Vec<String> = node
                .inputs
                .iter()
                .map(|b| match &b.source {
                    InputSource::Node(n) => format!("{}<-node:{n}", b.param),
                    InputSource::RunInput { name, .. } => format!("{}<-input:{name}", b.param),
                })
                .collect();
            bindings.sort();
            for b in bindings {
                feed(&b);
            }
            feed(";");
        }
        h.finalize().to_hex()[..32].to_string()
    }

    /// Explains how `other` differs structurally from `self` (for `WorkflowMismatch`).
    pub fn describe_difference(&self, other: &Graph) -> String {
        if self.name != other.name {
            return format!("workflow name {:?} vs {:?}", self.name, other.name);
        }
        let mine: BTreeSet<&str> = self.node_ids().into_iter().collect();
        let theirs: BTreeSet<&str> = other.node_ids().into_iter().collect();
        if let Some(n) = mine.difference(&theirs).next() {
            return format!("node {n:?} is missing from the new workflow");
        }
        if let Some(n) = theirs.difference(&mine).next() {
            return format!("node {n:?} is new in the workflow");
        }
        for node in &self.nodes {
            let other_node = other.node(&node.id).expect("same ids");
            let mut a = node.inputs.clone();
            let mut b = other_node.inputs.clone();
            a.sort_by(|x, y| x.param.cmp(&y.param));
            b.sort_by(|x, y| x.param.cmp(&y.param));
            if a != b {
                return format!("the inputs of node {:?} are wired differently", node.id);
            }
        }
        "structure differs".to_string()
    }

    /// Restores the lookup index after deserialization.
    pub(crate) fn reindex(self) -> Self {
        Self::indexed(self.name, self.nodes)
    }
}

fn topological_order(
    workflow: &str,
    nodes: &[NodeSpec],
    declared: &HashMap<&str, usize>,
) -> Result<Vec<usize>, GraphError> {
    let n = nodes.len();
    let mut indegree = vec![0usize; n];
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in nodes.iter().enumerate() {
        for up in node.upstream() {
            let u = declared[up];
            indegree[i] += 1;
            dependants[u].push(i);
        }
    }
    // Kahn's algorithm; a min-heap on declaration index keeps the order stable.
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&i| indegree[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependants[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push(std::cmp::Reverse(d));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    Err(GraphError::Cycle {
        workflow: workflow.to_string(),
        cycle: find_cycle(nodes, declared, &indegree),
    })
}

/// Walks upstream edges among the nodes left with positive in-degree until one repeats.
fn find_cycle(
    nodes: &[NodeSpec],
    declared: &HashMap<&str, usize>,
    indegree: &[usize],
) -> Vec<String> {
    let start = indegree.iter().position(|&d| d > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut seen: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let next = nodes[cur]
            .upstream()
            .map(|u| declared[u])
            .find(|&u| indegree[u] > 0);
        let Some(next) = next else { break };
        if let Some(&pos) = seen.get(&next) {
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .rev()
                .map(|&i| nodes[i].id.clone())
                .collect();
            cycle.push(cycle[0].clone());
            return cycle;
        }
        seen.insert(next, path.len());
        path.push(next);
        cur = next;
    }
    path.iter().map(|&i| nodes[i].id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_cycles_with_the_cycle_named() {
        let err = Graph::new(
            "w",
            vec![
                NodeSpec::new("a").after("c", "c"),
                NodeSpec::new("b").after("a", "a"),
                NodeSpec::new("c").after("b", "b"),
            ],
        )
        .unwrap_err();
        match err {
            GraphError::Cycle { cycle, .. } => {
                assert_eq!(cycle.len(), 4);
                assert_eq!(cycle.first(), cycle.last());
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
    }

    #[test]
    fn rejects_duplicates_unknown_inputs_and_bad_names() {
        assert!(matches!(
            Graph::new("w", vec![NodeSpec::new("a"), NodeSpec::new("a")]),
            Err(GraphError::DuplicateNode { .. })
        ));
        assert!(matches!(
            Graph::new("w", vec![NodeSpec::new("a").after("x", "nope")]),
            Err(GraphError::UnknownInput { .. })
        ));
        assert!(matches!(
            Graph::new("bad name;drop", vec![NodeSpec::new("a")]),
            Err(GraphError::InvalidWorkflowName { .. })
        ));
        assert!(matches!(
            Graph::new("w", vec![NodeSpec::new("a/b")]),
            Err(GraphError::InvalidNodeId { .. })
        ));
        assert!(matches!(
            Graph::new("w", vec![]),
            Err(GraphError::Empty { .. })
        ));
    }

    #[test]
    fn hash_depends_on_wiring_only() {
        let g1 = Graph::new(
            "w",
            vec![NodeSpec::new("a"), NodeSpec::new("b").after("a", "a")],
        )
        .unwrap();
        let g2 = Graph::new(
            "w",
            vec![NodeSpec::new("b").after("a", "a"), NodeSpec::new("a")],
        )
        .unwrap();
        let g3 = Graph::new("w", vec![NodeSpec::new("a"), NodeSpec::new("b")]).unwrap();
        assert_eq!(g1.structural_hash(), g2.structural_hash());
        assert_ne!(g1.structural_hash(), g3.structural_hash());
        assert!(g1.describe_difference(&g3).contains("\"b\""));
    }

    #[test]
    fn ancestors_and_descendants() {
        let g = Graph::new(
            "w",
            vec![
                NodeSpec::new("a"),
                NodeSpec::new("b").after("a", "a"),
                NodeSpec::new("c").after("b", "b"),
                NodeSpec::new("d"),
            ],
        )
        .unwrap();
        assert_eq!(g.ancestors_inclusive("b").len(), 2);
        assert_eq!(
            g.descendants_inclusive("a").into_iter().collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
    }
}
