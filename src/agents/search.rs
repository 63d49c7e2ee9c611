//! Code search and the symbol map for the agents' `search`, `list_files` and `symbols` tools.
//!
//! Search sits behind the [`CodeSearch`] trait: [`IndexedSearch`] asks the repository's index
//! (`crate::retrieve`, built by `troupe index`) and falls back to [`LexicalSearch`], which scans
//! the worktree's files for the query's words, when there is no index or it finds nothing. The
//! symbol map uses the tree-sitter chunker (`crate::index::chunk`, a pure function over file
//! text). Synchronous and read-only; the session calls it from `spawn_blocking` or a tool call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::index::chunk::{ChunkKind, ChunkOptions, chunk_file};

/// One search result, in the shape of `troupe search --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    /// Path relative to the searched root.
    pub path: String,
    /// First line (1-based).
    pub start_line: usize,
    /// Last line (inclusive).
    pub end_line: usize,
    /// The enclosing symbol, when known.
    pub symbol: Option<String>,
    /// Relevance; higher is better.
    pub score: f64,
    /// The matching lines.
    pub snippet: String,
}

/// Searches code under a root directory (the task's worktree).
pub trait CodeSearch: Send + Sync {
    /// The best `limit` hits for `query` under `root`, best first. An `Err` is a message for the
    /// model (the search failed; the task goes on).
    fn search(&self, root: &Path, query: &str, limit: usize) -> Result<Vec<SearchHit>, String>;
}

/// The repository's index (BM25, and vectors where the index has them and an embedder is
/// loaded), opened on first use; [`LexicalSearch`] over the worktree when there is no index or it
/// finds nothing. The index describes the user's tree (the task's base), so snippets may predate
/// the task's own edits; the agents read files for the current text.
pub struct IndexedSearch {
    repo_root: PathBuf,
    params: crate::retrieve::Params,
    /// Set once opening the index failed (no index): later searches go straight to the scan.
    missing: AtomicBool,
}

impl IndexedSearch {
    /// Searches the index of the repository at `repo_root` with the configured parameters.
    pub fn new(repo_root: &Path, params: crate::retrieve::Params) -> Self {
        Self {
            repo_root: repo_root.to_path_buf(),
            params,
            missing: AtomicBool::new(false),
        }
    }
}

impl CodeSearch for IndexedSearch {
    fn search(&self, root: &Path, query: &str, limit: usize) -> Result<Vec<SearchHit>, String> {
        // The retriever is opened per query (a reader over the on-disk index, cheap): it is not
        // `Send`, and a per-query reader sees an index updated meanwhile.
        let from_index = if self.missing.load(Ordering::Relaxed) {
            Vec::new()
        } else {
            match crate::retrieve::Retriever::open(&self.repo_root, None) {
                Ok(mut r) => {
                    let params = crate::retrieve::Params {
                        limit,
                        ..self.params.clone()
                    };
                    r.search(query, &params).unwrap_or_default()
                }
                Err(_) => {
                    self.missing.store(true, Ordering::Relaxed);
                    Vec::new()
                }
            }
        };
        if from_index.is_empty() {
            return LexicalSearch.search(root, query, limit);
        }
        Ok(from_index
            .into_iter()
            .map(|r| SearchHit {
                path: r.path,
                start_line: r.start_line as usize,
                end_line: r.end_line as usize,
                symbol: Some(r.symbol).filter(|s| !s.is_empty()),
                score: r.score,
                snippet: r.snippet,
            })
            .collect())
    }
}

/// Scans the files under the root (respecting .gitignore) for the query's words: a line scores
/// the number of distinct query words it contains. No index needed.
#[derive(Debug, Clone, Default)]
pub struct LexicalSearch;

impl CodeSearch for LexicalSearch {
    fn search(&self, root: &Path, query: &str, limit: usize) -> Result<Vec<SearchHit>, String> {
        let terms: Vec<String> = query
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|t| t.len() >= 2)
            .map(str::to_lowercase)
            .collect();
        if terms.is_empty() {
            return Err("the query has no words to search for".into());
        }
        let mut hits: Vec<(usize, String, usize, Vec<String>)> = Vec::new();
        for rel in list_files(root, None, 5_000) {
            let Ok(text) = std::fs::read_to_string(root.join(&rel)) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let mut last_hit: Option<usize> = None;
            for (i, line) in lines.iter().enumerate() {
                let lower = line.to_lowercase();
                let score = terms.iter().filter(|t| lower.contains(t.as_str())).count();
                if score == 0 || last_hit.is_some_and(|l| i < l + 4) {
                    continue;
                }
                last_hit = Some(i);
                let end = (i + 3).min(lines.len());
                let snippet = lines[i.saturating_sub(1)..end]
                    .iter()
                    .map(|l| l.to_string())
                    .collect();
                hits.push((score, rel.clone(), i + 1, snippet));
            }
        }
        hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        Ok(hits
            .into_iter()
            .take(limit)
            .map(|(score, path, line, snippet)| SearchHit {
                start_line: line.saturating_sub(1).max(1),
                end_line: line + snippet.len().saturating_sub(2),
                path,
                symbol: None,
                score: score as f64 / terms.len() as f64,
                snippet: snippet.join("\n"),
            })
            .collect())
    }
}

/// Files under `root` (or `root/dir`), relative, sorted, at most `limit`; respects .gitignore
/// and skips hidden files, `.git`, `.troupe`, binaries and files over 512 KB.
pub fn list_files(root: &Path, dir: Option<&Path>, limit: usize) -> Vec<String> {
    let start = dir.map_or_else(|| root.to_path_buf(), |d| d.to_path_buf());
    let mut out = Vec::new();
    // `parents(false)`: a task's worktree lives under `.troupe/`, whose own .gitignore ignores
    // everything; only the worktree's ignore files count.
    let walker = ignore::WalkBuilder::new(&start)
        .hidden(true)
        .parents(false)
        .require_git(false)
        .build();
    for entry in walker.flatten() {
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        if rel.starts_with(".git/") || rel.starts_with(".troupe/") {
            continue;
        }
        if entry.metadata().is_ok_and(|m| m.len() > 512 * 1024) || looks_binary(entry.path()) {
            continue;
        }
        out.push(rel);
    }
    out.sort();
    out.truncate(limit);
    out
}

/// The definitions of the files under `root` (or of one file), one per line:
/// `path:start-end kind symbol`, at most `limit` lines.
pub fn symbol_map(root: &Path, only: Option<&str>, limit: usize) -> String {
    let opts = ChunkOptions {
        max_bytes: 8_000,
        max_lines: 400,
        min_merge_bytes: 0,
    };
    let files = match only {
        Some(p) => vec![p.to_string()],
        None => list_files(root, None, 2_000),
    };
    let mut lines = Vec::new();
    for rel in files {
        let Ok(text) = std::fs::read_to_string(root.join(&rel)) else {
            continue;
        };
        for chunk in chunk_file(&rel, &text, &opts) {
            if matches!(
                chunk.kind,
                ChunkKind::Code | ChunkKind::Lines | ChunkKind::Section
            ) || chunk.symbol.is_empty()
            {
                continue;
            }
            lines.push(format!(
                "{}:{}-{} {} {}",
                chunk.path,
                chunk.start_line,
                chunk.end_line,
                chunk.kind.as_str(),
                chunk.symbol
            ));
            if lines.len() >= limit {
                lines.push("... (more; pass a path)".into());
                return lines.join("\n");
            }
        }
    }
    if lines.is_empty() {
        "no definitions found".into()
    } else {
        lines.join("\n")
    }
}

fn looks_binary(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return true;
    };
    let mut buf = [0u8; 1024];
    let n = f.read(&mut buf).unwrap_or(0);
    buf[..n].contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_search_ranks_lines_with_more_query_words_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.py"),
            "import os\n\ndef parse_config(path):\n    return open(path).read()\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.py"), "# config\nx = 1\n").unwrap();
        let hits = LexicalSearch.search(dir.path(), "parse config", 5).unwrap();
        assert_eq!(hits[0].path, "a.py");
        assert!(hits[0].snippet.contains("def parse_config"));
        assert!(hits.iter().any(|h| h.path == "b.py"));
        assert!(LexicalSearch.search(dir.path(), "?", 5).is_err());
    }

    #[test]
    fn the_symbol_map_lists_definitions_with_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(
            dir.path().join("src/calc.py"),
            "def add(a, b):\n    return a + b\n\n\nclass Calc:\n    def mul(self, a, b):\n        return a * b\n",
        )
        .unwrap();
        let map = symbol_map(dir.path(), None, 50);
        assert!(map.contains("src/calc.py:1-"), "{map}");
        assert!(map.contains("function def add"), "{map}");
        assert!(map.contains("class Calc"), "{map}");
        assert_eq!(list_files(dir.path(), None, 10), ["src/calc.py"]);
    }

    #[test]
    fn files_of_a_worktree_under_the_ignored_state_dir_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".troupe/worktrees/t1/src")).unwrap();
        std::fs::write(dir.path().join(".troupe/.gitignore"), "*\n").unwrap();
        let wt = dir.path().join(".troupe/worktrees/t1");
        std::fs::write(wt.join(".gitignore"), "build/\n").unwrap();
        std::fs::write(wt.join("src/a.py"), "x = 1\n").unwrap();
        std::fs::create_dir_all(wt.join("build")).unwrap();
        std::fs::write(wt.join("build/out.py"), "y = 2\n").unwrap();
        assert_eq!(list_files(&wt, None, 10), ["src/a.py"]);
    }
}
