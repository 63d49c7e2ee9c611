//! Chunking: cuts a file's text into contiguous, size-bounded chunks for the full-text and vector
//! indexes, one per definition where the language has a tree-sitter grammar.
//!
//! Owns the language registry ([`LANGUAGES`]: id, file extensions, grammar, embedded
//! `grammars/queries/<lang>/chunks.scm`) and the three chunkers: syntax-aware for code
//! ([`syntax`]), heading sections for Markdown and line windows for everything else ([`text`]).
//! Every chunker guarantees the same invariants, checked by the tests for every language: the
//! chunks are in order, each starts where the previous ended, together they cover the text
//! exactly, and each fits [`ChunkOptions`] (the one exception: `max_bytes` below 4 cannot hold
//! every UTF-8 character, so a chunk then holds one whole character).
//!
//! Pure functions on a `&str`: no I/O, no git, no storage. It must not depend on the rest of the
//! index (tantivy, LanceDB, the manifest), on `retrieve`, `engine` or `agents`. Thread-safe: the
//! compiled queries are shared, each call uses its own parser.

mod pieces;
mod syntax;
mod text;

#[cfg(test)]
mod tests;

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Size bounds for chunks.
///
/// The defaults aim at embedding models with a 512-token input limit (all-MiniLM-L6-v2; llama.cpp
/// refuses longer input). Measured with MiniLM's WordPiece vocabulary on 1,000-byte windows of
/// real code: a median of 250 (Python) to 380 (C) tokens, 90th percentile 290 to 520 (dense C++
/// tables); 1,500-byte windows put the median of C and C++ above 540. So 1,000 bytes leaves room
/// for the special tokens, the document prompt and a path/symbol header the indexer may prepend;
/// the embedder must still truncate the rare denser chunk. 50 lines bounds chunks of very short
/// lines (`}`-heavy code, lists) to a screenful. Pieces under 250 bytes (about 80 tokens) merge
/// with a neighbour, so runs of imports or one-line definitions do not become tiny chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOptions {
    /// Largest chunk in bytes (UTF-8). Values below 1 are treated as 1.
    pub max_bytes: usize,
    /// Largest chunk in lines (lines touched, counting a partial line). Values below 1 are
    /// treated as 1.
    pub max_lines: usize,
    /// Neighbouring pieces are merged (while the result fits) when either is smaller than this,
    /// so a run of tiny definitions or imports does not become a run of tiny chunks.
    pub min_merge_bytes: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self {
            max_bytes: 1_000,
            max_lines: 50,
            min_merge_bytes: 250,
        }
    }
}

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkKind {
    /// A free function.
    Function,
    /// A function inside a class, impl, trait, interface, struct or enum.
    Method,
    /// A class (also Java records).
    Class,
    /// A Rust `impl` block.
    Impl,
    /// A struct.
    Struct,
    /// An enum.
    Enum,
    /// A union.
    Union,
    /// A Rust trait.
    Trait,
    /// An interface.
    Interface,
    /// A module or namespace.
    Module,
    /// A type alias or typedef.
    Type,
    /// A macro definition.
    Macro,
    /// A constant or static.
    Constant,
    /// Code outside any definition (imports, top-level statements).
    Code,
    /// A Markdown section under a heading.
    Section,
    /// A window of lines of a file without structure.
    Lines,
}

impl ChunkKind {
    /// The lowercase name, as in query captures (`@definition.function`) and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Function => "function",
            Self::Method => "method",
            Self::Class => "class",
            Self::Impl => "impl",
            Self::Struct => "struct",
            Self::Enum => "enum",
            Self::Union => "union",
            Self::Trait => "trait",
            Self::Interface => "interface",
            Self::Module => "module",
            Self::Type => "type",
            Self::Macro => "macro",
            Self::Constant => "constant",
            Self::Code => "code",
            Self::Section => "section",
            Self::Lines => "lines",
        }
    }

    /// The kind named by a query capture suffix (`function` in `@definition.function`); only
    /// definition kinds are accepted.
    pub fn from_definition(name: &str) -> Option<Self> {
        Some(match name {
            "function" => Self::Function,
            "method" => Self::Method,
            "class" => Self::Class,
            "impl" => Self::Impl,
            "struct" => Self::Struct,
            "enum" => Self::Enum,
            "union" => Self::Union,
            "trait" => Self::Trait,
            "interface" => Self::Interface,
            "module" => Self::Module,
            "type" => Self::Type,
            "macro" => Self::Macro,
            "constant" => Self::Constant,
            _ => return None,
        })
    }

    /// Whether functions directly inside a definition of this kind are methods.
    fn holds_methods(self) -> bool {
        matches!(
            self,
            Self::Class | Self::Impl | Self::Trait | Self::Interface | Self::Struct | Self::Enum
        )
    }
}

impl std::fmt::Display for ChunkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chunk of a file. Chunks of a file are contiguous and cover it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// The file's path as given to [`chunk_file`].
    pub path: String,
    /// The language id ([`Language::id`]), `text` for files of no known language.
    pub language: &'static str,
    /// First line, 1-based.
    pub start_line: usize,
    /// Last line, 1-based and inclusive: the line of the chunk's last byte.
    pub end_line: usize,
    /// Byte range in the text given to [`chunk_file`]; always on UTF-8 character boundaries.
    pub byte_range: Range<usize>,
    /// Where the chunk sits, outermost first, e.g. `impl Index > fn search` or
    /// `class Foo > def bar`; siblings merged into one chunk are listed after their common
    /// parent (`impl Foo > fn a, fn b`). Markdown: the heading path. Empty outside definitions.
    pub symbol: String,
    /// What the chunk holds; for merged chunks, the kind of its largest definition.
    pub kind: ChunkKind,
}

impl Chunk {
    /// The chunk's text, given the text it was cut from (empty if `source` is another text).
    pub fn text<'a>(&self, source: &'a str) -> &'a str {
        source.get(self.byte_range.clone()).unwrap_or("")
    }
}

/// How a language is chunked.
#[derive(Clone, Copy)]
pub enum Syntax {
    /// With a compiled tree-sitter grammar and the chunk query embedded from
    /// `grammars/queries/<id>/chunks.scm`.
    TreeSitter {
        /// The grammar, from its `tree-sitter-<lang>` crate.
        grammar: fn() -> tree_sitter::Language,
        /// The chunk query's source.
        query: &'static str,
    },
    /// Markdown: one section per heading, nested headings give the symbol path.
    Markdown,
    /// Line windows.
    Lines,
}

impl Syntax {
    /// The chunk query's source, for tree-sitter languages.
    pub fn query(&self) -> Option<&'static str> {
        match self {
            Self::TreeSitter { query, .. } => Some(query),
            Self::Markdown | Self::Lines => None,
        }
    }
}

impl std::fmt::Debug for Syntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TreeSitter { .. } => f.write_str("TreeSitter"),
            Self::Markdown => f.write_str("Markdown"),
            Self::Lines => f.write_str("Lines"),
        }
    }
}

/// A language the chunker recognises by file extension.
#[derive(Debug, Clone, Copy)]
pub struct Language {
    /// Stable id, stored in the index and printed in search results (`rust`, `markdown`).
    pub id: &'static str,
    /// File extensions without the dot, lowercase; matched case-insensitively.
    pub extensions: &'static [&'static str],
    /// How files of this language are chunked.
    pub syntax: Syntax,
}

/// The language id of files no entry of [`LANGUAGES`] claims.
pub const TEXT: &str = "text";

macro_rules! grammar {
    ($id:literal, $grammar:expr) => {
        Syntax::TreeSitter {
            grammar: || $grammar.into(),
            query: include_str!(concat!("../../grammars/queries/", $id, "/chunks.scm")),
        }
    };
}

/// Every language the chunker knows: the one list to extend (see `grammars/README.md`).
pub static LANGUAGES: &[Language] = &[
    Language {
        id: "rust",
        extensions: &["rs"],
        syntax: grammar!("rust", tree_sitter_rust::LANGUAGE),
    },
    Language {
        id: "python",
        extensions: &["py", "pyi", "pyw"],
        syntax: grammar!("python", tree_sitter_python::LANGUAGE),
    },
    Language {
        id: "javascript",
        extensions: &["js", "mjs", "cjs", "jsx"],
        syntax: grammar!("javascript", tree_sitter_javascript::LANGUAGE),
    },
    Language {
        id: "typescript",
        extensions: &["ts", "mts", "cts"],
        syntax: grammar!("typescript", tree_sitter_typescript::LANGUAGE_TYPESCRIPT),
    },
    Language {
        id: "tsx",
        extensions: &["tsx"],
        syntax: grammar!("tsx", tree_sitter_typescript::LANGUAGE_TSX),
    },
    Language {
        id: "go",
        extensions: &["go"],
        syntax: grammar!("go", tree_sitter_go::LANGUAGE),
    },
    Language {
        id: "java",
        extensions: &["java"],
        syntax: grammar!("java", tree_sitter_java::LANGUAGE),
    },
    Language {
        id: "c",
        extensions: &["c", "h"],
        syntax: grammar!("c", tree_sitter_c::LANGUAGE),
    },
    Language {
        id: "cpp",
        extensions: &[
            "cc", "cpp", "cxx", "c++", "hh", "hpp", "hxx", "h++", "ipp", "inl",
        ],
        syntax: grammar!("cpp", tree_sitter_cpp::LANGUAGE),
    },
    Language {
        id: "markdown",
        extensions: &["md", "markdown", "mdown", "mkd"],
        syntax: Syntax::Markdown,
    },
    Language {
        id: "toml",
        extensions: &["toml"],
        syntax: Syntax::Lines,
    },
    Language {
        id: "yaml",
        extensions: &["yaml", "yml"],
        syntax: Syntax::Lines,
    },
    Language {
        id: "json",
        extensions: &["json", "jsonc", "jsonl"],
        syntax: Syntax::Lines,
    },
];

/// The language of a path, by its extension (case-insensitive); `None` for unknown extensions
/// and files without one. Accepts `/` and `\` separators.
pub fn language_for_path(path: &str) -> Option<&'static Language> {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() {
        // A dot file such as `.gitignore` has no extension.
        return None;
    }
    LANGUAGES
        .iter()
        .find(|lang| lang.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// The language with this id (`rust`, `markdown`, ...).
pub fn language_by_id(id: &str) -> Option<&'static Language> {
    LANGUAGES.iter().find(|lang| lang.id == id)
}

/// Cuts `text` (the content of the file at `path`) into chunks.
///
/// Never fails and never panics: a file that does not parse is still chunked (tree-sitter
/// recovers from errors; past that, by line windows). An empty text gives no chunks.
pub fn chunk_file(path: &str, text: &str, opts: &ChunkOptions) -> Vec<Chunk> {
    let lang = language_for_path(path);
    let language = lang.map_or(TEXT, |lang| lang.id);
    let syntax = lang.map_or(Syntax::Lines, |lang| lang.syntax);
    let pieces = match syntax {
        Syntax::TreeSitter { .. } => lang
            .and_then(|lang| syntax::chunk(lang, text, opts))
            .unwrap_or_else(|| text::lines(text, opts, ChunkKind::Code)),
        Syntax::Markdown => text::markdown(text, opts),
        Syntax::Lines => text::lines(text, opts, ChunkKind::Lines),
    };
    pieces
        .into_iter()
        .map(|piece| Chunk {
            path: path.to_owned(),
            language,
            start_line: piece.start_line,
            end_line: piece.end_line,
            byte_range: piece.range,
            symbol: piece.symbol,
            kind: piece.kind,
        })
        .collect()
}

/// Compiles the chunk query of every tree-sitter language against its grammar, so a broken
/// `chunks.scm` is reported (e.g. by `troupe doctor`) instead of silently degrading chunking to
/// line windows.
pub fn check_queries() -> super::Result<()> {
    for lang in LANGUAGES {
        syntax::compiled(lang)?;
    }
    Ok(())
}
