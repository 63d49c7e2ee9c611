//! `troupe search` as a service: the repository's index and its embedding model opened once and
//! kept open, so every search after the first costs the query alone.
//!
//! `troupe search` runs a [`Searcher`] in its own process for one query; a session keeps one
//! (behind a [`SearchService`]) for `Op::Search` with a mode, so a `troupe search` sent to a
//! running instance gets the same notes, results and errors, with the model already loaded.
//!
//! The embedding model is loaded on the first search that needs vectors and kept; a load that
//! fails is tried again on the next search (the model may have been pulled meanwhile). The open
//! index is kept until the index on disk changes (its manifest, or a vector table's versions),
//! then opened again, so a `troupe index` run meanwhile is seen by the next search.
//!
//! Blocking, and a [`Searcher`] is not `Send` (the retriever holds LanceDB's runtime and the
//! embedder): [`SearchService`] runs one on a thread of its own for async callers. Depends on
//! retrieve, index (the embedder and where the index lives), models and config.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::SystemTime;

use crate::config::{Config, SearchMode};
use crate::index::vectors::{Embed, ModelEmbedder};
use crate::models::{Role, Store};
use crate::retrieve::{Params, Retriever, SearchResult};

/// What to search for, as `troupe search` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub query: String,
    /// Which rankers run.
    pub mode: SearchMode,
    /// Results wanted (`None`: `retrieve.limit`).
    pub limit: Option<usize>,
    /// One result per file (its best chunk).
    pub files: bool,
}

/// The answer to a search: notes for the user (e.g. why it ran on BM25 alone), then results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    /// Each printed as `note: ...` on stderr.
    pub notes: Vec<String>,
    /// Best first; empty when nothing matches.
    pub results: Vec<SearchResult>,
}

/// Why a search failed; the message is the whole story (no source chain), so it reads the
/// same wherever the search ran.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Vector search was asked for and the embedding model cannot be used.
    #[error("the embedding model `{name}`: {message}")]
    Embedder { name: String, message: String },
    /// The index cannot be opened (there is none, say), or a query on it failed.
    #[error("{0}")]
    Index(String),
    /// The search thread stopped or did not answer.
    #[error("the search did not finish: {0}")]
    Stopped(String),
}

/// The index of one repository, opened for searching and kept open.
pub struct Searcher {
    root: PathBuf,
    config: Config,
    store: Store,
    embedder: Option<SharedEmbedder>,
    open: Option<OpenIndex>,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher")
            .field("root", &self.root)
            .field("embedder", &self.embedder.is_some())
            .field("open", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

/// An open retriever and what it was opened on.
struct OpenIndex {
    stamp: Stamp,
    with_embedder: bool,
    retriever: Retriever,
}

impl Searcher {
    /// A searcher of the index of `root`, with `config`'s retrieval settings and embedding
    /// model (resolved in `store`). Nothing is opened yet.
    pub fn new(root: &Path, config: Config, store: Store) -> Self {
        Self {
            root: root.to_path_buf(),
            config,
            store,
            embedder: None,
            open: None,
        }
    }

    /// Runs one search. In hybrid mode a missing embedding model or missing vectors leave
    /// BM25 alone, with a note saying why; in vector mode they are errors.
    pub fn search(&mut self, req: &SearchRequest) -> Result<Found, SearchError> {
        let mut params = Params::from_config(&self.config.retrieve);
        params.mode = req.mode;
        if let Some(l) = req.limit {
            params.limit = l.max(1);
        }
        params.files = req.files;
        let mut found = Found::default();
        // BM25 alone needs no model; the others load it once.
        if req.mode != SearchMode::Bm25
            && self.embedder.is_none()
            && let Err(e) = self.load_embedder()
        {
            if req.mode == SearchMode::Vector {
                return Err(e);
            }
            found.notes.push(e.to_string());
        }
        let retriever = self.retriever()?;
        if req.mode == SearchMode::Hybrid
            && let Some(why) = retriever.vectors_unavailable()
        {
            found.notes.push(format!("BM25 only: {why}"));
        }
        let results = retriever.search(&req.query, &params).map_err(|e| {
            SearchError::Index(format!("searching {}: {}", self.root.display(), chain(&e)))
        })?;
        found.results = results.into_iter().map(reported).collect();
        Ok(found)
    }

    fn load_embedder(&mut self) -> Result<(), SearchError> {
        let name = &self.config.model.embed;
        let failed = |message: String| SearchError::Embedder {
            name: name.clone(),
            message,
        };
        let resolved = self
            .store
            .resolve(name, Role::Embedding)
            .map_err(|e| failed(chain(&e)))?;
        let threads = match self.config.engine.threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
            n => n as i32,
        };
        let spec = resolved
            .embedding()
            .unwrap_or(crate::models::catalog::Embedding::UNKNOWN);
        let model =
            ModelEmbedder::load(&resolved.path, threads, &spec).map_err(|e| failed(chain(&e)))?;
        self.embedder = Some(SharedEmbedder(std::rc::Rc::new(std::cell::RefCell::new(
            model,
        ))));
        Ok(())
    }

    /// The open retriever, opened (again) when the index changed or the embedder came since.
    fn retriever(&mut self) -> Result<&mut Retriever, SearchError> {
        let stamp = Stamp::of(&self.root);
        let with_embedder = self.embedder.is_some();
        let current = self
            .open
            .as_ref()
            .is_some_and(|o| o.stamp == stamp && o.with_embedder == with_embedder);
        if !current {
            self.open = None;
            let embedder = self.embedder.clone().map(|e| Box::new(e) as Box<dyn Embed>);
            let retriever =
                Retriever::open(&self.root, embedder).map_err(|e| SearchError::Index(chain(&e)))?;
            self.open = Some(OpenIndex {
                stamp,
                with_embedder,
                retriever,
            });
        }
        match self.open.as_mut() {
            Some(o) => Ok(&mut o.retriever),
            None => Err(SearchError::Index("the index did not open".into())),
        }
    }
}

/// Runs a [`Searcher`] on a thread of its own; cheap to clone. The thread ends once every
/// handle is dropped.
#[derive(Debug, Clone)]
pub struct SearchService {
    jobs: std_mpsc::Sender<Job>,
}

type Job = (
    SearchRequest,
    tokio::sync::oneshot::Sender<Result<Found, SearchError>>,
);

impl SearchService {
    /// Starts the thread for the index of `root` (nothing is opened before the first search).
    pub fn start(root: &Path, config: Config, store: Store) -> std::io::Result<Self> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let root = root.to_path_buf();
        std::thread::Builder::new()
            .name("troupe-search".into())
            .spawn(move || {
                let mut searcher = Searcher::new(&root, config, store);
                while let Ok((req, reply)) = rx.recv() {
                    let _ = reply.send(searcher.search(&req));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `req` on the search thread.
    pub async fn search(&self, req: SearchRequest) -> Result<Found, SearchError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send((req, tx))
            .map_err(|_| SearchError::Stopped("the search thread has stopped".into()))?;
        rx.await
            .map_err(|_| SearchError::Stopped("the search thread stopped mid-search".into()))?
    }
}

/// A result as reported: its score to 9 decimal places. Any JSON parser reads such a number
/// back exactly, so results sent to another process print the same there.
fn reported(mut r: SearchResult) -> SearchResult {
    r.score = (r.score * 1e9).round() / 1e9;
    r
}

/// `e` and its sources, joined by `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The embedding model, shared by the retrievers opened one after another.
#[derive(Clone)]
struct SharedEmbedder(std::rc::Rc<std::cell::RefCell<ModelEmbedder>>);

impl Embed for SharedEmbedder {
    fn model_id(&self) -> String {
        self.0.borrow().model_id()
    }

    fn dim(&self) -> usize {
        self.0.borrow().dim()
    }

    fn embed_documents(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.0.borrow_mut().embed_documents(texts)
    }

    fn embed_query(&mut self, text: &str) -> Result<Vec<f32>, String> {
        self.0.borrow_mut().embed_query(text)
    }
}

/// What the on-disk index looks like from outside: the manifest (replaced after every
/// full-text commit, so a new file: a new inode on Unix) and each vector table's versions
/// directory (a file per table version). Equal stamps: nothing was written in between.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<(PathBuf, Option<SystemTime>, u64, u64)>);

impl Stamp {
    fn of(root: &Path) -> Self {
        let dir = crate::index::index_dir(root);
        let meta = |p: &Path| {
            let m = std::fs::metadata(p).ok();
            #[cfg(unix)]
            let inode = m.as_ref().map_or(0, std::os::unix::fs::MetadataExt::ino);
            #[cfg(not(unix))]
            let inode = 0;
            (
                p.to_path_buf(),
                m.as_ref().and_then(|m| m.modified().ok()),
                m.map_or(0, |m| m.len()),
                inode,
            )
        };
        let mut parts = vec![meta(&dir.join(crate::index::manifest::FILE))];
        let vectors = crate::index::vectors::vectors_dir(&dir);
        if let Ok(entries) = std::fs::read_dir(&vectors) {
            let mut tables: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path().join("_versions")))
                .collect();
            tables.sort();
            parts.extend(tables.iter().map(|t| meta(t)));
        }
        Stamp(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("calc.py"),
            "def add(a, b):\n    return a + b\n\n\ndef scale(x, factor):\n    return x * factor\n",
        )
        .unwrap();
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        dir
    }

    fn bm25(query: &str) -> SearchRequest {
        SearchRequest {
            query: query.into(),
            mode: SearchMode::Bm25,
            limit: None,
            files: false,
        }
    }

    #[test]
    fn scores_as_reported_read_back_exactly_from_json() {
        for score in [
            1.0 / 62.0,
            0.032_786_885_245_901_64,
            1.0 / 3.0 * 0.7,
            12.345_678_901_23,
        ] {
            let r = reported(SearchResult {
                path: "a".into(),
                start_line: 1,
                end_line: 1,
                symbol: String::new(),
                language: "python".into(),
                score,
                snippet: String::new(),
            });
            let text = serde_json::to_string(&r.to_json()).unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back["score"].as_f64().unwrap().to_bits(), r.score.to_bits());
            assert!((r.score - score).abs() < 1e-9);
        }
    }

    #[test]
    fn a_kept_index_sees_an_update_made_after_it_was_opened() {
        let dir = repo();
        let opts = crate::index::Options::default();
        crate::index::update(dir.path(), &opts, &mut |_| {}).unwrap();
        let mut searcher = Searcher::new(dir.path(), Config::default(), Store::default());
        let first = searcher.search(&bm25("scale")).unwrap();
        assert_eq!(first.results.len(), 1);
        assert!(first.notes.is_empty(), "{:?}", first.notes);
        assert!(
            searcher
                .search(&bm25("subtract"))
                .unwrap()
                .results
                .is_empty()
        );

        std::fs::write(
            dir.path().join("more.py"),
            "def subtract(a, b):\n    return a - b\n",
        )
        .unwrap();
        // A later modification time than the first manifest's, on coarse clocks too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        crate::index::update(dir.path(), &opts, &mut |_| {}).unwrap();
        let found = searcher.search(&bm25("subtract")).unwrap();
        assert_eq!(found.results.len(), 1, "{found:?}");
        assert_eq!(found.results[0].path, "more.py");
    }

    #[test]
    fn no_index_is_an_error_naming_the_fix_and_a_missing_model_a_note_in_hybrid_mode() {
        let dir = repo();
        let mut config = Config::default();
        config.model.embed = "/nonexistent/embed.gguf".into();
        let mut searcher = Searcher::new(dir.path(), config, Store::default());
        let e = searcher.search(&bm25("add")).unwrap_err().to_string();
        assert!(e.contains("troupe index"), "{e}");

        crate::index::update(dir.path(), &Default::default(), &mut |_| {}).unwrap();
        let hybrid = SearchRequest {
            mode: SearchMode::Hybrid,
            ..bm25("add")
        };
        let found = searcher.search(&hybrid).unwrap();
        assert_eq!(found.results.len(), 1);
        assert_eq!(found.notes.len(), 2, "{:?}", found.notes);
        assert!(found.notes[0].contains("/nonexistent/embed.gguf"));
        assert!(found.notes[1].starts_with("BM25 only: "));
        let vector = SearchRequest {
            mode: SearchMode::Vector,
            ..bm25("add")
        };
        let e = searcher.search(&vector).unwrap_err().to_string();
        assert!(
            e.starts_with("the embedding model `/nonexistent/embed.gguf`"),
            "{e}"
        );
    }
}
