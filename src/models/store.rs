//! The model cache: where catalog models live, whether each is present and verified, and how a
//! model name or path resolves to a file.
//!
//! Each verified file has a stamp beside it (`<file>.verified`) recording the sha256, size and
//! modification time that were checked. A file with no stamp, or whose size or time no longer
//! match it, is not present. `verify` always re-hashes the whole file.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::catalog::{self, ModelEntry, Role};
use super::{Error, Result};

/// Whether a catalog model is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The file is there and matches its verified stamp.
    Present,
    /// No file.
    Missing,
    /// A file is there, but it was never verified or changed since (partial, corrupt, replaced).
    Unverified,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Present => "present, verified",
            Status::Missing => "missing",
            Status::Unverified => "not verified",
        })
    }
}

/// A model name or path resolved to a file.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    /// The catalog entry, when the model was named from the catalog.
    pub entry: Option<&'static ModelEntry>,
}

impl Resolved {
    /// How to use it as an embedding model when it is a catalog model (named, or given by the
    /// path of its cache file): its prompts, input limit and vector size.
    pub fn embedding(&self) -> Option<super::catalog::Embedding> {
        self.entry
            .or_else(|| {
                self.path
                    .file_name()
                    .and_then(|n| super::catalog::find_by_file_name(&n.to_string_lossy()))
            })
            .and_then(|e| e.embedding)
    }
}

/// The model cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(crate::paths::models_dir())
    }
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `entry`'s file lives in the cache (whether or not it is there).
    pub fn path(&self, entry: &ModelEntry) -> PathBuf {
        self.dir.join(entry.file_name)
    }

    fn stamp_path(&self, entry: &ModelEntry) -> PathBuf {
        self.dir.join(format!("{}.verified", entry.file_name))
    }

    /// Cheap check: file present and unchanged since it was verified.
    pub fn status(&self, entry: &ModelEntry) -> Status {
        let path = self.path(entry);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Status::Missing;
        };
        let Ok(stamp) = std::fs::read_to_string(self.stamp_path(entry)) else {
            return Status::Unverified;
        };
        if !entry.sha256.is_empty() && stamp.trim() == stamp_line(entry.sha256, &meta) {
            Status::Present
        } else {
            Status::Unverified
        }
    }

    /// Re-hashes the file and compares it with the catalog. On success the stamp is renewed; on a
    /// mismatch the stamp is removed so the file no longer counts as present.
    pub fn verify(&self, entry: &ModelEntry) -> Result<()> {
        let path = self.path(entry);
        if !path.exists() {
            return Err(Error::NotPresent {
                id: entry.id.to_string(),
            });
        }
        let actual = sha256_file(&path)?;
        if actual != entry.sha256 {
            let _ = std::fs::remove_file(self.stamp_path(entry));
            return Err(Error::Corrupt {
                id: entry.id.to_string(),
                path,
                actual,
                expected: entry.sha256.to_string(),
            });
        }
        self.write_stamp(entry)
    }

    /// Moves a fully written `part` file into place after checking its sha256, then stamps it.
    /// A part that does not match is deleted and reported as corrupt.
    pub fn install(&self, entry: &ModelEntry, part: &Path, actual_sha256: &str) -> Result<PathBuf> {
        let path = self.path(entry);
        if actual_sha256 != entry.sha256 {
            let _ = std::fs::remove_file(part);
            return Err(Error::Corrupt {
                id: entry.id.to_string(),
                path: part.to_path_buf(),
                actual: actual_sha256.to_string(),
                expected: entry.sha256.to_string(),
            });
        }
        let _ = std::fs::remove_file(self.stamp_path(entry));
        std::fs::rename(part, &path).map_err(io("cannot move into place", &path))?;
        self.write_stamp(entry)?;
        Ok(path)
    }

    fn write_stamp(&self, entry: &ModelEntry) -> Result<()> {
        let path = self.path(entry);
        let meta = std::fs::metadata(&path).map_err(io("cannot read", &path))?;
        let stamp = self.stamp_path(entry);
        let tmp = stamp.with_extension("verified.tmp");
        std::fs::write(&tmp, stamp_line(entry.sha256, &meta) + "\n")
            .map_err(io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &stamp).map_err(io("cannot write", &stamp))
    }

    /// Resolves a catalog name or a GGUF path to a usable file for `role`.
    ///
    /// A name must be in the catalog and present; a path must exist and be a GGUF file.
    pub fn resolve(&self, name_or_path: &str, role: Role) -> Result<Resolved> {
        if let Some(entry) = catalog::find(name_or_path) {
            if entry.role != role {
                return Err(Error::WrongRole {
                    id: entry.id.to_string(),
                    actual: entry.role,
                    wanted: role,
                });
            }
            return match self.status(entry) {
                Status::Present => Ok(Resolved {
                    path: self.path(entry),
                    entry: Some(entry),
                }),
                Status::Missing | Status::Unverified => Err(Error::NotPresent {
                    id: entry.id.to_string(),
                }),
            };
        }
        let path = PathBuf::from(name_or_path);
        let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
            || name_or_path.contains('/')
            || name_or_path.ends_with(".gguf");
        if !looks_like_path {
            return Err(Error::Unknown {
                name: name_or_path.to_string(),
                known: catalog::ids(),
            });
        }
        check_gguf(&path)?;
        Ok(Resolved { path, entry: None })
    }
}

/// Fails unless `path` exists and starts with the GGUF magic.
pub fn check_gguf(path: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::PathMissing {
                path: path.to_path_buf(),
            }
        } else {
            Error::Io {
                context: "cannot open",
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        _ => Err(Error::NotGguf {
            path: path.to_path_buf(),
        }),
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io("cannot open", path))?;
    let mut writer = HashingWriter::new(std::io::sink());
    std::io::copy(&mut file, &mut writer).map_err(io("cannot read", path))?;
    Ok(writer.finish().1)
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The inner writer and the lowercase hex sha256 of everything written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn stamp_line(sha256: &str, meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("sha256={sha256} size={} mtime_ns={mtime}", meta.len())
}

pub(crate) fn io<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sha256: &'static str) -> ModelEntry {
        ModelEntry {
            id: "test-model",
            role: Role::Chat,
            description: "test",
            file_name: "test-model.gguf",
            size: 0,
            license: "MIT",
            sha256,
            sources: &[],
            checkpoint: None,
            embedding: None,
        }
    }

    const HELLO_SHA: &str = "8ae5b2a5d0e4e0bd0f8bd64e0a1b5c0fa4f1c1e5d3b3e1c7d0f2a1b4c5d6e7f8";

    fn sha_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_verified_file_is_present_and_a_changed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let content = b"GGUF fake model bytes";
        let sha: &'static str = Box::leak(sha_of(content).into_boxed_str());
        let e = entry(sha);
        assert_eq!(store.status(&e), Status::Missing);
        let part = dir.path().join("x.part");
        std::fs::write(&part, content).unwrap();
        store.install(&e, &part, sha).unwrap();
        assert_eq!(store.status(&e), Status::Present);
        store.verify(&e).unwrap();
        // Corrupt it behind troupe's back: the stamp no longer matches, and verify says why.
        std::fs::write(store.path(&e), b"GGUF fake model bytez and more").unwrap();
        assert_eq!(store.status(&e), Status::Unverified);
        let msg = store.verify(&e).unwrap_err().to_string();
        assert!(msg.contains("is corrupt or incomplete"), "{msg}");
        assert!(msg.contains(sha), "{msg}");
        assert!(msg.contains("troupe models pull test-model"), "{msg}");
        assert_eq!(store.status(&e), Status::Unverified);
    }

    #[test]
    fn a_part_with_the_wrong_hash_is_deleted_and_never_installed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let e = entry(HELLO_SHA);
        let part = dir.path().join("x.part");
        std::fs::write(&part, b"truncated").unwrap();
        let actual = sha_of(b"truncated");
        let err = store.install(&e, &part, &actual).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(!part.exists());
        assert!(!store.path(&e).exists());
        assert_eq!(store.status(&e), Status::Missing);
    }

    #[test]
    fn resolve_accepts_gguf_paths_and_rejects_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let good = dir.path().join("m.gguf");
        std::fs::write(&good, b"GGUF\x03\x00\x00\x00").unwrap();
        let r = store.resolve(good.to_str().unwrap(), Role::Chat).unwrap();
        assert_eq!(r.path, good);
        assert!(r.entry.is_none());
        let bad = dir.path().join("notes.gguf");
        std::fs::write(&bad, b"hello").unwrap();
        let msg = store
            .resolve(bad.to_str().unwrap(), Role::Chat)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is not a GGUF model file"), "{msg}");
        let msg = store
            .resolve("/nope/missing.gguf", Role::Chat)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not exist"), "{msg}");
    }

    #[test]
    fn resolve_names_the_pull_command_for_a_missing_catalog_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let msg = store
            .resolve("smollm2-135m-instruct", Role::Chat)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "model `smollm2-135m-instruct` is not downloaded; run `troupe models pull smollm2-135m-instruct`"
        );
        let msg = store
            .resolve("all-minilm-l6-v2", Role::Chat)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("has role embedding, but a chat model is needed"),
            "{msg}"
        );
        let msg = store.resolve("gpt-9", Role::Chat).unwrap_err().to_string();
        assert!(
            msg.starts_with("unknown model `gpt-9`; known models: "),
            "{msg}"
        );
    }
}
