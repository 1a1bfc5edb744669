//! The shape of the crate, checked on every test run: no import cycle between
//! top-level modules, no source file over 500 lines (inline tests excluded), a thin
//! `main.rs`, no function over 80 lines, the dependency direction ARCHITECTURE.md
//! draws, and no `Result<_, String>` or `unwrap()` outside tests.
//!
//! Dependencies are read from the source text: every `crate::<module>` path
//! outside comments and outside the file's `#[cfg(test)]` tail counts, including
//! grouped `use crate::{a::X, b::Y}` imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 500;
const MAX_MAIN_LINES: usize = 150;
const MAX_FN_LINES: usize = 80;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file under `src/` belongs to (`None`: lib.rs, main.rs).
fn top_module(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// The file's code: comment lines dropped, and everything from the first
/// `#[cfg(test)]` on (inline tests sit at the end of a file).
fn code_of(text: &str) -> String {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b}`: the first segment of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident_at(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident_at(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    out
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Module -> the other top-level modules it uses.
fn dependency_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src()) {
        let Some(module) = top_module(&file) else {
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(crate_refs(&code).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(m) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| p == m).unwrap();
                let mut cycle = path[from..].to_vec();
                cycle.push(m.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(m.to_owned(), Mark::Open);
        path.push(m.to_owned());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(m.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in graph.keys() {
        if let Some(c) = visit(m, graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = dependency_graph();
    assert!(graph.len() > 5, "modules found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}\nthe graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

/// The layers, lowest first: a module may use modules of its own layer's
/// predecessors only (the flow source -> decode -> window -> sink -> offsets reads
/// upward from here, with pipeline on top and ops beside it).
const LAYERS: &[&[&str]] = &[
    &["secret", "record"],
    &["telemetry", "schema", "offsets"],
    &["source", "decode"],
    &["sink"],
    &["window"],
    &["config"],
    &["pipeline", "ops"],
    &["cli"],
];

#[test]
fn modules_only_use_lower_layers() {
    let layer_of = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let graph = dependency_graph();
    let mut wrong = Vec::new();
    for (m, deps) in &graph {
        let Some(mine) = layer_of(m) else {
            wrong.push(format!(
                "{m} is in no layer: add it to LAYERS and ARCHITECTURE.md"
            ));
            continue;
        };
        for d in deps {
            match layer_of(d) {
                Some(l) if l < mine || (l == mine && m == "ops" && d == "pipeline") => {}
                _ => wrong.push(format!("{m} uses {d}")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn source_files_stay_small_and_main_is_a_thin_shell() {
    let mut long = Vec::new();
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let code_lines = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .count();
        let limit = if file.ends_with("main.rs") {
            MAX_MAIN_LINES
        } else {
            MAX_FILE_LINES
        };
        if code_lines > limit {
            long.push(format!(
                "{}: {code_lines} lines (limit {limit})",
                file.strip_prefix(src()).unwrap().display()
            ));
        }
    }
    assert!(
        long.is_empty(),
        "files over the limit:\n{}",
        long.join("\n")
    );
}

/// The net `{` minus `}` of a line of code, skipping string and char literals and
/// comments; `in_str` carries an open string literal to the next line.
fn brace_balance(line: &str, in_str: &mut bool) -> i32 {
    let b = line.as_bytes();
    let (mut depth, mut i) = (0, 0);
    while i < b.len() {
        let c = b[i];
        if *in_str {
            match c {
                b'\\' => i += 1,
                b'"' => *in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'/' if b.get(i + 1) == Some(&b'/') => break,
                b'"' => *in_str = true,
                b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
        }
        i += 1;
    }
    depth
}

/// The functions of `code` longer than `limit` lines: (name, lines).
fn long_functions(code: &str, limit: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(at) = t.find("fn ") else { continue };
        let prefix = &t[..at];
        let is_fn = ["", "pub ", "pub(crate) ", "pub(super) "]
            .iter()
            .flat_map(|p| [p.to_string(), format!("{p}async ")])
            .any(|p| p == prefix);
        if !is_fn {
            continue;
        }
        let name: String = t[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened, mut in_str) = (0, false, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            let d = brace_balance(l, &mut in_str);
            depth += d;
            opened |= d > 0;
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                if j - i + 1 > limit {
                    long.push((name.clone(), j - i + 1));
                }
                break;
            }
        }
    }
    long
}

#[test]
fn no_function_over_80_lines() {
    let mut long = Vec::new();
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let code: Vec<&str> = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .collect();
        for (name, n) in long_functions(&code.join("\n"), MAX_FN_LINES) {
            let file = file.strip_prefix(src()).unwrap().display().to_string();
            long.push(format!("{file}: fn {name}: {n} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// Library errors are typed and classify themselves; strings are for messages.
/// `unwrap` is for tests.
#[test]
fn no_string_errors_and_no_unwrap_outside_tests() {
    let mut found = Vec::new();
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let code = code_of(&text);
        let name = file.strip_prefix(src()).unwrap().display().to_string();
        for line in code.lines() {
            let string_error = line.contains("Result<")
                && (line.contains(", String>") || line.contains(",String>"));
            if string_error || line.contains(".unwrap()") {
                found.push(format!("{name}: {}", line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "found:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_grouped_imports_and_skips_comments_and_tests() {
    let code = code_of(
        "use crate::{sink::table, record::TopicPartition};\n// crate::pipeline in a comment\nuse crate::schema;\n#[cfg(test)]\nmod tests { use crate::cli; }\n",
    );
    let refs = crate_refs(&code);
    let want: BTreeSet<String> = ["record", "schema", "sink"].map(String::from).into();
    assert_eq!(refs, want);
    let f = "fn a() {\n    let s = \"{{\";\n    if x { y('{') }\n}\nfn b();\n";
    assert_eq!(long_functions(f, 3), [("a".to_owned(), 4)]);
    assert!(long_functions(f, 4).is_empty());
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "a"]);
}
