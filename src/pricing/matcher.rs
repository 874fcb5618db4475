//! Route lookup: a segment trie over the compiled patterns that still honours "first match in
//! file order wins".
//!
//! Owns: [`Matcher`]. Each node has literal children (lowercase), one `*` child, the routes that
//! end exactly there and the routes with a `/**` suffix there. A lookup walks every branch that
//! can match (a literal and a `*` at most per level) and keeps the lowest route index whose
//! methods allow the request. No allocation per lookup.

use std::collections::HashMap;

use crate::config::{RoutePattern, Segment};

#[derive(Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// Routes ending exactly at this node, ascending.
    exact: Vec<usize>,
    /// Routes with `/**` at this node (match this node and everything below), ascending.
    rest: Vec<usize>,
}

/// The compiled route table.
#[derive(Default)]
pub struct Matcher {
    root: Node,
}

impl Matcher {
    /// Builds the trie; `patterns[i]` is route `i`.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a RoutePattern>) -> Self {
        let mut root = Node::default();
        for (i, p) in patterns.into_iter().enumerate() {
            let mut node = &mut root;
            for seg in &p.segments {
                node = match seg {
                    Segment::Literal(l) => node.literals.entry(l.as_str().into()).or_default(),
                    Segment::Star => node.star.get_or_insert_with(Box::default),
                };
            }
            if p.rest {
                node.rest.push(i);
            } else {
                node.exact.push(i);
            }
        }
        Matcher { root }
    }

    /// The first route (lowest index) matching a normalised, lowercase path (`/a/b`) for which
    /// `allowed(index)` holds.
    pub fn lookup(&self, path: &str, allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut best = None;
        walk(&self.root, rest, allowed, &mut best);
        best
    }
}

impl Matcher {
    /// Calls `f` with every route matching a normalised, lowercase path, whatever its methods.
    pub fn each(&self, path: &str, f: &mut dyn FnMut(usize)) {
        let rest = path.strip_prefix('/').unwrap_or(path);
        walk_all(&self.root, rest, f);
    }
}

fn walk_all(node: &Node, rest: &str, f: &mut dyn FnMut(usize)) {
    node.rest.iter().for_each(|&i| f(i));
    if rest.is_empty() {
        node.exact.iter().for_each(|&i| f(i));
        return;
    }
    let (seg, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(child) = node.literals.get(seg) {
        walk_all(child, tail, f);
    }
    if let Some(child) = &node.star {
        walk_all(child, tail, f);
    }
}

fn consider(candidates: &[usize], allowed: &dyn Fn(usize) -> bool, best: &mut Option<usize>) {
    for &i in candidates {
        if best.is_some_and(|b| b <= i) {
            return;
        }
        if allowed(i) {
            *best = Some(i);
            return;
        }
    }
}

fn walk(node: &Node, rest: &str, allowed: &dyn Fn(usize) -> bool, best: &mut Option<usize>) {
    consider(&node.rest, allowed, best);
    if rest.is_empty() {
        consider(&node.exact, allowed, best);
        return;
    }
    let (seg, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(child) = node.literals.get(seg) {
        walk(child, tail, allowed, best);
    }
    if let Some(child) = &node.star {
        walk(child, tail, allowed, best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_pattern as p;

    fn m(patterns: &[&str]) -> Matcher {
        let compiled: Vec<_> = patterns.iter().map(|s| p(s).unwrap()).collect();
        Matcher::new(compiled.iter())
    }

    fn any(_: usize) -> bool {
        true
    }

    #[test]
    fn exact_star_and_rest() {
        let t = m(&["/health", "/weather/*", "/files/**", "/"]);
        assert_eq!(t.lookup("/health", &any), Some(0));
        assert_eq!(t.lookup("/health/x", &any), None);
        assert_eq!(t.lookup("/weather/paris", &any), Some(1));
        assert_eq!(t.lookup("/weather", &any), None);
        assert_eq!(t.lookup("/weather/paris/today", &any), None);
        assert_eq!(t.lookup("/files", &any), Some(2));
        assert_eq!(t.lookup("/files/a/b/c", &any), Some(2));
        assert_eq!(t.lookup("/", &any), Some(3));
        assert_eq!(t.lookup("/other", &any), None);
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let t = m(&["/api/**", "/api/free", "/**"]);
        assert_eq!(t.lookup("/api/free", &any), Some(0));
        let t = m(&["/api/free", "/api/*", "/api/**"]);
        assert_eq!(t.lookup("/api/free", &any), Some(0));
        assert_eq!(t.lookup("/api/x", &any), Some(1));
        assert_eq!(t.lookup("/api/x/y", &any), Some(2));
        let t = m(&["/a/*/c", "/a/b/*"]);
        assert_eq!(t.lookup("/a/b/c", &any), Some(0));
    }

    #[test]
    fn method_filter_falls_through_to_later_routes() {
        let t = m(&["/x", "/x", "/**"]);
        assert_eq!(t.lookup("/x", &|i| i != 0), Some(1));
        assert_eq!(t.lookup("/x", &|i| i == 2), Some(2));
        assert_eq!(t.lookup("/x", &|_| false), None);
    }

    #[test]
    fn thousand_routes() {
        let pats: Vec<String> = (0..1000)
            .map(|i| format!("/api/v{}/item{i}/*", i % 7))
            .collect();
        let refs: Vec<&str> = pats.iter().map(String::as_str).collect();
        let t = m(&refs);
        assert_eq!(t.lookup("/api/v2/item500/x", &any), None);
        assert_eq!(t.lookup("/api/v3/item500/x", &any), Some(500));
        assert_eq!(t.lookup("/api/v5/item502/x", &any), Some(502));
    }
}
