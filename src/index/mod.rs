//! The code index of a repository, under `.troupe/index/`: the scan (which files, by git blob
//! id), the chunker, the manifest from blob id to chunks, the tantivy full-text index and the
//! LanceDB vector table, kept current with the working tree by [`update`] and
//! [`vectors::embed_missing`].
//!
//! ```text
//! scan (git2) ──> diff against the manifest ──> chunk new blobs ──> tantivy commit ──> manifest
//!                                                                └─> embed missing blobs ──> LanceDB
//! ```
//!
//! Writers hold the index lock ([`IndexLock`]); readers ([`text::TextReader`],
//! [`vectors::VectorStore`]) only ever see committed state, so searching while an indexer runs,
//! or after one was killed, works. Depends on `git2`, tantivy, LanceDB and the engine's embedder
//! (behind [`vectors::Embed`]); must not depend on `retrieve`, `agents` or any front end.
//! Threading: an update chunks on every core; everything here is blocking (no async API).

pub mod chunk;
pub mod manifest;
pub mod scan;
pub mod text;
pub mod tokenizer;
pub mod update;
pub mod vectors;

#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

pub use text::{ChunkHit, TextReader};
pub use update::{
    IndexLock, Options, Progress, Status, Summary, index_dir, status, summarize, text_dir, update,
};

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A chunk query in `grammars/queries` does not compile against its grammar.
    #[error(
        "the chunk query grammars/queries/{language}/chunks.scm does not work with the {language} grammar: {message}; fix the query (see grammars/README.md)"
    )]
    ChunkQuery {
        /// The language id.
        language: &'static str,
        /// What tree-sitter or the chunker reported.
        message: String,
    },
    /// There is no index (or no usable one) where one was expected.
    #[error("no index at {path}; build it with `troupe index`")]
    NoIndex {
        /// The index directory.
        path: PathBuf,
    },
    /// Another indexer held the lock for too long.
    #[error(
        "another `troupe index` is updating {path} and did not finish within {timeout:?}; wait for it, or if none is running, retry"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// How long this run waited.
        timeout: std::time::Duration,
    },
    /// A git operation failed.
    #[error("git error in {path}: {source}; check that it is a readable git repository")]
    Git {
        /// The repository.
        path: PathBuf,
        /// What git2 reported.
        #[source]
        source: git2::Error,
    },
    /// A file operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done (`cannot read`).
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `.troupeignore` or `index.exclude` holds a bad pattern.
    #[error("bad ignore pattern in {path}: {message}; fix or remove the pattern")]
    Ignore {
        /// The file (or `index.exclude`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The full-text index failed.
    #[error(
        "the text index at {path} failed: {message}; if this persists, delete the directory and run `troupe index`"
    )]
    Tantivy {
        /// The index directory.
        path: PathBuf,
        /// What tantivy reported.
        message: String,
    },
    /// The vector table failed.
    #[error(
        "the vector index at {path} failed: {message}; if this persists, delete the directory and run `troupe index`"
    )]
    Lance {
        /// The vectors directory.
        path: PathBuf,
        /// What LanceDB reported.
        message: String,
    },
    /// The embedding model failed or could not be loaded.
    #[error("embedding with {model} failed: {message}; check the model with `troupe doctor`")]
    Embed {
        /// The model file (or id).
        model: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Result of index operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
