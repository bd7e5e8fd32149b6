//! The proxy's modules form layers, each using only the layers below it (docs/architecture.md,
//! "Layers"). This test parses every source file of the crate and resolves every path that names
//! a module of the crate — `use` items (grouped, renamed, globbed, `pub use` re-exports), paths in
//! expressions, types and patterns, `super::`/`self::` paths, and paths inside macro calls — to
//! the top-level module it lands in. It fails on a reference to a higher layer, on a cycle among
//! top-level modules, and on a module that is not placed in a layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The layers, top to bottom: the one place the order is declared. A module may use modules of
/// its own layer (as long as no cycle forms) and of every layer below it.
const LAYERS: &[&[&str]] = &[
    &["server"],
    &["client_tls"],
    &["session"],
    &["dispatch"],
    &["commands"],
    &["routing"],
    &["context"],
    &["replies"],
    &["startup"],
    &["proxy"],
    &["access"],
    &["shard"],
    &["failover"],
    &["eviction"],
    &["sequencer"],
    &["snapshot"],
    &["monitor", "pubsub", "clients"],
    &["status"],
    &["prepare"],
    &["backend"],
    // The pure core: no I/O.
    &[
        "normalize",
        "scripts",
        "resp",
        "keys",
        "databases",
        "table",
        "config",
        "router",
        "params",
        "stats",
        "tracking",
        "units",
    ],
];

/// One reference from a top-level module to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reference {
    from: String,
    to: String,
    /// The file and the path as written, for the failure message.
    file: String,
    path: String,
}

/// Collects the crate-module paths one file uses.
struct Collector<'a> {
    file: &'a str,
    /// The module the visitor is in: the file's module, then inline `mod` blocks.
    module: Vec<String>,
    found: Vec<Reference>,
}

impl Collector<'_> {
    /// Resolves a path (its segments as written) to the top-level module it names, if it names
    /// one of the crate's: `crate::a::…`, `super::…`, `self::…`. A bare path starts from an item
    /// in scope (a `use`, which is seen itself, or a child module, which is in the same
    /// top-level module), so it adds nothing.
    fn resolve(&mut self, segments: &[String]) {
        let mut module = self.module.clone();
        let mut rest = segments;
        match segments.first().map(String::as_str) {
            Some("crate") => {
                module.clear();
                rest = &segments[1..];
            }
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    if module.pop().is_none() {
                        return; // Above the crate root: not a path of this crate.
                    }
                    rest = &rest[1..];
                }
            }
            Some("self") => rest = &segments[1..],
            _ => return,
        }
        let top = match module.first() {
            Some(top) => top.clone(),
            None => match rest.first() {
                Some(name) if name != "self" => name.clone(),
                _ => return,
            },
        };
        let from = self.module.first().cloned().unwrap_or_default();
        self.found.push(Reference { from, to: top, file: self.file.to_string(), path: segments.join("::") });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.resolve_with(prefix, &n.ident.to_string()),
            syn::UseTree::Rename(r) => self.resolve_with(prefix, &r.ident.to_string()),
            syn::UseTree::Glob(_) => self.resolve_with(prefix, "*"),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn resolve_with(&mut self, prefix: &[String], last: &str) {
        let mut segments = prefix.to_vec();
        segments.push(last.to_string());
        self.resolve(&segments);
    }

    /// Macro bodies are not parsed as Rust by syn: find `crate :: a`, `super :: a`, `self :: a`
    /// sequences among their tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            if let TokenTree::Group(group) = &trees[i] {
                self.tokens(group.stream());
                i += 1;
                continue;
            }
            let starts = matches!(&trees[i], TokenTree::Ident(id) if id == "crate" || id == "super" || id == "self");
            let preceded_by_colons = i > 0 && matches!(&trees[i - 1], TokenTree::Punct(p) if p.as_char() == ':');
            if !starts || preceded_by_colons {
                i += 1;
                continue;
            }
            let mut segments = vec![trees[i].to_string()];
            let mut j = i + 1;
            while j + 2 < trees.len() + 1 {
                let colons = matches!((&trees.get(j), &trees.get(j + 1)),
                    (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':');
                match (colons, trees.get(j + 2)) {
                    (true, Some(TokenTree::Ident(id))) => {
                        segments.push(id.to_string());
                        j += 3;
                    }
                    _ => break,
                }
            }
            if segments.len() > 1 {
                self.resolve(&segments);
            }
            i = j;
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.resolve(&segments);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// The module path of a source file: `commands/pubsub.rs` → `commands::pubsub`, `resp/mod.rs`
/// → `resp`, `lib.rs` → the root.
fn module_of(relative: &str) -> Vec<String> {
    let trimmed = relative.strip_suffix(".rs").expect("a Rust file");
    let mut parts: Vec<String> = trimmed.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The references between top-level modules in `files` (path relative to `src/`, source).
fn references(files: &[(String, String)]) -> Result<Vec<Reference>, String> {
    let mut found = Vec::new();
    for (relative, source) in files {
        let parsed = syn::parse_file(source).map_err(|e| format!("{relative}: {e}"))?;
        let mut collector = Collector { file: relative, module: module_of(relative), found: Vec::new() };
        collector.visit_file(&parsed);
        found.extend(collector.found.into_iter().filter(|r| !r.from.is_empty() && r.from != r.to));
    }
    Ok(found)
}

/// Every breach of the layering among `files`: unplaced modules, upward references, cycles.
fn violations(files: &[(String, String)], layers: &[&[&str]]) -> Vec<String> {
    let rank: BTreeMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(rank, layer)| layer.iter().map(move |m| (*m, rank))).collect();
    let mut problems = Vec::new();
    let tops: BTreeSet<String> =
        files.iter().filter_map(|(relative, _)| module_of(relative).first().cloned()).collect();
    for top in &tops {
        if !rank.contains_key(top.as_str()) {
            problems.push(format!("module `{top}` is in no layer"));
        }
    }
    let references = match references(files) {
        Ok(references) => references,
        Err(e) => return vec![e],
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &references {
        let (Some(&from), Some(&to)) = (rank.get(r.from.as_str()), rank.get(r.to.as_str())) else {
            if tops.contains(&r.to) {
                continue; // Reported above as unplaced.
            }
            problems.push(format!("{}: `{}` names `{}`, which is not a module of the crate", r.file, r.path, r.to));
            continue;
        };
        if to < from {
            problems.push(format!(
                "{}: `{}` refers up: `{}` (layer {from}) uses `{}` (layer {to})",
                r.file, r.path, r.from, r.to
            ));
        }
        graph.entry(r.from.clone()).or_default().insert(r.to.clone());
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("cycle among modules: {}", cycle.join(" → ")));
    }
    problems
}

/// A cycle in `graph`, as the modules along it (first repeated at the end), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    assert!(files.len() > 40, "read only {} files from {}", files.len(), root.display());
    // The collector sees the real code: these edges are known to exist.
    let edges: BTreeSet<(String, String)> = references(&files).unwrap().into_iter().map(|r| (r.from, r.to)).collect();
    for (from, to) in [("session", "dispatch"), ("dispatch", "commands"), ("sequencer", "snapshot"), ("keys", "resp")] {
        assert!(edges.contains(&(from.to_string(), to.to_string())), "no reference {from} → {to} found");
    }
    let problems = violations(&files, LAYERS);
    assert!(problems.is_empty(), "the layering is broken:\n{}", problems.join("\n"));
    // Every declared module exists, so the declaration cannot drift from the code.
    let tops: BTreeSet<String> = files.iter().filter_map(|(f, _)| module_of(f).first().cloned()).collect();
    for module in LAYERS.iter().flat_map(|layer| layer.iter()) {
        assert!(tops.contains(*module), "layer module `{module}` has no source file");
    }
}

fn file(relative: &str, source: &str) -> (String, String) {
    (relative.to_string(), source.to_string())
}

/// A small crate: `low` below `high`, which is the only allowed direction.
const TOY: &[&[&str]] = &[&["high"], &["low"]];

#[test]
fn a_clean_toy_crate_passes() {
    let files = [file("high.rs", "use crate::low::X;\nfn f() { crate::low::g(); }"), file("low.rs", "pub struct X;")];
    assert_eq!(violations(&files, TOY), Vec::<String>::new());
}

#[test]
fn planted_upward_references_are_caught_in_every_form() {
    let planted = [
        ("use", "use crate::high::Thing;"),
        ("grouped use", "use crate::{high::Thing, low2::Y};"),
        ("nested group", "use crate::{low2::{self}, high::{a::{b, c}}};"),
        ("re-export", "pub use crate::high::Thing;"),
        ("expression path", "fn f() { let _ = crate::high::make(); }"),
        ("type path", "struct S { x: Option<crate::high::Thing> }"),
        ("super path", "mod inner { fn f() -> super::super::high::Thing { todo!() } }"),
        ("macro body", "fn f() { println!(\"{}\", crate::high::NAME); }"),
        ("glob", "use crate::high::*;"),
    ];
    for (form, source) in planted {
        let files = [file("high.rs", ""), file("low.rs", source), file("low2.rs", "pub struct Y;")];
        let problems = violations(&files, &[&["high"], &["low", "low2"]]);
        assert!(
            problems.iter().any(|p| p.contains("refers up") && p.contains("`low` (layer 1) uses `high`")),
            "{form} not caught: {problems:?}"
        );
    }
}

#[test]
fn super_from_a_submodule_file_resolves_to_its_parent() {
    // `low/part.rs`'s `super::` is `low`; `super::super::high` is the top-level `high`.
    let files = [
        file("high.rs", ""),
        file("low/mod.rs", "mod part;"),
        file("low/part.rs", "use super::super::high::Thing;\nuse super::Sibling;"),
    ];
    let problems = violations(&files, TOY);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("low/part.rs") && problems[0].contains("refers up"));
}

#[test]
fn cycles_within_a_layer_and_unplaced_modules_are_caught() {
    let files = [file("a.rs", "use crate::b::X;"), file("b.rs", "fn f() { crate::a::g() }"), file("c.rs", "")];
    let problems = violations(&files, &[&["a", "b"]]);
    assert!(problems.iter().any(|p| p.starts_with("cycle among modules: a → b → a")), "{problems:?}");
    assert!(problems.iter().any(|p| p == "module `c` is in no layer"), "{problems:?}");
}
