//! The import graph the library's map (`src/lib.rs`, `# Layers`) documents, checked from the
//! sources: every module of the library has a layer; no module imports a module of a higher
//! layer; and no two modules import each other, even through others (no cycles), at every depth
//! (`proxy::pool` and `proxy::upstream` count as two). Test code (`#[cfg(test)]` modules) is
//! left out: tests may reach anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// A module of the library: its path (`["proxy", "pool"]`) and its code without test modules.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    code: String,
}

/// `lib.rs`'s layer table: module → layer.
fn layers() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(format!("{SRC}/lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells
            .first()
            .and_then(|c| c.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        for m in cells.get(1).unwrap_or(&"").split(',') {
            let m = m.trim();
            if !m.is_empty() {
                assert!(
                    out.insert(m.to_owned(), layer).is_none(),
                    "{m} has two layers"
                );
            }
        }
    }
    assert!(!out.is_empty(), "no layer table in src/lib.rs");
    out
}

/// The `mod` declarations of `code` that are not test-only: (name, `#[path]` if any).
fn declared_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut test_only = false;
    for line in code.lines() {
        let t = line.trim();
        if t.starts_with("#[cfg(test)]") || t.starts_with("#[cfg(all(test") {
            test_only = true;
            continue;
        }
        let decl = t
            .strip_prefix("pub mod ")
            .or_else(|| t.strip_prefix("pub(crate) mod "))
            .or_else(|| t.strip_prefix("pub(super) mod "))
            .or_else(|| t.strip_prefix("mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
            if !test_only {
                out.push(name.to_owned());
            }
        }
        if !t.starts_with("#[") {
            test_only = false;
        }
    }
    out
}

/// `code` without its comments (doc links are not imports) and its inline test module (by
/// convention the last item of a file).
fn without_tests(code: &str) -> String {
    let lines: Vec<&str> = code
        .lines()
        .map(|l| match l.find("//") {
            Some(at) if !l[..at].contains('"') => &l[..at],
            _ => l,
        })
        .collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod ") && n.trim_end().ends_with('{'))
        {
            return lines[..i].join("\n");
        }
    }
    code.to_owned()
}

/// The file of module `path` under `dir` (`dir/name.rs`, or `dir/name/mod.rs`).
fn module_file(dir: &Path, name: &str) -> PathBuf {
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

/// Every library module, from `lib.rs` down, test modules left out.
fn modules() -> Vec<Module> {
    let lib = std::fs::read_to_string(format!("{SRC}/lib.rs")).unwrap();
    let mut out = Vec::new();
    let mut todo: Vec<(Vec<String>, PathBuf)> = declared_modules(&lib)
        .into_iter()
        .map(|m| (vec![m.clone()], module_file(Path::new(SRC), &m)))
        .collect();
    while let Some((path, file)) = todo.pop() {
        let code =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let children_dir = match file.file_name().and_then(|f| f.to_str()) {
            Some("mod.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        for child in declared_modules(&code) {
            let mut p = path.clone();
            p.push(child.clone());
            todo.push((p, module_file(&children_dir, &child)));
        }
        out.push(Module {
            path,
            file,
            code: without_tests(&code),
        });
    }
    out
}

/// What `lib.rs` re-exports (`pub use a::b::{c, d}`): name → the module path it comes from, so
/// that `crate::c` counts as an import of `a::b`.
fn reexports() -> BTreeMap<String, Vec<String>> {
    let lib = std::fs::read_to_string(format!("{SRC}/lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    let mut rest = lib.as_str();
    while let Some(at) = rest.find("\npub use ") {
        rest = &rest[at + "\npub use ".len()..];
        let stmt = &rest[..rest.find(';').unwrap_or(rest.len())];
        let (path, names) = match stmt.find('{') {
            Some(b) => (&stmt[..b], stmt[b + 1..].trim_end_matches('}')),
            None => stmt.rsplit_once("::").unwrap_or(("", stmt)),
        };
        let module: Vec<String> = path
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for n in names.split(',') {
            let n = n.trim().rsplit(" as ").next().unwrap_or("").trim();
            if !n.is_empty() {
                out.insert(n.to_owned(), module.clone());
            }
        }
    }
    out
}

/// The module paths `code` (of module `at`) names: `crate::a::b…` and `super::…`, each cut to
/// the longest known module; a name `lib.rs` re-exports counts as its module.
fn references(code: &str, at: &[String], known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let reexported = reexports();
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for (start, prefix) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if start > 0 && (ident(bytes[start - 1]) || bytes[start - 1] == b':') {
            continue; // `x::super::` or `my_crate::`
        }
        let mut path: Vec<String> = if prefix == "crate::" {
            Vec::new()
        } else {
            at[..at.len().saturating_sub(1)].to_vec()
        };
        let mut rest = &code[start + prefix.len()..];
        while let Some(r) = rest.strip_prefix("super::") {
            path.pop();
            rest = r;
        }
        // `a::b::c`, or a group `{a, b::c}` (each member read on its own).
        let segment: String = rest
            .chars()
            .take_while(|c| *c == ':' || c.is_alphanumeric() || *c == '_')
            .collect();
        let mut names: Vec<String> = segment
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let group = rest[segment.len()..].starts_with('{');
        let mut candidates = vec![];
        if group {
            let inner: String = rest[segment.len() + 1..]
                .chars()
                .take_while(|c| *c != '}')
                .collect();
            for member in inner.split(',') {
                let mut full = path.clone();
                full.extend(names.iter().cloned());
                full.extend(
                    member
                        .trim()
                        .split("::")
                        .map(str::trim)
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(str::to_owned),
                );
                candidates.push(full);
            }
        }
        if prefix == "crate::" {
            if let Some(module) = names.first().and_then(|n| reexported.get(n)) {
                names.splice(0..1, module.iter().cloned());
            }
        }
        path.append(&mut names);
        candidates.push(path);
        for mut c in candidates {
            while !c.is_empty() && !known.contains(&c) {
                c.pop();
            }
            if !c.is_empty() {
                out.insert(c);
            }
        }
    }
    out
}

fn name(p: &[String]) -> String {
    p.join("::")
}

#[test]
fn every_module_has_a_layer_and_imports_only_downward() {
    let layers = layers();
    let modules = modules();
    let tops: BTreeSet<String> = modules.iter().map(|m| m.path[0].clone()).collect();
    let unlayered: Vec<&String> = tops.iter().filter(|t| !layers.contains_key(*t)).collect();
    assert!(
        unlayered.is_empty(),
        "modules without a layer in src/lib.rs: {unlayered:?}"
    );
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let mut upward = Vec::new();
    for m in &modules {
        let own = layers[&m.path[0]];
        for r in references(&m.code, &m.path, &known) {
            let theirs = layers[&r[0]];
            if theirs > own {
                upward.push(format!(
                    "{} (layer {own}, {}) imports {} (layer {theirs})",
                    name(&m.path),
                    m.file.strip_prefix(SRC).unwrap_or(&m.file).display(),
                    name(&r)
                ));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn no_two_modules_import_each_other() {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    // Edges between modules, a module's own ancestors and descendants left out (a parent and
    // its children are one unit).
    let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in &modules {
        for r in references(&m.code, &m.path, &known) {
            if !related(&m.path, &r) {
                edges.entry(m.path.clone()).or_default().insert(r);
            }
        }
    }
    // A cycle at any depth shows as one between the two modules' first differing ancestors:
    // lift every edge to the children of the two modules' common ancestor.
    let mut lifted: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, tos) in &edges {
        for to in tos {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            lifted
                .entry(from[..=common].to_vec())
                .or_default()
                .insert(to[..=common].to_vec());
        }
    }
    let mut cycles = Vec::new();
    for start in lifted.keys() {
        // Depth-first from `start`; a path back to it is a cycle.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in lifted.get(&at).into_iter().flatten() {
                if next == start {
                    let mut c: Vec<String> = trail.iter().map(|p| name(p)).collect();
                    c.push(name(start));
                    cycles.push(c.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_reader_sees_what_it_should() {
    // The checks above are only as good as the reading: a known downward import and a known
    // child module are found.
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    assert!(known.contains(&vec!["proxy".to_owned(), "pool".to_owned()]));
    assert!(known.contains(&vec!["flow".to_owned(), "machine".to_owned()]));
    assert!(
        !known.contains(&vec!["flow".to_owned(), "tests".to_owned()]),
        "test modules are left out"
    );
    let payments = modules.iter().find(|m| m.path == ["payments"]).unwrap();
    let refs = references(&payments.code, &payments.path, &known);
    assert!(refs.contains(&vec!["ledger".to_owned()]), "{refs:?}");
    let pool = modules
        .iter()
        .find(|m| m.path == ["proxy", "pool"])
        .unwrap();
    let refs = references(&pool.code, &pool.path, &known);
    assert!(
        refs.contains(&vec!["proxy".to_owned(), "upstream".to_owned()]),
        "{refs:?}"
    );
    // A name lib.rs re-exports counts as an import of its module.
    let refs = references(
        "let x = crate::build_gateway();",
        &["reload".to_owned()],
        &known,
    );
    assert!(refs.contains(&vec!["server".to_owned()]), "{refs:?}");
}
