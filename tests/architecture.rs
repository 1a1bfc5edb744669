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
                // A `tests/` directory is a module's tests split by the module
                // they check (`#[cfg(test)] mod tests;` with a `tests/mod.rs`).
                if !p.ends_with("tests") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tests.rs") {
                // A `tests.rs` is a module's tests (`#[cfg(test)] mod tests;`).
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

/// The file's lines without its test items: each `#[cfg(test)]` and the item
/// it annotates (a `mod tests { .. }` block, a method, a `use`), wherever in the
/// file it sits.
fn non_test_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push(line);
            continue;
        }
        // Skip the annotated item: up to the `;` of a one-line item, or to the
        // brace that closes the block it opens.
        let (mut depth, mut opened, mut in_str) = (0, false, Lit::Code);
        for l in lines.by_ref() {
            let d = brace_balance(l, &mut in_str);
            depth += d;
            opened |= d > 0;
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// The file's code: its test items and comment lines dropped.
fn code_of(text: &str) -> String {
    non_test_lines(text)
        .into_iter()
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

/// A file's module path: `decode/changes/batch.rs` is `decode::changes::batch`,
/// a `mod.rs` is its directory's module; lib.rs and main.rs are the root.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut path: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if matches!(
        path.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        path.pop();
    }
    path
}

/// The module paths `code`, the code of module `me`, names through `crate::`,
/// `super::` and `self::` (grouped imports too), each cut to the longest
/// prefix that is one of the crate's `modules`.
fn module_refs(
    code: &str,
    me: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let cut = |mut p: Vec<String>| {
        while !p.is_empty() && !modules.contains(&p) {
            p.pop();
        }
        p
    };
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(root) {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            if root == "super::" && code[..at].ends_with("super::") {
                continue; // counted from the first `super::` of the run
            }
            let mut rest = &code[at + root.len()..];
            let mut base: Vec<String> = match root {
                "crate::" => Vec::new(),
                "self::" => me.to_vec(),
                _ => me[..me.len().saturating_sub(1)].to_vec(),
            };
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            // `a::b::{c, d::E}`: the segments, then each item of a group.
            loop {
                let seg = ident_at(rest);
                if seg.is_empty() {
                    break;
                }
                base.push(seg.clone());
                match rest[seg.len()..].strip_prefix("::") {
                    Some(r) => rest = r,
                    None => {
                        rest = "";
                        break;
                    }
                }
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if depth == 0 && item_start && (c.is_ascii_alphabetic() || c == '_') => {
                            let mut p = base.clone();
                            p.push(ident_at(&group[i..]));
                            out.insert(cut(p));
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            }
            out.insert(cut(base));
        }
    }
    out
}

/// For every module with submodules: which of its submodules uses which (a
/// file of `a::b` naming `a::c::X` is the edge `b -> c` under `a`; the root's
/// graph is the top-level modules').
fn nested_graphs() -> BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> {
    let files = rust_files(&src());
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(f)).collect();
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let me = module_path(file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for r in module_refs(&code, &me, &modules) {
            let c = me.iter().zip(&r).take_while(|(a, b)| a == b).count();
            if c < me.len() && c < r.len() {
                let parent = me[..c].to_vec();
                let g = graphs.entry(parent).or_default();
                g.entry(me[c].clone()).or_default().insert(r[c].clone());
            }
        }
    }
    graphs
}

#[test]
fn no_import_cycle_between_modules_at_any_depth() {
    let graphs = nested_graphs();
    let top = graphs.get(&Vec::new()).expect("the top-level graph");
    assert!(top.len() > 5, "modules found: {top:?}");
    assert!(
        graphs.len() > 5,
        "modules with submodules: {:?}",
        graphs.keys()
    );
    let mut cycles = Vec::new();
    for (parent, graph) in &graphs {
        if let Some(cycle) = find_cycle(graph) {
            let under = if parent.is_empty() {
                "the crate".to_owned()
            } else {
                parent.join("::")
            };
            cycles.push(format!("under {under}: {}", cycle.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The layers, lowest first: a module may use modules of its own layer's
/// predecessors only (the flow source -> decode -> window -> sink -> offsets reads
/// upward from here, with pipeline on top and ops beside it).
const LAYERS: &[&[&str]] = &[
    &["secret", "record", "fault"],
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
        let code_lines = non_test_lines(&text).len();
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

/// The literal a line ends inside of, carried to the next line.
#[derive(Clone, Copy, PartialEq, Default)]
enum Lit {
    #[default]
    Code,
    Str,
    /// A raw string with this many `#`s.
    Raw(usize),
}

/// The net `{` minus `}` of a line of code, skipping string, raw-string and
/// char literals and comments; `lit` carries an open literal to the next line.
fn brace_balance(line: &str, lit: &mut Lit) -> i32 {
    let b = line.as_bytes();
    let (mut depth, mut i) = (0, 0);
    while i < b.len() {
        let c = b[i];
        match *lit {
            Lit::Str => match c {
                b'\\' => i += 1,
                b'"' => *lit = Lit::Code,
                _ => {}
            },
            Lit::Raw(n) => {
                if c == b'"' && b[i + 1..].iter().take(n).filter(|h| **h == b'#').count() == n {
                    *lit = Lit::Code;
                    i += n;
                }
            }
            Lit::Code => match c {
                b'/' if b.get(i + 1) == Some(&b'/') => break,
                b'r' if (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
                    && matches!(b.get(i + 1), Some(b'"' | b'#')) =>
                {
                    let n = b[i + 1..].iter().take_while(|h| **h == b'#').count();
                    if b.get(i + 1 + n) == Some(&b'"') {
                        *lit = Lit::Raw(n);
                        i += 1 + n;
                    }
                }
                b'"' => *lit = Lit::Str,
                b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
                b'\'' if b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') => i += 3,
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            },
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
        let (mut depth, mut opened, mut in_str) = (0, false, Lit::Code);
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
        let code = non_test_lines(&text);
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
    // A test method's body is a test item too, and the code after it counts.
    let code =
        code_of("fn a() {}\n#[cfg(test)]\nfn t() {\n    crate::cli::x();\n}\nuse crate::sink;\n");
    assert_eq!(crate_refs(&code), BTreeSet::from(["sink".to_owned()]));
    // Module paths through super:: and groups, cut to real modules.
    let v = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let modules: BTreeSet<Vec<String>> = ["decode", "decode::changes", "decode::debezium", "sink"]
        .map(v)
        .into();
    let refs = module_refs(
        "use super::debezium::{row, Changes};\nuse super::{DecodeError, changes::X};\nuse crate::sink::Y;",
        &v("decode::changes"),
        &modules,
    );
    let want: BTreeSet<Vec<String>> = ["decode::debezium", "decode", "decode::changes", "sink"]
        .map(v)
        .into();
    assert_eq!(refs, want);
}
