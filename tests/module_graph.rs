//! The crate's top-level modules import each other without a cycle, so the tree can be read
//! (and changed) from the leaves up. This test reads `src/**/*.rs`, leaves out test code
//! (`#[cfg(test)]` modules, inline or in their own file) and comments, collects for every
//! top-level module the others it names as `crate::X` (in `use` lines and in paths), and looks
//! for a cycle in that graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let graph = crate_graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}\nthe whole graph:\n{}",
            cycle.join(" → "),
            describe(&graph)
        );
    }
}

#[test]
fn the_call_knows_nothing_of_the_server_around_it() {
    // The call gets what it needs (settings, records, metrics, providers), not the App, and
    // hands nothing back to the listener that starts it.
    let graph = crate_graph();
    let call = &graph["call"];
    for above in ["app", "http", "media", "serve", "commands", "sim"] {
        assert!(!call.contains(above), "call imports {above}");
    }
}

#[test]
fn the_serving_path_does_not_import_commands_or_simulators() {
    let graph = crate_graph();
    let reaches = reachable(&graph, "serve");
    for command_only in ["cli", "commands", "sim"] {
        assert!(
            !reaches.contains(command_only),
            "serve reaches {command_only}:\n{}",
            describe(&graph)
        );
    }
}

#[test]
fn the_cycle_finder_spells_out_a_cycle() {
    let mut graph = Graph::new();
    let mut edge = |a: &str, b: &str| {
        graph.entry(a.into()).or_default().insert(b.into());
    };
    edge("a", "b");
    edge("b", "c");
    edge("c", "a");
    edge("c", "d");
    let cycle = find_cycle(&graph).expect("a → b → c → a is a cycle");
    assert_eq!(cycle, ["a", "b", "c", "a"]);
    graph.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn paths_are_found_in_use_lines_groups_and_expressions_but_not_in_tests_or_comments() {
    let source = "
        //! See [`crate::doc_only`].
        use crate::{alpha, beta::Thing};
        use crate::gamma::{self, Other};
        fn f() { crate::delta::go(); }
        // crate::comment_only
        #[cfg(test)]
        mod tests {
            use crate::test_only;
            fn g() { let _ = \"}\"; }
        }
        fn h() -> crate::epsilon::E { todo!() }
    ";
    let names = crate_paths(&strip_tests(&strip_comments(source)));
    let expected = ["alpha", "beta", "delta", "epsilon", "gamma"];
    assert_eq!(names, expected.iter().map(|s| s.to_string()).collect());
}

/// For every top-level module of `src/`, the other top-level modules it names.
fn crate_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    let test_files = test_only_files(&files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(from) = top_module(&src, file) else {
            continue;
        };
        let deps = graph.entry(from.clone()).or_default();
        if test_files.contains(file) {
            continue;
        }
        let text = fs::read_to_string(file).expect("source file is readable");
        for to in crate_paths(&strip_tests(&strip_comments(&text))) {
            if to != from && modules.contains(&to) {
                deps.insert(to);
            }
        }
    }
    graph
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/x.rs` and `src/x/**` belong to `x`; `lib.rs` and `main.rs` to none.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// Files declared as `#[cfg(test)] mod name;`: `name.rs` or `name/mod.rs` beside the
/// declaring module's own directory.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(file).expect("source file is readable");
        let dir = match file.file_stem().and_then(|s| s.to_str()) {
            Some("mod" | "lib" | "main") => file.parent().unwrap().to_path_buf(),
            Some(stem) => file.parent().unwrap().join(stem),
            None => continue,
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            if pair[0] != "#[cfg(test)]" {
                continue;
            }
            let declared = pair[1]
                .strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(';'));
            if let Some(name) = declared {
                out.insert(dir.join(format!("{name}.rs")));
                out.insert(dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// The text without `//` comments (doc comments included), line by line. A `//` inside a
/// string literal would cut the line short; the crate has none that matter here.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let code = match find_comment(line) {
            Some(at) => &line[..at],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Where a `//` comment starts, skipping `//` inside double-quoted strings.
fn find_comment(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The text without inline `#[cfg(test)] mod name { … }` blocks. Braces are counted outside
/// string and character literals.
fn strip_tests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_inline_mod = trimmed.starts_with("mod ")
            && trimmed
                .find(['{', ';'])
                .is_some_and(|i| trimmed.as_bytes()[i] == b'{');
        if !is_inline_mod {
            rest = after;
            continue;
        }
        let open = after.find('{').unwrap();
        let close = matching_brace(&after[open..]).map_or(after.len(), |end| open + end + 1);
        rest = &after[close..];
    }
    out.push_str(rest);
    out
}

/// The index of the brace closing the one `text` starts with.
fn matching_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'\'' if !in_string && bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'{' if !in_string => depth += 1,
            b'}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The first segment of every `crate::…` path, `crate::{a, b::c}` groups included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(rest).unwrap_or(rest.len());
            for item in top_level_items(&group[..end.saturating_sub(1)]) {
                out.insert(item);
            }
        } else {
            out.insert(ident_prefix(rest));
        }
    }
    out.remove("");
    out
}

/// The first identifier of each comma-separated item of a `{…}` group, at depth one.
fn top_level_items(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(ident_prefix(group[start..i].trim_start()));
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(ident_prefix(group[start..].trim_start()));
    items
}

fn ident_prefix(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// A cycle as the list of its modules, the first repeated at the end; `None` when acyclic.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::OnPath);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| n == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(graph, next, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(graph, node, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(node) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

fn describe(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(from, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            format!("  {from} → {}", deps.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints the graph; `cargo test module_graph -- --ignored --nocapture` to see it.
#[test]
#[ignore]
fn print_the_graph() {
    println!("{}", describe(&crate_graph()));
}
