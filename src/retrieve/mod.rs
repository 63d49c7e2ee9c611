//! Retrieval: answers a query from the index with the best chunks (or files), and packs them
//! into a token budget for prompts.
//!
//! A query runs BM25 over the full-text index and, when the vector table and the embedding model
//! are there, a nearest-neighbour search over chunk embeddings. The two rankings are fused by
//! weighted reciprocal rank fusion ([`fuse`]), then nudged by path and symbol signals (query words
//! naming the file or the definition), adjacent chunks of one file are merged, and optionally
//! chunks are grouped into file-level results. [`pack`] turns results into prompt context.
//!
//! Read-only on the index: it never writes, locks or updates it (an out-of-date index answers
//! with what it holds). Depends on `index` (and the embedder behind [`index::vectors::Embed`]);
//! must not depend on agents or front ends. Blocking; call it from `spawn_blocking` in async code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{RetrieveConfig, SearchMode};
use crate::index::vectors::{Embed, VectorStore};
use crate::index::{self, ChunkHit, TextReader, tokenizer};

/// Errors of retrieval.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The index could not be read.
    #[error(transparent)]
    Index(#[from] index::Error),
    /// A vector search was asked for without vectors.
    #[error("vector search is not available for {path}: {reason}")]
    NoVectors {
        /// The repository.
        path: PathBuf,
        /// Why, with the fix.
        reason: String,
    },
    /// Embedding the query failed.
    #[error("cannot embed the query with {model}: {message}; check the model with `troupe doctor`")]
    Embed {
        /// The model id.
        model: String,
        /// What went wrong.
        message: String,
    },
}

/// Result of retrieval.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One search result: a chunk (or merged neighbouring chunks, or a file's best chunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Path relative to the repository root.
    pub path: String,
    /// First line, 1-based.
    pub start_line: u32,
    /// Last line, 1-based, inclusive.
    pub end_line: u32,
    /// Symbol path of the (first) chunk; empty outside definitions.
    pub symbol: String,
    /// Language id.
    pub language: String,
    /// Fused score: higher is better; comparable within one search only.
    pub score: f64,
    /// The text of the lines.
    pub snippet: String,
}

impl SearchResult {
    /// The JSON line of the command-line contract:
    /// `{"path","start_line","end_line","symbol","language","score","snippet"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "symbol": self.symbol,
            "language": self.language,
            "score": self.score,
            "snippet": self.snippet,
        })
    }
}

/// How to search.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Which rankers run.
    pub mode: SearchMode,
    /// Results wanted.
    pub limit: usize,
    /// One result per file (its best chunk) instead of chunks.
    pub files: bool,
    /// Reciprocal-rank-fusion constant.
    pub rrf_k: f64,
    /// Weight of the BM25 ranking.
    pub bm25_weight: f64,
    /// Weight of the vector ranking.
    pub vector_weight: f64,
    /// Weight of the path and symbol signals, in units of a first-rank RRF contribution
    /// (0 turns them off).
    pub signal_weight: f64,
    /// Merge adjacent chunks of a file into one result.
    pub merge: bool,
    /// File-level results: weight of a file's n-th best chunk is `file_decay^(n-1)` (0: the
    /// best chunk alone).
    pub file_decay: f64,
}

impl Params {
    /// The configured defaults (`retrieve.*`).
    pub fn from_config(c: &RetrieveConfig) -> Self {
        Self {
            mode: c.mode,
            limit: c.limit.max(1) as usize,
            files: false,
            rrf_k: c.rrf_k,
            bm25_weight: c.bm25_weight,
            vector_weight: c.vector_weight,
            signal_weight: c.signal_weight,
            merge: true,
            file_decay: c.file_decay,
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Self::from_config(&RetrieveConfig::default())
    }
}

/// An open index, ready to answer queries.
pub struct Retriever {
    root: PathBuf,
    text: TextReader,
    vectors: Option<VectorStore>,
    embedder: Option<Box<dyn Embed>>,
    why_no_vectors: Option<String>,
}

impl std::fmt::Debug for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retriever")
            .field("root", &self.root)
            .field("vectors", &self.vectors.is_some())
            .finish_non_exhaustive()
    }
}

impl Retriever {
    /// Opens the index of the repository at `root`. With an embedder whose vectors are in the
    /// index, vector and hybrid search are available; without, hybrid search is BM25 alone
    /// ([`Self::vectors_unavailable`] says why).
    pub fn open(root: &Path, embedder: Option<Box<dyn Embed>>) -> Result<Self> {
        let dir = index::index_dir(root);
        let text = TextReader::open(&index::text_dir(&dir))?;
        let mut why = None;
        let vectors = match &embedder {
            None => {
                why = Some("no embedding model is loaded".to_string());
                None
            }
            Some(e) => {
                let store = VectorStore::open(&dir, &e.model_id(), e.dim(), false)?;
                if store.exists() && store.count()? > 0 {
                    Some(store)
                } else {
                    why = Some(format!(
                        "the index has no vectors for {}; run `troupe index`",
                        e.model_id()
                    ));
                    None
                }
            }
        };
        Ok(Self {
            root: root.to_path_buf(),
            text,
            vectors,
            embedder: if why.is_none() { embedder } else { None },
            why_no_vectors: why,
        })
    }

    /// A BM25 baseline over whole files instead of chunks (for evaluations; see
    /// [`TextReader::whole_files`]). Only BM25 mode is meaningful on it.
    pub fn open_whole_files(root: &Path) -> Result<Self> {
        let dir = index::index_dir(root);
        Ok(Self {
            root: root.to_path_buf(),
            text: TextReader::whole_files(root, &dir)?,
            vectors: None,
            embedder: None,
            why_no_vectors: Some("whole-file baseline".to_string()),
        })
    }

    /// Why vector search is unavailable, if it is.
    pub fn vectors_unavailable(&self) -> Option<&str> {
        self.why_no_vectors.as_deref()
    }

    /// The best results for `query`. In hybrid mode without vectors, BM25 alone answers; in
    /// vector mode without vectors, it is an error naming the fix.
    pub fn search(&mut self, query: &str, params: &Params) -> Result<Vec<SearchResult>> {
        let depth = if params.files {
            (params.limit * 10).max(100)
        } else {
            (params.limit * 5).max(50)
        };
        let use_bm25 = matches!(params.mode, SearchMode::Bm25 | SearchMode::Hybrid);
        let use_vectors = match params.mode {
            SearchMode::Bm25 => false,
            SearchMode::Hybrid => self.vectors.is_some(),
            SearchMode::Vector => {
                if self.vectors.is_none() {
                    return Err(Error::NoVectors {
                        path: self.root.clone(),
                        reason: self
                            .why_no_vectors
                            .clone()
                            .unwrap_or_else(|| "no vectors".to_string()),
                    });
                }
                true
            }
        };
        let bm25 = if use_bm25 {
            self.text.search(query, depth)?
        } else {
            Vec::new()
        };
        let vector = if use_vectors {
            self.vector_hits(query, depth)?
        } else {
            Vec::new()
        };
        Ok(rank(query, &Rankings { bm25, vector }, params))
    }

    /// Both rankings for `query` without fusing them (for tuning fusion on many parameter
    /// sets: see [`rank`]); the vector ranking is empty without vectors.
    pub fn rankings(&mut self, query: &str, depth: usize) -> Result<Rankings> {
        let bm25 = self.text.search(query, depth)?;
        let vector = if self.vectors.is_some() {
            self.vector_hits(query, depth)?
        } else {
            Vec::new()
        };
        Ok(Rankings { bm25, vector })
    }

    /// Vector hits mapped to the chunks of the current files (rows of blobs no file holds any
    /// more are dropped), best first.
    fn vector_hits(&mut self, query: &str, depth: usize) -> Result<Vec<ChunkHit>> {
        let (Some(store), Some(embedder)) = (&self.vectors, self.embedder.as_mut()) else {
            return Ok(Vec::new());
        };
        let q = embedder
            .embed_query(query)
            .map_err(|message| Error::Embed {
                model: embedder.model_id(),
                message,
            })?;
        // Over-fetch: rows of blobs that are no longer current are filtered out below.
        let hits = store.search(&q, depth * 2)?;
        let mut out = Vec::new();
        for h in hits {
            for mut c in self.text.chunks_of(&h.blob, h.chunk)? {
                c.score = 1.0 - h.distance;
                out.push(c);
            }
            if out.len() >= depth {
                break;
            }
        }
        Ok(out)
    }
}

/// The BM25 and vector rankings of one query, best first.
#[derive(Debug, Clone, Default)]
pub struct Rankings {
    /// BM25 hits.
    pub bm25: Vec<ChunkHit>,
    /// Vector hits (empty without vectors).
    pub vector: Vec<ChunkHit>,
}

/// Fuses `rankings` as `params` says (mode, weights, signals, merging, files) into results.
pub fn rank(query: &str, rankings: &Rankings, params: &Params) -> Vec<SearchResult> {
    let use_bm25 = matches!(params.mode, SearchMode::Bm25 | SearchMode::Hybrid);
    let use_vectors = matches!(params.mode, SearchMode::Vector | SearchMode::Hybrid)
        && !rankings.vector.is_empty();
    let mut lists: Vec<(f64, Vec<ChunkHit>)> = Vec::new();
    if use_bm25 {
        let w = if use_vectors { params.bm25_weight } else { 1.0 };
        lists.push((w, rankings.bm25.clone()));
    }
    if use_vectors {
        let w = if use_bm25 { params.vector_weight } else { 1.0 };
        lists.push((w, rankings.vector.clone()));
    }
    let mut fused = fuse(&lists, params.rrf_k);
    if params.signal_weight > 0.0 {
        apply_signals(
            &mut fused,
            query,
            params.signal_weight / (params.rrf_k + 1.0),
        );
    }
    finish(fused, params)
}

/// A chunk with its fused score.
#[derive(Debug, Clone)]
pub struct Fused {
    /// The chunk.
    pub hit: ChunkHit,
    /// Its fused score.
    pub score: f64,
}

/// Weighted reciprocal rank fusion: each ranking adds `weight / (k + rank)` (rank from 1) to the
/// chunks it holds; chunks are identified by path and position. Best first; ties keep the order
/// of first appearance.
pub fn fuse(rankings: &[(f64, Vec<ChunkHit>)], k: f64) -> Vec<Fused> {
    let mut by_key: HashMap<(String, u32), usize> = HashMap::new();
    let mut out: Vec<Fused> = Vec::new();
    for (weight, hits) in rankings {
        for (rank, hit) in hits.iter().enumerate() {
            let add = weight / (k + rank as f64 + 1.0);
            let key = (hit.path.clone(), hit.chunk);
            match by_key.get(&key) {
                Some(&i) => out[i].score += add,
                None => {
                    by_key.insert(key, out.len());
                    out.push(Fused {
                        hit: hit.clone(),
                        score: add,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// Adds `unit` times the share of the query's words that name the chunk's file (stem or
/// directory) or its definition, so `fix parse_args in cli` favours `cli.rs` and `fn parse_args`.
fn apply_signals(fused: &mut [Fused], query: &str, unit: f64) {
    let words: Vec<String> = tokenizer::terms(query)
        .into_iter()
        .filter(|t| t.len() > 2)
        .collect();
    if words.is_empty() {
        return;
    }
    for f in fused.iter_mut() {
        let path_terms = tokenizer::terms(&f.hit.path);
        let symbol_terms = tokenizer::terms(&f.hit.symbol);
        let matched = words
            .iter()
            .filter(|w| path_terms.contains(w) || symbol_terms.contains(w))
            .count();
        f.score += unit * matched as f64 / words.len() as f64;
    }
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
}

/// Merges adjacent chunks and groups by file as asked, and cuts to the limit.
fn finish(fused: Vec<Fused>, params: &Params) -> Vec<SearchResult> {
    if params.files {
        // A file scores its best chunk plus a decaying share of its next ones: evidence spread
        // over a file counts, without long files winning on length alone. `fused` is sorted, so
        // each file's chunks arrive best first.
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut files: Vec<(SearchResult, usize)> = Vec::new();
        for f in fused {
            match index.get(&f.hit.path) {
                Some(&i) => {
                    let (r, n) = &mut files[i];
                    r.score += f.score * params.file_decay.powi(*n as i32);
                    *n += 1;
                }
                None => {
                    index.insert(f.hit.path.clone(), files.len());
                    files.push((result(&f.hit, f.score), 1));
                }
            }
        }
        let mut out: Vec<SearchResult> = files.into_iter().map(|(r, _)| r).collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out.truncate(params.limit);
        return out;
    }
    // Each output result keeps its chunks (position, lines, text) to merge neighbours into.
    struct Group {
        score: f64,
        hit: ChunkHit,
        parts: Vec<(u32, u32, u32, String)>,
    }
    const MAX_PARTS: usize = 3;
    let mut groups: Vec<Group> = Vec::new();
    for f in fused {
        if params.merge
            && let Some(g) = groups.iter_mut().find(|g| {
                g.hit.path == f.hit.path
                    && g.parts.len() < MAX_PARTS
                    && g.parts.iter().any(|p| p.0.abs_diff(f.hit.chunk) == 1)
            })
        {
            g.parts.push((
                f.hit.chunk,
                f.hit.start_line,
                f.hit.end_line,
                f.hit.text.clone(),
            ));
            g.parts.sort_by_key(|p| p.0);
            continue;
        }
        if groups.len() >= params.limit {
            continue;
        }
        groups.push(Group {
            score: f.score,
            parts: vec![(
                f.hit.chunk,
                f.hit.start_line,
                f.hit.end_line,
                f.hit.text.clone(),
            )],
            hit: f.hit,
        });
    }
    groups
        .into_iter()
        .map(|g| {
            let mut r = result(&g.hit, g.score);
            r.start_line = g.parts.iter().map(|p| p.1).min().unwrap_or(r.start_line);
            r.end_line = g.parts.iter().map(|p| p.2).max().unwrap_or(r.end_line);
            r.snippet = g.parts.iter().map(|p| p.3.as_str()).collect();
            r
        })
        .collect()
}

fn result(hit: &ChunkHit, score: f64) -> SearchResult {
    SearchResult {
        path: hit.path.clone(),
        start_line: hit.start_line,
        end_line: hit.end_line,
        symbol: hit.symbol.clone(),
        language: hit.language.clone(),
        score,
        snippet: hit.text.clone(),
    }
}

/// Packs the best results into at most `budget_tokens` tokens (as `count_tokens` counts them)
/// of prompt context: in rank order, each as a fenced block headed by its path, lines and
/// symbol; a result that does not fit is skipped for smaller ones after it. Returns the text
/// (empty if nothing fits).
pub fn pack(
    results: &[SearchResult],
    budget_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
) -> String {
    let mut out = String::new();
    let mut used = 0;
    for r in results {
        let block = format_block(r);
        let cost = count_tokens(&block);
        if used + cost > budget_tokens {
            continue;
        }
        used += cost;
        out.push_str(&block);
    }
    out
}

/// A rough token count (a token per 4 bytes, rounded up) for callers without the model's
/// tokenizer at hand.
pub fn approx_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

fn format_block(r: &SearchResult) -> String {
    let symbol = if r.symbol.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.symbol)
    };
    let mut snippet = r.snippet.clone();
    if !snippet.ends_with('\n') {
        snippet.push('\n');
    }
    format!(
        "{}:{}-{}{symbol}\n```{}\n{snippet}```\n\n",
        r.path, r.start_line, r.end_line, r.language
    )
}

#[cfg(test)]
mod tests;

/// A short, content-based description of the repository's index for provenance records:
/// `none`, or the number of indexed files, the commit of the last update and a digest of every
/// indexed path and blob id (so two runs over the same index describe it identically, and an
/// update that changed nothing does not change it).
pub fn index_state(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    let Some(manifest) = index::manifest::Manifest::load(&index::index_dir(root)) else {
        return "none".to_string();
    };
    let mut hash = Sha256::new();
    for (path, entry) in &manifest.files {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(entry.blob.as_bytes());
        hash.update([0]);
    }
    let digest = hex::encode(hash.finalize());
    let head = manifest
        .head
        .as_deref()
        .map(|h| h.get(..12).unwrap_or(h))
        .unwrap_or("no commit");
    format!(
        "{} files at {head}, content {}",
        manifest.files.len(),
        &digest[..16]
    )
}
