//! The prompt prefix every agent of a task shares: the repository's file list, its instruction
//! files (AGENTS.md and the like, read from the BASE commit so a change under review cannot
//! instruct the agents), the files most relevant to the task (as they were when the task started)
//! and the task. It renders byte-identically for every role, so the engine
//! computes its tokens once and serves every agent from the KV cache.

use std::path::Path;

use super::Result;
use super::roles::Roles;
use super::search::{self, CodeSearch};

/// Instruction files looked for at the root of the base commit, in this order.
pub const INSTRUCTION_FILES: &[&str] = &[
    "AGENTS.md",
    "CLAUDE.md",
    "CONVENTIONS.md",
    ".github/copilot-instructions.md",
    ".cursorrules",
];

/// Largest instruction file text kept, in bytes.
const MAX_INSTRUCTIONS: usize = 4_000;

/// Files listed in the shared prompt at most.
const MAX_FILES: usize = 150;

/// Search hits looked at for the files holding the identifiers a task names.
const SEARCH_HITS: usize = 20;

/// A named identifier held by more files than this (and by more than a quarter of the hits) is
/// too common to pick files by.
const COMMON_NAME_FILES: usize = 3;

/// The instruction files of the base commit: `(path, text)`.
pub fn instruction_files(repo: &crate::git::Repo, base: &str) -> Vec<(String, String)> {
    let raw = repo.raw();
    let Ok(tree) = raw.revparse_single(base).and_then(|o| o.peel_to_tree()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in INSTRUCTION_FILES {
        let Ok(entry) = tree.get_path(Path::new(name)) else {
            continue;
        };
        let Ok(blob) = entry.to_object(raw).and_then(|o| o.peel_to_blob()) else {
            continue;
        };
        let text = String::from_utf8_lossy(blob.content());
        out.push((
            (*name).to_string(),
            super::tools::clip(text.trim(), MAX_INSTRUCTIONS),
        ));
    }
    out
}

/// The files most relevant to the task, whole, within `budget` bytes: first the files the task
/// names (by path or file name), then the files that contain the identifiers it names
/// (`parse_args`, `Index::search`, backticked words), found through the search and checked in
/// the file's text; a name most of the hits hold (a keyword such as `raise`, a type used
/// everywhere) picks no files unless it is all the task names. Only a task that names neither
/// gets the files of the best search hits for
/// its words: a search on plain words also finds files that merely share them (a test harness
/// that mentions "docstring"), and a small model writes worse code with such files in view.
/// Instruction files are left out: the prompt shows them already.
pub fn relevant_files(
    worktree: &Path,
    task: &str,
    search: &dyn CodeSearch,
    budget: usize,
) -> Vec<(String, String)> {
    let all = search::list_files(worktree, None, 5_000);
    let mut wanted: Vec<String> = all
        .iter()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            task.contains(p.as_str()) || (name.contains('.') && task.contains(name))
        })
        .cloned()
        .collect();
    let names = identifiers(task);
    if !names.is_empty()
        && let Ok(hits) = search.search(worktree, &names.join(" "), SEARCH_HITS)
    {
        // Which of the names each hit holds.
        let holders: Vec<(String, Vec<bool>)> = hits
            .into_iter()
            .filter_map(|hit| {
                let text = std::fs::read_to_string(worktree.join(&hit.path)).ok()?;
                let held: Vec<bool> = names.iter().map(|n| contains_word(&text, n)).collect();
                held.contains(&true).then_some((hit.path, held))
            })
            .collect();
        // A name most of the hits hold (`raise` in a task about one of twenty stubs) tells
        // nothing about which file matters: files are shown for the telling names only, unless
        // no name tells and the task names no file.
        let common = (holders.len() / 4).max(COMMON_NAME_FILES);
        let telling: Vec<bool> = (0..names.len())
            .map(|i| holders.iter().filter(|(_, held)| held[i]).count() <= common)
            .collect();
        let any_telling = telling.contains(&true);
        let named_none = wanted.is_empty();
        for (path, held) in holders {
            let counts = held
                .iter()
                .zip(&telling)
                .any(|(&held, &telling)| held && (telling || (!any_telling && named_none)));
            if counts && !wanted.contains(&path) {
                wanted.push(path);
            }
        }
    }
    if wanted.is_empty()
        && let Ok(hits) = search.search(worktree, task, 10)
    {
        for hit in hits {
            if !wanted.contains(&hit.path) {
                wanted.push(hit.path);
            }
        }
    }
    wanted.retain(|p| !INSTRUCTION_FILES.contains(&p.as_str()));
    let mut out = Vec::new();
    let mut used = 0;
    for path in wanted {
        let Ok(text) = std::fs::read_to_string(worktree.join(&path)) else {
            continue;
        };
        if used + text.len() > budget {
            continue;
        }
        used += text.len();
        out.push((path, text));
    }
    out
}

/// The code identifiers a task names: words with an underscore or an inner capital, the parts of
/// a `::` path (`parse_args`, `HashMap`, `Index::search`), and every word in
/// backticks, longer than two characters; file names are not identifiers (they are matched as
/// files).
fn identifiers(task: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |word: &str| {
        let word = word.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
        if word.chars().count() > 2
            && word.chars().any(char::is_alphabetic)
            && !out.iter().any(|w| w == word)
        {
            out.push(word.to_string());
        }
    };
    for (i, span) in task.split('`').enumerate() {
        let quoted = i % 2 == 1;
        for token in span.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')') {
            let token = token.trim_end_matches(['.', ':', ';', '?', '!']);
            if looks_like_file(token) {
                continue;
            }
            if token.contains("::") {
                token.split("::").for_each(&mut push);
                continue;
            }
            let last = token.rsplit('.').next().unwrap_or(token);
            let inner_capital = last.chars().skip(1).any(char::is_uppercase)
                && last.chars().any(char::is_lowercase);
            if quoted || last.contains('_') || inner_capital {
                push(last);
            }
        }
    }
    out
}

/// `solution.py`, `src/lib.rs`: a dotted word whose last part is a short extension.
fn looks_like_file(token: &str) -> bool {
    token.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && !ext.is_empty()
            && ext.len() <= 5
            && ext.chars().all(|c| c.is_ascii_alphanumeric())
            && ext.chars().any(|c| c.is_ascii_lowercase())
            && !stem.contains("::")
    })
}

/// Whether `text` holds `word` with no identifier character on either side.
fn contains_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Renders the shared system prompt.
pub fn system_prompt(
    roles: &Roles,
    repo_name: &str,
    worktree: &Path,
    instructions: &[(String, String)],
    files_shown: &[(String, String)],
    task: &str,
) -> Result<String> {
    let mut files = search::list_files(worktree, None, MAX_FILES + 1);
    let omitted = if files.len() > MAX_FILES {
        files.truncate(MAX_FILES);
        search::list_files(worktree, None, 100_000).len() - MAX_FILES
    } else {
        0
    };
    let instructions: Vec<_> = instructions
        .iter()
        .map(|(path, text)| minijinja::context! { path => path, text => text })
        .collect();
    let shown: Vec<_> = files_shown
        .iter()
        .map(|(path, text)| minijinja::context! { path => path, text => text })
        .collect();
    roles.render(
        "system",
        minijinja::context! {
            repo => repo_name,
            files => files,
            files_omitted => omitted,
            instructions => instructions,
            shown => shown,
            task => task,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::search::LexicalSearch;

    #[test]
    fn identifiers_are_the_code_words_of_a_task() {
        assert_eq!(
            identifiers(
                "Implement the function `has_close_elements` in solution.py; replace `raise NotImplementedError`."
            ),
            ["has_close_elements", "raise", "NotImplementedError"]
        );
        assert_eq!(
            identifiers(
                "make parse_args reject negative counts, and fix Index::search (in src/lib.rs)"
            ),
            ["parse_args", "Index", "search"]
        );
        assert_eq!(identifiers("the HashMap in `cache.rs` grows"), ["HashMap"]);
        assert!(identifiers("add a --verbose flag to the CLI").is_empty());
    }

    /// The paths `relevant_files` shows for `task` in the repository at `root`.
    fn shown_in(root: &Path, task: &str) -> Vec<String> {
        relevant_files(root, task, &LexicalSearch, 10_000)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn files_holding_the_named_identifiers_are_shown_and_word_matches_are_not() {
        let dir = crate::git::test_fixture(&[
            (
                "solution.py",
                "def has_close_elements(xs):\n    \"\"\"A docstring.\"\"\"\n    raise NotImplementedError\n",
            ),
            ("util.py", "from solution import has_close_elements\n"),
            (
                "test_examples.py",
                "\"\"\"The examples in the docstrings of solution.py.\"\"\"\nimport doctest\n",
            ),
            (
                "AGENTS.md",
                "Implement each function so it does what its docstring says.\n",
            ),
            ("notes.md", "a docstring says what a function does\n"),
        ]);
        let shown = |task: &str| shown_in(dir.path(), task);
        assert_eq!(
            shown(
                "Implement `has_close_elements` in solution.py so that it does what its docstring says."
            ),
            ["solution.py", "util.py"]
        );
        // The task names the stub's file and its function; the keyword in backticks is held by
        // every stub, so it shows none of the others.
        let stubs = crate::git::test_fixture(
            &(0..8)
                .map(|i| {
                    (
                        format!("sol_{i}.py"),
                        format!("def f{i}_impl(xs):\n    raise NotImplementedError\n"),
                    )
                })
                .collect::<Vec<_>>()
                .iter()
                .map(|(p, t)| (p.as_str(), t.as_str()))
                .collect::<Vec<_>>(),
        );
        let stub_shown = |task: &str| shown_in(stubs.path(), task);
        assert_eq!(
            stub_shown("Implement `f3_impl` in sol_3.py; replace `raise NotImplementedError`."),
            ["sol_3.py"]
        );
        assert_eq!(
            stub_shown("Implement `f5_impl`; replace `raise NotImplementedError`."),
            ["sol_5.py"]
        );
        // Only common names: the files holding them are all there is to go on.
        assert_eq!(stub_shown("Replace every `NotImplementedError`.").len(), 8);
        // A task that names no file and no identifier gets the search hits, minus the
        // instruction files (the prompt shows those already).
        let plain = shown("what a docstring says");
        assert!(plain.contains(&"notes.md".to_string()), "{plain:?}");
        assert!(!plain.contains(&"AGENTS.md".to_string()), "{plain:?}");
    }
}
