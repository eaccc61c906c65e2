//! The module graph of a crate, read from its source: the modules its `mod` declarations make, and
//! the edges its paths draw (`use` items, and `crate::`, `super::` and `self::` paths anywhere in the
//! code). An edge between two modules neither of which contains the other is lifted to the children
//! of their closest common ancestor: `service::http -> source::frame` is `service -> source`. A
//! cycle among the children of one module is a layering defect; a module and its own submodules
//! (which re-export and use each other by design) are not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: the file that holds it (keyed by its path from the crate root, `[]` being the root).
struct Module {
    file: PathBuf,
}

/// Where one lifted edge came from: the file and line of the path that made it.
#[derive(Clone, Debug)]
pub struct Evidence {
    pub from: String,
    pub to: String,
    pub at: String,
}

pub struct Crate {
    modules: BTreeMap<Vec<String>, Module>,
}

impl Crate {
    /// The crate whose root is `root` (lib.rs or main.rs), following its `mod name;` declarations.
    pub fn read(root: &Path) -> Crate {
        let mut modules = BTreeMap::new();
        let mut todo = vec![(Vec::new(), root.to_path_buf())];
        while let Some((path, file)) = todo.pop() {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let dir = match file.file_name().and_then(|n| n.to_str()) {
                Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().unwrap().to_path_buf(),
                _ => file.with_extension(""),
            };
            for line in code(&text).lines() {
                let Some(name) = declared_module(line) else { continue };
                let flat = dir.join(format!("{name}.rs"));
                let child = if flat.is_file() {
                    flat
                } else {
                    dir.join(&name).join("mod.rs")
                };
                let mut child_path = path.clone();
                child_path.push(name.clone());
                todo.push((child_path, child));
            }
            modules.insert(path, Module { file });
        }
        Crate { modules }
    }

    /// Every lifted edge, as (parent, from child, to child) with where it came from.
    pub fn edges(&self) -> Vec<(Vec<String>, Evidence)> {
        let mut edges = Vec::new();
        for (path, module) in &self.modules {
            let text = std::fs::read_to_string(&module.file).unwrap();
            for (n, line) in statements(&code(&text)) {
                for target in references(&line, path) {
                    let target = self.deepest(&target);
                    let common = path.iter().zip(&target).take_while(|(a, b)| a == b).count();
                    // One contains the other: a module and its submodules.
                    if common == path.len() || common == target.len() {
                        continue;
                    }
                    let at = format!("{}:{n}", module.file.display());
                    let (from, to) = (path[common].clone(), target[common].clone());
                    edges.push((path[..common].to_vec(), Evidence { from, to, at }));
                }
            }
        }
        edges
    }

    /// The longest prefix of `path` that names a module of the crate (the rest names an item).
    fn deepest(&self, path: &[String]) -> Vec<String> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| self.modules.contains_key(p))
            .unwrap_or_default()
    }

    /// The cycles among sibling modules: for each strongly connected set of a module's children, its
    /// parent and one shortest cycle through the set, an edge (with where it came from) a step.
    pub fn cycles(&self) -> Vec<(String, Vec<Evidence>)> {
        let mut by_parent: BTreeMap<Vec<String>, Vec<Evidence>> = BTreeMap::new();
        for (parent, e) in self.edges() {
            by_parent.entry(parent).or_default().push(e);
        }
        let mut found = Vec::new();
        for (parent, edges) in by_parent {
            let graph: BTreeMap<&str, BTreeSet<&str>> = edges.iter().fold(BTreeMap::new(), |mut g, e| {
                g.entry(e.from.as_str()).or_default().insert(e.to.as_str());
                g
            });
            for set in strongly_connected(&graph).into_iter().filter(|s| s.len() > 1) {
                let cycle: Vec<Evidence> = shortest_cycle(&graph, &set)
                    .windows(2)
                    .map(|w| {
                        let first = edges.iter().find(|e| e.from == w[0] && e.to == w[1]);
                        first.expect("an edge of the graph").clone()
                    })
                    .collect();
                let name = if parent.is_empty() {
                    "crate".to_string()
                } else {
                    parent.join("::")
                };
                found.push((name, cycle));
            }
        }
        found
    }
}

/// The lines of `code` with their numbers (from 1), a `use` item spread over lines joined into one.
fn statements(code: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut open = false;
    for (n, line) in code.lines().enumerate() {
        if open {
            let last = out.last_mut().expect("an open use item");
            last.1.push(' ');
            last.1.push_str(line.trim());
        } else {
            out.push((n + 1, line.to_string()));
            let t = line.trim_start();
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            open = t.starts_with("use ");
        }
        open = open && !line.contains(';');
    }
    out
}

/// `name` of a `mod name;` line (a declaration with its file, not an inline module).
fn declared_module(line: &str) -> Option<String> {
    let line = line.trim();
    let line = line
        .strip_prefix("pub(crate) ")
        .or_else(|| line.strip_prefix("pub "))
        .unwrap_or(line);
    let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
    name.chars()
        .all(|c| c.is_alphanumeric() || c == '_')
        .then(|| name.to_string())
}

/// The text without comments, string literals' contents and the inline test module (which only the
/// tests compile, and whose `super` is the file's own module).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push('"');
            }
            c => out.push(c),
        }
    }
    out
}

/// The module paths a line of `module` refers to: `crate::a::b`, `super::c`, `self::d`, and the
/// braced groups of `use` items (`use super::{a, b::c}`) expanded.
fn references(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < line.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| line[i..].starts_with(**p) && (i == 0 || !is_ident(bytes[i - 1])));
        let Some(start) = starts else {
            i += 1;
            continue;
        };
        let mut base: Vec<String> = match *start {
            "crate::" => Vec::new(),
            "self::" => module.to_vec(),
            _ => module[..module.len().saturating_sub(1)].to_vec(),
        };
        let mut j = i + start.len();
        // Further `super::`s climb on.
        while line[j..].starts_with("super::") {
            base.pop();
            j += "super::".len();
        }
        let rest = &line[j..];
        for tail in expand(rest) {
            let mut path = base.clone();
            path.extend(tail);
            found.push(path);
        }
        i = j;
    }
    found
}

/// `a::b::c...` or `a::{b, c::d}` at the start of `rest`, as segment lists.
fn expand(rest: &str) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    let mut s = rest;
    loop {
        let ident: String = s.chars().take_while(|c| is_ident(*c as u8)).collect();
        if !ident.is_empty() {
            s = &s[ident.len()..];
            prefix.push(ident);
            match s.strip_prefix("::") {
                Some(more) => s = more,
                None => return vec![prefix],
            }
        } else if let Some(group) = s.strip_prefix('{') {
            // Items of the group at depth 0, each expanded; a group that continues on another
            // line is read as far as this line goes.
            let mut out = Vec::new();
            let (mut depth, mut item_start) = (0usize, 0usize);
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        push_item(&group[item_start..k], &prefix, &mut out);
                        return out;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_item(&group[item_start..k], &prefix, &mut out);
                        item_start = k + 1;
                    }
                    _ => {}
                }
            }
            push_item(&group[item_start..], &prefix, &mut out);
            return out;
        } else {
            return vec![prefix];
        }
    }
}

fn push_item(item: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let item = item.trim();
    if item.is_empty() || item == "self" {
        out.push(prefix.to_vec());
        return;
    }
    for tail in expand(item) {
        let mut path = prefix.to_vec();
        path.extend(tail);
        out.push(path);
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A shortest cycle through the first node of `set`, within `set`: its nodes, the first one last too.
fn shortest_cycle<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>, set: &BTreeSet<&'a str>) -> Vec<&'a str> {
    let start = *set.first().expect("a non-empty set");
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in graph.get(v).into_iter().flatten().filter(|w| set.contains(*w)) {
            if w == start {
                let mut path = vec![v];
                while let Some(&p) = came_from.get(path[path.len() - 1]) {
                    path.push(p);
                }
                path.reverse(); // start .. v
                path.push(start);
                return path;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected set has a cycle through each of its nodes")
}

/// Tarjan's strongly connected components of `graph`.
fn strongly_connected<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<BTreeSet<&'a str>> {
    struct Walk<'a, 'g> {
        graph: &'g BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<BTreeSet<&'a str>>,
    }
    impl<'a> Walk<'a, '_> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for &w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    self.low.insert(v, self.low[v].min(self.low[w]));
                } else if self.stack.contains(&w) {
                    self.low.insert(v, self.low[v].min(self.index[w]));
                }
            }
            if self.low[v] == self.index[v] {
                let mut set = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    set.insert(w);
                    if w == v {
                        break;
                    }
                }
                self.found.push(set);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(v, ws)| std::iter::once(*v).chain(ws.iter().copied()))
        .collect();
    for v in nodes {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}
