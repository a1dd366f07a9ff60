//! The version graph: a grow-only DAG of versions, its heads, ordering for
//! `log`, reference resolution, and the lane drawing of `log --graph`.
//!
//! The graph is loaded from `.dbox/versions` (see [`crate::repo`]); it holds
//! each version's parents and time so that graph operations never need to
//! read or verify versions from the store.

use std::collections::{BinaryHeap, HashMap, HashSet};

use dbox_store::VersionId;

use crate::error::{RepoError, Result};

/// One version in the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphNode {
    /// The version.
    pub id: VersionId,
    /// Its parents, first parent first.
    pub parents: Vec<VersionId>,
    /// Commit time, Unix milliseconds.
    pub time_ms: i64,
}

/// The version graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: HashMap<VersionId, GraphNode>,
    children: HashMap<VersionId, Vec<VersionId>>,
}

impl Graph {
    /// Adds a version (idempotent).
    pub fn insert(&mut self, node: GraphNode) {
        if self.nodes.contains_key(&node.id) {
            return;
        }
        for p in &node.parents {
            self.children.entry(*p).or_default().push(node.id);
        }
        self.nodes.insert(node.id, node);
    }

    /// Number of versions.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no version.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A version's node.
    pub fn get(&self, id: &VersionId) -> Option<&GraphNode> {
        self.nodes.get(id)
    }

    /// Whether the graph holds a version.
    pub fn contains(&self, id: &VersionId) -> bool {
        self.nodes.contains_key(id)
    }

    /// All versions, in no order.
    pub fn ids(&self) -> impl Iterator<Item = &VersionId> {
        self.nodes.keys()
    }

    /// Versions without children, newest first.
    pub fn heads(&self) -> Vec<VersionId> {
        let mut heads: Vec<&GraphNode> = self
            .nodes
            .values()
            .filter(|n| {
                self.children.get(&n.id).is_none_or(|c| c.iter().all(|c| !self.nodes.contains_key(c)))
            })
            .collect();
        heads.sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then(b.id.cmp(&a.id)));
        heads.into_iter().map(|n| n.id).collect()
    }

    /// Whether `a` is an ancestor of `b` (or equal to it).
    pub fn is_ancestor(&self, a: &VersionId, b: &VersionId) -> bool {
        let mut stack = vec![*b];
        let mut seen = HashSet::new();
        while let Some(v) = stack.pop() {
            if v == *a {
                return true;
            }
            if seen.insert(v) {
                if let Some(n) = self.nodes.get(&v) {
                    stack.extend(n.parents.iter().copied());
                }
            }
        }
        false
    }

    /// `id` and every version it descends from (those in the graph).
    pub fn ancestors(&self, id: &VersionId) -> HashSet<VersionId> {
        let mut seen = HashSet::new();
        let mut stack = vec![*id];
        while let Some(v) = stack.pop() {
            if let Some(n) = self.nodes.get(&v) {
                if seen.insert(v) {
                    stack.extend(n.parents.iter().copied());
                }
            }
        }
        seen
    }

    /// The best common ancestor of `a` and `b`: a common ancestor that no
    /// other common ancestor descends from (a lowest common ancestor). When
    /// there are several (criss-cross merges), the newest is chosen, then
    /// the greatest id, so every device picks the same one. `None` when the
    /// two share no history.
    pub fn merge_base(&self, a: &VersionId, b: &VersionId) -> Option<VersionId> {
        let of_a = self.ancestors(a);
        let common: HashSet<VersionId> = self.ancestors(b).into_iter().filter(|v| of_a.contains(v)).collect();
        // The ancestors of a common ancestor are common ancestors too, so a
        // common ancestor is below another exactly when it is the parent of
        // one.
        let below: HashSet<VersionId> =
            common.iter().filter_map(|v| self.nodes.get(v)).flat_map(|n| n.parents.iter().copied()).collect();
        common
            .iter()
            .filter(|v| !below.contains(v))
            .filter_map(|v| self.nodes.get(v))
            .max_by(|x, y| x.time_ms.cmp(&y.time_ms).then(x.id.cmp(&y.id)))
            .map(|n| n.id)
    }

    /// The version `n` first-parent steps before `id`.
    pub fn nth_first_parent(&self, id: VersionId, n: usize) -> Option<VersionId> {
        // A damaged log could hold a cycle: no real walk is longer than the
        // graph.
        if n > self.nodes.len() {
            return None;
        }
        let mut cur = id;
        for _ in 0..n {
            cur = *self.nodes.get(&cur)?.parents.first()?;
        }
        Some(cur)
    }

    /// The unique version whose hex id starts with `prefix` (at least 4
    /// hex digits).
    pub fn resolve_prefix(&self, prefix: &str) -> Result<VersionId> {
        let lower = prefix.to_ascii_lowercase();
        if lower.len() < 4 || lower.len() > 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RepoError::BadReference { reference: prefix.into() });
        }
        let mut matches: Vec<VersionId> =
            self.nodes.keys().filter(|id| id.to_string().starts_with(&lower)).copied().collect();
        matches.sort();
        match matches.len() {
            0 => Err(RepoError::UnknownVersion { reference: prefix.into() }),
            1 => Ok(matches[0]),
            _ => Err(RepoError::AmbiguousVersion {
                prefix: prefix.into(),
                candidates: matches.iter().take(5).map(|m| m.short()).collect(),
            }),
        }
    }

    /// Versions reachable from `starts`, children before parents, newest
    /// first among those that are ready (git's `--topo-order` with dates).
    pub fn log_order(&self, starts: &[VersionId]) -> Vec<VersionId> {
        let mut reachable = HashSet::new();
        let mut stack: Vec<VersionId> =
            starts.iter().filter(|s| self.nodes.contains_key(s)).copied().collect();
        while let Some(v) = stack.pop() {
            if reachable.insert(v) {
                if let Some(n) = self.nodes.get(&v) {
                    stack.extend(n.parents.iter().filter(|p| self.nodes.contains_key(p)).copied());
                }
            }
        }
        // Children count within the reachable set.
        let mut pending: HashMap<VersionId, usize> = reachable.iter().map(|v| (*v, 0)).collect();
        for v in &reachable {
            for p in &self.nodes[v].parents {
                if let Some(c) = pending.get_mut(p) {
                    *c += 1;
                }
            }
        }
        let mut ready: BinaryHeap<(i64, VersionId)> =
            pending.iter().filter(|(_, c)| **c == 0).map(|(v, _)| (self.nodes[v].time_ms, *v)).collect();
        let mut out = Vec::with_capacity(reachable.len());
        while let Some((_, v)) = ready.pop() {
            out.push(v);
            for p in &self.nodes[&v].parents {
                if let Some(c) = pending.get_mut(p) {
                    *c -= 1;
                    if *c == 0 {
                        ready.push((self.nodes[p].time_ms, *p));
                    }
                }
            }
        }
        out
    }
}

/// Draws `order` (as from [`Graph::log_order`]) as lanes, one text row per
/// version plus connector rows, in the manner of `git log --graph`. Each
/// version row is its lanes followed by `label(id)`.
pub fn render(
    graph: &Graph,
    order: &[VersionId],
    mut label: impl FnMut(&VersionId) -> String,
) -> Vec<String> {
    let mut lanes: Vec<VersionId> = Vec::new();
    let mut out = Vec::new();
    let shown: HashSet<VersionId> = order.iter().copied().collect();
    for id in order {
        // Lanes expecting this version join into the first of them.
        let hits: Vec<usize> = lanes.iter().enumerate().filter(|(_, l)| *l == id).map(|(i, _)| i).collect();
        let col = match hits.first() {
            Some(&c) => {
                if hits.len() > 1 {
                    let mut edges = Vec::new();
                    let mut next = Vec::new();
                    for (i, l) in lanes.iter().enumerate() {
                        if l == id && i != c {
                            edges.push((i, c));
                        } else {
                            edges.push((i, next.len()));
                            next.push(*l);
                        }
                    }
                    connect(&edges, &mut out);
                    lanes = next;
                }
                c
            }
            None => {
                lanes.push(*id);
                lanes.len() - 1
            }
        };
        let mut row = String::new();
        for i in 0..lanes.len() {
            row.push(if i == col { '*' } else { '|' });
            row.push(' ');
        }
        row.push_str(&label(id));
        out.push(row.trim_end().to_string());

        // Replace this lane by the version's parents.
        let parents: Vec<VersionId> = graph
            .get(id)
            .map(|n| n.parents.iter().filter(|p| shown.contains(p)).copied().collect())
            .unwrap_or_default();
        let mut next: Vec<VersionId> = Vec::new();
        let mut edges = Vec::new();
        for (i, l) in lanes.iter().enumerate() {
            if i == col {
                let Some(first) = parents.first() else { continue };
                let at = next.len();
                next.push(*first);
                edges.push((i, at));
                for p in &parents[1..] {
                    if let Some(existing) = lanes.iter().position(|x| x == p) {
                        edges.push((i, usize::MAX - existing));
                    } else {
                        next.push(*p);
                        edges.push((i, next.len() - 1));
                    }
                }
            } else {
                edges.push((i, next.len()));
                next.push(*l);
            }
        }
        // Resolve edges to lanes that already existed (marked above).
        let edges: Vec<(usize, usize)> = edges
            .into_iter()
            .map(|(from, to)| {
                if to > usize::MAX / 2 {
                    let old = usize::MAX - to;
                    let target = next.iter().position(|x| *x == lanes[old]).unwrap_or(from);
                    (from, target)
                } else {
                    (from, to)
                }
            })
            .collect();
        connect(&edges, &mut out);
        lanes = next;
    }
    out
}

/// Draws connector rows moving each edge one column per row.
fn connect(edges: &[(usize, usize)], out: &mut Vec<String>) {
    if edges.iter().all(|(a, b)| a == b) {
        return;
    }
    let mut cur: Vec<usize> = edges.iter().map(|e| e.0).collect();
    loop {
        let width = cur.iter().chain(edges.iter().map(|e| &e.1)).max().map_or(0, |m| m * 2 + 2);
        let mut row = vec![b' '; width + 1];
        let mut moved = false;
        for (k, (_, to)) in edges.iter().enumerate() {
            let c = cur[k];
            if *to > c {
                row[2 * c + 1] = b'\\';
                cur[k] = c + 1;
                moved = true;
            } else if *to < c {
                row[2 * c - 1] = b'/';
                cur[k] = c - 1;
                moved = true;
            } else if row[2 * c] == b' ' {
                row[2 * c] = b'|';
            }
        }
        if !moved {
            return;
        }
        out.push(String::from_utf8_lossy(&row).trim_end().to_string());
        if cur.iter().zip(edges).all(|(c, e)| *c == e.1) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u8) -> VersionId {
        VersionId([n; 32])
    }

    fn node(n: u8, parents: &[u8]) -> GraphNode {
        GraphNode { id: v(n), parents: parents.iter().map(|p| v(*p)).collect(), time_ms: n as i64 }
    }

    fn draw(g: &Graph) -> String {
        let order = g.log_order(&g.heads());
        render(g, &order, |id| format!("v{}", id.0[0])).join("\n")
    }

    #[test]
    fn linear_history() {
        let mut g = Graph::default();
        for (n, p) in [(1, vec![]), (2, vec![1]), (3, vec![2])] {
            g.insert(node(n, &p));
        }
        assert_eq!(draw(&g), "* v3\n* v2\n* v1");
        assert_eq!(g.heads(), vec![v(3)]);
        assert_eq!(g.nth_first_parent(v(3), 2), Some(v(1)));
        assert!(g.is_ancestor(&v(1), &v(3)));
        assert!(!g.is_ancestor(&v(3), &v(1)));
    }

    #[test]
    fn fork_and_merge() {
        // 1 <- 2 <- 4(merge of 2 and 3); 1 <- 3
        let mut g = Graph::default();
        for (n, p) in [(1, vec![]), (2, vec![1]), (3, vec![1]), (4, vec![2, 3])] {
            g.insert(node(n, &p));
        }
        assert_eq!(draw(&g), "* v4\n|\\\n| * v3\n* | v2\n|/\n* v1");
    }

    #[test]
    fn two_heads() {
        let mut g = Graph::default();
        for (n, p) in [(1, vec![]), (2, vec![1]), (3, vec![1])] {
            g.insert(node(n, &p));
        }
        assert_eq!(g.heads(), vec![v(3), v(2)]);
        assert_eq!(draw(&g), "* v3\n| * v2\n|/\n* v1");
    }

    #[test]
    fn merge_bases() {
        // 1 <- 2 <- 4 <- 6; 1 <- 3 <- 5; 5 and 4 merge into 7.
        let mut g = Graph::default();
        for (n, p) in [(1, vec![]), (2, vec![1]), (3, vec![1]), (4, vec![2]), (5, vec![3]), (6, vec![4])] {
            g.insert(node(n, &p));
        }
        assert_eq!(g.merge_base(&v(6), &v(5)), Some(v(1)));
        assert_eq!(g.merge_base(&v(6), &v(2)), Some(v(2)), "an ancestor is its own merge base");
        assert_eq!(g.merge_base(&v(4), &v(4)), Some(v(4)));
        g.insert(node(7, &[5, 4]));
        assert_eq!(g.merge_base(&v(6), &v(7)), Some(v(4)), "after a merge the base moves up");
        // Criss-cross: 8 = merge(6, 5) and 9 = merge(5, 6) have two lowest
        // common ancestors (5 and 6); the newer is chosen.
        g.insert(node(8, &[6, 5]));
        g.insert(node(9, &[5, 6]));
        assert_eq!(g.merge_base(&v(8), &v(9)), Some(v(6)));
        g.insert(node(10, &[]));
        assert_eq!(g.merge_base(&v(10), &v(9)), None, "unrelated histories");
    }

    #[test]
    fn prefixes() {
        let mut g = Graph::default();
        g.insert(node(0xab, &[]));
        g.insert(node(0xac, &[]));
        assert_eq!(g.resolve_prefix("abab").ok(), Some(v(0xab)));
        assert!(matches!(g.resolve_prefix("abc"), Err(RepoError::BadReference { .. })));
        assert!(matches!(g.resolve_prefix("ffff"), Err(RepoError::UnknownVersion { .. })));
        let mut g2 = g.clone();
        g2.insert(GraphNode { id: VersionId([0xab; 32].map(|b| b)), parents: vec![], time_ms: 0 });
        let mut id = [0xab; 32];
        id[31] = 0;
        g2.insert(GraphNode { id: VersionId(id), parents: vec![], time_ms: 0 });
        assert!(matches!(g2.resolve_prefix("abab"), Err(RepoError::AmbiguousVersion { .. })));
    }
}
