//! A change between two sides of a repository, parsed into files, hunks and lines: what
//! `troupe review` reviews. Read-only: nothing here writes to the repository, its index or its
//! object database.

use git2::{Delta, DiffOptions, Oid, Patch, Tree};

use super::{Error, Repo, Result, git_err};

/// The new side of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// The working tree: tracked changes and untracked files that are not ignored.
    Worktree,
    /// The staged changes.
    Staged,
    /// A commit.
    Commit(Oid),
}

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    Added,
    Modified,
    Deleted,
    Renamed,
    Copied,
    /// Only its type (e.g. file to symlink) or mode changed.
    TypeChange,
}

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    /// `'+'` added, `'-'` removed, `' '` context.
    pub origin: char,
    pub old_line: Option<u32>,
    pub new_line: Option<u32>,
    /// The line's text without its line ending.
    pub text: String,
}

/// One hunk: a run of changed lines with their context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    pub old_start: u32,
    pub old_lines: u32,
    pub new_start: u32,
    pub new_lines: u32,
    /// The `@@ ... @@ context` header line, without its line ending.
    pub header: String,
    pub lines: Vec<DiffLine>,
}

impl Hunk {
    /// Added plus removed lines.
    pub fn changed_lines(&self) -> u32 {
        self.lines.iter().filter(|l| l.origin != ' ').count() as u32
    }
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFile {
    /// The path on the new side (the old path for a deleted file), `/`-separated.
    pub path: String,
    /// The old path when it differs (renames and copies).
    pub old_path: Option<String>,
    pub change: FileChange,
    /// git considers the content binary.
    pub binary: bool,
    /// Empty for binary files.
    pub hunks: Vec<Hunk>,
}

/// A parsed change and its unified patch text.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// In git's order (by path).
    pub files: Vec<ChangedFile>,
    /// The unified patch of the whole change.
    pub patch: String,
}

impl Repo {
    /// The merge base of two commits, if they have one.
    pub fn merge_base(&self, a: Oid, b: Oid) -> Option<Oid> {
        self.repo.merge_base(a, b).ok()
    }

    /// The change from `base` (`None`: the empty tree, for a repository without commits) to
    /// `head`, with `context` lines around each hunk and renames detected.
    pub fn change(&self, base: Option<Oid>, head: &Side, context: u32) -> Result<Change> {
        let tree_of = |oid: Oid| -> Result<Tree<'_>> {
            self.repo
                .find_commit(oid)
                .and_then(|c| c.tree())
                .map_err(|e| git_err(&self.root, e))
        };
        let base_tree = base.map(tree_of).transpose()?;
        let mut opts = DiffOptions::new();
        opts.context_lines(context)
            .ignore_submodules(true)
            .include_typechange(true);
        let mut diff = match head {
            Side::Commit(oid) => {
                let head_tree = tree_of(*oid)?;
                self.repo
                    .diff_tree_to_tree(base_tree.as_ref(), Some(&head_tree), Some(&mut opts))
            }
            Side::Staged => {
                let index = self.repo.index().map_err(|e| git_err(&self.root, e))?;
                self.repo
                    .diff_tree_to_index(base_tree.as_ref(), Some(&index), Some(&mut opts))
            }
            Side::Worktree => {
                opts.include_untracked(true)
                    .recurse_untracked_dirs(true)
                    .show_untracked_content(true);
                self.repo
                    .diff_tree_to_workdir_with_index(base_tree.as_ref(), Some(&mut opts))
            }
        }
        .map_err(|e| git_err(&self.root, e))?;
        let mut find = git2::DiffFindOptions::new();
        find.renames(true).copies(false);
        diff.find_similar(Some(&mut find))
            .map_err(|e| git_err(&self.root, e))?;

        let mut files = Vec::new();
        for idx in 0..diff.deltas().len() {
            let Some(patch) = Patch::from_diff(&diff, idx).map_err(|e| git_err(&self.root, e))?
            else {
                continue;
            };
            files.push(parse_patch(&patch).map_err(|e| git_err(&self.root, e))?);
        }
        let patch = super::patch_text(&diff).map_err(|e| git_err(&self.root, e))?;
        Ok(Change { files, patch })
    }

    /// Resolves a ref to a commit, or `None` when `name` is `HEAD` of a repository without
    /// commits (its changes are then reviewed against the empty tree).
    pub fn resolve_or_unborn(&self, name: &str) -> Result<Option<Oid>> {
        match self.resolve(name) {
            Ok(oid) => Ok(Some(oid)),
            Err(Error::UnknownRef { .. }) if name == "HEAD" && self.head().is_err() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn parse_patch(patch: &Patch<'_>) -> std::result::Result<ChangedFile, git2::Error> {
    let delta = patch.delta();
    let path_of = |f: git2::DiffFile<'_>| {
        f.path()
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default()
    };
    let (old, new) = (path_of(delta.old_file()), path_of(delta.new_file()));
    let change = match delta.status() {
        Delta::Added | Delta::Untracked => FileChange::Added,
        Delta::Deleted => FileChange::Deleted,
        Delta::Renamed => FileChange::Renamed,
        Delta::Copied => FileChange::Copied,
        Delta::Typechange => FileChange::TypeChange,
        _ => FileChange::Modified,
    };
    let path = if change == FileChange::Deleted {
        old.clone()
    } else {
        new.clone()
    };
    let old_path = (old != new && !old.is_empty()).then_some(old);
    let binary = delta.flags().is_binary();
    let mut hunks = Vec::new();
    if !binary {
        for h in 0..patch.num_hunks() {
            let (hunk, n) = patch.hunk(h)?;
            let mut lines = Vec::with_capacity(n);
            for l in 0..n {
                let line = patch.line_in_hunk(h, l)?;
                let origin = line.origin();
                if !matches!(origin, '+' | '-' | ' ') {
                    continue; // "\ No newline at end of file" and the like
                }
                let text = String::from_utf8_lossy(line.content());
                lines.push(DiffLine {
                    origin,
                    old_line: line.old_lineno(),
                    new_line: line.new_lineno(),
                    text: text.trim_end_matches(['\n', '\r']).to_string(),
                });
            }
            hunks.push(Hunk {
                old_start: hunk.old_start(),
                old_lines: hunk.old_lines(),
                new_start: hunk.new_start(),
                new_lines: hunk.new_lines(),
                header: String::from_utf8_lossy(hunk.header())
                    .trim_end()
                    .to_string(),
                lines,
            });
        }
    }
    Ok(ChangedFile {
        path,
        old_path,
        change,
        binary,
        hunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::test_fixture as fixture;

    #[test]
    fn worktree_change_lists_hunks_untracked_and_binary_files() {
        let dir = fixture(&[("src/lib.rs", "fn a() {}\nfn b() {}\nfn c() {}\n")]);
        let root = dir.path();
        std::fs::write(
            root.join("src/lib.rs"),
            "fn a() {}\nfn b2() {}\nfn c() {}\n",
        )
        .unwrap();
        std::fs::write(root.join("new.py"), "x = 1\n").unwrap();
        std::fs::write(root.join("blob.bin"), [0u8, 1, 2, 0, 255]).unwrap();
        let repo = Repo::open(root).unwrap();
        let base = repo.resolve_or_unborn("HEAD").unwrap();
        let change = repo.change(base, &Side::Worktree, 3).unwrap();
        let paths: Vec<_> = change.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["blob.bin", "new.py", "src/lib.rs"]);
        assert!(change.files[0].binary && change.files[0].hunks.is_empty());
        assert_eq!(change.files[1].change, FileChange::Added);
        let lib = &change.files[2];
        assert_eq!(lib.hunks.len(), 1);
        assert_eq!(lib.hunks[0].changed_lines(), 2);
        let added: Vec<_> = lib.hunks[0]
            .lines
            .iter()
            .filter(|l| l.origin == '+')
            .map(|l| (l.new_line, l.text.as_str()))
            .collect();
        assert_eq!(added, [(Some(2), "fn b2() {}")]);
        assert!(change.patch.contains("+fn b2() {}"));
    }

    #[test]
    fn staged_and_commit_sides_differ_from_the_worktree() {
        let dir = fixture(&[("a.txt", "one\n")]);
        let root = dir.path();
        let repo = Repo::open(root).unwrap();
        let base = repo.resolve_or_unborn("HEAD").unwrap();
        std::fs::write(root.join("a.txt"), "two\n").unwrap();
        assert!(
            repo.change(base, &Side::Staged, 3)
                .unwrap()
                .files
                .is_empty()
        );
        assert_eq!(
            repo.change(base, &Side::Worktree, 3).unwrap().files.len(),
            1
        );
        let head = repo.head().unwrap();
        assert!(
            repo.change(base, &Side::Commit(head), 3)
                .unwrap()
                .files
                .is_empty()
        );
    }
}
