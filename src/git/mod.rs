//! git: repository discovery, status, diffs, worktrees and commits, through git2.
//!
//! A leaf module: it depends on nothing else in the crate.

use std::path::{Path, PathBuf};

/// Errors of git operations; messages name the path or ref involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} is not inside a git repository; run troupe inside one, pass --repo PATH, or create one with `git init`"
    )]
    NotARepo { path: PathBuf },
    #[error("{path} is a bare git repository; troupe needs a working tree")]
    Bare { path: PathBuf },
    #[error("git error in {path}: {source}")]
    Git {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The top of the working tree of the repository containing `start`.
pub fn discover_root(start: &Path) -> Result<PathBuf> {
    let repo = git2::Repository::discover(start).map_err(|e| match e.code() {
        git2::ErrorCode::NotFound => Error::NotARepo {
            path: start.to_path_buf(),
        },
        _ => Error::Git {
            path: start.to_path_buf(),
            source: e,
        },
    })?;
    let workdir = repo.workdir().ok_or_else(|| Error::Bare {
        path: start.to_path_buf(),
    })?;
    // Strip the trailing separator git2 leaves on work directories.
    Ok(workdir.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_root_finds_the_top_from_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        git2::Repository::init(dir.path()).unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let root = discover_root(&sub).unwrap();
        assert_eq!(
            root.canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
    }

    #[test]
    fn discover_root_outside_a_repo_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = discover_root(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not inside a git repository"), "{msg}");
        assert!(msg.contains("--repo"), "{msg}");
    }
}
