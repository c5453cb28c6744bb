//! The structure of the code, held to what ARCHITECTURE.md says it is.
//!
//! - fwdd's modules are layered: ARCHITECTURE.md lists them top to bottom
//!   (the block after `<!-- fwdd layers -->`, one layer a line), and a
//!   module may import only modules on lines below its own.
//! - No crate's files import each other in a circle, folders included.
//!
//! Imports are read from the source text: `crate::…`, `super::…` and paths
//! through a module's own children, in `use` and in expressions alike;
//! comments, strings and `#[cfg(test)]` code are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's non-test sources, by path relative to its `src/`.
type Sources = BTreeMap<PathBuf, String>;

/// An import of one file by another, with the path that made it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Arrow {
    from: PathBuf,
    to: PathBuf,
    path: String,
}

#[test]
fn fwdd_modules_import_only_layers_below_their_own() {
    let root = workspace();
    let layers = layers_from_architecture(&root.join("ARCHITECTURE.md"));
    let sources = read_crate(&root.join("crates/fwdd/src"));
    let problems = check_layers(&sources, &layers);
    assert!(
        problems.is_empty(),
        "fwdd's imports break the layer order in ARCHITECTURE.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_crate_has_an_import_circle() {
    let root = workspace();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let src = entry.expect("entry").path().join("src");
        if src.is_dir() {
            for circle in circles(&arrows(&read_crate(&src))) {
                problems.push(format!("{}: {}", src.display(), circle.join(", ")));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "import circles:\n{}",
        problems.join("\n")
    );
}

// ---- the checker's own tests: it can fail ---------------------------------

fn sources(files: &[(&str, &str)]) -> Sources {
    files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect()
}

fn layers(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn an_import_of_a_higher_layer_is_reported() {
    let s = sources(&[
        ("main.rs", "mod low;\nmod high;\nfn main() { high::go(); }"),
        ("high.rs", "use crate::low::Thing;\npub fn go() {}"),
        ("low.rs", "pub struct Thing;\nfn f() { crate::high::go() }"),
    ]);
    let problems = check_layers(&s, &layers(&["main", "high", "low"]));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("low.rs imports high.rs") && p.contains("above it")),
        "{problems:?}"
    );
    // Without the upward call, the same order holds.
    let fixed = sources(&[
        ("main.rs", "mod low;\nmod high;\nfn main() { high::go(); }"),
        ("high.rs", "use crate::low::Thing;\npub fn go() {}"),
        ("low.rs", "pub struct Thing;"),
    ]);
    assert_eq!(
        check_layers(&fixed, &layers(&["main", "high", "low"])),
        Vec::<String>::new()
    );
}

#[test]
fn a_same_layer_import_and_an_unlisted_module_are_reported() {
    let s = sources(&[
        ("main.rs", "mod a;\nmod b;\nmod c;"),
        ("a.rs", "use crate::b::X;"),
        ("b.rs", "pub struct X;"),
        ("c.rs", ""),
    ]);
    let problems = check_layers(&s, &layers(&["main", "a b"]));
    assert!(
        problems.iter().any(|p| p.contains("a.rs imports b.rs")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("`c`")), "{problems:?}");
}

#[test]
fn a_circle_through_a_folder_face_is_found_and_test_code_is_not_read() {
    let s = sources(&[
        ("lib.rs", "mod host;"),
        (
            "host/mod.rs",
            "mod ops;\nuse ops::start;\npub struct Host;\n#[cfg(test)]\nmod tests { use super::ops::x; }",
        ),
        ("host/ops.rs", "// crate::host::Host in a comment\nuse super::Host;\npub fn start() {}"),
    ]);
    let found = circles(&arrows(&s));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(&"host/mod.rs".to_string())
            && found[0].contains(&"host/ops.rs".to_string())
    );
    // Without the upward `use`, no circle: comments and test code don't count.
    let s = sources(&[
        ("lib.rs", "mod host;"),
        (
            "host/mod.rs",
            "mod ops;\nuse ops::start;\n#[cfg(test)]\nmod tests { use super::ops::x; }",
        ),
        (
            "host/ops.rs",
            "// use super::Host;\nconst S: &str = \"crate::host\";\npub fn start() {}",
        ),
    ]);
    assert!(circles(&arrows(&s)).is_empty());
}

#[test]
fn grouped_and_nested_paths_resolve_to_the_deepest_file() {
    let s = sources(&[
        ("main.rs", "mod a;\nmod b;\nuse crate::{a::{x::Y, Z}, b};"),
        ("a/mod.rs", "pub mod x;\npub struct Z;"),
        ("a/x.rs", "pub struct Y;"),
        ("b.rs", ""),
    ]);
    let targets: BTreeSet<PathBuf> = arrows(&s)
        .into_iter()
        .filter(|a| a.from == Path::new("main.rs"))
        .map(|a| a.to)
        .collect();
    let want: BTreeSet<PathBuf> = ["a/x.rs", "a/mod.rs", "b.rs"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(targets, want);
}

// ---- reading -----------------------------------------------------------------

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The layers, top first: the fenced block after `<!-- fwdd layers -->`.
fn layers_from_architecture(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("ARCHITECTURE.md");
    let after = text
        .split_once("<!-- fwdd layers -->")
        .expect("ARCHITECTURE.md has a `<!-- fwdd layers -->` block")
        .1;
    let block = after
        .split_once("```")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a fenced block after the marker")
        .0;
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// Every source file of a crate that is not test-only.
fn read_crate(src: &Path) -> Sources {
    let mut all = Sources::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).expect("under src").to_path_buf();
                all.insert(rel, std::fs::read_to_string(&path).expect("read"));
            }
        }
    }
    // Files declared only under #[cfg(test)] are test code.
    let declared_tests: BTreeSet<PathBuf> = all
        .iter()
        .flat_map(|(file, text)| {
            let mut module = module_of(file);
            test_modules(text)
                .into_iter()
                .flat_map(|name| {
                    module.push(name);
                    let candidates = candidate_files(&module);
                    module.pop();
                    candidates
                })
                .collect::<Vec<_>>()
        })
        .collect();
    all.retain(|p, _| !declared_tests.contains(p));
    all
}

/// Names of child modules declared as `#[cfg(test)] mod name;`.
fn test_modules(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| {
            let rest = w[1].strip_prefix("pub ").unwrap_or(w[1]);
            rest.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

/// The module path of a file: `host/ops.rs` → [host, ops]; `host/mod.rs`,
/// `main.rs`, `lib.rs` name their folder's module.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    let at_root = parts.is_empty();
    if !(stem == "mod" || (at_root && (stem == "main" || stem == "lib"))) {
        parts.push(stem.to_string());
    }
    parts
}

fn candidate_files(module: &[String]) -> Vec<PathBuf> {
    if module.is_empty() {
        return vec![PathBuf::from("main.rs"), PathBuf::from("lib.rs")];
    }
    let joined: PathBuf = module.iter().collect();
    vec![joined.with_extension("rs"), joined.join("mod.rs")]
}

// ---- the text: comments, strings and test code out --------------------------

/// The code without comments, string and char literals, and
/// `#[cfg(test)]` items (an attribute followed by a braced item).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |n| n + 2);
        } else if rest.starts_with("r#\"") {
            i += rest.find("\"#").map_or(rest.len(), |n| n + 2);
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && char_literal_len(rest).is_some() {
            i += char_literal_len(rest).unwrap_or(1);
        } else if rest.starts_with("#[cfg(test)]") {
            i += "#[cfg(test)]".len();
            // Skip the item: to its `;` or its balanced braces.
            let item = &text[i..];
            let semi = item.find(';');
            let brace = item.find('{');
            match (semi, brace) {
                (Some(s), Some(br)) if s < br => i += s + 1,
                (_, Some(br)) => {
                    let mut depth = 0;
                    let mut j = i + br;
                    while j < b.len() {
                        match b[j] {
                            b'{' => depth += 1,
                            b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    i = j + 1;
                }
                (Some(s), None) => i += s + 1,
                (None, None) => i = b.len(),
            }
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `'x'`, `'\n'`, `'\u{1F600}'` — not a lifetime like `'a`.
fn char_literal_len(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices().skip(1);
    let (_, c) = chars.next()?;
    if c == '\\' {
        let end = rest[2..].find('\'')?;
        return Some(end + 3);
    }
    let (j, close) = chars.next()?;
    (close == '\'').then_some(j + 1)
}

// ---- the graph -----------------------------------------------------------------

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Paths that start at `start` in `code`: `start::a::b`, with one level of
/// `{…}` groups expanded (`crate::{a::X, b}` → `a::X`, `b`).
fn paths_after(code: &str, start: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let needle = format!("{start}::");
    let mut from = 0;
    while let Some(pos) = code[from..].find(&needle) {
        let at = from + pos;
        from = at + needle.len();
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        found.extend(expand(&code[from..]));
    }
    found
}

/// The path(s) written at the start of `s` (after a `prefix::`).
fn expand(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(group) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = group.len();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut last = 0;
        let inner = &group[..end];
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[last..i]);
                    last = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[last..]);
        return parts
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .flat_map(|p| expand(p.trim()))
            .collect();
    }
    let mut path = Vec::new();
    let mut rest = s;
    loop {
        let ident: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        if ident.is_empty() {
            break;
        }
        path.push(ident.clone());
        rest = &rest[ident.len()..];
        match rest.strip_prefix("::") {
            Some(r) if r.starts_with('{') => {
                return expand(r)
                    .into_iter()
                    .map(|tail| path.iter().cloned().chain(tail).collect())
                    .collect();
            }
            Some(r) => rest = r,
            None => break,
        }
    }
    if path.is_empty() {
        Vec::new()
    } else {
        vec![path]
    }
}

/// Child modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_children(code: &str) -> Vec<String> {
    code.split(';')
        .filter_map(|stmt| {
            let words: Vec<&str> = stmt.split_whitespace().collect();
            let i = words.iter().rposition(|w| *w == "mod")?;
            (i + 2 == words.len()).then(|| words[i + 1].to_string())
        })
        .collect()
}

/// The crate-internal paths a file's code names, absolute, each with how it
/// was written.
fn named_paths(file: &Path, code: &str) -> Vec<(Vec<String>, String)> {
    let module = module_of(file);
    let mut targets = Vec::new();
    for p in paths_after(code, "crate") {
        targets.push((p.clone(), format!("crate::{}", p.join("::"))));
    }
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    for p in paths_after(code, "super") {
        let abs: Vec<String> = parent.iter().cloned().chain(p.iter().cloned()).collect();
        targets.push((abs, format!("super::{}", p.join("::"))));
    }
    for p in paths_after(code, "self") {
        let abs: Vec<String> = module.iter().cloned().chain(p.iter().cloned()).collect();
        targets.push((abs, format!("self::{}", p.join("::"))));
    }
    for child in declared_children(code) {
        for p in paths_after(code, &child) {
            let abs: Vec<String> = module
                .iter()
                .cloned()
                .chain(std::iter::once(child.clone()))
                .chain(p.iter().cloned())
                .collect();
            targets.push((abs, format!("{child}::{}", p.join("::"))));
        }
        // `use child::{…}` and `pub use child::X` name the child too.
        targets.push((
            module
                .iter()
                .cloned()
                .chain(std::iter::once(child.clone()))
                .collect(),
            format!("mod {child}"),
        ));
    }
    targets
}

/// Per file, the names it re-exports (`pub use path::Name`) and from where.
fn reexports(sources: &Sources) -> BTreeMap<PathBuf, BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for (file, text) in sources {
        let code = code_only(text);
        let mut names = BTreeMap::new();
        for stmt in code.split(';') {
            let t = stmt.trim_start();
            let Some(tree) = ["pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|p| t.strip_prefix(p))
            else {
                continue;
            };
            // Resolve the tree as if it were written in an expression.
            let written = format!(" {tree}");
            for (abs, _) in named_paths(file, &written) {
                if let Some(name) = abs.last() {
                    names.insert(name.clone(), abs.clone());
                }
            }
            // `pub use child::X` where child is declared in this file.
            let module = module_of(file);
            for p in expand(tree) {
                if let Some(name) = p.last() {
                    names.entry(name.clone()).or_insert_with(|| {
                        module.iter().cloned().chain(p.iter().cloned()).collect()
                    });
                }
            }
        }
        out.insert(file.clone(), names);
    }
    out
}

/// The file that defines what `path` names: the deepest module file along
/// it, followed through that file's `pub use` of the next name.
fn resolve(
    path: &[String],
    files: &BTreeSet<PathBuf>,
    reexported: &BTreeMap<PathBuf, BTreeMap<String, Vec<String>>>,
) -> Option<PathBuf> {
    let mut path = path.to_vec();
    for _ in 0..8 {
        let n = (0..=path.len()).rev().find(|n| {
            candidate_files(&path[..*n])
                .iter()
                .any(|f| files.contains(f))
        })?;
        let file = candidate_files(&path[..n])
            .into_iter()
            .find(|f| files.contains(f))?;
        let Some(next) = path.get(n) else {
            return Some(file);
        };
        match reexported.get(&file).and_then(|r| r.get(next)) {
            Some(from) if from.as_slice() != &path[..=n] => {
                path = from
                    .iter()
                    .cloned()
                    .chain(path[n + 1..].iter().cloned())
                    .collect();
            }
            _ => return Some(file),
        }
    }
    None
}

/// Every import between the crate's files.
fn arrows(sources: &Sources) -> Vec<Arrow> {
    let files: BTreeSet<PathBuf> = sources.keys().cloned().collect();
    let reexported = reexports(sources);
    let mut out = BTreeSet::new();
    for (file, text) in sources {
        let code = code_only(text);
        for (path, written) in named_paths(file, &code) {
            if let Some(to) = resolve(&path, &files, &reexported) {
                if &to != file {
                    out.insert(Arrow {
                        from: file.clone(),
                        to,
                        path: written,
                    });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Import circles (strongly connected sets of more than one file), each as
/// its files.
fn circles(arrows: &[Arrow]) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&Path, BTreeSet<&Path>> = BTreeMap::new();
    for a in arrows {
        next.entry(&a.from).or_default().insert(&a.to);
        next.entry(&a.to).or_default();
    }
    let reach = |start: &Path| -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            for m in next.get(n).into_iter().flatten() {
                if seen.insert(m.to_path_buf()) {
                    stack.push(m);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&Path, BTreeSet<PathBuf>> =
        next.keys().map(|n| (*n, reach(n))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (n, from_n) in &reachable {
        let mut scc: Vec<String> = from_n
            .iter()
            .filter(|m| reachable.get(m.as_path()).is_some_and(|r| r.contains(*n)))
            .map(|m| m.display().to_string())
            .collect();
        if scc.len() > 1 {
            scc.sort();
            found.insert(scc);
        }
    }
    found.into_iter().collect()
}

/// What breaks the order: imports of a module on the same line or above,
/// modules the order does not name, and names it has that no module bears.
fn check_layers(sources: &Sources, layers: &[Vec<String>]) -> Vec<String> {
    let top_of = |file: &Path| -> String {
        module_of(file)
            .first()
            .cloned()
            .unwrap_or_else(|| "main".to_string())
    };
    // Line 0 is the top: a larger index is lower.
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let mut problems = Vec::new();
    let modules: BTreeSet<String> = sources.keys().map(|f| top_of(f)).collect();
    for m in &modules {
        if !rank.contains_key(m.as_str()) {
            problems.push(format!(
                "module `{m}` is not in the layer order: add it to ARCHITECTURE.md's fwdd layers"
            ));
        }
    }
    for name in rank.keys() {
        if !modules.contains(*name) {
            problems.push(format!(
                "the layer order names `{name}`, which is no module"
            ));
        }
    }
    for a in arrows(sources) {
        let (from, to) = (top_of(&a.from), top_of(&a.to));
        if from == to {
            continue;
        }
        if let (Some(rf), Some(rt)) = (rank.get(from.as_str()), rank.get(to.as_str())) {
            if rt <= rf {
                let how = if rt == rf {
                    "on its own line"
                } else {
                    "above it"
                };
                problems.push(format!(
                    "{} imports {} ({}): `{to}` is {how}",
                    a.from.display(),
                    a.to.display(),
                    a.path
                ));
            }
        }
    }
    for circle in circles(&arrows(sources)) {
        problems.push(format!("import circle: {}", circle.join(", ")));
    }
    problems
}
