//! The module layout stays a one-way street: no module imports one that imports it back
//! (docs/ARCHITECTURE.md shows the graph). Read from the `use crate::…` and `use super::…`
//! lines of every file under src/, at file level and at folder level.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").map_while(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `proxy/session.rs` → `proxy::session`; `proxy/mod.rs` → `proxy`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src").with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).filter(|p| p != "mod").collect();
    parts.join("::")
}

/// The modules of the crate a file's `use` lines name.
fn imports(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with("use ") || l.starts_with("pub use ")) {
        let path = line.trim_start_matches("pub ").trim_start_matches("use ").trim_end_matches(';');
        let (base, rest): (Vec<&str>, &str) = if let Some(rest) = path.strip_prefix("crate::") {
            (Vec::new(), rest)
        } else if let Some(rest) = path.strip_prefix("super::") {
            let mut base: Vec<&str> = module.split("::").collect();
            base.pop();
            (base, rest)
        } else {
            continue;
        };
        // `a::{b, c::d}` names a::b and a::c; `a::b::Item` names a::b.
        let (head, group) = match rest.split_once("::{") {
            Some((head, group)) => (head, Some(group.trim_end_matches('}'))),
            None => (rest, None),
        };
        let mut candidates = vec![head.to_string()];
        if let Some(group) = group {
            candidates.extend(
                group.split(',').map(|item| format!("{head}::{}", item.trim().split("::").next().unwrap_or(""))),
            );
        }
        for candidate in candidates {
            let mut full: Vec<&str> = base.clone();
            full.extend(candidate.split("::"));
            if let Some(target) = (1..=full.len()).rev().map(|k| full[..k].join("::")).find(|m| modules.contains(m)) {
                if target != module {
                    found.insert(target);
                }
            }
        }
    }
    found
}

fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            return Some(stack[at..].iter().cloned().chain([node.to_string()]).collect());
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, stack, done) {
                return Some(found);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let texts: BTreeMap<String, String> = files
        .iter()
        .map(|f| (module_of(&src, f), std::fs::read_to_string(f).expect("read")))
        .filter(|(m, _)| m != "lib" && m != "main")
        .collect();
    let modules: BTreeSet<String> = texts.keys().cloned().collect();
    let files: BTreeMap<String, BTreeSet<String>> =
        texts.iter().map(|(m, text)| (m.clone(), imports(m, text, &modules))).collect();
    assert!(files.values().map(BTreeSet::len).sum::<usize>() > 20, "the imports were not read: {files:?}");
    assert_eq!(cycle(&files), None, "a file-level import cycle");
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, deps) in &files {
        let entry = folders.entry(top(module)).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != top(module)));
    }
    assert_eq!(cycle(&folders), None, "a folder-level import cycle: {folders:?}");
    assert!(folders["http"].is_empty(), "http/ stays pure: {:?}", folders["http"]);
    let pure: BTreeSet<String> = ["http".to_string()].into();
    assert!(folders["routing"].is_subset(&pure), "the route matcher stays pure: {:?}", folders["routing"]);
    for leaf in ["ids", "random"] {
        assert!(folders[leaf].is_empty(), "{leaf} depends on nothing: {:?}", folders[leaf]);
    }
    for lower in ["balance", "targets"] {
        assert!(!folders["runtime"].contains(lower), "runtime/ is below {lower}: {:?}", folders["runtime"]);
    }
}
