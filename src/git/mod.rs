//! git: repository discovery, diffs, task worktrees and their commits, and applying a finished
//! change to the user's tree on request, through git2.
//!
//! Invariant: nothing here touches the user's working tree, index, branches or stash except
//! [`Repo::apply_to_worktree`], which only runs on an explicit request and only when the change
//! applies cleanly. Agents write inside their own worktree (`.troupe/worktrees/<task>`) on their
//! own branch (`troupe/<task>`). A leaf module: it depends on nothing else in the crate.

use std::path::{Path, PathBuf};

use git2::{DiffFormat, DiffOptions, Oid, Repository, Signature};

pub mod diff;
pub use diff::{Change, ChangedFile, DiffLine, FileChange, Hunk, Side};

/// Errors of git operations; messages name the path or ref involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} is not inside a git repository; run troupe inside one, pass --repo PATH, or create one with `git init`"
    )]
    NotARepo { path: PathBuf },
    #[error("{path} is a bare git repository; troupe needs a working tree")]
    Bare { path: PathBuf },
    #[error("{path} has no commit yet; commit once (`git commit --allow-empty -m init`) and retry")]
    NoCommit { path: PathBuf },
    #[error("unknown git ref `{name}` in {path}; check the name with `git rev-parse {name}`")]
    UnknownRef { path: PathBuf, name: String },
    #[error("task worktree {name} already exists at {path}")]
    WorktreeExists { name: String, path: PathBuf },
    #[error("no task worktree named {name}; `troupe tasks list` shows the tasks")]
    NoWorktree { name: String },
    #[error(
        "the change does not apply cleanly to {path}: {reason}; your tree is unchanged (commit or stash your edits, or inspect the branch {branch})"
    )]
    DoesNotApply {
        path: PathBuf,
        branch: String,
        reason: String,
    },
    #[error("git error in {path}: {source}")]
    Git {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The top of the working tree of the repository containing `start`.
pub fn discover_root(start: &Path) -> Result<PathBuf> {
    let repo = Repository::discover(start).map_err(|e| match e.code() {
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

/// The branch prefix of task branches.
pub const TASK_BRANCH_PREFIX: &str = "troupe/";

/// A task's isolated checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    pub name: String,
    pub path: PathBuf,
    pub branch: String,
    /// The commit the task started from.
    pub base: String,
}

/// A repository opened at its root.
pub struct Repo {
    root: PathBuf,
    repo: Repository,
}

impl Repo {
    /// Opens the repository whose working tree is at (or above) `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let root = discover_root(path)?;
        let repo = Repository::open(&root).map_err(|e| git_err(&root, e))?;
        Ok(Self { root, repo })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The underlying git2 repository, for read-only queries.
    pub fn raw(&self) -> &Repository {
        &self.repo
    }

    /// `.troupe/` in the repository, created with a `.gitignore` of its own so that nothing troupe
    /// keeps there ever shows in `git status` (the user's own ignore files stay untouched).
    pub fn state_dir(&self) -> Result<PathBuf> {
        let dir = self.root.join(".troupe");
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "# troupe's state: never committed\n*\n")
                .map_err(io("cannot write", &ignore))?;
        }
        Ok(dir)
    }

    /// Resolves a ref (branch, tag, `HEAD`, sha) to a commit id.
    pub fn resolve(&self, name: &str) -> Result<Oid> {
        let obj = self
            .repo
            .revparse_single(name)
            .map_err(|_| Error::UnknownRef {
                path: self.root.clone(),
                name: name.to_string(),
            })?;
        obj.peel_to_commit()
            .map(|c| c.id())
            .map_err(|_| Error::UnknownRef {
                path: self.root.clone(),
                name: name.to_string(),
            })
    }

    /// The commit at HEAD.
    pub fn head(&self) -> Result<Oid> {
        self.repo
            .head()
            .ok()
            .and_then(|h| h.target())
            .ok_or_else(|| Error::NoCommit {
                path: self.root.clone(),
            })
    }

    /// Creates `.troupe/worktrees/<name>` on a new branch `troupe/<name>` at `base`.
    pub fn create_worktree(&self, name: &str, base: Oid) -> Result<Worktree> {
        let dir = self.state_dir()?.join("worktrees");
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let path = dir.join(name);
        if path.exists() || self.repo.find_worktree(name).is_ok() {
            return Err(Error::WorktreeExists {
                name: name.to_string(),
                path,
            });
        }
        let branch_name = format!("{TASK_BRANCH_PREFIX}{name}");
        let commit = self
            .repo
            .find_commit(base)
            .map_err(|e| git_err(&self.root, e))?;
        let branch = self
            .repo
            .branch(&branch_name, &commit, false)
            .map_err(|e| git_err(&self.root, e))?;
        let mut opts = git2::WorktreeAddOptions::new();
        opts.reference(Some(branch.get()));
        self.repo
            .worktree(name, &path, Some(&opts))
            .map_err(|e| git_err(&self.root, e))?;
        Ok(Worktree {
            name: name.to_string(),
            path,
            branch: branch_name,
            base: base.to_string(),
        })
    }

    /// Finds an existing task worktree by name.
    pub fn worktree(&self, name: &str, base: Oid) -> Result<Worktree> {
        let wt = self
            .repo
            .find_worktree(name)
            .map_err(|_| Error::NoWorktree {
                name: name.to_string(),
            })?;
        Ok(Worktree {
            name: name.to_string(),
            path: wt.path().to_path_buf(),
            branch: format!("{TASK_BRANCH_PREFIX}{name}"),
            base: base.to_string(),
        })
    }

    /// Removes a task's worktree and deletes its branch.
    pub fn remove_worktree(&self, name: &str) -> Result<()> {
        if let Ok(wt) = self.repo.find_worktree(name) {
            let path = wt.path().to_path_buf();
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(io("cannot remove", &path))?;
            }
            let mut opts = git2::WorktreePruneOptions::new();
            opts.valid(true).working_tree(true);
            wt.prune(Some(&mut opts))
                .map_err(|e| git_err(&self.root, e))?;
        }
        if let Ok(mut branch) = self.repo.find_branch(
            &format!("{TASK_BRANCH_PREFIX}{name}"),
            git2::BranchType::Local,
        ) {
            branch.delete().map_err(|e| git_err(&self.root, e))?;
        }
        Ok(())
    }

    /// Applies the change between `base` and `head` to the user's working tree, only if it
    /// applies cleanly; on any conflict nothing is written. The index, branches and stash are
    /// left alone: the user reviews and commits the change themselves.
    pub fn apply_to_worktree(&self, base: Oid, head: Oid, branch: &str) -> Result<()> {
        let diff = self.diff_commits(base, head)?;
        let mut check = git2::ApplyOptions::new();
        check.check(true);
        let fail = |reason: String| Error::DoesNotApply {
            path: self.root.clone(),
            branch: branch.to_string(),
            reason,
        };
        self.repo
            .apply(&diff, git2::ApplyLocation::WorkDir, Some(&mut check))
            .map_err(|e| fail(e.message().to_string()))?;
        self.repo
            .apply(&diff, git2::ApplyLocation::WorkDir, None)
            .map_err(|e| fail(e.message().to_string()))
    }

    /// The diff between two commits.
    pub fn diff_commits(&self, base: Oid, head: Oid) -> Result<git2::Diff<'_>> {
        let tree = |oid: Oid| {
            self.repo
                .find_commit(oid)
                .and_then(|c| c.tree())
                .map_err(|e| git_err(&self.root, e))
        };
        let (a, b) = (tree(base)?, tree(head)?);
        let mut opts = DiffOptions::new();
        self.repo
            .diff_tree_to_tree(Some(&a), Some(&b), Some(&mut opts))
            .map_err(|e| git_err(&self.root, e))
    }
}

/// Commits everything in a worktree (new, changed and deleted files) on its branch. Returns
/// `None` when there was nothing to commit.
pub fn commit_all(worktree: &Path, message: &str) -> Result<Option<Oid>> {
    let repo = Repository::open(worktree).map_err(|e| git_err(worktree, e))?;
    let mut index = repo.index().map_err(|e| git_err(worktree, e))?;
    index
        .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
        .map_err(|e| git_err(worktree, e))?;
    index
        .update_all(["*"].iter(), None)
        .map_err(|e| git_err(worktree, e))?;
    index.write().map_err(|e| git_err(worktree, e))?;
    let tree_id = index.write_tree().map_err(|e| git_err(worktree, e))?;
    let parent = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| git_err(worktree, e))?;
    if parent.tree_id() == tree_id {
        return Ok(None);
    }
    let tree = repo.find_tree(tree_id).map_err(|e| git_err(worktree, e))?;
    let sig = Signature::now("troupe", "troupe@localhost").map_err(|e| git_err(worktree, e))?;
    let oid = repo
        .commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])
        .map_err(|e| git_err(worktree, e))?;
    Ok(Some(oid))
}

/// Sets a worktree's files and index to exactly those of `commit` (files it lacks are removed,
/// untracked ones too; ignored files stay) and commits that on the worktree's branch on top of its
/// HEAD, so the branch's history keeps what was undone. Returns the new commit; `None` when the
/// files already were `commit`'s.
pub fn restore_commit(worktree: &Path, commit: &str, message: &str) -> Result<Option<Oid>> {
    let repo = Repository::open(worktree).map_err(|e| git_err(worktree, e))?;
    let tree = repo
        .revparse_single(commit)
        .and_then(|o| o.peel_to_tree())
        .map_err(|_| Error::UnknownRef {
            path: worktree.to_path_buf(),
            name: commit.to_string(),
        })?;
    let mut opts = git2::build::CheckoutBuilder::new();
    opts.force().remove_untracked(true).remove_ignored(false);
    repo.checkout_tree(tree.as_object(), Some(&mut opts))
        .map_err(|e| git_err(worktree, e))?;
    commit_all(worktree, message)
}

/// The unified diff of a worktree (committed and uncommitted changes, untracked files included)
/// against `base`.
pub fn worktree_diff(worktree: &Path, base: &str) -> Result<String> {
    let repo = Repository::open(worktree).map_err(|e| git_err(worktree, e))?;
    let base_tree = repo
        .revparse_single(base)
        .and_then(|o| o.peel_to_tree())
        .map_err(|_| Error::UnknownRef {
            path: worktree.to_path_buf(),
            name: base.to_string(),
        })?;
    let mut opts = DiffOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .show_untracked_content(true);
    let diff = repo
        .diff_tree_to_workdir_with_index(Some(&base_tree), Some(&mut opts))
        .map_err(|e| git_err(worktree, e))?;
    patch_text(&diff).map_err(|e| git_err(worktree, e))
}

/// Renders a diff as unified patch text.
pub fn patch_text(diff: &git2::Diff<'_>) -> std::result::Result<String, git2::Error> {
    let mut out = Vec::new();
    diff.print(DiffFormat::Patch, |_, _, line| {
        if matches!(line.origin(), '+' | '-' | ' ') {
            out.push(line.origin() as u8);
        }
        out.extend_from_slice(line.content());
        true
    })?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn git_err(path: &Path, source: git2::Error) -> Error {
    Error::Git {
        path: path.to_path_buf(),
        source,
    }
}

fn io<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// A fixture repository with one commit, built with git2 (no global config), for the
/// crate's unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init(dir.path()).unwrap();
    for (path, content) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@t.invalid").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[])
        .unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_fixture as fixture;

    /// Every file of the working tree, with its bytes, plus git's view of the index and refs.
    fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .filter(|e| !e.path().starts_with(root.join(".troupe")))
            .filter(|e| !e.path().starts_with(root.join(".git/worktrees")))
            .filter(|e| !e.path().starts_with(root.join(".git/refs/heads/troupe")))
            .filter(|e| !e.path().starts_with(root.join(".git/logs")))
            .filter(|e| !e.path().starts_with(root.join(".git/objects")))
            .map(|e| {
                (
                    e.path().strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn git_status(root: &Path) -> String {
        let out = std::process::Command::new("git")
            .args(["status", "--porcelain"])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn discover_root_finds_the_top_from_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        Repository::init(dir.path()).unwrap();
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

    #[test]
    fn a_task_works_in_its_own_worktree_and_leaves_the_user_tree_alone() {
        let dir = fixture(&[("src/lib.rs", "pub fn a() {}\n"), ("README.md", "hi\n")]);
        // The user has uncommitted work of their own.
        std::fs::write(dir.path().join("notes.txt"), "mine\n").unwrap();
        let before = snapshot(dir.path());
        let repo = Repo::open(dir.path()).unwrap();
        let base = repo.head().unwrap();
        let wt = repo.create_worktree("t1", base).unwrap();
        assert_eq!(wt.branch, "troupe/t1");
        assert!(wt.path.join("src/lib.rs").is_file());
        assert!(!wt.path.join("notes.txt").exists());

        std::fs::write(wt.path.join("src/lib.rs"), "pub fn a() {}\npub fn b() {}\n").unwrap();
        std::fs::write(wt.path.join("src/new.rs"), "// new\n").unwrap();
        std::fs::remove_file(wt.path.join("README.md")).unwrap();
        let diff = worktree_diff(&wt.path, &wt.base).unwrap();
        assert!(diff.contains("+pub fn b() {}"), "{diff}");
        assert!(diff.contains("+// new"), "{diff}");
        assert!(diff.contains("-hi"), "{diff}");

        let commit = commit_all(&wt.path, "round 1").unwrap().unwrap();
        assert_eq!(commit_all(&wt.path, "nothing").unwrap(), None);
        assert_eq!(repo.resolve("troupe/t1").unwrap(), commit);
        // The user's HEAD, index, files and git status are untouched.
        assert_eq!(repo.head().unwrap(), base);
        assert_eq!(snapshot(dir.path()), before);
        assert_eq!(
            git_status(dir.path()),
            "?? notes.txt\n",
            "only the user's own file"
        );

        // Applying on request brings the change over, and only into the working tree.
        repo.apply_to_worktree(base, commit, &wt.branch).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("src/lib.rs")).unwrap(),
            "pub fn a() {}\npub fn b() {}\n"
        );
        assert!(!dir.path().join("README.md").exists());
        assert_eq!(repo.head().unwrap(), base);

        repo.remove_worktree("t1").unwrap();
        assert!(!wt.path.exists());
        assert!(repo.resolve("troupe/t1").is_err());
    }

    #[test]
    fn restoring_a_commit_brings_its_files_back_exactly_as_a_new_commit() {
        let dir = fixture(&[("a.txt", "one\n"), ("gone.txt", "kept in r1\n")]);
        let repo = Repo::open(dir.path()).unwrap();
        let base = repo.head().unwrap();
        let wt = repo.create_worktree("t3", base).unwrap();
        std::fs::write(wt.path.join("a.txt"), "round one\n").unwrap();
        let r1 = commit_all(&wt.path, "r1").unwrap().unwrap();
        let files_of_r1 = snapshot(&wt.path);
        // A later round rewrites, deletes, adds (committed and not) and leaves a stray directory.
        std::fs::write(wt.path.join("a.txt"), "broken\n").unwrap();
        std::fs::remove_file(wt.path.join("gone.txt")).unwrap();
        std::fs::write(wt.path.join("new.txt"), "new\n").unwrap();
        let r2 = commit_all(&wt.path, "r2").unwrap().unwrap();
        std::fs::create_dir_all(wt.path.join("tmp/deep")).unwrap();
        std::fs::write(wt.path.join("tmp/deep/untracked.txt"), "x\n").unwrap();

        let restored = restore_commit(&wt.path, &r1.to_string(), "back to r1")
            .unwrap()
            .unwrap();
        assert_eq!(snapshot(&wt.path), files_of_r1);
        let raw = repo.raw();
        let tree_of = |oid: Oid| raw.find_commit(oid).unwrap().tree_id();
        assert_eq!(tree_of(restored), tree_of(r1));
        // The undone round stays in the branch's history.
        assert_eq!(raw.find_commit(restored).unwrap().parent_id(0).unwrap(), r2);
        assert_eq!(repo.resolve("troupe/t3").unwrap(), restored);
        assert_eq!(git_status(&wt.path), "");
        // Nothing to do the second time.
        assert_eq!(
            restore_commit(&wt.path, &r1.to_string(), "again").unwrap(),
            None
        );
        assert!(matches!(
            restore_commit(&wt.path, "no-such-ref", "x"),
            Err(Error::UnknownRef { .. })
        ));
    }

    #[test]
    fn apply_refuses_a_conflicting_change_and_writes_nothing() {
        let dir = fixture(&[("a.txt", "one\ntwo\nthree\n")]);
        let repo = Repo::open(dir.path()).unwrap();
        let base = repo.head().unwrap();
        let wt = repo.create_worktree("t2", base).unwrap();
        std::fs::write(wt.path.join("a.txt"), "one\nTWO\nthree\n").unwrap();
        std::fs::write(wt.path.join("b.txt"), "new\n").unwrap();
        let commit = commit_all(&wt.path, "r1").unwrap().unwrap();
        // Meanwhile the user edited the same line.
        std::fs::write(dir.path().join("a.txt"), "one\n2\nthree\n").unwrap();
        let before = snapshot(dir.path());
        let err = repo
            .apply_to_worktree(base, commit, &wt.branch)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("does not apply cleanly"), "{msg}");
        assert!(msg.contains("troupe/t2"), "{msg}");
        assert_eq!(snapshot(dir.path()), before, "nothing was written");
    }

    #[test]
    fn state_dir_is_ignored_without_touching_the_users_ignore_files() {
        let dir = fixture(&[("a.txt", "x\n")]);
        let repo = Repo::open(dir.path()).unwrap();
        let state = repo.state_dir().unwrap();
        std::fs::write(state.join("something"), "data").unwrap();
        // What the user sees (libgit2 does not apply a directory's own .gitignore to an untracked
        // directory the way git does, so ask git itself).
        assert_eq!(git_status(dir.path()), "");
        assert!(!dir.path().join(".gitignore").exists());
    }
}
