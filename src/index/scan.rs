//! The repository scan: which files the index covers and the git blob id of each.
//!
//! Files tracked by git (the git index, stage 0) plus untracked files that are not ignored, less
//! `.troupe/` (troupe's own state), files matched by the repository's `.troupeignore` or by
//! `index.exclude`, anything that is not a regular file (symlinks, submodules), lockfiles and
//! files over the size limit. A file whose working-tree content differs from the git index, and
//! every untracked file, is hashed the way git hashes a blob, so uncommitted edits get their own
//! id and an unchanged file keeps the id git already knows without being read.
//!
//! Content checks (binary, minified, generated, empty) need the bytes and happen when a file is
//! indexed ([`classify`]). Reads git through git2 only; writes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, Status, StatusOptions, StatusShow};
use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// Why a file is left out of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Matched by `.troupeignore` or `index.exclude`.
    Excluded,
    /// A symlink or a submodule.
    NotRegular,
    /// Larger than `index.max_file_bytes`.
    TooLarge,
    /// A dependency lockfile (`Cargo.lock`, `package-lock.json`, ...).
    Lockfile,
    /// Holds NUL bytes.
    Binary,
    /// Minified code: very long lines.
    Minified,
    /// Marked as generated (`@generated`, `DO NOT EDIT`, `*.pb.go`, ...).
    Generated,
    /// No content.
    Empty,
}

impl SkipReason {
    /// The reason's name in summaries and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Excluded => "excluded",
            Self::NotRegular => "not_regular",
            Self::TooLarge => "too_large",
            Self::Lockfile => "lockfile",
            Self::Binary => "binary",
            Self::Minified => "minified",
            Self::Generated => "generated",
            Self::Empty => "empty",
        }
    }
}

/// One file the scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    /// Path relative to the repository root, with `/` separators.
    pub path: String,
    /// The git blob id (hex) of the working-tree content.
    pub blob: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether the working-tree content is what the git index holds (then `blob` came from git
    /// and the object can be read from the object database).
    pub clean: bool,
    /// Set when the file is skipped without reading it (size, name).
    pub skip: Option<SkipReason>,
}

/// What the scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Every candidate file, sorted by path (including the ones with `skip` set).
    pub files: Vec<ScannedFile>,
    /// Files left out before any per-file entry exists (excluded, not regular), by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

/// Options of a scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Files larger than this are skipped (`index.max_file_bytes`).
    pub max_file_bytes: u64,
    /// Extra gitignore-style patterns (`index.exclude`).
    pub exclude: Vec<String>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            max_file_bytes: 1024 * 1024,
            exclude: Vec::new(),
        }
    }
}

/// The directory troupe keeps its state in; never indexed.
pub const STATE_DIR: &str = ".troupe";

/// Scans the working tree of the repository at `root`.
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Scan> {
    let git_err = |source: git2::Error| Error::Git {
        path: root.to_path_buf(),
        source,
    };
    let repo = Repository::open(root).map_err(git_err)?;
    let ignore = ignore_matcher(root, &opts.exclude)?;
    let mut out = Scan::default();
    let mut files: BTreeMap<String, ScannedFile> = BTreeMap::new();

    // Working-tree changes against the git index, and untracked files.
    let mut status_opts = StatusOptions::new();
    status_opts
        .show(StatusShow::Workdir)
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true)
        .renames_index_to_workdir(false);
    let statuses = repo.statuses(Some(&mut status_opts)).map_err(git_err)?;
    let mut changed: BTreeMap<String, Status> = BTreeMap::new();
    for entry in statuses.iter() {
        if let Some(path) = entry.path() {
            changed.insert(path.to_string(), entry.status());
        }
    }

    // Tracked files, from the git index (stage 0; conflicted files are read from the tree).
    let index = repo.index().map_err(git_err)?;
    for entry in index.iter() {
        let Ok(path) = String::from_utf8(entry.path.clone()) else {
            continue;
        };
        if in_state_dir(&path) {
            continue;
        }
        let stage = (entry.flags >> 12) & 0x3;
        let mode = entry.mode;
        // 0o100644 / 0o100755 are regular files; 0o120000 symlinks; 0o160000 submodules.
        if mode & 0o170000 != 0o100000 {
            if stage == 0 {
                *out.skipped.entry(SkipReason::NotRegular).or_default() += 1;
            }
            continue;
        }
        if ignore.matched_path_or_any_parents(&path, false).is_ignore() {
            if stage == 0 {
                *out.skipped.entry(SkipReason::Excluded).or_default() += 1;
            }
            continue;
        }
        let status = changed.get(&path).copied().unwrap_or(Status::CURRENT);
        if status.contains(Status::WT_DELETED) {
            continue;
        }
        let clean = stage == 0
            && !status.intersects(Status::WT_MODIFIED | Status::WT_TYPECHANGE | Status::CONFLICTED);
        if clean {
            files.insert(
                path.clone(),
                ScannedFile {
                    path,
                    blob: entry.id.to_string(),
                    size: u64::from(entry.file_size),
                    clean: true,
                    skip: None,
                },
            );
        } else if let Some(file) = worktree_file(root, &path, opts.max_file_bytes)? {
            files.insert(path, file);
        }
    }

    // Untracked files that are not ignored.
    for (path, status) in &changed {
        if !status.contains(Status::WT_NEW) || in_state_dir(path) || files.contains_key(path) {
            continue;
        }
        if ignore.matched_path_or_any_parents(path, false).is_ignore() {
            *out.skipped.entry(SkipReason::Excluded).or_default() += 1;
            continue;
        }
        match worktree_file(root, path, opts.max_file_bytes)? {
            Some(file) => {
                files.insert(path.clone(), file);
            }
            None => *out.skipped.entry(SkipReason::NotRegular).or_default() += 1,
        }
    }

    for file in files.values_mut() {
        if file.skip.is_none() {
            if is_lockfile(&file.path) {
                file.skip = Some(SkipReason::Lockfile);
            } else if file.size > opts.max_file_bytes {
                file.skip = Some(SkipReason::TooLarge);
            }
        }
    }
    out.files = files.into_values().collect();
    Ok(out)
}

/// The git blob id of `bytes`, as `git hash-object` computes it.
pub fn blob_id(bytes: &[u8]) -> String {
    Oid::hash_object(ObjectType::Blob, bytes)
        .map(|oid| oid.to_string())
        .unwrap_or_default()
}

/// Reads a scanned file's bytes: from the working tree, or (for a clean file missing there, as
/// in a sparse checkout) from the object database. Returns the bytes and their blob id, which
/// differs from the scanned one when the file changed since the scan.
pub fn read(
    root: &Path,
    repo: Option<&Repository>,
    file: &ScannedFile,
) -> Result<(Vec<u8>, String)> {
    let full = root.join(&file.path);
    match std::fs::read(&full) {
        Ok(bytes) => {
            let blob = if file.clean && bytes.len() as u64 == file.size {
                // Trust git's stat cache for clean files: hashing every file would double the
                // cost of a cold index.
                file.blob.clone()
            } else {
                blob_id(&bytes)
            };
            Ok((bytes, blob))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.clean => {
            let blob = repo
                .and_then(|r| {
                    Oid::from_str(&file.blob)
                        .ok()
                        .and_then(|id| r.find_blob(id).ok())
                })
                .map(|b| b.content().to_vec());
            match blob {
                Some(bytes) => Ok((bytes, file.blob.clone())),
                None => Err(Error::Io {
                    context: "cannot read",
                    path: full,
                    source: e,
                }),
            }
        }
        Err(source) => Err(Error::Io {
            context: "cannot read",
            path: full,
            source,
        }),
    }
}

/// Content checks: why `bytes` (the content of `path`) should not be indexed, if it should not.
pub fn classify(path: &str, bytes: &[u8]) -> Option<SkipReason> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Some(SkipReason::Empty);
    }
    let head = &bytes[..bytes.len().min(8000)];
    if head.contains(&0) {
        return Some(SkipReason::Binary);
    }
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    const GENERATED_NAMES: &[&str] = &[".pb.go", "_pb2.py", "_pb2_grpc.py", ".pb.cc", ".pb.h"];
    if GENERATED_NAMES.iter().any(|s| name.ends_with(s)) || name.contains(".generated.") {
        return Some(SkipReason::Generated);
    }
    if name.contains(".min.") || name.ends_with(".map") {
        return Some(SkipReason::Minified);
    }
    // Minified: long lines on average, or one enormous line, in a file of some size.
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let longest = bytes
        .split(|&b| b == b'\n')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    if bytes.len() > 2_000 && (bytes.len() / lines > 400 || longest > 20_000) {
        return Some(SkipReason::Minified);
    }
    // Generated: a marker in the first lines, as tools write it.
    let top: Vec<u8> = bytes
        .split(|&b| b == b'\n')
        .take(5)
        .flat_map(|l| l.iter().copied().chain(std::iter::once(b'\n')))
        .collect();
    let top = String::from_utf8_lossy(&top);
    if top.contains("@generated")
        || top.contains("DO NOT EDIT")
        || top.contains("Code generated by")
        || top.contains("autogenerated by")
        || top.contains("Autogenerated by")
    {
        return Some(SkipReason::Generated);
    }
    None
}

/// Whether a path names a dependency lockfile.
pub fn is_lockfile(path: &str) -> bool {
    const NAMES: &[&str] = &[
        "cargo.lock",
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "bun.lock",
        "poetry.lock",
        "pipfile.lock",
        "pdm.lock",
        "uv.lock",
        "composer.lock",
        "gemfile.lock",
        "go.sum",
        "flake.lock",
        "mix.lock",
        "pubspec.lock",
        "podfile.lock",
        "packages.lock.json",
    ];
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    NAMES.contains(&name.as_str())
}

fn in_state_dir(path: &str) -> bool {
    path == STATE_DIR || path.starts_with(".troupe/")
}

/// A working-tree file's size and blob id (`None` if it is not a regular file). Files over the
/// size limit are not hashed: they are skipped anyway, and their id only needs to change when
/// they do, so size and modification time stand in for it.
fn worktree_file(root: &Path, path: &str, max_bytes: u64) -> Result<Option<ScannedFile>> {
    let full: PathBuf = root.join(path);
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                context: "cannot read",
                path: full,
                source,
            });
        }
    };
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    let size = meta.len();
    let blob = if size > max_bytes {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("large-{size}-{mtime}")
    } else {
        match std::fs::read(&full) {
            Ok(bytes) => blob_id(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    context: "cannot read",
                    path: full,
                    source,
                });
            }
        }
    };
    Ok(Some(ScannedFile {
        path: path.to_string(),
        blob,
        size,
        clean: false,
        skip: None,
    }))
}

/// `.troupeignore` at the root plus the configured patterns.
fn ignore_matcher(root: &Path, patterns: &[String]) -> Result<ignore::gitignore::Gitignore> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
    let file = root.join(".troupeignore");
    if file.is_file()
        && let Some(e) = builder.add(&file)
    {
        return Err(Error::Ignore {
            path: file,
            message: e.to_string(),
        });
    }
    for pattern in patterns {
        builder.add_line(None, pattern).map_err(|e| Error::Ignore {
            path: PathBuf::from("index.exclude"),
            message: format!("pattern `{pattern}`: {e}"),
        })?;
    }
    builder.build().map_err(|e| Error::Ignore {
        path: file,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn content_checks_name_the_reason() {
        assert_eq!(classify("a.rs", b""), Some(SkipReason::Empty));
        assert_eq!(classify("a.rs", b"  \n\n"), Some(SkipReason::Empty));
        assert_eq!(classify("a.png", b"\x89PNG\0\0"), Some(SkipReason::Binary));
        assert_eq!(
            classify("app.min.js", b"var a=1;"),
            Some(SkipReason::Minified)
        );
        let long = format!("var a={};\n", "1+".repeat(3000));
        assert_eq!(
            classify("app.js", long.as_bytes()),
            Some(SkipReason::Minified)
        );
        assert_eq!(
            classify(
                "x.go",
                b"// Code generated by protoc. DO NOT EDIT.\npackage x\n"
            ),
            Some(SkipReason::Generated)
        );
        assert_eq!(classify("a.rs", b"fn main() {}\n"), None);
        assert_eq!(classify("latin1.c", b"/* caf\xe9 */ int x;\n"), None);
    }

    #[test]
    fn lockfiles_are_recognised_by_name() {
        assert!(is_lockfile("Cargo.lock"));
        assert!(is_lockfile("web/package-lock.json"));
        assert!(is_lockfile("go.sum"));
        assert!(!is_lockfile("src/lock.rs"));
    }
}
