//! The machinery every chunker shares: a line index, the scope tree that gives symbol paths,
//! size-bounded pieces (with a line-window fallback that splits over-long lines on UTF-8
//! boundaries) and the final merge of small neighbours into chunks.

use std::ops::Range;

use super::{ChunkKind, ChunkOptions};

/// The scope of top-level content: no symbol.
pub(super) const ROOT: usize = 0;

/// A finished chunk, before the path and language are attached.
#[derive(Debug)]
pub(super) struct Cut {
    pub range: Range<usize>,
    pub start_line: usize,
    pub end_line: usize,
    pub symbol: String,
    pub kind: ChunkKind,
}

/// Byte offsets of line starts, for line numbers and line-aligned cuts.
pub(super) struct LineIndex {
    starts: Vec<usize>,
    len: usize,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Self {
            starts,
            len: text.len(),
        }
    }

    /// The 0-based line holding byte `byte`.
    pub fn row(&self, byte: usize) -> usize {
        self.starts
            .partition_point(|&start| start <= byte)
            .saturating_sub(1)
    }

    /// The 0-based line of the last byte of a non-empty range ending at `end`.
    pub fn last_row(&self, end: usize) -> usize {
        self.row(end.saturating_sub(1))
    }

    /// The byte where 0-based line `row` starts; the text's length past the last line.
    pub fn line_start(&self, row: usize) -> usize {
        self.starts.get(row).copied().unwrap_or(self.len)
    }
}

struct Scope {
    parent: usize,
    label: String,
    kind: ChunkKind,
    /// Whether a piece of this scope was pushed already.
    started: bool,
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
    scope: usize,
    /// The first piece of its scope (the header of a split definition).
    opens: bool,
}

/// Collects pieces that each fit the bounds, in order and contiguous, then merges them.
pub(super) struct Builder<'t> {
    pub text: &'t str,
    pub lines: LineIndex,
    max_bytes: usize,
    max_lines: usize,
    min_merge_bytes: usize,
    scopes: Vec<Scope>,
    pieces: Vec<Piece>,
}

impl<'t> Builder<'t> {
    /// `root_kind` is the kind of content outside any scope (code, section, lines).
    pub fn new(text: &'t str, opts: &ChunkOptions, root_kind: ChunkKind) -> Self {
        Self {
            text,
            lines: LineIndex::new(text),
            max_bytes: opts.max_bytes.max(1),
            max_lines: opts.max_lines.max(1),
            min_merge_bytes: opts.min_merge_bytes,
            scopes: vec![Scope {
                parent: ROOT,
                label: String::new(),
                kind: root_kind,
                started: true,
            }],
            pieces: Vec::new(),
        }
    }

    /// A new scope (a definition or a heading) inside `parent`. A function directly inside a
    /// class-like definition becomes a method.
    pub fn scope(&mut self, parent: usize, label: String, kind: ChunkKind) -> usize {
        let parent = parent.min(self.scopes.len() - 1);
        let kind = if kind == ChunkKind::Function && self.kind(parent).holds_methods() {
            ChunkKind::Method
        } else {
            kind
        };
        self.scopes.push(Scope {
            parent,
            label,
            kind,
            started: false,
        });
        self.scopes.len() - 1
    }

    /// Whether `lo..hi` fits the size bounds.
    pub fn fits(&self, lo: usize, hi: usize) -> bool {
        hi <= lo
            || (hi - lo <= self.max_bytes
                && self.lines.last_row(hi) - self.lines.row(lo) < self.max_lines)
    }

    /// Adds `lo..hi` as one piece if it fits, else as line windows. Pieces must be pushed in
    /// order and contiguous; empty ranges are ignored.
    pub fn push(&mut self, lo: usize, hi: usize, scope: usize) {
        if lo >= hi {
            return;
        }
        if self.fits(lo, hi) {
            self.add(lo, hi, scope);
        } else {
            self.push_lines(lo, hi, scope);
        }
    }

    /// Adds `lo..hi` as windows of whole lines; a line longer than the byte bound is cut inside,
    /// after a space where one is near, always on a character boundary.
    pub fn push_lines(&mut self, lo: usize, hi: usize, scope: usize) {
        let hi = floor_char(self.text, hi.min(self.text.len()));
        let mut start = ceil_char(self.text, lo);
        while start < hi {
            let end = self.window_end(start, hi);
            self.add(start, end, scope);
            start = end;
        }
    }

    fn add(&mut self, start: usize, end: usize, scope: usize) {
        let opens = match self.scopes.get_mut(scope) {
            Some(s) => !std::mem::replace(&mut s.started, true),
            None => false,
        };
        self.pieces.push(Piece {
            start,
            end,
            scope,
            opens,
        });
    }

    /// Where a window starting at `start` ends: `> start`, `<= hi`, on a character boundary.
    fn window_end(&self, start: usize, hi: usize) -> usize {
        let row = self.lines.row(start);
        let by_lines = self.lines.line_start(row.saturating_add(self.max_lines));
        let by_bytes = floor_char(self.text, start.saturating_add(self.max_bytes).min(hi));
        let limit = by_lines.min(by_bytes);
        if limit >= hi {
            return hi;
        }
        let half = floor_char(self.text, start + (limit.saturating_sub(start)) / 2);
        let limit_row = self.lines.row(limit);
        let line_cut = self.lines.line_start(limit_row);
        if line_cut > start {
            // Whole lines; prefer ending after a blank line in the window's second half.
            let mut r = limit_row;
            while r > 0 && self.lines.line_start(r) > half.max(start) {
                let prev = self.lines.line_start(r - 1)..self.lines.line_start(r);
                if self.text.get(prev).is_some_and(|l| l.trim().is_empty()) {
                    return self.lines.line_start(r);
                }
                r -= 1;
            }
            return line_cut;
        }
        // One line longer than the window: cut after a space or tab in its second half.
        let cut = self
            .text
            .get(half..limit)
            .and_then(|window| window.rfind([' ', '\t']))
            .map_or(limit, |at| half + at + 1);
        if cut > start {
            cut
        } else {
            // `max_bytes` is smaller than this character: take the whole character.
            ceil_char(self.text, start + 1).min(hi).max(start + 1)
        }
    }

    /// Merges small neighbours and returns the chunks.
    pub fn finish(self) -> Vec<Cut> {
        let mut cuts = Vec::new();
        let mut group: Option<Group> = None;
        for (i, piece) in self.pieces.iter().enumerate() {
            if let Some(g) = group.as_mut()
                && !self.header_of_next(g, piece, self.pieces.get(i + 1))
                && let Some(leaves) = self.merged_leaves(g, piece)
            {
                g.end = piece.end;
                g.leaves = leaves;
                g.add_bytes(piece.scope, piece.end - piece.start);
                continue;
            }
            if let Some(g) = group.take() {
                cuts.push(self.cut(&g));
            }
            group = Some(Group {
                start: piece.start,
                end: piece.end,
                leaves: vec![piece.scope],
                bytes: vec![(piece.scope, piece.end - piece.start)],
            });
        }
        if let Some(g) = group {
            cuts.push(self.cut(&g));
        }
        cuts
    }

    /// Whether `piece` is the header of a split definition that should rather merge with the
    /// definition's next piece than join `g`, which holds other definitions.
    fn header_of_next(&self, g: &Group, piece: &Piece, next: Option<&Piece>) -> bool {
        let s = piece.scope;
        piece.opens
            && next.is_some_and(|n| n.scope == s || self.is_ancestor(s, n.scope))
            && g.leaves
                .iter()
                .any(|&l| l != ROOT && !self.is_ancestor(l, s))
    }

    /// The leaves of `g` with `piece` added, if the two may merge: the result fits, one of
    /// them is small, and the definitions they hold are siblings (or one encloses the other).
    fn merged_leaves(&self, g: &Group, piece: &Piece) -> Option<Vec<usize>> {
        let small = g.end - g.start < self.min_merge_bytes
            || piece.end - piece.start < self.min_merge_bytes;
        if g.end != piece.start || !small || !self.fits(g.start, piece.end) {
            return None;
        }
        let s = piece.scope;
        let mut leaves = g.leaves.clone();
        if !leaves.iter().any(|&l| l == s || self.is_ancestor(s, l)) {
            leaves.retain(|&l| !self.is_ancestor(l, s));
            leaves.push(s);
        }
        let parent = leaves.first().map_or(ROOT, |&l| self.parent(l));
        leaves
            .iter()
            .all(|&l| self.parent(l) == parent)
            .then_some(leaves)
    }

    fn cut(&self, g: &Group) -> Cut {
        let (symbol, kind) = match g.leaves.as_slice() {
            [leaf] => (self.path(*leaf), self.kind(*leaf)),
            leaves => {
                let parent = leaves.first().map_or(ROOT, |&l| self.parent(l));
                let labels: Vec<&str> = leaves.iter().map(|&l| self.label(l)).collect();
                let labels = labels.join(", ");
                let symbol = if parent == ROOT {
                    labels
                } else {
                    format!("{} > {labels}", self.path(parent))
                };
                let largest = leaves
                    .iter()
                    .copied()
                    .max_by_key(|&l| (g.bytes_of(l), std::cmp::Reverse(l)))
                    .unwrap_or(ROOT);
                (symbol, self.kind(largest))
            }
        };
        Cut {
            range: g.start..g.end,
            start_line: self.lines.row(g.start) + 1,
            end_line: self.lines.last_row(g.end) + 1,
            symbol,
            kind,
        }
    }

    fn kind(&self, scope: usize) -> ChunkKind {
        self.scopes.get(scope).map_or(ChunkKind::Code, |s| s.kind)
    }

    fn label(&self, scope: usize) -> &str {
        self.scopes.get(scope).map_or("", |s| s.label.as_str())
    }

    fn parent(&self, scope: usize) -> usize {
        self.scopes.get(scope).map_or(ROOT, |s| s.parent)
    }

    /// Whether `a` strictly encloses `b`.
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        let mut x = b;
        while x != ROOT {
            x = self.parent(x);
            if x == a {
                return true;
            }
        }
        false
    }

    /// The symbol path of a scope, outermost first.
    fn path(&self, scope: usize) -> String {
        let mut labels = Vec::new();
        let mut x = scope;
        while x != ROOT {
            labels.push(self.label(x));
            x = self.parent(x);
        }
        labels.reverse();
        labels.join(" > ")
    }
}

/// Pieces being merged into one chunk.
struct Group {
    start: usize,
    end: usize,
    /// The innermost scopes of its pieces (none encloses another).
    leaves: Vec<usize>,
    /// Bytes per scope, to name the kind after the largest definition.
    bytes: Vec<(usize, usize)>,
}

impl Group {
    fn add_bytes(&mut self, scope: usize, n: usize) {
        match self.bytes.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, total)) => *total += n,
            None => self.bytes.push((scope, n)),
        }
    }

    fn bytes_of(&self, scope: usize) -> usize {
        self.bytes
            .iter()
            .find(|(s, _)| *s == scope)
            .map_or(0, |&(_, n)| n)
    }
}

/// The largest character boundary `<= i` (clamped to the text).
pub(super) fn floor_char(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest character boundary `>= i` (clamped to the text).
pub(super) fn ceil_char(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}
