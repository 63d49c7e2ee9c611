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
/// names (by path or file name), then the files of the best search hits for the task's words.
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
    if let Ok(hits) = search.search(worktree, task, 10) {
        for hit in hits {
            if !wanted.contains(&hit.path) {
                wanted.push(hit.path);
            }
        }
    }
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
