//! The manifest: what the index holds, keyed by git blob id, on disk as one JSON file written
//! atomically (a temporary file, synced, then renamed over the old one).
//!
//! `files` maps each path to its blob and outcome (indexed with N chunks, or skipped and why);
//! `blobs` caches the chunks of every blob seen recently, so content indexed once (under any
//! path, on any branch) is never chunked again. `generation` counts committed updates and is
//! also written into the tantivy commit: when the two differ, a run died between them and the
//! text index is rebuilt from this cache. Owned by the indexer; readers may load it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chunk::{ChunkKind, ChunkOptions};
use super::scan::SkipReason;
use super::{Error, Result};

/// The format version; a manifest of another version is ignored (the index is rebuilt).
pub const VERSION: u32 = 1;

/// The manifest (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`VERSION`] when written.
    pub version: u32,
    /// Committed updates so far; matches the payload of the last tantivy commit.
    pub generation: u64,
    /// The chunk sizes the cached chunks were cut with; other options invalidate the cache.
    pub chunk_options: ChunkOptions,
    /// Every scanned file, by path.
    pub files: BTreeMap<String, FileEntry>,
    /// Cached chunks by blob id.
    pub blobs: HashMap<String, BlobEntry>,
    /// Files left out by the last scan before any per-file entry (excluded, not regular).
    #[serde(default)]
    pub scan_skipped: BTreeMap<SkipReason, u64>,
    /// The commit HEAD pointed at in the last update, if any.
    #[serde(default)]
    pub head: Option<String>,
    /// Unix seconds of the last update.
    #[serde(default)]
    pub updated_at: u64,
}

/// One file of the last scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Blob id of the content indexed (or skipped).
    pub blob: String,
    /// Size in bytes.
    pub size: u64,
    /// Why the file is not indexed, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<SkipReason>,
    /// The language id (empty for skipped files).
    #[serde(default)]
    pub language: String,
    /// Number of chunks indexed.
    #[serde(default)]
    pub chunks: u32,
}

/// The cached chunks of one blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// The language the blob was chunked as (chunking depends on the file extension).
    pub language: String,
    /// The chunks, in order.
    pub chunks: Vec<ChunkMeta>,
    /// The generation that last used this entry (unused entries are evicted in time).
    pub last_used: u64,
}

/// A chunk without its path or text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkMeta {
    /// First line, 1-based.
    pub start_line: u32,
    /// Last line, 1-based, inclusive.
    pub end_line: u32,
    /// Byte range start.
    pub start: u32,
    /// Byte range end (exclusive).
    pub end: u32,
    /// Symbol path.
    pub symbol: String,
    /// Kind.
    pub kind: ChunkKind,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: VERSION,
            generation: 0,
            chunk_options: ChunkOptions::default(),
            files: BTreeMap::new(),
            blobs: HashMap::new(),
            scan_skipped: BTreeMap::new(),
            head: None,
            updated_at: 0,
        }
    }
}

/// The file name of the manifest in the index directory.
pub const FILE: &str = "manifest.json";

impl Manifest {
    /// Loads the manifest from `dir`. A missing, unreadable, corrupt or other-version manifest
    /// gives `None` (with a warning for the corrupt ones): the caller rebuilds.
    pub fn load(dir: &Path) -> Option<Self> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the index manifest ({e}); rebuilding");
                return None;
            }
        };
        match serde_json::from_slice::<Self>(&bytes) {
            Ok(m) if m.version == VERSION => Some(m),
            Ok(m) => {
                tracing::info!(
                    version = m.version,
                    "index manifest of another version; rebuilding"
                );
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "corrupt index manifest ({e}); rebuilding");
                None
            }
        }
    }

    /// Writes the manifest to `dir` atomically: readers see the old or the new one, never a mix.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp-{}", std::process::id()));
        let io = |context: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io {
                context,
                path: p,
                source,
            }
        };
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Io {
            context: "cannot encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
        f.write_all(&bytes).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot sync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io("cannot replace", &path))?;
        Ok(())
    }

    /// Drops cached blobs no file uses that were last used more than `keep_generations`
    /// updates ago, so switching back to a recent branch stays cheap while the cache stays
    /// bounded.
    pub fn evict(&mut self, keep_generations: u64) {
        let live: std::collections::HashSet<&str> =
            self.files.values().map(|f| f.blob.as_str()).collect();
        let now = self.generation;
        self.blobs.retain(|blob, entry| {
            live.contains(blob.as_str()) || now.saturating_sub(entry.last_used) <= keep_generations
        });
    }

    /// Skipped files by reason: the scan-level ones plus the per-file ones.
    pub fn skipped(&self) -> BTreeMap<SkipReason, u64> {
        let mut out = self.scan_skipped.clone();
        for f in self.files.values() {
            if let Some(r) = f.skip {
                *out.entry(r).or_default() += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_manifest_loads_back_and_a_corrupt_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest {
            generation: 3,
            ..Manifest::default()
        };
        m.files.insert(
            "a.rs".into(),
            FileEntry {
                blob: "abc".into(),
                size: 10,
                skip: None,
                language: "rust".into(),
                chunks: 1,
            },
        );
        m.save(dir.path()).unwrap();
        let back = Manifest::load(dir.path()).unwrap();
        assert_eq!(back.generation, 3);
        assert_eq!(back.files, m.files);
        std::fs::write(dir.path().join(FILE), b"{\"version\": 1, \"gener").unwrap();
        assert!(Manifest::load(dir.path()).is_none());
    }
}
