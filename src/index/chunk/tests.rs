//! Invariants of every chunker on every language, symbol paths, and robustness on hostile input.

use super::*;

/// Bounds small enough that every sample is split, so splitting and merging are exercised.
const SMALL: ChunkOptions = ChunkOptions {
    max_bytes: 200,
    max_lines: 10,
    min_merge_bytes: 60,
};

const RUST: &str = r##"//! Search over an in-memory index.

use std::collections::HashMap;
use std::fmt;

/// Maximum number of results.
pub const MAX_RESULTS: usize = 100;

/// An inverted index from terms to document ids.
#[derive(Debug, Default)]
pub struct Index {
    postings: HashMap<String, Vec<u32>>,
    docs: Vec<String>,
}

impl Index {
    /// Creates an empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a document and returns its id.
    pub fn add(&mut self, text: &str) -> u32 {
        let id = self.docs.len() as u32;
        for term in text.split_whitespace() {
            self.postings.entry(term.to_lowercase()).or_default().push(id);
        }
        self.docs.push(text.to_owned());
        id
    }

    /// Returns the ids of documents containing every term of `query`.
    pub fn search(&self, query: &str) -> Vec<u32> {
        let mut result: Option<Vec<u32>> = None;
        for term in query.split_whitespace() {
            let ids = self.postings.get(&term.to_lowercase()).cloned().unwrap_or_default();
            result = Some(match result {
                None => ids,
                Some(prev) => prev.into_iter().filter(|id| ids.contains(id)).collect(),
            });
        }
        let mut ids = result.unwrap_or_default();
        ids.truncate(MAX_RESULTS);
        ids
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} documents, {} terms", self.docs.len(), self.postings.len())
    }
}

/// Kinds of tokens.
pub enum Token {
    Word(String),
    Number(i64),
}

pub trait Scorer {
    /// Scores one document.
    fn score(&self, doc: u32) -> f32;
}

fn main() {
    let mut index = Index::new();
    index.add("hello wörld");
    println!("{}", index);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_added_documents() {
        let mut index = Index::new();
        let id = index.add("a b");
        assert_eq!(index.search("b"), vec![id]);
    }
}
"##;

const PYTHON: &str = r#""""Shapes and their areas."""

import math
from dataclasses import dataclass

UNIT = "cm"


# A shape with a name.
class Shape:
    """Base class of all shapes."""

    def __init__(self, name):
        self.name = name

    def area(self):
        raise NotImplementedError

    def describe(self):
        return f"{self.name} with area {self.area():.2f} {UNIT}²"


@dataclass
class Circle(Shape):
    radius: float = 1.0

    def area(self):
        return math.pi * self.radius ** 2

    @staticmethod
    def unit():
        # The unit circle.
        return Circle("unit", 1.0)


def total_area(shapes):
    """Sum of the areas."""
    return sum(s.area() for s in shapes)


if __name__ == "__main__":
    print(total_area([Circle("c", 2.0)]))
"#;

const JAVASCRIPT: &str = r#"// Event utilities.
import { EventEmitter } from "events";

const DEFAULT_DELAY = 100;

/**
 * Delays a call until calls stop for `wait` ms.
 */
export function debounce(fn, wait = DEFAULT_DELAY) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}

export class Bus extends EventEmitter {
  constructor(name) {
    super();
    this.name = name;
  }

  /** Sends an event to every listener. */
  publish(topic, payload) {
    this.emit(topic, { topic, payload, at: Date.now() });
  }

  handle = (event) => {
    console.log(`${this.name}: ${event.topic}`);
  };
}

const square = (x) => x * x;

module.exports.cube = function (x) {
  return x * square(x);
};

new Bus("main").publish("start", {});
"#;

const TYPESCRIPT: &str = r#"import type { Request } from "./http";

/** A user of the service. */
export interface User {
  id: number;
  name: string;
  email?: string;
}

export type UserId = User["id"];

export enum Role {
  Admin = "admin",
  Reader = "reader",
}

namespace Validation {
  export function isEmail(s: string): boolean {
    return /.+@.+/.test(s);
  }
}

export abstract class Repository<T> {
  protected items = new Map<number, T>();

  abstract validate(item: T): boolean;

  /** Stores an item if it is valid. */
  save(id: number, item: T): void {
    if (!this.validate(item)) {
      throw new Error(`invalid item ${id}`);
    }
    this.items.set(id, item);
  }
}

export class UserRepository extends Repository<User> {
  validate(user: User): boolean {
    return user.email === undefined || Validation.isEmail(user.email);
  }
}

export async function handle(req: Request): Promise<User | undefined> {
  const repo = new UserRepository();
  return repo.find(req.params.id);
}
"#;

const TSX: &str = r#"import React, { useState } from "react";

type Props = { label: string; initial?: number };

/** A button that counts its clicks. */
export function Counter({ label, initial = 0 }: Props) {
  const [count, setCount] = useState(initial);
  return (
    <button onClick={() => setCount(count + 1)}>
      {label}: {count}
    </button>
  );
}

export default class Panel extends React.Component<{ title: string }> {
  render() {
    return (
      <section>
        <h2>{this.props.title}</h2>
        <Counter label="clicks" />
      </section>
    );
  }
}

const App = () => <Panel title="Ünïcode ✓" />;
export { App };
"#;

const GO: &str = r#"// Package store keeps key-value pairs.
package store

import (
	"errors"
	"sync"
)

// ErrNotFound is returned for missing keys.
var ErrNotFound = errors.New("not found")

// Store is a concurrent map.
type Store struct {
	mu   sync.RWMutex
	data map[string]string
}

// Getter reads values.
type Getter interface {
	Get(key string) (string, error)
}

// New returns an empty store.
func New() *Store {
	return &Store{data: make(map[string]string)}
}

// Get returns the value of key.
func (s *Store) Get(key string) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.data[key]
	if !ok {
		return "", ErrNotFound
	}
	return v, nil
}

// Set stores a value.
func (s *Store) Set(key, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = value
}

type (
	Key   string
	Value string
)
"#;

const JAVA: &str = r#"package com.example.shop;

import java.util.ArrayList;
import java.util.List;

/**
 * A shopping cart.
 */
public class Cart {
    private final List<Item> items = new ArrayList<>();

    /** Creates an empty cart. */
    public Cart() {
    }

    /**
     * Adds an item.
     * @param item the item
     */
    public void add(Item item) {
        if (item == null) {
            throw new IllegalArgumentException("item");
        }
        items.add(item);
    }

    @Override
    public String toString() {
        return "Cart" + items;
    }

    /** Total price in cents. */
    public long total() {
        long sum = 0;
        for (Item item : items) {
            sum += item.price();
        }
        return sum;
    }

    public record Item(String name, long price) {}

    enum Status { OPEN, PAID }
}

interface Priced {
    long price();
}
"#;

const C: &str = r#"/* A tiny string buffer. */
#include <stdlib.h>
#include <string.h>

#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* A growable buffer of bytes. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buffer;

struct node {
    int value;
    struct node *next;
};

enum color { RED, GREEN, BLUE };

static int grow(buffer *b, size_t need) {
    size_t cap = MAX(b->cap * 2, need);
    char *data = realloc(b->data, cap);
    if (!data) {
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Appends `n` bytes. */
int buffer_append(buffer *b, const char *s, size_t n) {
    if (b->len + n > b->cap && grow(b, b->len + n) != 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

char *buffer_cstr(buffer *b) {
    buffer_append(b, "", 1);
    return b->data;
}
"#;

const CPP: &str = r#"// Geometry helpers.
#include <cmath>
#include <vector>

namespace geo {

/// A point in the plane.
struct Point {
    double x = 0;
    double y = 0;
};

class Polygon {
public:
    explicit Polygon(std::vector<Point> points) : points_(std::move(points)) {}

    /// Sum of the edge lengths.
    double perimeter() const {
        double sum = 0;
        for (size_t i = 0; i < points_.size(); ++i) {
            const Point& a = points_[i];
            const Point& b = points_[(i + 1) % points_.size()];
            sum += std::hypot(b.x - a.x, b.y - a.y);
        }
        return sum;
    }

    size_t size() const { return points_.size(); }

private:
    std::vector<Point> points_;
};

template <typename T>
T clamp(T v, T lo, T hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

double area(const Polygon& p);

}  // namespace geo

double geo::area(const Polygon& p) {
    return p.perimeter() * 0.0;
}

int main() {
    geo::Polygon p({{0, 0}, {1, 0}, {0, 1}});
    return p.size() == 3 ? 0 : 1;
}
"#;

const MARKDOWN: &str = r#"---
title: troupe
---

Intro text before any heading.

# troupe

A local, private, multi-agent coding assistant.

## Install

```sh
# not a heading
cargo install troupe
```

### From source

Clone and build.

Usage
-----

Run `troupe` in a repository.
"#;

/// Every tree-sitter sample: (path, text, symbols expected under [`SMALL`] bounds).
fn code_samples() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    vec![
        (
            "src/index.rs",
            RUST,
            &[
                "impl Index > fn search",
                "impl Index > fn add",
                "impl fmt::Display for Index",
                "struct Index",
                "fn main",
            ],
        ),
        (
            "shapes.py",
            PYTHON,
            &[
                "class Shape > def describe",
                "class Circle > def unit",
                "def total_area",
            ],
        ),
        (
            "bus.js",
            JAVASCRIPT,
            &[
                "class Bus > publish()",
                "function debounce",
                "function square",
            ],
        ),
        (
            "repo.ts",
            TYPESCRIPT,
            &[
                "class Repository > save()",
                "interface User",
                "function handle",
            ],
        ),
        (
            "panel.tsx",
            TSX,
            &["function Counter", "class Panel > render()"],
        ),
        (
            "store.go",
            GO,
            &["func (s *Store) Get", "type Store", "func New"],
        ),
        (
            "Cart.java",
            JAVA,
            &[
                "class Cart > total()",
                "class Cart > add()",
                "interface Priced",
            ],
        ),
        (
            "buffer.c",
            C,
            &[
                "buffer_append()",
                "grow()",
                "buffer_cstr()",
                "typedef buffer",
            ],
        ),
        (
            "geo.cpp",
            CPP,
            &[
                "namespace geo > class Polygon > perimeter()",
                "namespace geo > clamp()",
                "geo::area()",
                "main()",
            ],
        ),
    ]
}

/// Asserts the invariants every chunking must keep, whatever the input.
fn assert_invariants(path: &str, text: &str, chunks: &[Chunk], opts: &ChunkOptions) {
    let mut pos = 0;
    let mut line = 1;
    let mut joined = String::new();
    for chunk in chunks {
        let range = chunk.byte_range.clone();
        assert_eq!(
            range.start, pos,
            "{path}: chunk does not start where the previous ended"
        );
        assert!(range.end > range.start, "{path}: empty chunk {chunk:?}");
        let Some(body) = text.get(range.clone()) else {
            panic!("{path}: chunk {range:?} is not on character boundaries");
        };
        joined.push_str(body);
        // Lines counted incrementally: the previous chunk ended where this one starts.
        let start_line = line;
        let inner_newlines = body.as_bytes()[..body.len() - 1]
            .iter()
            .filter(|&&b| b == b'\n');
        let end_line = start_line + inner_newlines.count();
        line = end_line + usize::from(body.ends_with('\n'));
        assert_eq!(
            chunk.start_line, start_line,
            "{path}: start line of {chunk:?}"
        );
        assert_eq!(chunk.end_line, end_line, "{path}: end line of {chunk:?}");
        let max_bytes = opts.max_bytes.max(1);
        assert!(
            body.len() <= max_bytes || (max_bytes < 4 && body.chars().count() == 1),
            "{path}: chunk of {} bytes over the bound {max_bytes}: {chunk:?}",
            body.len()
        );
        assert!(
            chunk.end_line - chunk.start_line < opts.max_lines.max(1),
            "{path}: chunk of {} lines over the bound: {chunk:?}",
            chunk.end_line - chunk.start_line + 1
        );
        pos = range.end;
    }
    assert_eq!(
        pos,
        text.len(),
        "{path}: chunks do not reach the end of the text"
    );
    assert_eq!(joined, text, "{path}: chunks do not reproduce the text");
}

/// Whether a chunk carries `expected` (`parent > leaf`), alone or merged with siblings
/// (`parent > a, leaf`).
fn find_symbol<'c>(chunks: &'c [Chunk], expected: &str) -> Option<&'c Chunk> {
    let (parent, leaf) = match expected.rsplit_once(" > ") {
        Some((parent, leaf)) => (Some(parent), leaf),
        None => (None, expected),
    };
    chunks.iter().find(|c| {
        if c.symbol == expected {
            return true;
        }
        let list = match parent {
            Some(parent) => c
                .symbol
                .strip_prefix(parent)
                .and_then(|s| s.strip_prefix(" > ")),
            None => Some(c.symbol.as_str()),
        };
        list.is_some_and(|list| !list.contains(" > ") && list.split(", ").any(|l| l == leaf))
    })
}

fn describe(chunks: &[Chunk]) -> String {
    chunks
        .iter()
        .map(|c| format!("{}-{} {} [{}]", c.start_line, c.end_line, c.kind, c.symbol))
        .collect::<Vec<_>>()
        .join("\n")
}

fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

#[test]
fn every_chunk_query_compiles_against_its_grammar() {
    if let Err(e) = check_queries() {
        panic!("{e}");
    }
    for lang in LANGUAGES {
        if let Syntax::TreeSitter { query, .. } = lang.syntax {
            assert!(
                query.starts_with(';'),
                "{}: chunks.scm must start with a comment stating its contract",
                lang.id
            );
        }
    }
}

#[test]
fn a_broken_chunk_query_is_reported_with_the_file_to_fix() {
    for query in [
        "(no_such_node) @definition.function",
        "(function_item) @definition.gadget",
        "((function_item) @definition.function (#set! colour \"red\"))",
    ] {
        let lang = Language {
            id: "rust",
            extensions: &[],
            syntax: Syntax::TreeSitter {
                grammar: || tree_sitter_rust::LANGUAGE.into(),
                query,
            },
        };
        match syntax::compiled(&lang) {
            Ok(_) => panic!("`{query}` was accepted"),
            Err(e) => assert!(
                e.to_string().contains("grammars/queries/rust/chunks.scm"),
                "{e}"
            ),
        }
    }
}

#[test]
fn every_tree_sitter_language_has_a_sample() {
    let samples = code_samples();
    for lang in LANGUAGES {
        if matches!(lang.syntax, Syntax::TreeSitter { .. }) {
            assert!(
                samples
                    .iter()
                    .any(|(path, ..)| language_for_path(path).map(|l| l.id) == Some(lang.id)),
                "no sample for {}",
                lang.id
            );
        }
    }
}

#[test]
fn samples_keep_the_invariants_with_default_and_small_bounds() {
    for (path, text, _) in code_samples() {
        for opts in [ChunkOptions::default(), SMALL] {
            let chunks = chunk_file(path, text, &opts);
            assert_invariants(path, text, &chunks, &opts);
            assert!(chunks.iter().all(|c| c.path == path));
            let crlf_text = crlf(text);
            let chunks = chunk_file(path, &crlf_text, &opts);
            assert_invariants(path, &crlf_text, &chunks, &opts);
        }
    }
}

#[test]
fn samples_fit_one_chunk_each_or_few_with_default_bounds() {
    // Small files are not shredded: neighbours merge up to the bound.
    for (path, text, _) in code_samples() {
        let chunks = chunk_file(path, text, &ChunkOptions::default());
        let floor = text.len().div_ceil(ChunkOptions::default().max_bytes);
        assert!(
            chunks.len() <= floor * 4 + 2,
            "{path}: {} chunks for {} bytes:\n{}",
            chunks.len(),
            text.len(),
            describe(&chunks)
        );
    }
}

#[test]
fn definitions_get_symbol_paths_in_every_language() {
    for (path, text, expected) in code_samples() {
        for text in [text.to_owned(), crlf(text)] {
            let chunks = chunk_file(path, &text, &SMALL);
            for symbol in expected {
                let leaf = symbol.rsplit(" > ").next().unwrap_or(symbol);
                let name = leaf
                    .rsplit(' ')
                    .next()
                    .unwrap_or(leaf)
                    .trim_end_matches("()");
                let name = name.rsplit("::").next().unwrap_or(name);
                let found = find_symbol(&chunks, symbol);
                assert!(
                    found.is_some_and(|c| c.text(&text).contains(name)),
                    "{path}: no chunk for `{symbol}` holding `{name}`; chunks:\n{}",
                    describe(&chunks)
                );
            }
        }
    }
}

#[test]
fn split_impl_keeps_methods_as_methods_with_their_doc_comments() {
    let chunks = chunk_file("src/index.rs", RUST, &SMALL);
    let search = find_symbol(&chunks, "impl Index > fn search");
    let Some(search) = search else {
        panic!("no chunk for search:\n{}", describe(&chunks));
    };
    assert_eq!(search.kind, ChunkKind::Method);
    let first = chunks
        .iter()
        .find(|c| c.text(RUST).contains("pub fn search"))
        .map(|c| c.text(RUST));
    assert!(
        first.is_some_and(|t| t.contains("/// Returns the ids of documents")),
        "the doc comment is not in the chunk that starts `search`:\n{}",
        describe(&chunks)
    );
    let structs = chunks
        .iter()
        .find(|c| c.text(RUST).contains("pub struct Index"))
        .map(|c| c.text(RUST));
    assert!(
        structs.is_some_and(|t| t.contains("#[derive(Debug, Default)]")),
        "attributes are not with their struct:\n{}",
        describe(&chunks)
    );
}

#[test]
fn decorators_stay_with_their_python_definition() {
    let chunks = chunk_file("shapes.py", PYTHON, &SMALL);
    let unit = chunks
        .iter()
        .find(|c| c.text(PYTHON).contains("def unit"))
        .map(|c| c.text(PYTHON));
    assert!(
        unit.is_some_and(|t| t.contains("@staticmethod")),
        "{}",
        describe(&chunks)
    );
    let circle = chunks
        .iter()
        .find(|c| c.text(PYTHON).contains("class Circle"))
        .map(|c| c.text(PYTHON));
    assert!(
        circle.is_some_and(|t| t.contains("@dataclass")),
        "{}",
        describe(&chunks)
    );
}

#[test]
fn chunks_start_at_the_start_of_a_line_when_splitting_between_definitions() {
    for (path, text, _) in code_samples() {
        let chunks = chunk_file(path, text, &SMALL);
        let mid_line = chunks
            .iter()
            .filter(|c| {
                let start = c.byte_range.start;
                start > 0 && text.as_bytes()[start - 1] != b'\n' && c.kind != ChunkKind::Code
            })
            .filter(|c| !c.symbol.is_empty())
            .count();
        // Splitting inside a long statement may cut mid-line; between definitions it must not.
        assert!(
            mid_line * 4 <= chunks.len(),
            "{path}: {mid_line} of {} chunks start mid-line:\n{}",
            chunks.len(),
            describe(&chunks)
        );
    }
}

#[test]
fn markdown_is_chunked_by_heading_sections() {
    let chunks = chunk_file("README.md", MARKDOWN, &SMALL);
    assert_invariants("README.md", MARKDOWN, &chunks, &SMALL);
    assert!(
        chunks
            .iter()
            .all(|c| c.kind == ChunkKind::Section && c.language == "markdown")
    );
    for symbol in ["troupe > Install > From source", "troupe > Usage"] {
        assert!(
            find_symbol(&chunks, symbol).is_some(),
            "no `{symbol}`:\n{}",
            describe(&chunks)
        );
    }
    assert!(
        chunks.iter().all(|c| !c.symbol.contains("not a heading")),
        "a comment in a code fence was taken for a heading:\n{}",
        describe(&chunks)
    );
    assert!(
        chunks.iter().all(|c| !c.symbol.contains("title")),
        "front matter was taken for a setext heading:\n{}",
        describe(&chunks)
    );
    let defaults = chunk_file("README.md", MARKDOWN, &ChunkOptions::default());
    assert_invariants("README.md", MARKDOWN, &defaults, &ChunkOptions::default());
}

#[test]
fn config_and_unknown_text_are_chunked_by_bounded_line_windows() {
    let toml: String = (0..200)
        .map(|i| format!("[section{i}]\nkey = \"value {i}\"\n\n"))
        .collect();
    let opts = ChunkOptions::default();
    let chunks = chunk_file("Cargo.toml", &toml, &opts);
    assert_invariants("Cargo.toml", &toml, &chunks, &opts);
    assert!(chunks.len() > 5);
    assert!(
        chunks
            .iter()
            .all(|c| c.kind == ChunkKind::Lines && c.language == "toml")
    );
    // Windows end after a blank line where one is near.
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.text(&toml).ends_with("\n\n"))
    );
    let chunks = chunk_file("NOTES", &toml, &opts);
    assert_invariants("NOTES", &toml, &chunks, &opts);
    assert!(chunks.iter().all(|c| c.language == TEXT));
}

#[test]
fn empty_files_give_no_chunks() {
    for path in ["a.rs", "a.py", "a.md", "a.toml", "a", "a.cpp"] {
        assert!(chunk_file(path, "", &ChunkOptions::default()).is_empty());
    }
}

#[test]
fn one_huge_line_is_split_on_character_boundaries() {
    // 50 KB on one line, with multi-byte characters at every possible offset.
    let line: String = "aé€😀 ".repeat(50_000 / 11);
    let no_spaces: String = "é€😀".repeat(50_000 / 9);
    for text in [line, no_spaces] {
        for path in [
            "big.rs", "big.py", "big.js", "big.ts", "big.go", "big.md", "big.json", "big",
        ] {
            for opts in [ChunkOptions::default(), SMALL] {
                let chunks = chunk_file(path, &text, &opts);
                assert_invariants(path, &text, &chunks, &opts);
            }
        }
    }
}

#[test]
fn invalid_syntax_still_keeps_the_invariants() {
    let broken = [
        ("bad.rs", "fn main( {\n  let x = ;\n}}}\nimpl {\n fn\n"),
        (
            "bad.py",
            "def f(:\n    return [\nclass :\n\tpass\n  x = '''\n",
        ),
        (
            "bad.js",
            "function (a, b { return a + ; }\nclass { x( }\n`unterminated",
        ),
        (
            "bad.ts",
            "interface { a: ; }\nexport class X<T { m(): T }\n",
        ),
        (
            "bad.tsx",
            "const a = <div><span></div>;\nfunction f( { return <A / }\n",
        ),
        ("bad.go", "package\nfunc (s *S Get() {\ntype T struct {\n"),
        ("bad.java", "public class { void m( { int x = ; }\n"),
        ("bad.c", "int main( { return 0\n#include\nstruct { int\n"),
        (
            "bad.cpp",
            "namespace { class A : public { void f() const { }\ntemplate <\n",
        ),
        ("bad.md", "```\nunclosed fence\n# not a heading\n"),
    ];
    for (path, text) in broken {
        for opts in [
            ChunkOptions::default(),
            SMALL,
            ChunkOptions {
                max_bytes: 7,
                max_lines: 1,
                min_merge_bytes: 3,
            },
        ] {
            let chunks = chunk_file(path, text, &opts);
            assert_invariants(path, text, &chunks, &opts);
        }
    }
}

#[test]
fn truncated_samples_keep_the_invariants() {
    for (path, text, _) in code_samples() {
        let mut cut = 0;
        while cut < text.len() {
            let end = pieces::floor_char(text, cut);
            let part = &text[..end];
            let chunks = chunk_file(path, part, &SMALL);
            assert_invariants(path, part, &chunks, &SMALL);
            cut += 97;
        }
    }
}

#[test]
fn tiny_bounds_cannot_break_the_invariants() {
    for (path, text, _) in code_samples() {
        for (max_bytes, max_lines) in [(1, 1), (2, 3), (3, 1), (4, 2), (16, 1), (64, 100)] {
            let opts = ChunkOptions {
                max_bytes,
                max_lines,
                min_merge_bytes: max_bytes / 2,
            };
            let text = format!("{text}// ünïcödé 😀\n");
            let chunks = chunk_file(path, &text, &opts);
            assert_invariants(path, &text, &chunks, &opts);
        }
    }
    let zero = ChunkOptions {
        max_bytes: 0,
        max_lines: 0,
        min_merge_bytes: 0,
    };
    let chunks = chunk_file("a.rs", RUST, &zero);
    assert_invariants("a.rs", RUST, &chunks, &zero);
}

#[test]
fn deeply_nested_input_does_not_overflow_the_stack() {
    let depth = 5_000;
    let text = format!(
        "fn f() {{ let x = {}1{}; }}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let chunks = chunk_file("deep.rs", &text, &SMALL);
    assert_invariants("deep.rs", &text, &chunks, &SMALL);
    let text = format!("x = {}1{}\n", "[".repeat(depth), "]".repeat(depth));
    let chunks = chunk_file("deep.py", &text, &SMALL);
    assert_invariants("deep.py", &text, &chunks, &SMALL);
}

/// A tiny deterministic generator (xorshift64*), so the property test needs no new crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn generated_inputs_keep_the_invariants() {
    let samples = code_samples();
    let fragments = [
        "{",
        "}",
        "(",
        ")",
        "\n",
        "\r\n",
        "\r",
        "\u{feff}",
        "\n\n",
        "\t",
        "    ",
        "é",
        "😀",
        "\u{0}",
        "\"",
        "'",
        "`",
        "/*",
        "*/",
        "//",
        "#",
        "# Heading\n",
        "```\n",
        "---\n",
        "fn x() {}\n",
        "def f():\n    pass\n",
        "class A {\n",
        "x = 1;\n",
        "<div>",
        "template <class T>\n",
        ";",
    ];
    let paths = [
        "g.rs", "g.py", "g.js", "g.ts", "g.tsx", "g.go", "g.java", "g.c", "g.cpp", "g.h", "g.md",
        "g.toml", "g.yaml", "g.json", "g.txt", "g",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..400 {
        let mut text = String::new();
        for _ in 0..rng.below(6) + 1 {
            match rng.below(3) {
                0 => {
                    let (_, sample, _) = samples[rng.below(samples.len())];
                    let a = pieces::floor_char(sample, rng.below(sample.len()));
                    let b = pieces::floor_char(sample, a + rng.below(sample.len() - a + 1));
                    text.push_str(&sample[a..b]);
                }
                1 => {
                    for _ in 0..rng.below(40) {
                        text.push_str(fragments[rng.below(fragments.len())]);
                    }
                }
                _ => {
                    let word = ["a", "é", "😀", " "][rng.below(4)];
                    text.push_str(&word.repeat(rng.below(3_000)));
                }
            }
        }
        let opts = ChunkOptions {
            max_bytes: [3, 8, 50, 200, 700, 1_500][rng.below(6)],
            max_lines: [1, 2, 5, 20, 60][rng.below(5)],
            min_merge_bytes: [0, 10, 100, 400][rng.below(4)],
        };
        let path = paths[rng.below(paths.len())];
        let chunks = chunk_file(path, &text, &opts);
        assert_invariants(&format!("{path} (round {round})"), &text, &chunks, &opts);
    }
}

#[test]
fn languages_are_found_by_extension() {
    let id = |path: &str| language_for_path(path).map(|l| l.id);
    assert_eq!(id("src/main.rs"), Some("rust"));
    assert_eq!(id("a/b/C.JAVA"), Some("java"));
    assert_eq!(id("web\\app.tsx"), Some("tsx"));
    assert_eq!(id("lib.d.ts"), Some("typescript"));
    assert_eq!(id("x.hpp"), Some("cpp"));
    assert_eq!(id("x.h"), Some("c"));
    assert_eq!(id("README.md"), Some("markdown"));
    assert_eq!(id("Makefile"), None);
    assert_eq!(id(".gitignore"), None);
    assert_eq!(id("dir.rs/file"), None);
    assert_eq!(
        language_by_id("go").map(|l| l.extensions),
        Some(&["go"][..])
    );
    assert!(
        chunk_file("Makefile", "all:\n\ttrue\n", &ChunkOptions::default())
            .iter()
            .all(|c| c.language == TEXT && c.kind == ChunkKind::Lines)
    );
}

#[test]
#[ignore = "prints the chunks of every sample for inspection"]
fn print_chunks() {
    for (path, text, _) in code_samples() {
        for opts in [SMALL, ChunkOptions::default()] {
            println!("===== {path} {opts:?}");
            for c in chunk_file(path, text, &opts) {
                println!(
                    "----- {}-{} {} [{}]\n{}",
                    c.start_line,
                    c.end_line,
                    c.kind,
                    c.symbol,
                    c.text(text)
                );
            }
        }
    }
}
