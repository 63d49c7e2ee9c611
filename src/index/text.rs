//! The full-text index: one tantivy document per chunk, fields `path`, `symbols` and `content`
//! analysed with the code-aware [`super::tokenizer`], plus stored fields to answer a search
//! without reading the repository (line range, language, kind, blob id, chunk text).
//!
//! Documents are keyed by path (`path_key`): an update deletes a path's documents and adds its
//! new ones in the same commit. Each commit carries the manifest generation as its payload so
//! the indexer can tell a commit that outran its manifest. Readers open the last commit, so a
//! half-finished update is never visible. Must not depend on retrieve, engine or front ends.

use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
    Value,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::tokenizer::{self, CodeTokenizer};
use super::{Error, Result};

/// A chunk as stored in the index, with the score of the query that found it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkHit {
    /// Path relative to the repository root.
    pub path: String,
    /// First line, 1-based.
    pub start_line: u32,
    /// Last line, 1-based, inclusive.
    pub end_line: u32,
    /// Symbol path (`impl Index > fn search`), empty outside definitions.
    pub symbol: String,
    /// Language id.
    pub language: String,
    /// Chunk kind (`function`, `lines`, ...).
    pub kind: String,
    /// Blob id of the file's content.
    pub blob: String,
    /// The chunk's position in its file.
    pub chunk: u32,
    /// The chunk's text.
    pub text: String,
    /// The score of the query that found it (BM25 here; other rankers set their own).
    pub score: f32,
}

/// The fields of the schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub path_key: Field,
    pub chunk_key: Field,
    pub path: Field,
    pub symbols: Field,
    pub content: Field,
    pub language: Field,
    pub kind: Field,
    pub blob: Field,
    pub chunk: Field,
    pub start_line: Field,
    pub end_line: Field,
}

/// Boosts of the fields in a BM25 query: a query word naming a symbol or a path component is
/// stronger evidence than one in the body. Tuned on the development set (BENCHMARKS.md).
const SYMBOL_BOOST: f32 = 2.0;
const PATH_BOOST: f32 = 1.5;

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let code = |stored: bool| {
        let opts = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer::NAME)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        if stored { opts.set_stored() } else { opts }
    };
    let fields = Fields {
        path_key: b.add_text_field("path_key", STRING | STORED),
        chunk_key: b.add_text_field("chunk_key", STRING),
        path: b.add_text_field("path", code(false)),
        symbols: b.add_text_field("symbols", code(true)),
        content: b.add_text_field("content", code(true)),
        language: b.add_text_field("language", STRING | STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        blob: b.add_text_field("blob", STRING | STORED),
        chunk: b.add_u64_field("chunk", STORED | INDEXED),
        start_line: b.add_u64_field("start_line", STORED),
        end_line: b.add_u64_field("end_line", STORED),
    };
    (b.build(), fields)
}

fn tantivy_err(dir: &Path) -> impl Fn(tantivy::TantivyError) -> Error + '_ {
    move |e| Error::Tantivy {
        path: dir.to_path_buf(),
        message: e.to_string(),
    }
}

/// Opens the index in `dir`, creating an empty one if there is none. A directory holding no
/// valid index (a first run killed before its first commit, a foreign schema) is cleared and
/// created afresh.
pub(crate) fn open_or_create(dir: &Path) -> Result<(Index, Fields)> {
    let (schema, fields) = schema();
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        context: "cannot create",
        path: dir.to_path_buf(),
        source,
    })?;
    let index = match open_dir(dir) {
        Ok(index) if index.schema() == schema => index,
        _ => {
            // No meta.json (nothing was ever committed) or a different schema: start over.
            std::fs::remove_dir_all(dir).map_err(|source| Error::Io {
                context: "cannot clear",
                path: dir.to_path_buf(),
                source,
            })?;
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                context: "cannot create",
                path: dir.to_path_buf(),
                source,
            })?;
            Index::create_in_dir(dir, schema).map_err(tantivy_err(dir))?
        }
    };
    register(&index);
    Ok((index, fields))
}

fn open_dir(dir: &Path) -> tantivy::Result<Index> {
    Index::open_in_dir(dir)
}

/// The generation committed to the index in `dir` (its last commit's payload), without
/// changing anything; `None` if there is no readable index.
pub(crate) fn generation_in(dir: &Path) -> Option<u64> {
    open_dir(dir).ok().as_ref().and_then(committed_generation)
}

fn register(index: &Index) {
    index
        .tokenizers()
        .register(tokenizer::NAME, TextAnalyzer::from(CodeTokenizer));
}

/// The payload (manifest generation) of the last commit, if any.
pub(crate) fn committed_generation(index: &Index) -> Option<u64> {
    index
        .load_metas()
        .ok()
        .and_then(|m| m.payload)
        .and_then(|p| p.parse().ok())
}

/// A writer with a memory budget suited to small machines.
pub(crate) fn writer(index: &Index, dir: &Path) -> Result<IndexWriter> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    index
        .writer_with_num_threads(threads, 40_000_000 * threads)
        .map_err(tantivy_err(dir))
}

/// The document of one chunk.
#[allow(clippy::too_many_arguments)]
pub(crate) fn document(
    f: &Fields,
    path: &str,
    blob: &str,
    chunk: u32,
    language: &str,
    kind: &str,
    symbol: &str,
    lines: (u32, u32),
    text: &str,
) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_text(f.path_key, path);
    doc.add_text(f.chunk_key, format!("{blob}:{chunk}"));
    doc.add_text(f.path, path);
    doc.add_text(f.symbols, symbol);
    doc.add_text(f.content, text);
    doc.add_text(f.language, language);
    doc.add_text(f.kind, kind);
    doc.add_text(f.blob, blob);
    doc.add_u64(f.chunk, u64::from(chunk));
    doc.add_u64(f.start_line, u64::from(lines.0));
    doc.add_u64(f.end_line, u64::from(lines.1));
    doc
}

/// The term that deletes every document of a path.
pub(crate) fn path_term(f: &Fields, path: &str) -> Term {
    Term::from_field_text(f.path_key, path)
}

/// Read access to the full-text index: BM25 search and lookups by chunk.
pub struct TextReader {
    dir: std::path::PathBuf,
    reader: IndexReader,
    fields: Fields,
}

impl std::fmt::Debug for TextReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl TextReader {
    /// Opens the last commit of the index in `dir` for reading.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = open_dir(dir).map_err(|_| Error::NoIndex {
            path: dir.to_path_buf(),
        })?;
        let (schema, fields) = schema();
        if index.schema() != schema {
            return Err(Error::NoIndex {
                path: dir.to_path_buf(),
            });
        }
        register(&index);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_err(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            reader,
            fields,
        })
    }

    /// A baseline for evaluations: an in-memory index with one document per whole file (the
    /// indexed files of the manifest in `index_dir`, read from the working tree under `root`),
    /// searched like the chunk index.
    pub fn whole_files(root: &Path, index_dir: &Path) -> Result<Self> {
        let manifest =
            super::manifest::Manifest::load(index_dir).ok_or_else(|| Error::NoIndex {
                path: index_dir.to_path_buf(),
            })?;
        let (schema, fields) = schema();
        let index = Index::create_in_ram(schema);
        register(&index);
        let mut writer = writer(&index, index_dir)?;
        for (path, f) in &manifest.files {
            if f.skip.is_some() {
                continue;
            }
            let Ok(bytes) = std::fs::read(root.join(path)) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let lines = text.lines().count().max(1) as u32;
            let doc = document(
                &fields,
                path,
                &f.blob,
                0,
                &f.language,
                "file",
                "",
                (1, lines),
                &text,
            );
            writer.add_document(doc).map_err(tantivy_err(index_dir))?;
        }
        writer.commit().map_err(tantivy_err(index_dir))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_err(index_dir))?;
        Ok(Self {
            dir: index_dir.to_path_buf(),
            reader,
            fields,
        })
    }

    /// Number of chunks in the index.
    pub fn num_chunks(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The best `limit` chunks for `query` by BM25 over path, symbols and content. Query words
    /// are split like identifiers; common English words are dropped. An empty query (or one of
    /// stop words only) finds nothing.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<ChunkHit>> {
        let f = &self.fields;
        let mut terms: Vec<String> = tokenizer::terms(query)
            .into_iter()
            .filter(|t| !is_stop_word(t))
            .collect();
        terms.sort();
        terms.dedup();
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for t in &terms {
            for (field, boost) in [
                (f.content, 1.0),
                (f.symbols, SYMBOL_BOOST),
                (f.path, PATH_BOOST),
            ] {
                let q = TermQuery::new(
                    Term::from_field_text(field, t),
                    IndexRecordOption::WithFreqs,
                );
                clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit).order_by_score())
            .map_err(tantivy_err(&self.dir))?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr).map_err(tantivy_err(&self.dir))?;
            out.push(self.hit(&doc, score));
        }
        Ok(out)
    }

    /// Every chunk stored for `(blob, chunk)`: one per path holding that content.
    pub fn chunks_of(&self, blob: &str, chunk: u32) -> Result<Vec<ChunkHit>> {
        let term = Term::from_field_text(self.fields.chunk_key, &format!("{blob}:{chunk}"));
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(16).order_by_score())
            .map_err(tantivy_err(&self.dir))?;
        let mut out = Vec::with_capacity(top.len());
        for (_, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr).map_err(tantivy_err(&self.dir))?;
            out.push(self.hit(&doc, 0.0));
        }
        Ok(out)
    }

    fn hit(&self, doc: &TantivyDocument, score: f32) -> ChunkHit {
        let f = &self.fields;
        let s = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let n = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_u64())
                .unwrap_or_default() as u32
        };
        ChunkHit {
            path: s(f.path_key),
            start_line: n(f.start_line),
            end_line: n(f.end_line),
            symbol: s(f.symbols),
            language: s(f.language),
            kind: s(f.kind),
            blob: s(f.blob),
            chunk: n(f.chunk),
            text: s(f.content),
            score,
        }
    }
}

/// Words too common in questions and commit messages to tell code apart.
fn is_stop_word(t: &str) -> bool {
    const WORDS: &[&str] = &[
        "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
        "i", "if", "in", "into", "is", "it", "its", "of", "on", "or", "so", "that", "the", "this",
        "to", "was", "we", "what", "when", "where", "which", "with", "why", "you",
    ];
    WORDS.contains(&t)
}
