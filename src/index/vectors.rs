//! The vector index: one LanceDB row per chunk of each blob, `(blob, chunk, vector)`, in a table
//! per embedding model (`.troupe/index/vectors/chunks_<model hash>`), so switching models never
//! mixes vector spaces and switching back finds the old vectors.
//!
//! Rows are keyed by content (blob id), not path: a renamed or reverted file is never embedded
//! again, and a search maps rows back to paths through the text index. Embedding runs after the
//! text index is committed, in batches appended as whole blobs (each append is an atomic Lance
//! commit), so an interrupted run loses at most one batch and the next run embeds only the blobs
//! that are missing. Below [`ANN_MIN_ROWS`] rows a search is exact (flat scan); at or above it
//! an IVF-PQ index is built and kept up to date.
//!
//! LanceDB is async: a [`VectorStore`] owns a small tokio runtime and blocks on it, so its
//! methods must not be called from inside another tokio runtime (use `spawn_blocking`). Must not
//! depend on retrieve, agents or front ends; the embedding model comes in through [`Embed`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt32Array,
    types::Float32Type,
};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use sha2::Digest;

use super::manifest::Manifest;
use super::update::{IndexLock, Options, Progress, index_dir};
use super::{Error, Result};

/// Row count from which an approximate (IVF-PQ) index is built; below it searches are exact.
pub const ANN_MIN_ROWS: usize = 20_000;

/// An embedding model as the index uses it.
pub trait Embed {
    /// Identifies the model (file name and size): vectors of different models never mix.
    fn model_id(&self) -> String;
    /// Vector length.
    fn dim(&self) -> usize;
    /// Embeds documents (chunks), one unit-length vector per text, in order.
    fn embed_documents(&mut self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String>;
    /// Embeds one search query.
    fn embed_query(&mut self, text: &str) -> std::result::Result<Vec<f32>, String>;
}

/// [`Embed`] over the engine's llama.cpp embedder, with the model's prompts (EmbeddingGemma
/// expects task prompts before queries and documents; MiniLM none) from its catalog entry.
#[derive(Debug)]
pub struct ModelEmbedder {
    inner: crate::engine::embed::Embedder,
    id: String,
    query_prefix: &'static str,
    doc_prefix: &'static str,
    max_doc_tokens: usize,
}

/// The identity of the model file at `path` as the vector tables know it: file name and size.
/// Needs no loading, so a status check can name the table without the model.
pub fn model_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    format!("{name}:{size}")
}

impl ModelEmbedder {
    /// Loads the GGUF embedding model at `path` to run on `threads` threads, using the prompts
    /// and document length of `spec`.
    pub fn load(
        path: &Path,
        threads: i32,
        spec: &crate::models::catalog::Embedding,
    ) -> Result<Self> {
        let inner =
            crate::engine::embed::Embedder::load(path, threads).map_err(|e| Error::Embed {
                model: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self {
            inner,
            id: model_id(path),
            query_prefix: spec.query_prompt,
            doc_prefix: spec.document_prompt,
            max_doc_tokens: spec.max_doc_tokens as usize,
        })
    }

    /// `text` cut (at a character boundary) to about `max_doc_tokens` tokens.
    fn fit(&self, text: &str) -> String {
        let limit = self.max_doc_tokens.min(self.inner.max_tokens());
        let mut end = text.len();
        for _ in 0..4 {
            let n = self.inner.count_tokens(&text[..end]);
            if n <= limit {
                break;
            }
            let target = (end as f64 * limit as f64 / n as f64 * 0.95) as usize;
            end = (0..=target.min(end))
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
        }
        text[..end].to_string()
    }

    /// Tokens `text` becomes in this model (for packing prompts with its tokenizer).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.inner.count_tokens(text)
    }
}

impl Embed for ModelEmbedder {
    fn model_id(&self) -> String {
        self.id.clone()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn embed_documents(&mut self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
        let owned: Vec<String> = texts
            .iter()
            .map(|t| self.fit(&format!("{}{t}", self.doc_prefix)))
            .collect();
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        self.inner.embed(&refs).map_err(|e| e.to_string())
    }

    fn embed_query(&mut self, text: &str) -> std::result::Result<Vec<f32>, String> {
        let q = format!("{}{text}", self.query_prefix);
        self.inner
            .embed(&[q.as_str()])
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or_else(|| "the model returned no vector".to_string())
    }
}

/// A vector hit: a chunk of a blob and its cosine distance to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    /// Blob id.
    pub blob: String,
    /// Chunk position in the blob's file.
    pub chunk: u32,
    /// Cosine distance (0 is identical).
    pub distance: f32,
}

/// What an embedding run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedSummary {
    /// Chunks embedded by this run.
    pub embedded: u64,
    /// Rows in the table now.
    pub rows: u64,
    /// Blobs still without vectors (non-zero only if the run stopped early).
    pub missing_blobs: u64,
    /// Whether an ANN index exists.
    pub ann: bool,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

/// The vector table of one model in one index.
pub struct VectorStore {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    table: Option<lancedb::Table>,
    table_name: String,
    dim: usize,
}

impl std::fmt::Debug for VectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorStore")
            .field("dir", &self.dir)
            .field("table", &self.table_name)
            .finish_non_exhaustive()
    }
}

/// The vectors directory inside an index directory.
pub fn vectors_dir(index_dir: &Path) -> PathBuf {
    index_dir.join("vectors")
}

impl VectorStore {
    /// Opens the table of `model_id` in the index directory `dir`; with `create`, creates it if
    /// missing. Without `create`, a missing table gives a store that [`Self::exists`] says is
    /// empty.
    pub fn open(dir: &Path, model_id: &str, dim: usize, create: bool) -> Result<Self> {
        let vdir = vectors_dir(dir);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                context: "cannot start the runtime for",
                path: vdir.clone(),
                source,
            })?;
        let hash = hex::encode(sha2::Sha256::digest(format!("{model_id}:{dim}").as_bytes()));
        let table_name = format!("chunks_{}", &hash[..16]);
        let mut store = Self {
            rt,
            dir: vdir.clone(),
            table: None,
            table_name,
            dim,
        };
        if !create && !vdir.exists() {
            return Ok(store);
        }
        std::fs::create_dir_all(&vdir).map_err(|source| Error::Io {
            context: "cannot create",
            path: vdir.clone(),
            source,
        })?;
        let uri = vdir.to_string_lossy().into_owned();
        let name = store.table_name.clone();
        let schema = Arc::new(row_schema(dim));
        let lerr = lance_err(&vdir);
        let table = store.rt.block_on(async {
            let db = lancedb::connect(&uri).execute().await.map_err(&lerr)?;
            let names = db.table_names().execute().await.map_err(&lerr)?;
            if names.contains(&name) {
                db.open_table(&name)
                    .execute()
                    .await
                    .map(Some)
                    .map_err(&lerr)
            } else if create {
                db.create_empty_table(&name, schema)
                    .execute()
                    .await
                    .map(Some)
                    .map_err(&lerr)
            } else {
                Ok(None)
            }
        })?;
        store.table = table;
        Ok(store)
    }

    /// Whether the table exists (it may still be empty).
    pub fn exists(&self) -> bool {
        self.table.is_some()
    }

    /// Rows in the table.
    pub fn count(&self) -> Result<usize> {
        let Some(table) = &self.table else {
            return Ok(0);
        };
        self.rt
            .block_on(table.count_rows(None))
            .map_err(lance_err(&self.dir))
    }

    /// The blob ids that have vectors.
    pub fn blobs(&self) -> Result<HashSet<String>> {
        let Some(table) = &self.table else {
            return Ok(HashSet::new());
        };
        let lerr = lance_err(&self.dir);
        self.rt.block_on(async {
            let batches: Vec<RecordBatch> = table
                .query()
                .select(Select::columns(&["blob"]))
                .execute()
                .await
                .map_err(&lerr)?
                .try_collect()
                .await
                .map_err(&lerr)?;
            let mut out = HashSet::new();
            for b in &batches {
                if let Some(col) = b
                    .column_by_name("blob")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                {
                    out.extend(col.iter().flatten().map(str::to_string));
                }
            }
            Ok(out)
        })
    }

    /// Appends rows `(blob, chunk, vector)` in one commit.
    pub fn add(&self, rows: &[(String, u32, Vec<f32>)]) -> Result<()> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let dim = self.dim;
        if let Some((blob, _, v)) = rows.iter().find(|r| r.2.len() != dim) {
            return Err(Error::Embed {
                model: self.dir.clone(),
                message: format!(
                    "a vector of {} values for blob {blob}, expected {dim}",
                    v.len()
                ),
            });
        }
        let batch = RecordBatch::try_new(
            Arc::new(row_schema(dim)),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.as_str()),
                )),
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
                        rows.iter().map(|r| Some(r.2.iter().map(|x| Some(*x)))),
                        dim as i32,
                    ),
                ),
            ],
        )
        .map_err(|e| Error::Lance {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        self.rt
            .block_on(table.add(batch).execute())
            .map(|_| ())
            .map_err(lance_err(&self.dir))
    }

    /// Deletes the rows of these blobs.
    pub fn delete_blobs(&self, blobs: &[String]) -> Result<()> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        for group in blobs.chunks(500) {
            // Blob ids are hex (or `large-<n>-<n>`): nothing to escape.
            let list: Vec<String> = group
                .iter()
                .filter(|b| b.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .map(|b| format!("'{b}'"))
                .collect();
            if list.is_empty() {
                continue;
            }
            let predicate = format!("blob IN ({})", list.join(","));
            self.rt
                .block_on(table.delete(predicate.as_str()))
                .map_err(lance_err(&self.dir))?;
        }
        Ok(())
    }

    /// Whether an ANN index exists on the vectors.
    pub fn has_ann(&self) -> Result<bool> {
        let Some(table) = &self.table else {
            return Ok(false);
        };
        let indices = self
            .rt
            .block_on(table.list_indices())
            .map_err(lance_err(&self.dir))?;
        Ok(indices
            .iter()
            .any(|i| i.columns.iter().any(|c| c == "vector")))
    }

    /// Compacts the table and builds (or brings up to date) the ANN index once the table has
    /// [`ANN_MIN_ROWS`] rows.
    pub fn optimize(&self) -> Result<()> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        let rows = self.count()?;
        let has_ann = self.has_ann()?;
        let lerr = lance_err(&self.dir);
        self.rt.block_on(async {
            table
                .optimize(lancedb::table::OptimizeAction::Compact {
                    options: Default::default(),
                    remap_options: None,
                })
                .await
                .map_err(&lerr)?;
            if has_ann {
                table
                    .optimize(lancedb::table::OptimizeAction::Index(Default::default()))
                    .await
                    .map_err(&lerr)?;
            } else if rows >= ANN_MIN_ROWS {
                let builder = lancedb::index::vector::IvfPqIndexBuilder::default()
                    .distance_type(lancedb::DistanceType::Cosine);
                table
                    .create_index(&["vector"], lancedb::index::Index::IvfPq(builder))
                    .execute()
                    .await
                    .map_err(&lerr)?;
            }
            Ok(())
        })
    }

    /// The `limit` rows nearest to `query` by cosine distance (exact below [`ANN_MIN_ROWS`]).
    pub fn search(&self, query: &[f32], limit: usize) -> Result<Vec<VectorHit>> {
        let Some(table) = &self.table else {
            return Ok(Vec::new());
        };
        if query.len() != self.dim {
            return Err(Error::Embed {
                model: self.dir.clone(),
                message: format!(
                    "a query vector of {} values, expected {}",
                    query.len(),
                    self.dim
                ),
            });
        }
        let lerr = lance_err(&self.dir);
        let batches: Vec<RecordBatch> = self.rt.block_on(async {
            table
                .query()
                .nearest_to(query)
                .map_err(&lerr)?
                .distance_type(lancedb::DistanceType::Cosine)
                .nprobes(20)
                .map_err(&lerr)?
                .refine_factor(4)
                .limit(limit)
                .select(Select::columns(&["blob", "chunk"]))
                .execute()
                .await
                .map_err(&lerr)?
                .try_collect()
                .await
                .map_err(&lerr)
        })?;
        let mut out = Vec::new();
        for b in &batches {
            let blob = b
                .column_by_name("blob")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>());
            let chunk = b
                .column_by_name("chunk")
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
            let dist = b
                .column_by_name("_distance")
                .and_then(|c| c.as_any().downcast_ref::<Float32Array>());
            let (Some(blob), Some(chunk), Some(dist)) = (blob, chunk, dist) else {
                continue;
            };
            for i in 0..b.num_rows() {
                if blob.is_null(i) {
                    continue;
                }
                out.push(VectorHit {
                    blob: blob.value(i).to_string(),
                    chunk: chunk.value(i),
                    distance: dist.value(i),
                });
            }
        }
        out.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        Ok(out)
    }
}

/// Embeds every indexed blob of the repository at `root` that has no vectors yet for `model`,
/// in batches, then drops the vectors of blobs the manifest no longer knows and optimizes the
/// table. Requires a text index (`update` first).
pub fn embed_missing(
    root: &Path,
    opts: &Options,
    model: &mut dyn Embed,
    progress: &mut dyn FnMut(Progress),
) -> Result<EmbedSummary> {
    let started = std::time::Instant::now();
    let dir = index_dir(root);
    let _lock = IndexLock::acquire(&dir, opts.lock_timeout, progress)?;
    let manifest = Manifest::load(&dir).ok_or_else(|| Error::NoIndex { path: dir.clone() })?;
    let store = VectorStore::open(&dir, &model.model_id(), model.dim(), true)?;
    let have = store.blobs()?;

    // Blobs to embed, each with one path holding it (for reading it and for its header).
    let mut todo: Vec<(&str, &str)> = Vec::new();
    let mut seen = HashSet::new();
    for (path, f) in &manifest.files {
        if f.skip.is_none()
            && f.chunks > 0
            && !have.contains(&f.blob)
            && seen.insert(f.blob.as_str())
        {
            todo.push((f.blob.as_str(), path.as_str()));
        }
    }
    let total: u64 = todo
        .iter()
        .map(|(b, _)| manifest.blobs.get(*b).map_or(0, |e| e.chunks.len() as u64))
        .sum();
    progress(Progress::Phase {
        name: "embedding",
        total,
    });
    let repo = git2::Repository::open(root).ok();
    let mut embedded = 0u64;
    let mut pending: Vec<(String, u32, String)> = Vec::new();
    let flush = |pending: &mut Vec<(String, u32, String)>,
                 model: &mut dyn Embed,
                 progress: &mut dyn FnMut(Progress)|
     -> Result<u64> {
        if pending.is_empty() {
            return Ok(0);
        }
        let texts: Vec<&str> = pending.iter().map(|p| p.2.as_str()).collect();
        let vectors = model
            .embed_documents(&texts)
            .map_err(|message| Error::Embed {
                model: PathBuf::from(model.model_id()),
                message,
            })?;
        let rows: Vec<(String, u32, Vec<f32>)> = pending
            .drain(..)
            .zip(vectors)
            .map(|((b, c, _), v)| (b, c, v))
            .collect();
        store.add(&rows)?;
        progress(Progress::Advance(rows.len() as u64));
        Ok(rows.len() as u64)
    };
    let mut missing = 0u64;
    for (blob, path) in &todo {
        let Some(entry) = manifest.blobs.get(*blob) else {
            missing += 1;
            continue;
        };
        let Some(text) = blob_text(root, repo.as_ref(), blob, path) else {
            // Changed since it was indexed: the next `update` re-indexes it first.
            missing += 1;
            continue;
        };
        for (i, m) in entry.chunks.iter().enumerate() {
            let body = text.get(m.start as usize..m.end as usize).unwrap_or("");
            pending.push((
                blob.to_string(),
                i as u32,
                embedding_text(path, &m.symbol, body),
            ));
        }
        // Append whole blobs only: a blob with some rows has all of them.
        if pending.len() >= opts.embed_batch.max(1) {
            embedded += flush(&mut pending, model, progress)?;
        }
    }
    embedded += flush(&mut pending, model, progress)?;

    // Vectors of blobs the manifest forgot are dead weight.
    let known: HashSet<&str> = manifest.blobs.keys().map(String::as_str).collect();
    let dead: Vec<String> = have
        .iter()
        .filter(|b| !known.contains(b.as_str()))
        .cloned()
        .collect();
    store.delete_blobs(&dead)?;
    if embedded > 0 || !dead.is_empty() {
        store.optimize()?;
    }
    Ok(EmbedSummary {
        embedded,
        rows: store.count()? as u64,
        missing_blobs: missing,
        ann: store.has_ann()?,
        elapsed: started.elapsed(),
    })
}

/// How many indexed blobs have no vectors yet for `model_id` (for `index --status`).
pub fn missing_blobs(root: &Path, model_id: &str, dim: usize) -> Result<(u64, u64)> {
    let dir = index_dir(root);
    let Some(manifest) = Manifest::load(&dir) else {
        return Ok((0, 0));
    };
    let store = VectorStore::open(&dir, model_id, dim, false)?;
    let have = store.blobs()?;
    let live: HashSet<&str> = manifest
        .files
        .values()
        .filter(|f| f.skip.is_none() && f.chunks > 0)
        .map(|f| f.blob.as_str())
        .collect();
    let missing = live.iter().filter(|b| !have.contains(**b)).count() as u64;
    Ok((live.len() as u64, missing))
}

/// The text embedded for a chunk: its path and symbol, then its code.
pub fn embedding_text(path: &str, symbol: &str, body: &str) -> String {
    if symbol.is_empty() {
        format!("{path}\n{body}")
    } else {
        format!("{path} {symbol}\n{body}")
    }
}

/// The text of a blob: from the object database, else from the working-tree file if its
/// content still has that id.
fn blob_text(
    root: &Path,
    repo: Option<&git2::Repository>,
    blob: &str,
    path: &str,
) -> Option<String> {
    if let Some(b) = repo.and_then(|r| {
        git2::Oid::from_str(blob)
            .ok()
            .and_then(|id| r.find_blob(id).ok())
    }) {
        return Some(String::from_utf8_lossy(b.content()).into_owned());
    }
    let bytes = std::fs::read(root.join(path)).ok()?;
    (super::scan::blob_id(&bytes) == blob).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

fn row_schema(dim: usize) -> Schema {
    Schema::new(vec![
        Field::new("blob", DataType::Utf8, false),
        Field::new("chunk", DataType::UInt32, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dim as i32,
            ),
            false,
        ),
    ])
}

fn lance_err(dir: &Path) -> impl Fn(lancedb::Error) -> Error + '_ {
    move |e| Error::Lance {
        path: dir.to_path_buf(),
        message: e.to_string(),
    }
}
