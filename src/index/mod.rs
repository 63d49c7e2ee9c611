//! The code index (filled in by the index work).

pub mod chunk;

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
}

/// Result of index operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
