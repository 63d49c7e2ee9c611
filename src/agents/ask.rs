//! One-shot questions about the repository (`troupe ask`, the editor's "ask"): retrieve the code
//! that matters, pack it into the context budget, stream the model's answer, and report which
//! code it was given ([`Citation`]s).
//!
//! No tools and no writes: the answer is text. The repository code enters the prompt as quoted,
//! numbered excerpts after a system prompt that says it is data.

use std::path::Path;
use std::sync::Arc;

use crate::engine::{Backend, ChatMessage, GenerateEvent, GenerateRequest, Sampling};
use crate::protocol::{Citation, EventMsg, RequestStats};

use super::edit::validate_path;
use super::orchestrator::convert_stats;
use super::search::CodeSearch;

/// The agent name on the events of an answer.
pub const AGENT: &str = "assistant";

/// The embedded system prompt template.
const SYSTEM: &str = include_str!("../../prompts/ask.md");

/// Excerpts asked of the search at most.
const SEARCH_LIMIT: usize = 12;
/// Lines around `--line` shown when only a line is given.
const AROUND_LINE: u32 = 20;

/// A question and where it comes from.
#[derive(Debug, Clone, Default)]
pub struct Question {
    pub text: String,
    /// A file the question is about, relative to the repository root.
    pub file: Option<String>,
    /// 1-based inclusive lines of `file`.
    pub range: Option<(u32, u32)>,
}

/// What an answer needs.
pub struct AskEnv {
    pub backend: Arc<dyn Backend>,
    pub search: Arc<dyn CodeSearch>,
    pub repo_root: std::path::PathBuf,
    /// Token budget for the code excerpts (`retrieve.context_tokens`).
    pub context_tokens: usize,
    /// Tokens of the answer at most.
    pub max_tokens: u32,
}

/// One excerpt given to the model.
#[derive(Debug, Clone)]
pub(crate) struct Excerpt {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    pub text: String,
}

/// Answers `q`, sending each piece of the answer through `emit` as it streams, then an
/// `AskComplete`. Errors come back as an `Error` event, never as a panic or silence.
pub async fn answer(env: &AskEnv, q: Question, emit: &(dyn Fn(EventMsg) + Send + Sync)) {
    match answer_inner(env, q, emit).await {
        Ok(done) => emit(done),
        Err(message) => emit(EventMsg::Error { message, fix: None }),
    }
}

async fn answer_inner(
    env: &AskEnv,
    q: Question,
    emit: &(dyn Fn(EventMsg) + Send + Sync),
) -> Result<EventMsg, String> {
    if q.text.trim().is_empty() {
        return Err("the question is empty: pass it as an argument or on stdin with `-`".into());
    }
    let first = match &q.file {
        Some(file) => Some(file_excerpt(&env.repo_root, file, q.range)?),
        None => None,
    };
    let (answer, citations, stats) = respond(env, SYSTEM, &q.text, first, emit).await?;
    Ok(EventMsg::AskComplete {
        answer,
        citations,
        stats,
    })
}

/// Answers `question` under the system prompt template `system` (rendered with `repo`): `first`
/// (the user's own file or selection) comes first, then the best excerpts of the search, packed
/// into the budget. Streams the answer through `emit` and ends with an `AgentMessage`; returns
/// the answer, the excerpts it was given and the request's statistics.
pub(crate) async fn respond(
    env: &AskEnv,
    system: &str,
    question: &str,
    first: Option<Excerpt>,
    emit: &(dyn Fn(EventMsg) + Send + Sync),
) -> Result<(String, Vec<Citation>, RequestStats), String> {
    let mut excerpts: Vec<Excerpt> = first.into_iter().collect();
    // Search with the question and, when there is one, the selected code.
    let query = match excerpts.first() {
        Some(e) => format!(
            "{} {}",
            question,
            e.text.chars().take(400).collect::<String>()
        ),
        None => question.to_string(),
    };
    let search = Arc::clone(&env.search);
    let root = env.repo_root.clone();
    let hits = tokio::task::spawn_blocking(move || search.search(&root, &query, SEARCH_LIMIT))
        .await
        .map_err(|e| format!("search failed: {e}"))?
        .unwrap_or_default();
    for h in hits {
        let (start, end) = (h.start_line as u32, h.end_line as u32);
        let overlaps = excerpts
            .iter()
            .any(|e| e.path == h.path && start <= e.end_line && end >= e.start_line);
        if !overlaps {
            excerpts.push(Excerpt {
                path: h.path,
                start_line: start,
                end_line: end,
                text: h.snippet,
            });
        }
    }
    let excerpts = fit(excerpts, env.context_tokens);

    let repo_name = env
        .repo_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repository".into());
    let system = minijinja::Environment::new()
        .render_str(system, minijinja::context! { repo => repo_name })
        .map_err(|e| format!("a prompt of prompts/ does not render: {e}"))?;
    let mut user = String::new();
    if excerpts.is_empty() {
        user.push_str("(no code of the repository matched the question)\n\n");
    }
    for (i, e) in excerpts.iter().enumerate() {
        user.push_str(&format!(
            "[{}] {}:{}-{}\n```\n{}\n```\n\n",
            i + 1,
            e.path,
            e.start_line,
            e.end_line,
            e.text.trim_end()
        ));
    }
    user.push_str(&format!("Question: {}", question.trim()));

    let request = GenerateRequest::chat(vec![ChatMessage::system(system), ChatMessage::user(user)])
        .with_max_tokens(env.max_tokens)
        .with_sampling(Sampling::greedy());
    let mut stream = env.backend.generate(request);
    let mut answer = String::new();
    let mut stats: Option<RequestStats> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(GenerateEvent::Delta { text, .. }) => {
                if !text.is_empty() {
                    answer.push_str(&text);
                    emit(EventMsg::AgentMessageDelta { delta: text });
                }
            }
            Ok(GenerateEvent::Done { stats: s, .. }) => stats = Some(convert_stats(&s)),
            Err(e) => return Err(format!("the model request failed: {e}")),
        }
    }
    let stats = stats.ok_or("the model's answer ended without its final statistics")?;
    emit(EventMsg::AgentMessage {
        text: answer.clone(),
    });
    let citations = excerpts
        .into_iter()
        .map(|e| Citation {
            path: e.path,
            start_line: e.start_line,
            end_line: e.end_line,
        })
        .collect();
    Ok((answer, citations, stats))
}

/// The lines of `file` the question is about (the whole file when it is short enough for the
/// budget is the caller's concern: this takes the range, or the file).
fn file_excerpt(root: &Path, file: &str, range: Option<(u32, u32)>) -> Result<Excerpt, String> {
    let path = validate_path(root, file).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let total = text.lines().count().max(1) as u32;
    let (start, end) = match range {
        Some((a, b)) if a == 0 || a > b => {
            return Err(format!(
                "bad line range {a}:{b} for {file}: lines are 1-based and the start comes first"
            ));
        }
        Some((a, _)) if a > total => {
            return Err(format!("{file} has {total} lines; line {a} does not exist"));
        }
        Some((a, b)) => (a, b.min(total)),
        None => (1, total),
    };
    let body: Vec<&str> = text
        .lines()
        .skip(start as usize - 1)
        .take((end - start + 1) as usize)
        .collect();
    Ok(Excerpt {
        path: file.to_string(),
        start_line: start,
        end_line: end,
        text: body.join("\n"),
    })
}

/// A line range centred on `line`.
pub fn around(line: u32) -> (u32, u32) {
    (line.saturating_sub(AROUND_LINE).max(1), line + AROUND_LINE)
}

/// Keeps excerpts, best first, while they fit the token budget (about four characters a token);
/// the first (the user's own file or selection) is cut to fit rather than dropped.
fn fit(excerpts: Vec<Excerpt>, budget_tokens: usize) -> Vec<Excerpt> {
    let budget = budget_tokens.saturating_mul(4).max(1000);
    let mut used = 0;
    let mut out = Vec::new();
    for (i, mut e) in excerpts.into_iter().enumerate() {
        let cost = e.text.len() + e.path.len() + 16;
        if used + cost > budget {
            if i == 0 {
                let keep: String = e.text.chars().take(budget.saturating_sub(64)).collect();
                e.end_line = e.start_line + keep.lines().count().saturating_sub(1) as u32;
                e.text = keep;
                used = budget;
                out.push(e);
            }
            continue;
        }
        used += cost;
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(path: &str, len: usize) -> Excerpt {
        Excerpt {
            path: path.into(),
            start_line: 1,
            end_line: 3,
            text: "x".repeat(len),
        }
    }

    #[test]
    fn fitting_keeps_the_best_excerpts_within_the_budget() {
        let kept = fit(vec![ex("a", 2000), ex("b", 2000), ex("c", 500)], 1000);
        let paths: Vec<&str> = kept.iter().map(|e| e.path.as_str()).collect();
        // 4,000 characters: a and the small c fit; b does not.
        assert_eq!(paths, ["a", "c"]);
    }

    #[test]
    fn the_users_own_selection_is_cut_rather_than_dropped() {
        let kept = fit(vec![ex("mine", 10_000), ex("b", 10)], 500);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].path, "mine");
        assert!(kept[0].text.len() < 2000);
    }

    #[test]
    fn file_excerpts_validate_paths_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.rs"), "l1\nl2\nl3\nl4\n").unwrap();
        let e = file_excerpt(dir.path(), "a.rs", Some((2, 3))).unwrap();
        assert_eq!(
            (e.start_line, e.end_line, e.text.as_str()),
            (2, 3, "l2\nl3")
        );
        let e = file_excerpt(dir.path(), "a.rs", Some((3, 99))).unwrap();
        assert_eq!(e.end_line, 4);
        assert!(
            file_excerpt(dir.path(), "a.rs", Some((9, 12)))
                .unwrap_err()
                .contains("has 4 lines")
        );
        assert!(
            file_excerpt(dir.path(), "a.rs", Some((3, 2)))
                .unwrap_err()
                .contains("bad line range")
        );
        assert!(file_excerpt(dir.path(), "../etc/passwd", None).is_err());
        assert!(
            file_excerpt(dir.path(), "missing.rs", None)
                .unwrap_err()
                .contains("cannot read")
        );
        assert_eq!(around(5), (1, 25));
        assert_eq!(around(100), (80, 120));
    }
}
