//! Edits proposed by agents: path validation and exact search/replace blocks.
//!
//! Every path an agent names is relative to the task's worktree; absolute paths, `..`, anything
//! under `.git` or `.troupe`, and symlinks leading out of the worktree are refused (a policy
//! denial, distinct from an edit that fails to match). An edit that would leave a file of a
//! language with a tree-sitter grammar unparsable, when it parsed before, is refused with the
//! line of the error: small models otherwise pile edit upon broken edit. A successful edit
//! answers with the lines around it as they now read. Pure file operations (and the index's
//! grammars); no git, no engine.

use std::path::{Component, Path, PathBuf};

/// Why an edit or a path was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// Refused by policy (path outside the worktree, under `.git` or `.troupe`).
    Denied(String),
    /// Allowed but it did not work (search text not found, ambiguous, unreadable file).
    Failed(String),
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::Denied(m) | EditError::Failed(m) => f.write_str(m),
        }
    }
}

/// Resolves `rel` inside `root`, refusing anything that could escape it or touch git's or
/// troupe's own state.
pub fn validate_path(root: &Path, rel: &str) -> Result<PathBuf, EditError> {
    let deny = |why: &str| EditError::Denied(format!("path `{rel}` refused: {why}"));
    if rel.trim().is_empty() {
        return Err(deny("it is empty"));
    }
    if rel.contains('\0') {
        return Err(deny("it contains a NUL byte"));
    }
    let path = Path::new(rel);
    if path.is_absolute() || rel.starts_with('/') || rel.starts_with('\\') {
        return Err(deny(
            "absolute paths are not allowed; use a path relative to the repository",
        ));
    }
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                let part_str = part.to_string_lossy();
                if part_str == ".git" || part_str == ".troupe" {
                    return Err(deny("nothing under .git or .troupe may be touched"));
                }
                clean.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(deny(
                    "`..` is not allowed; paths stay inside the repository",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(deny("absolute paths are not allowed"));
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(deny("it names the repository itself"));
    }
    let full = root.join(&clean);
    // A symlink inside the worktree may still point outside it: check the nearest existing
    // ancestor's real location.
    let real_root = root.canonicalize().map_err(|e| {
        EditError::Failed(format!(
            "cannot resolve the worktree {}: {e}",
            root.display()
        ))
    })?;
    let mut probe = full.clone();
    loop {
        if let Ok(real) = probe.canonicalize() {
            if !real.starts_with(&real_root) {
                return Err(deny("it leads outside the repository through a symlink"));
            }
            break;
        }
        if !probe.pop() {
            break;
        }
    }
    Ok(full)
}

/// What a rewrite with the file's own content answers (after the path).
const UNCHANGED: &str = "already has exactly this content; nothing changed";

/// Whether `message` (an [`apply_edit`] answer) says the file was left as it was.
pub fn is_unchanged(message: &str) -> bool {
    message.contains(UNCHANGED)
}

/// Replaces the exact text `search` with `replace` in `root/rel`. An empty `search` makes
/// `replace` the whole file (created, or rewritten: small models rewrite a file more reliably
/// than they quote it). Returns a short description of what changed.
pub fn apply_edit(
    root: &Path,
    rel: &str,
    search: &str,
    replace: &str,
) -> Result<String, EditError> {
    let full = validate_path(root, rel)?;
    if search.is_empty() {
        let existed = full.is_file();
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                EditError::Failed(format!("cannot create the folder of {rel}: {e}"))
            })?;
        }
        let mut text = replace.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let old = if existed {
            std::fs::read_to_string(&full).unwrap_or_default()
        } else {
            String::new()
        };
        if existed && old == text {
            return Ok(format!(
                "{rel} {UNCHANGED}. If the change is complete, end your turn"
            ));
        }
        refuse_new_syntax_errors(rel, &old, &text)?;
        std::fs::write(&full, &text)
            .map_err(|e| EditError::Failed(format!("cannot write {rel}: {e}")))?;
        let verb = if existed { "rewrote" } else { "created" };
        return Ok(format!("{verb} {rel} ({} lines)", count_lines(&text)));
    }
    let text = match std::fs::read_to_string(&full) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EditError::Failed(format!(
                "{rel} does not exist; use an empty `search` to create it, or list_files to find the right path"
            )));
        }
        Err(e) => return Err(EditError::Failed(format!("cannot read {rel}: {e}"))),
    };
    // A model often copies `read_file`'s (or an edit answer's) numbered lines as they were
    // shown; the numbers are ours, not the file's, so they are dropped when they are exactly
    // the lines where the rest of the text is.
    let (search, replace) = match numbered(search) {
        Some((first, bare)) if !text.contains(search) && starts_at(&text, &bare) == Some(first) => {
            let replace = numbered(replace).map_or(replace.to_string(), |(_, r)| r);
            (bare, replace)
        }
        _ => (search.to_string(), replace.to_string()),
    };
    let (search, replace) = (search.as_str(), replace.as_str());
    let count = text.matches(search).count();
    match count {
        0 => {
            let hint = first_line_hint(&text, search);
            Err(EditError::Failed(format!(
                "the search text was not found in {rel}; nothing was changed. {hint}Read the file (read_file) and copy the lines to replace exactly, including indentation"
            )))
        }
        1 => {
            let line = text[..text.find(search).unwrap_or(0)].matches('\n').count() + 1;
            let new = text.replacen(search, replace, 1);
            refuse_new_syntax_errors(rel, &text, &new)?;
            std::fs::write(&full, &new)
                .map_err(|e| EditError::Failed(format!("cannot write {rel}: {e}")))?;
            let added = count_lines(replace);
            Ok(format!(
                "replaced {} lines with {added} lines at line {line} of {rel}; {}",
                count_lines(search),
                around(&new, line, added)
            ))
        }
        n => Err(EditError::Failed(format!(
            "the search text matches {n} places in {rel}; nothing was changed. Include more surrounding lines so it matches exactly once"
        ))),
    }
}

/// `text` without the line numbers `read_file` and edit answers put before each line
/// (`  12 code` or `  12 | code`), with the first number, when every line carries one and they
/// count up by one; `None` otherwise.
fn numbered(text: &str) -> Option<(usize, String)> {
    let mut first = None;
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        let digits = trimmed.len()
            - trimmed
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        if digits == 0 {
            return None;
        }
        let n: usize = trimmed[..digits].parse().ok()?;
        let rest = &trimmed[digits..];
        let rest = rest
            .strip_prefix(" | ")
            .or_else(|| rest.strip_prefix(" |"))
            .or_else(|| rest.strip_prefix(' '))
            .or_else(|| rest.starts_with('\n').then_some(rest))?;
        let first = *first.get_or_insert(n);
        if n != first + i {
            return None;
        }
        out.push_str(rest);
    }
    Some((first?, out))
}

/// The line (1-based) where `needle` occurs in `text`, if it occurs exactly once.
fn starts_at(text: &str, needle: &str) -> Option<usize> {
    if needle.trim().is_empty() || text.matches(needle).count() != 1 {
        return None;
    }
    Some(text[..text.find(needle)?].matches('\n').count() + 1)
}

/// Lines shown around an edit at most (the edited lines and two on each side).
const SHOWN_LINES: usize = 30;

/// The lines from two before `line` to two after the `added` lines that start there, numbered:
/// what the model needs to see that its edit landed as meant.
fn around(text: &str, line: usize, added: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let first = line.saturating_sub(2).max(1);
    let last = (line + added.max(1) + 1)
        .min(lines.len())
        .min(first + SHOWN_LINES - 1);
    if lines.is_empty() || first > last {
        return "the file is now empty".to_string();
    }
    let mut out = format!("lines {first}-{last} now read:");
    for n in first..=last {
        out.push_str(&format!("\n{n:>4} | {}", lines[n - 1]));
    }
    out
}

/// Refuses `new` when tree-sitter finds a syntax error in it that `old` did not have (a file
/// that was already broken may be fixed one edit at a time). Languages without a grammar here
/// are not checked.
fn refuse_new_syntax_errors(rel: &str, old: &str, new: &str) -> Result<(), EditError> {
    let Some((line, near)) = syntax_error(rel, new) else {
        return Ok(());
    };
    if syntax_error(rel, old).is_some() {
        return Ok(());
    }
    Err(EditError::Failed(format!(
        "the edit was not applied: {rel} would not parse afterwards (a syntax error at line {line}: `{near}`); nothing was changed. Send complete, correctly indented code"
    )))
}

/// The first syntax error in `text` parsed as the language of `rel`: its line (1-based) and
/// that line's text; `None` when it parses or the language has no grammar here.
fn syntax_error(rel: &str, text: &str) -> Option<(usize, String)> {
    let lang = crate::index::chunk::language_for_path(rel)?;
    let crate::index::chunk::Syntax::TreeSitter { grammar, .. } = &lang.syntax else {
        return None;
    };
    let mut parser = tree_sitter::Parser::new();
    parser.set_language(&grammar()).ok()?;
    let tree = parser.parse(text, None)?;
    let mut node = tree.root_node();
    if !node.has_error() {
        return None;
    }
    // Down to the first error or missing node.
    'down: loop {
        if node.is_error() || node.is_missing() {
            break;
        }
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            if child.has_error() {
                node = child;
                continue 'down;
            }
        }
        break;
    }
    let row = node.start_position().row;
    let near = text.lines().nth(row).unwrap_or("").trim();
    let near: String = near.chars().take(80).collect();
    Some((row + 1, near))
}

fn count_lines(text: &str) -> usize {
    text.lines().count().max(usize::from(!text.is_empty()))
}

/// Points at a line resembling the first line of `search`, to help the model correct itself.
fn first_line_hint(text: &str, search: &str) -> String {
    let Some(first) = search.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return String::new();
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim() == first {
            return format!(
                "Line {} looks like the start of it but the rest differs (whitespace or content). ",
                i + 1
            );
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escaping_the_worktree_or_touching_git_state_are_denied() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            ".git/config",
            "sub/.git/HEAD",
            ".troupe/tasks/x",
            "",
            ".",
        ] {
            match validate_path(dir.path(), bad) {
                Err(EditError::Denied(msg)) => assert!(msg.contains("refused"), "{bad}: {msg}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            validate_path(dir.path(), "./src/a.rs").unwrap(),
            dir.path().join("src/a.rs")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_leading_out_of_the_worktree_is_denied() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert!(matches!(
            validate_path(dir.path(), "link/x.txt"),
            Err(EditError::Denied(_))
        ));
        assert!(matches!(
            apply_edit(dir.path(), "link/x.txt", "", "hi"),
            Err(EditError::Denied(_))
        ));
        assert!(!outside.path().join("x.txt").exists());
    }

    #[test]
    fn an_exact_block_is_replaced_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.py"), "def f():\n    return 1\n").unwrap();
        let msg = apply_edit(dir.path(), "a.py", "    return 1\n", "    return 2\n").unwrap();
        assert!(msg.contains("line 2"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.py")).unwrap(),
            "def f():\n    return 2\n"
        );
    }

    #[test]
    fn an_edit_that_does_not_match_changes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.py"), "def f():\n    return 1\n").unwrap();
        let err = apply_edit(dir.path(), "a.py", "def f():\n  return 1\n", "x").unwrap_err();
        let EditError::Failed(msg) = err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("not found in a.py"), "{msg}");
        assert!(msg.contains("Line 1 looks like"), "{msg}");
        std::fs::write(dir.path().join("b.py"), "x\nx\n").unwrap();
        let err = apply_edit(dir.path(), "b.py", "x", "y").unwrap_err();
        assert!(err.to_string().contains("matches 2 places"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.py")).unwrap(),
            "def f():\n    return 1\n"
        );
        let err = apply_edit(dir.path(), "missing.py", "x", "y").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn an_edit_that_breaks_the_syntax_is_refused_and_one_that_lands_is_shown() {
        let dir = tempfile::tempdir().unwrap();
        let stub = "def f(x):\n    \"\"\"Doubles x.\"\"\"\n    raise NotImplementedError\n";
        std::fs::write(dir.path().join("a.py"), stub).unwrap();
        // What a small model wrote: an unbalanced bracket.
        let err = apply_edit(
            dir.path(),
            "a.py",
            "raise NotImplementedError",
            "return f(x / 100)}",
        )
        .unwrap_err();
        let EditError::Failed(msg) = err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("a.py would not parse"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.py")).unwrap(),
            stub
        );
        // The same for a whole-file rewrite.
        let err = apply_edit(dir.path(), "a.py", "", "def f(x:\n    return x\n").unwrap_err();
        assert!(err.to_string().contains("would not parse"), "{err}");
        // A good edit lands and shows the lines around it.
        let msg = apply_edit(
            dir.path(),
            "a.py",
            "    raise NotImplementedError\n",
            "    y = x * 2\n    return y\n",
        )
        .unwrap();
        assert!(
            msg.starts_with("replaced 1 lines with 2 lines at line 3 of a.py"),
            "{msg}"
        );
        assert!(
            msg.ends_with("lines 1-4 now read:\n   1 | def f(x):\n   2 |     \"\"\"Doubles x.\"\"\"\n   3 |     y = x * 2\n   4 |     return y"),
            "{msg}"
        );
        // A file that was already broken may be edited (fixed step by step); a language
        // without a grammar is not checked.
        std::fs::write(dir.path().join("b.rs"), "fn g( {\n}\n").unwrap();
        apply_edit(dir.path(), "b.rs", "}", "}\nfn h( {}").unwrap();
        std::fs::write(dir.path().join("c.toml"), "a = 1\n").unwrap();
        apply_edit(dir.path(), "c.toml", "a = 1", "a = [").unwrap();
    }

    #[test]
    fn line_numbers_copied_from_read_file_are_dropped_when_they_are_the_right_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = "def f(x):\n    \"\"\"Doubles x.\"\"\"\n    raise NotImplementedError\n";
        std::fs::write(dir.path().join("a.py"), text).unwrap();
        // Numbers that do not match where the text is: not ours to drop, so no match.
        let err = apply_edit(
            dir.path(),
            "a.py",
            "   2     raise NotImplementedError\n",
            "x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        // As `read_file` shows them, in `search` and in `replace`.
        let msg = apply_edit(
            dir.path(),
            "a.py",
            "   2     \"\"\"Doubles x.\"\"\"\n   3     raise NotImplementedError\n",
            "   2     \"\"\"Doubles x.\"\"\"\n   3     return 2 * x\n",
        )
        .unwrap();
        assert!(
            msg.starts_with("replaced 2 lines with 2 lines at line 2"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.py")).unwrap(),
            "def f(x):\n    \"\"\"Doubles x.\"\"\"\n    return 2 * x\n"
        );
        // As an edit answer shows them (`N | `), with a bare replacement.
        apply_edit(
            dir.path(),
            "a.py",
            "   3 |     return 2 * x",
            "    return x + x",
        )
        .unwrap();
        assert!(
            std::fs::read_to_string(dir.path().join("a.py"))
                .unwrap()
                .ends_with("    return x + x\n")
        );
        // Numbers that do not count up by one are text, not line numbers.
        assert_eq!(numbered("1 a\n3 b\n"), None);
        assert_eq!(
            numbered("  7 a\n  8\n  9 | c"),
            Some((7, "a\n\nc".to_string()))
        );
    }

    #[test]
    fn an_empty_search_writes_the_whole_file_creating_its_folders() {
        let dir = tempfile::tempdir().unwrap();
        let msg = apply_edit(dir.path(), "tests/test_a.py", "", "def test_a():\n    pass").unwrap();
        assert!(msg.starts_with("created"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("tests/test_a.py")).unwrap(),
            "def test_a():\n    pass\n"
        );
        let msg = apply_edit(
            dir.path(),
            "tests/test_a.py",
            "",
            "def test_b():\n    pass\n",
        )
        .unwrap();
        assert!(msg.starts_with("rewrote"), "{msg}");
        let text = std::fs::read_to_string(dir.path().join("tests/test_a.py")).unwrap();
        assert_eq!(text, "def test_b():\n    pass\n");
        // Writing what is already there says so, instead of "rewrote" again and again.
        let msg = apply_edit(dir.path(), "tests/test_a.py", "", &text).unwrap();
        assert!(
            msg.contains("already has exactly this content; nothing changed"),
            "{msg}"
        );
    }
}
