//! Building and updating the index: scan, diff against the manifest, chunk what is new, write
//! the full-text index, then save the manifest; and the status of an index against the tree.
//!
//! One indexer at a time per repository ([`IndexLock`]). Crash safety comes from the order of
//! writes: the tantivy commit (atomic, carrying the new generation) comes before the manifest
//! (written atomically); a run killed between them leaves a manifest one generation behind, and
//! the next run rebuilds the text index from the manifest's chunk cache.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::chunk::{self, ChunkOptions};
use super::manifest::{BlobEntry, ChunkMeta, FileEntry, Manifest};
use super::scan::{self, ScanOptions, ScannedFile, SkipReason};
use super::{Error, Result, text};

/// How long unused cached blobs are kept, in updates (branch switches back stay cheap).
const KEEP_GENERATIONS: u64 = 20;

/// Options of an update.
#[derive(Debug, Clone)]
pub struct Options {
    /// What the scan covers.
    pub scan: ScanOptions,
    /// Chunk sizes.
    pub chunk: ChunkOptions,
    /// How long to wait for another indexer to finish before giving up.
    pub lock_timeout: Duration,
    /// Chunks embedded per model call and appended per vector-table commit.
    pub embed_batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scan: ScanOptions::default(),
            chunk: ChunkOptions::default(),
            lock_timeout: Duration::from_secs(120),
            embed_batch: 64,
        }
    }
}

/// Progress of a long operation, for a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A phase starts; `total` units of work (0 when unknown).
    Phase {
        /// What the phase does (`scanning`, `indexing`, `embedding`).
        name: &'static str,
        /// Units of work (files, chunks), 0 when unknown.
        total: u64,
    },
    /// `n` more units done.
    Advance(u64),
    /// Waiting for another indexer holding the lock.
    Waiting,
}

/// What an update did and what the index now holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Files indexed (not skipped).
    pub files: u64,
    /// Chunks in the index.
    pub chunks: u64,
    /// Indexed files per language id.
    pub languages: BTreeMap<String, u64>,
    /// Files left out, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Files (re)indexed by this run: new, changed or renamed.
    pub updated: u64,
    /// Files removed from the index by this run.
    pub removed: u64,
    /// Blobs chunked by this run (the others came from the cache).
    pub chunked: u64,
    /// Whether the text index was rebuilt from scratch (first run, or recovery).
    pub rebuilt: bool,
    /// Wall time of the update.
    pub elapsed: Duration,
}

/// The state of the index against the working tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Whether an index exists.
    pub exists: bool,
    /// Files whose indexed content is current.
    pub current: u64,
    /// Files changed since they were indexed.
    pub changed: Vec<String>,
    /// Files not in the index yet.
    pub added: Vec<String>,
    /// Indexed files that are gone.
    pub removed: Vec<String>,
    /// Whether the text index and the manifest disagree (a run was interrupted).
    pub interrupted: bool,
    /// Chunks in the text index.
    pub chunks: u64,
    /// Unix seconds of the last update.
    pub updated_at: u64,
}

impl Status {
    /// Whether anything needs indexing.
    pub fn is_stale(&self) -> bool {
        !self.exists
            || self.interrupted
            || !self.changed.is_empty()
            || !self.added.is_empty()
            || !self.removed.is_empty()
    }
}

/// The index directory of the repository at `root`: `.troupe/index`.
pub fn index_dir(root: &Path) -> PathBuf {
    root.join(scan::STATE_DIR).join("index")
}

/// The full-text index directory inside an index directory.
pub fn text_dir(index_dir: &Path) -> PathBuf {
    index_dir.join("text")
}

/// Holds the index lock of a repository; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct IndexLock {
    _file: std::fs::File,
}

impl IndexLock {
    /// Takes the lock of the index in `dir`, waiting up to `timeout` for another indexer.
    pub fn acquire(
        dir: &Path,
        timeout: Duration,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            context: "cannot create",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                context: "cannot open",
                path: path.clone(),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Locked { path, timeout });
                    }
                    if !told {
                        progress(Progress::Waiting);
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(Error::Io {
                        context: "cannot lock",
                        path,
                        source,
                    });
                }
            }
        }
    }
}

/// Brings the index of the repository at `root` up to date with its working tree (text index
/// and manifest; embeddings are [`super::vectors::embed_missing`]'s job).
pub fn update(root: &Path, opts: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Summary> {
    let started = Instant::now();
    let dir = index_dir(root);
    let _lock = IndexLock::acquire(&dir, opts.lock_timeout, progress)?;
    ensure_state_ignored(root)?;

    progress(Progress::Phase {
        name: "scanning",
        total: 0,
    });
    let scanned = scan::scan(root, &opts.scan)?;
    let repo = git2::Repository::open(root).ok();

    let tdir = text_dir(&dir);
    let (index, fields) = text::open_or_create(&tdir)?;
    let old = Manifest::load(&dir);
    let committed = text::committed_generation(&index);
    let mut manifest = match old {
        Some(m) if m.chunk_options == opts.chunk => m,
        _ => Manifest {
            chunk_options: opts.chunk,
            ..Manifest::default()
        },
    };
    // The text index must be exactly what the manifest describes; otherwise rebuild it (the
    // chunk cache still saves the chunking).
    let rebuild = committed.unwrap_or(0) != manifest.generation
        || (manifest.generation == 0 && !manifest.files.is_empty());
    let mut writer = text::writer(&index, &tdir)?;
    if rebuild {
        tracing::info!(
            manifest = manifest.generation,
            committed = ?committed,
            "the text index does not match the manifest (interrupted run); rebuilding it"
        );
        writer.delete_all_documents().map_err(|e| Error::Tantivy {
            path: tdir.clone(),
            message: e.to_string(),
        })?;
        manifest.files.clear();
    }
    let generation = manifest.generation.max(committed.unwrap_or(0)) + 1;

    // What changed.
    let max = opts.scan.max_file_bytes;
    let mut todo: Vec<&ScannedFile> = Vec::new();
    let mut keep: BTreeMap<String, FileEntry> = BTreeMap::new();
    for file in &scanned.files {
        match manifest.files.get(&file.path) {
            // Same content, and the size limit does not flip its outcome.
            Some(entry)
                if entry.blob == file.blob
                    && (entry.skip != Some(SkipReason::TooLarge) || file.size > max)
                    && (entry.skip.is_some() || file.size <= max) =>
            {
                keep.insert(file.path.clone(), entry.clone());
            }
            _ => todo.push(file),
        }
    }
    let present: std::collections::HashSet<&str> =
        scanned.files.iter().map(|f| f.path.as_str()).collect();
    let removed: Vec<String> = manifest
        .files
        .keys()
        .filter(|p| !present.contains(p.as_str()))
        .cloned()
        .collect();
    for path in removed.iter().chain(todo.iter().map(|f| &f.path)) {
        writer.delete_term(text::path_term(&fields, path));
    }

    // Chunk and index what changed, on every core.
    progress(Progress::Phase {
        name: "indexing",
        total: todo.len() as u64,
    });
    let cache = &manifest.blobs;
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Result<Indexed>>();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(todo.len().max(1));
    let mut results: Vec<Indexed> = Vec::with_capacity(todo.len());
    let mut first_error = None;
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (todo, next, writer, fields) = (&todo, &next, &writer, &fields);
            let repo_path = repo.as_ref().map(|r| r.path().to_path_buf());
            let chunk_opts = opts.chunk;
            s.spawn(move || {
                // Each worker opens its own handle: git2 repositories are not `Sync`.
                let own_repo = repo_path.and_then(|p| git2::Repository::open(p).ok());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = todo.get(i) else { break };
                    let r = index_file(
                        root,
                        own_repo.as_ref(),
                        file,
                        cache,
                        &chunk_opts,
                        writer,
                        fields,
                        generation,
                    );
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for r in rx {
            progress(Progress::Advance(1));
            match r {
                Ok(done) => results.push(done),
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
    });
    if let Some(e) = first_error {
        // Nothing was committed: the index stays as it was.
        return Err(e);
    }

    let mut chunked = 0;
    for done in results {
        if let Some((blob, entry)) = done.new_blob {
            chunked += 1;
            manifest.blobs.insert(blob, entry);
        }
        keep.insert(done.path, done.entry);
    }
    let updated = todo.len() as u64;
    for entry in keep.values() {
        if let Some(b) = manifest.blobs.get_mut(&entry.blob) {
            b.last_used = generation;
        }
    }
    manifest.files = keep;
    manifest.generation = generation;
    manifest.scan_skipped = scanned.skipped.clone();
    manifest.head = repo
        .as_ref()
        .and_then(|r| r.head().ok())
        .and_then(|h| h.target())
        .map(|oid| oid.to_string());
    manifest.updated_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    manifest.evict(KEEP_GENERATIONS);

    let terr = |e: tantivy::TantivyError| Error::Tantivy {
        path: tdir.clone(),
        message: e.to_string(),
    };
    if updated > 0 || !removed.is_empty() || rebuild || committed.is_none() {
        let mut prepared = writer.prepare_commit().map_err(terr)?;
        prepared.set_payload(&generation.to_string());
        prepared.commit().map_err(terr)?;
        writer.wait_merging_threads().map_err(terr)?;
        manifest.save(&dir)?;
    } else {
        // Nothing changed: keep the generation the text index carries.
        drop(writer);
        manifest.generation = generation - 1;
        manifest.save(&dir)?;
    }

    let mut summary = summarize(&manifest);
    summary.updated = updated;
    summary.removed = removed.len() as u64;
    summary.chunked = chunked;
    summary.rebuilt = rebuild || committed.is_none();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// What the index holds, from its manifest.
pub fn summarize(manifest: &Manifest) -> Summary {
    let mut s = Summary {
        skipped: manifest.skipped(),
        ..Summary::default()
    };
    for f in manifest.files.values() {
        if f.skip.is_none() {
            s.files += 1;
            s.chunks += u64::from(f.chunks);
            *s.languages.entry(f.language.clone()).or_default() += 1;
        }
    }
    s
}

/// Compares the index of the repository at `root` with its working tree; writes nothing.
pub fn status(root: &Path, opts: &Options) -> Result<Status> {
    let dir = index_dir(root);
    let Some(manifest) = Manifest::load(&dir) else {
        return Ok(Status::default());
    };
    let scanned = scan::scan(root, &opts.scan)?;
    let reader = text::TextReader::open(&text_dir(&dir)).ok();
    let committed = text::generation_in(&text_dir(&dir));
    let mut st = Status {
        exists: reader.is_some(),
        chunks: reader.as_ref().map_or(0, text::TextReader::num_chunks),
        interrupted: committed != Some(manifest.generation),
        updated_at: manifest.updated_at,
        ..Status::default()
    };
    for file in &scanned.files {
        match manifest.files.get(&file.path) {
            Some(e) if e.blob == file.blob => st.current += 1,
            Some(_) => st.changed.push(file.path.clone()),
            None => st.added.push(file.path.clone()),
        }
    }
    let present: std::collections::HashSet<&str> =
        scanned.files.iter().map(|f| f.path.as_str()).collect();
    st.removed = manifest
        .files
        .keys()
        .filter(|p| !present.contains(p.as_str()))
        .cloned()
        .collect();
    Ok(st)
}

/// The outcome of indexing one file.
struct Indexed {
    path: String,
    entry: FileEntry,
    /// A blob chunked by this run, for the cache.
    new_blob: Option<(String, BlobEntry)>,
}

#[allow(clippy::too_many_arguments)]
fn index_file(
    root: &Path,
    repo: Option<&git2::Repository>,
    file: &ScannedFile,
    cache: &HashMap<String, BlobEntry>,
    chunk_opts: &ChunkOptions,
    writer: &tantivy::IndexWriter,
    fields: &text::Fields,
    generation: u64,
) -> Result<Indexed> {
    let skipped = |blob: String, reason| Indexed {
        path: file.path.clone(),
        entry: FileEntry {
            blob,
            size: file.size,
            skip: Some(reason),
            language: String::new(),
            chunks: 0,
        },
        new_blob: None,
    };
    if let Some(reason) = file.skip {
        return Ok(skipped(file.blob.clone(), reason));
    }
    let (bytes, blob) = match scan::read(root, repo, file) {
        Ok(r) => r,
        // Deleted since the scan: index it as empty; the next run drops it.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(skipped(file.blob.clone(), SkipReason::Empty));
        }
        Err(e) => return Err(e),
    };
    if let Some(reason) = scan::classify(&file.path, &bytes) {
        return Ok(skipped(blob, reason));
    }
    let text = String::from_utf8_lossy(&bytes);
    let language = chunk::language_for_path(&file.path).map_or(chunk::TEXT, |l| l.id);
    let (metas, new_blob) = match cache.get(&blob) {
        Some(entry) if entry.language == language => (entry.chunks.clone(), None),
        _ => {
            let chunks = chunk::chunk_file(&file.path, &text, chunk_opts);
            let metas: Vec<ChunkMeta> = chunks
                .iter()
                .map(|c| ChunkMeta {
                    start_line: c.start_line as u32,
                    end_line: c.end_line as u32,
                    start: c.byte_range.start as u32,
                    end: c.byte_range.end as u32,
                    symbol: c.symbol.clone(),
                    kind: c.kind,
                })
                .collect();
            let entry = BlobEntry {
                language: language.to_string(),
                chunks: metas.clone(),
                last_used: generation,
            };
            (metas, Some((blob.clone(), entry)))
        }
    };
    for (i, m) in metas.iter().enumerate() {
        let body = text.get(m.start as usize..m.end as usize).unwrap_or("");
        let doc = text::document(
            fields,
            &file.path,
            &blob,
            i as u32,
            language,
            m.kind.as_str(),
            &m.symbol,
            (m.start_line, m.end_line),
            body,
        );
        writer.add_document(doc).map_err(|e| Error::Tantivy {
            path: root.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(Indexed {
        path: file.path.clone(),
        entry: FileEntry {
            blob,
            size: file.size,
            skip: None,
            language: language.to_string(),
            chunks: metas.len() as u32,
        },
        new_blob,
    })
}

/// Makes sure `.troupe/` exists with its own `.gitignore`, so the index never shows in
/// `git status` (the user's ignore files stay untouched).
fn ensure_state_ignored(root: &Path) -> Result<()> {
    let dir = root.join(scan::STATE_DIR);
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            context: "cannot create",
            path: dir.clone(),
            source,
        })?;
        std::fs::write(&ignore, "# troupe's state: never committed\n*\n").map_err(|source| {
            Error::Io {
                context: "cannot write",
                path: ignore.clone(),
                source,
            }
        })?;
    }
    Ok(())
}
