//! Syntax-aware chunking with tree-sitter.
//!
//! The chunk query of a language (`grammars/queries/<id>/chunks.scm`) marks definitions, their
//! names, leading comments/attributes and wrappers (see that file's header for the contract).
//! The walk starts at the root with the whole file. A whole definition that fits the bounds is
//! one piece; a larger one, and any other node that holds definitions (the root, an `#ifdef`),
//! is split at the boundaries of its children: each child takes the whitespace before its line,
//! adjacent leading comments join the next child, the rest of a line joins the child it
//! started on, and a body opening on a header line (`impl Foo {`) is opened into its members.
//! Definitions open a scope, so the pieces of a split `impl` or class carry `impl Foo > fn bar`.
//! Leaves and overly deep nodes still too large fall back to line windows. The pieces are then
//! merged (see `pieces`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use tree_sitter::{Node, Parser, Query, QueryCursor, StreamingIterator};

use super::pieces::{Builder, Cut, ROOT, floor_char};
use super::{ChunkKind, ChunkOptions, LANGUAGES, Language, Syntax};
use crate::index::{Error, Result};

/// Files larger than this are chunked by line windows: the index skips huge files anyway, and
/// line windows bound the work on generated or minified code.
const MAX_PARSE_BYTES: usize = 4 << 20;

/// Nesting depth past which a range still too large is cut into line windows, so deeply nested
/// input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Bodies are opened into the item list at most this deep (`impl X {` opens its declaration
/// list; a body inside a body is rare).
const MAX_OPEN_DEPTH: usize = 4;

/// Wrappers nest at most this deep (`export declare class`).
const MAX_WRAPPER_DEPTH: usize = 4;

/// Label length limit, in characters, so a pathological name cannot bloat every symbol.
const MAX_LABEL_CHARS: usize = 120;

/// What a capture of the chunk query means.
#[derive(Clone, Copy)]
enum Role {
    Definition(ChunkKind),
    Name,
    Doc,
    Wrapper,
}

/// A language's grammar with its compiled chunk query.
pub(super) struct Compiled {
    grammar: tree_sitter::Language,
    query: Query,
    /// By capture index.
    roles: Vec<Role>,
    /// By pattern index: the label template (`fn {name}`).
    labels: Vec<Option<String>>,
}

/// The compiled query of a tree-sitter language (`None` for other languages), compiled once
/// per process for the languages of [`LANGUAGES`].
pub(super) fn compiled(lang: &Language) -> Result<Option<Arc<Compiled>>> {
    type Slot = OnceLock<std::result::Result<Arc<Compiled>, String>>;
    static CACHE: OnceLock<Vec<Slot>> = OnceLock::new();
    let Syntax::TreeSitter { grammar, query } = lang.syntax else {
        return Ok(None);
    };
    let cache = CACHE.get_or_init(|| LANGUAGES.iter().map(|_| OnceLock::new()).collect());
    let slot = LANGUAGES
        .iter()
        .position(|l| l.id == lang.id && l.syntax.query() == Some(query))
        .and_then(|i| cache.get(i));
    let compile = || compile(grammar(), query).map(Arc::new);
    let result = match slot {
        Some(slot) => slot.get_or_init(compile).clone(),
        // A language built outside the registry: compiled on every call.
        None => compile(),
    };
    result.map(Some).map_err(|message| Error::ChunkQuery {
        language: lang.id,
        message,
    })
}

fn compile(grammar: tree_sitter::Language, source: &str) -> std::result::Result<Compiled, String> {
    Parser::new()
        .set_language(&grammar)
        .map_err(|e| format!("the grammar does not load: {e}"))?;
    let query = Query::new(&grammar, source).map_err(|e| {
        format!(
            "line {}, column {}: {:?} error: {}",
            e.row + 1,
            e.column + 1,
            e.kind,
            e.message
        )
    })?;
    let roles = query
        .capture_names()
        .iter()
        .map(|&name| match name {
            "name" => Ok(Role::Name),
            "doc" => Ok(Role::Doc),
            "wrapper" => Ok(Role::Wrapper),
            _ => name
                .strip_prefix("definition.")
                .and_then(ChunkKind::from_definition)
                .map(Role::Definition)
                .ok_or_else(|| {
                    format!(
                        "unknown capture @{name}; use @definition.<kind>, @name, @doc or @wrapper"
                    )
                }),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut labels = Vec::with_capacity(query.pattern_count());
    for pattern in 0..query.pattern_count() {
        let mut label = None;
        for prop in query.property_settings(pattern) {
            if &*prop.key != "label" {
                return Err(format!(
                    "unknown property `{}` in pattern {}; only `label` is read",
                    prop.key,
                    pattern + 1
                ));
            }
            label = prop.value.as_deref().map(str::to_owned);
        }
        labels.push(label);
    }
    Ok(Compiled {
        grammar,
        query,
        roles,
        labels,
    })
}

/// Chunks `text` with the language's grammar; `None` when the text cannot be parsed (too
/// large, grammar or query unusable), so the caller falls back to line windows.
pub(super) fn chunk(lang: &Language, text: &str, opts: &ChunkOptions) -> Option<Vec<Cut>> {
    if text.len() > MAX_PARSE_BYTES {
        return None;
    }
    let compiled = match compiled(lang) {
        Ok(compiled) => compiled?,
        Err(e) => {
            tracing::warn!("{e}");
            return None;
        }
    };
    let mut parser = Parser::new();
    parser.set_language(&compiled.grammar).ok()?;
    let tree = parser.parse(text, None)?;
    let root = tree.root_node();
    let marks = Marks::collect(&compiled, root, text);
    let mut walker = Walker {
        b: Builder::new(text, opts, ChunkKind::Code),
        marks: &marks,
    };
    walker.emit(root, 0, text.len(), ROOT, 0, false);
    Some(walker.b.finish())
}

/// A definition found by the query.
struct Def {
    kind: ChunkKind,
    label: String,
    /// The pattern that found it: the first pattern in the file wins.
    pattern: usize,
}

/// What the query marked, by node id.
struct Marks {
    defs: HashMap<usize, Def>,
    docs: HashSet<usize>,
    wrappers: HashSet<usize>,
    /// Nodes with a definition below them.
    holders: HashSet<usize>,
}

impl Marks {
    fn collect(compiled: &Compiled, root: Node, text: &str) -> Self {
        let mut marks = Marks {
            defs: HashMap::new(),
            docs: HashSet::new(),
            wrappers: HashSet::new(),
            holders: HashSet::new(),
        };
        let mut cursor = QueryCursor::new();
        let mut matches = cursor.matches(&compiled.query, root, text.as_bytes());
        while let Some(m) = matches.next() {
            let mut def: Option<(Node, ChunkKind)> = None;
            let mut name: Option<(usize, usize)> = None;
            for cap in m.captures {
                match compiled.roles.get(cap.index as usize) {
                    Some(Role::Definition(kind)) => def = Some((cap.node, *kind)),
                    Some(Role::Name) => {
                        let (s, e) = (cap.node.start_byte(), cap.node.end_byte());
                        name = Some(name.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
                    }
                    Some(Role::Doc) => {
                        marks.docs.insert(cap.node.id());
                    }
                    Some(Role::Wrapper) => {
                        marks.wrappers.insert(cap.node.id());
                    }
                    None => {}
                }
            }
            let Some((node, kind)) = def else { continue };
            let pattern = m.pattern_index;
            if marks
                .defs
                .get(&node.id())
                .is_some_and(|d| d.pattern <= pattern)
            {
                continue;
            }
            let name = name
                .and_then(|(s, e)| text.get(s..e))
                .map(|n| n.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            let template = compiled
                .labels
                .get(pattern)
                .and_then(Option::as_deref)
                .unwrap_or("{name}");
            let label = make_label(template, &name, kind);
            marks.defs.insert(
                node.id(),
                Def {
                    kind,
                    label,
                    pattern,
                },
            );
        }
        marks.mark_holders(root);
        marks
    }

    /// Marks the ancestors of every definition, in one walk of the tree (post-order).
    fn mark_holders(&mut self, root: Node) {
        let mut cursor = root.walk();
        // The path from the root to the cursor: (node id, has a definition below).
        let mut path: Vec<(usize, bool)> = vec![(root.id(), false)];
        loop {
            if cursor.goto_first_child() {
                path.push((cursor.node().id(), false));
                continue;
            }
            // The cursor's subtree is done: close nodes until one has a next sibling.
            loop {
                let Some((id, holds)) = path.pop() else {
                    return;
                };
                if holds {
                    self.holders.insert(id);
                }
                let is_def = self.defs.contains_key(&id);
                if let Some(parent) = path.last_mut() {
                    parent.1 |= holds || is_def;
                }
                if cursor.goto_next_sibling() {
                    path.push((cursor.node().id(), false));
                    break;
                }
                if !cursor.goto_parent() {
                    return;
                }
            }
        }
    }
}

/// `template` with `{name}` replaced; the kind's name when that leaves nothing.
fn make_label(template: &str, name: &str, kind: ChunkKind) -> String {
    let label = template.replace("{name}", name);
    let label = label.trim();
    let label = if label.is_empty() {
        kind.as_str()
    } else {
        label
    };
    match label.char_indices().nth(MAX_LABEL_CHARS) {
        Some((at, _)) => format!("{}…", &label[..at]),
        None => label.to_owned(),
    }
}

/// A child of a node being split: its extent (with attached comments and trailing tokens) and
/// the definition it is or wraps.
struct Item<'tree, 'm> {
    start: usize,
    end: usize,
    node: Node<'tree>,
    def: Option<(Node<'tree>, &'m Def)>,
}

struct Walker<'t, 'm> {
    b: Builder<'t>,
    marks: &'m Marks,
}

impl<'t, 'm> Walker<'t, 'm> {
    /// Emits pieces covering exactly `lo..hi`, a range around `node` in scope `scope`. A range
    /// that fits is one piece, unless it is not a whole definition and holds definitions
    /// (the root, an `#ifdef`, an `extern "C"` block): those are split so the definitions get
    /// their symbols, and the merge joins the pieces again.
    fn emit(&mut self, node: Node, lo: usize, hi: usize, scope: usize, depth: usize, whole: bool) {
        if lo >= hi {
            return;
        }
        let holds = !whole && self.marks.holders.contains(&node.id());
        if self.b.fits(lo, hi) && (!holds || depth >= MAX_DEPTH) {
            self.b.push(lo, hi, scope);
            return;
        }
        let mut items = Vec::new();
        if depth < MAX_DEPTH {
            let mut pending = Vec::new();
            self.collect(node, &mut items, &mut pending, 0);
            flush(&mut pending, &mut items);
        }
        if items.is_empty() {
            self.b.push(lo, hi, scope);
            return;
        }
        let mut cur = lo;
        for (i, item) in items.iter().enumerate() {
            let end = match items.get(i + 1) {
                Some(next) => self.boundary(item.end, next.start).clamp(cur, hi),
                None => hi,
            };
            match item.def {
                Some((inner, def)) => {
                    let inner_scope = self.b.scope(scope, def.label.clone(), def.kind);
                    self.emit(inner, cur, end, inner_scope, depth + 1, true);
                }
                None => self.emit(item.node, cur, end, scope, depth + 1, false),
            }
            cur = end;
        }
    }

    /// Where the piece of an item ending at `end` gives way to the next item starting at
    /// `next`: at the start of `next`'s line when that line starts after `end`, so chunks
    /// start at a line with its indentation.
    fn boundary(&self, end: usize, next: usize) -> usize {
        let text = self.b.text;
        if next <= end {
            return floor_char(text, end);
        }
        let line_start = self.b.lines.line_start(self.b.lines.row(next));
        if line_start >= end {
            line_start
        } else {
            floor_char(text, next)
        }
    }

    /// Groups the children of `node` into items. Comments and attributes join the item they
    /// precede when no blank line separates them. A child starting on the line where the
    /// previous item ends joins that item (`;`, a trailing comment, the rest of a header line),
    /// except a definition, and except a multi-line child with children (the body after
    /// `fn f() `, `impl Foo `, `class A extends B `): that one is opened, so its `{` stays on
    /// the header line and its members become items.
    fn collect<'tree>(
        &self,
        node: Node<'tree>,
        items: &mut Vec<Item<'tree, 'm>>,
        pending: &mut Vec<Node<'tree>>,
        depth: usize,
    ) {
        let lines = &self.b.lines;
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            let (start, end) = (child.start_byte(), child.end_byte());
            if start >= end {
                // Zero-width (MISSING) nodes: their bytes are nobody's.
                continue;
            }
            let is_doc = self.marks.docs.contains(&child.id());
            let def = if is_doc {
                None
            } else {
                self.definition(child, 0)
            };
            let after_last = pending.is_empty()
                && items
                    .last()
                    .is_some_and(|last| lines.row(start) == lines.last_row(last.end));
            if def.is_none() && after_last {
                let openable = !is_doc
                    && depth < MAX_OPEN_DEPTH
                    && child.child_count() > 0
                    && lines.row(start) != lines.last_row(end);
                if openable {
                    self.collect(child, items, pending, depth + 1);
                } else if let Some(last) = items.last_mut() {
                    // Same line: one item, so pieces do not cut inside a header line.
                    last.end = last.end.max(end);
                }
                continue;
            }
            if is_doc {
                if pending
                    .last()
                    .is_some_and(|prev| !self.adjacent(prev.end_byte(), start))
                {
                    flush(pending, items);
                }
                pending.push(child);
                continue;
            }
            let attach = pending
                .last()
                .is_some_and(|prev| self.adjacent(prev.end_byte(), start));
            let item_start = if attach {
                let first = pending.first().map_or(start, Node::start_byte);
                pending.clear();
                first
            } else {
                flush(pending, items);
                start
            };
            items.push(Item {
                start: item_start,
                end,
                node: child,
                def,
            });
        }
    }

    /// Whether something starting at `next` follows something ending at `end` with no blank
    /// line between.
    fn adjacent(&self, end: usize, next: usize) -> bool {
        self.b.lines.row(next) <= self.b.lines.last_row(end) + 1
    }

    /// The definition `node` is, or wraps (a wrapper ends with its definition, up to `;`).
    fn definition<'tree>(&self, node: Node<'tree>, depth: usize) -> Option<(Node<'tree>, &'m Def)> {
        if let Some(def) = self.marks.defs.get(&node.id()) {
            return Some((node, def));
        }
        if depth >= MAX_WRAPPER_DEPTH || !self.marks.wrappers.contains(&node.id()) {
            return None;
        }
        let last = u32::try_from(node.named_child_count().checked_sub(1)?).ok()?;
        let inner = node.named_child(last)?;
        let tail = self.b.text.get(inner.end_byte()..node.end_byte())?.trim();
        if tail.is_empty() || tail == ";" {
            self.definition(inner, depth + 1)
        } else {
            None
        }
    }
}

/// Turns waiting comments into items of their own.
fn flush<'tree, 'm>(pending: &mut Vec<Node<'tree>>, items: &mut Vec<Item<'tree, 'm>>) {
    items.extend(pending.drain(..).map(|node| Item {
        start: node.start_byte(),
        end: node.end_byte(),
        node,
        def: None,
    }));
}
