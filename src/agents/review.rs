//! `troupe review`: a read-only, reproducible review of every changed hunk.
//!
//! The pipeline: the change between two sides of the repository ([`crate::git::Repo::change`])
//! is split into files and hunks; excluded, binary, deleted and oversized files are set aside
//! with their reason; the rest is packed into requests of at most `review.request_lines` diff
//! lines (longer hunks are split) within the `review.max_diff_lines` budget. Each request gets
//! the repository context a reviewer needs (definitions the change uses, callers of what it
//! changes, related tests, from the index) and goes to the shared engine. All requests go in
//! one group, so the engine batches them, and they share the system prompt's tokens in the KV
//! cache. Answers are constrained by `grammars/gbnf/review.gbnf` to the fixed finding schema.
//! Findings are moved onto the new side of the diff (or dropped), merged when they repeat, and
//! sorted. The report carries what was and was not reviewed, and where it all came from.
//!
//! Trust: instruction files come from the base commit only; the change and the context enter
//! the prompt as quoted, numbered data; nothing runs and nothing is written.
//! Reproducible: greedy decoding, one submission group, no timings in the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::ReviewConfig;
use crate::engine::{Backend, ChatMessage, Constraint, GenerateEvent, GenerateRequest, Sampling};
use crate::git::{ChangedFile, FileChange, Hunk, Repo, Side};
use crate::protocol::{
    Coverage, CoverageStatus, EventMsg, FileCoverage, Finding, Provenance, ReviewHead,
    ReviewReport, ReviewSpec, Severity,
};

use super::search::CodeSearch;

/// The agent name on review events.
pub const AGENT: &str = "reviewer";

/// The embedded system prompt template.
pub const PROMPT: &str = include_str!("../../prompts/review.md");
/// The embedded answer grammar; `FILE` is replaced by the request's path.
pub const GRAMMAR: &str = include_str!("../../grammars/gbnf/review.gbnf");

/// Finding categories the grammar allows, in its order.
pub const CATEGORIES: &[&str] = &[
    "bug",
    "security",
    "error-handling",
    "concurrency",
    "performance",
    "resource-leak",
    "testing",
    "maintainability",
    "documentation",
];

/// Context lines around each hunk.
const CONTEXT_LINES: u32 = 3;
/// Characters of one diff line shown at most.
const MAX_LINE_CHARS: usize = 240;
/// A finding this many lines or fewer away from a changed line is moved onto it; farther, dropped.
const RELOCATE_LINES: u32 = 5;

/// The model a review runs on, for provenance.
#[derive(Debug, Clone, Default)]
pub struct ModelIdentity {
    /// The file name (or the server's model name).
    pub name: String,
    /// The model file's path, hashed when `sha256` is unknown (`None` for a server).
    pub path: Option<PathBuf>,
    /// The pinned sha256 of a verified catalog model.
    pub sha256: Option<String>,
}

/// What a review needs.
pub struct ReviewEnv {
    pub backend: Arc<dyn Backend>,
    pub search: Arc<dyn CodeSearch>,
    pub repo_root: PathBuf,
    pub config: ReviewConfig,
    pub model: ModelIdentity,
    /// Context length of one sequence: requests must fit in it.
    pub ctx_per_seq: u32,
}

/// One part of a file's diff sent to the model.
#[derive(Debug, Clone)]
struct Part {
    /// Index of the file in the plan.
    file: usize,
    /// Which hunks of the file it covers (hunk index, changed lines of that hunk counted here).
    hunks: Vec<(usize, u32)>,
    /// The numbered diff text.
    text: String,
    /// New-side lines the part adds or changes.
    changed_new_lines: Vec<u32>,
    /// Identifiers the changed lines use and define, for context retrieval.
    used: Vec<String>,
    defined: Vec<String>,
}

/// The plan: coverage per file, and the parts to review.
#[derive(Debug)]
struct Plan {
    files: Vec<FileCoverage>,
    parts: Vec<Part>,
    /// Per file: changed new-side lines of reviewed hunks (for relocating findings).
    changed: Vec<Vec<u32>>,
}

/// Runs a review, sending progress through `emit`, then a `ReviewComplete` with the report (or
/// an `Error` naming what failed and the fix).
pub async fn review(env: &ReviewEnv, spec: ReviewSpec, emit: &(dyn Fn(EventMsg) + Send + Sync)) {
    match review_inner(env, spec, emit).await {
        Ok(report) => {
            for f in &report.findings {
                emit(EventMsg::ReviewFinding { finding: f.clone() });
            }
            emit(EventMsg::ReviewComplete {
                report: Box::new(report),
            });
        }
        Err((message, fix)) => emit(EventMsg::Error { message, fix }),
    }
}

type Failure = (String, Option<String>);

fn fail(message: impl Into<String>) -> Failure {
    (message.into(), None)
}

/// The change to review: files, patch text, and the resolved sides.
struct Resolved {
    files: Vec<ChangedFile>,
    patch: String,
    base_commit: String,
    head: String,
    instructions: Vec<(String, String)>,
}

fn resolve(root: &Path, spec: &ReviewSpec) -> Result<Resolved, Failure> {
    let repo = Repo::open(root).map_err(|e| fail(e.to_string()))?;
    let base_name = spec.base.as_deref().unwrap_or("HEAD");
    let base = repo
        .resolve_or_unborn(base_name)
        .map_err(|e| fail(e.to_string()))?;
    let (side, head_label) = match &spec.head {
        ReviewHead::Worktree => (Side::Worktree, "worktree".to_string()),
        ReviewHead::Staged => (Side::Staged, "staged".to_string()),
        ReviewHead::Ref(name) => {
            let oid = repo.resolve(name).map_err(|e| fail(e.to_string()))?;
            (Side::Commit(oid), oid.to_string())
        }
    };
    // Against a commit, review what the head adds since it forked from the base (like a pull
    // request), not what the base gained meanwhile.
    let base = match (&side, base) {
        (Side::Commit(head), Some(b)) => Some(repo.merge_base(b, *head).unwrap_or(b)),
        (_, b) => b,
    };
    let mut change = repo
        .change(base, &side, CONTEXT_LINES)
        .map_err(|e| fail(e.to_string()))?;
    if !spec.paths.is_empty() {
        let wanted = |p: &str| spec.paths.iter().any(|w| w.trim_start_matches("./") == p);
        change
            .files
            .retain(|f| wanted(&f.path) || f.old_path.as_deref().is_some_and(wanted));
        change.patch = patch_of(&change.patch, &change.files);
    }
    let base_commit = base.map_or_else(|| "none".to_string(), |b| b.to_string());
    let mut instructions = match base {
        Some(b) => super::context::instruction_files(&repo, &b.to_string()),
        None => Vec::new(),
    };
    // Within the system prompt's reserve, whatever the files hold.
    let mut left = MAX_INSTRUCTION_CHARS;
    for (_, text) in instructions.iter_mut() {
        *text = super::tools::clip(text, left);
        left = left.saturating_sub(text.len());
    }
    instructions.retain(|(_, t)| !t.is_empty());
    Ok(Resolved {
        files: change.files,
        patch: change.patch,
        base_commit,
        head: head_label,
        instructions,
    })
}

/// The parts of a unified `patch` (one per `diff --git` header) that belong to `files`.
fn patch_of(patch: &str, files: &[ChangedFile]) -> String {
    let headers: Vec<String> = files
        .iter()
        .map(|f| {
            let old = f.old_path.as_deref().unwrap_or(&f.path);
            format!("diff --git a/{old} b/{}", f.path)
        })
        .collect();
    let mut out = String::new();
    let mut keep = false;
    for line in patch.split_inclusive('\n') {
        if line.starts_with("diff --git ") {
            keep = headers.iter().any(|h| line.trim_end() == h);
        }
        if keep {
            out.push_str(line);
        }
    }
    out
}

async fn review_inner(
    env: &ReviewEnv,
    spec: ReviewSpec,
    emit: &(dyn Fn(EventMsg) + Send + Sync),
) -> Result<ReviewReport, Failure> {
    let root = env.repo_root.clone();
    let resolved = tokio::task::spawn_blocking(move || resolve(&root, &spec))
        .await
        .map_err(|e| fail(format!("reading the change failed: {e}")))??;
    let mut plan = plan(&resolved.files, &env.config, part_chars(env))?;
    emit(EventMsg::ReviewStarted {
        files: resolved.files.len() as u32,
        hunks: plan.files.iter().map(|f| f.hunks).sum(),
        requests: plan.parts.len() as u32,
    });

    let system = system_prompt(&env.repo_root, &resolved.instructions)?;
    // Context per part, from the index (blocking reads).
    let contexts = {
        let search = Arc::clone(&env.search);
        let root = env.repo_root.clone();
        let parts = plan.parts.clone();
        let paths: Vec<String> = plan.files.iter().map(|f| f.path.clone()).collect();
        let budget = env.config.context_tokens as usize;
        tokio::task::spawn_blocking(move || {
            parts
                .iter()
                .map(|p| context_for(search.as_ref(), &root, &paths[p.file], p, budget))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| fail(format!("retrieving context failed: {e}")))?
    };

    let requests: Vec<GenerateRequest> = plan
        .parts
        .iter()
        .zip(&contexts)
        .map(|(p, ctx)| {
            let path = &plan.files[p.file].path;
            let user = user_message(path, p, ctx);
            GenerateRequest::chat(vec![
                ChatMessage::system(system.clone()),
                ChatMessage::user(user),
            ])
            .with_max_tokens(env.config.max_tokens)
            .with_sampling(Sampling::greedy())
            .with_constraint(Constraint::Gbnf(grammar_for(path)))
        })
        .collect();

    let answers = run_requests(env, requests, emit).await;

    // Gather findings per part; a part whose answer failed is not counted as reviewed.
    let mut findings = Vec::new();
    let mut dropped = 0u32;
    let mut cut = 0u32;
    let mut unreviewed: BTreeMap<usize, String> = BTreeMap::new();
    for (k, answer) in answers.into_iter().enumerate() {
        let part = &plan.parts[k];
        match answer.and_then(|(text, was_cut)| {
            cut += u32::from(was_cut);
            parse_answer(&text, was_cut)
        }) {
            Ok(found) => {
                let path = &plan.files[part.file].path;
                for f in found {
                    match place(f, path, &part.changed_new_lines, &plan.changed[part.file]) {
                        Some(f) => findings.push(f),
                        None => dropped += 1,
                    }
                }
            }
            Err(why) => {
                unreviewed.insert(k, why);
            }
        }
    }
    for (k, why) in &unreviewed {
        let part = &plan.parts[*k];
        let fc = &mut plan.files[part.file];
        for (_, lines) in &part.hunks {
            fc.changed_lines_reviewed = fc.changed_lines_reviewed.saturating_sub(*lines);
        }
        fc.status = if fc.changed_lines_reviewed == 0 {
            CoverageStatus::Skipped
        } else {
            CoverageStatus::Clipped
        };
        fc.reason = Some(format!("a review request failed: {why}"));
    }
    // A hunk counts as reviewed when every part of it was.
    for fc in plan.files.iter_mut() {
        fc.hunks_reviewed = 0;
    }
    let mut hunk_ok: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for (k, part) in plan.parts.iter().enumerate() {
        for (h, _) in &part.hunks {
            let ok = hunk_ok.entry((part.file, *h)).or_insert(true);
            *ok &= !unreviewed.contains_key(&k);
        }
    }
    for ((file, _), ok) in hunk_ok {
        if ok {
            plan.files[file].hunks_reviewed += 1;
        }
    }

    let findings = merge(findings);
    let coverage = coverage(plan.files);
    let provenance = provenance(env, &resolved).await?;
    Ok(ReviewReport {
        provenance,
        coverage,
        findings,
        findings_dropped: dropped,
        answers_cut: cut,
    })
}

/// Sends the requests (all in one group, or `review.parallel` at a time) and gathers each
/// answer's text, in request order.
async fn run_requests(
    env: &ReviewEnv,
    requests: Vec<GenerateRequest>,
    emit: &(dyn Fn(EventMsg) + Send + Sync),
) -> Vec<Result<(String, bool), String>> {
    let total = requests.len() as u32;
    let window = match env.config.parallel {
        0 => requests.len().max(1),
        n => n as usize,
    };
    let mut out = Vec::with_capacity(requests.len());
    let mut done = 0u32;
    let mut pending = requests.into_iter().peekable();
    while pending.peek().is_some() {
        let group: Vec<GenerateRequest> = pending.by_ref().take(window).collect();
        let streams = env.backend.generate_group(group);
        let answers = futures::future::join_all(streams.into_iter().map(collect_text)).await;
        for a in answers {
            done += 1;
            emit(EventMsg::ReviewProgress { done, total });
            out.push(a);
        }
    }
    out
}

/// The answer's text, and whether it was cut at the token limit.
async fn collect_text(
    mut stream: crate::engine::GenerationStream,
) -> Result<(String, bool), String> {
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(GenerateEvent::Delta { text: t, .. }) => text.push_str(&t),
            Ok(GenerateEvent::Done { finish_reason, .. }) => {
                return match finish_reason {
                    crate::engine::FinishReason::Cancelled => Err("cancelled".into()),
                    crate::engine::FinishReason::Length => Ok((text, true)),
                    crate::engine::FinishReason::Stop => Ok((text, false)),
                };
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the engine ended the request without an answer".into())
}

/// Characters of diff text one request may carry: what is left of a sequence's context after
/// the answer, the system prompt and the repository context, at a conservative 3 characters
/// per token.
fn part_chars(env: &ReviewEnv) -> usize {
    let left = (env.ctx_per_seq as usize)
        .saturating_sub(env.config.max_tokens as usize)
        .saturating_sub(env.config.context_tokens as usize)
        .saturating_sub(SYSTEM_TOKENS);
    (left * 3).max(1_000)
}

/// Characters of instruction files in the system prompt at most.
const MAX_INSTRUCTION_CHARS: usize = 3_000;

/// Tokens reserved for the system prompt (instruction files are clipped to fit).
const SYSTEM_TOKENS: usize = 1_600;

/// Splits the change into reviewable parts within the budgets, and records coverage.
fn plan(files: &[ChangedFile], config: &ReviewConfig, max_chars: usize) -> Result<Plan, Failure> {
    let mut globs = globset::GlobSetBuilder::new();
    for p in &config.exclude {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|e| {
                (
                    format!("bad review.exclude pattern `{p}`: {e}"),
                    Some("fix the pattern in troupe.toml".into()),
                )
            })?;
        globs.add(glob);
    }
    let excluded = globs
        .build()
        .map_err(|e| fail(format!("review.exclude: {e}")))?;

    let mut budget = config.max_diff_lines;
    let mut out = Plan {
        files: Vec::new(),
        parts: Vec::new(),
        changed: Vec::new(),
    };
    // troupe's own state (logs, index) is never part of a change, even where it is not ignored.
    let state_prefix = format!("{}/", crate::index::scan::STATE_DIR);
    let files: Vec<&ChangedFile> = files
        .iter()
        .filter(|f| !f.path.starts_with(&state_prefix))
        .collect();
    for (fi, file) in files.iter().enumerate() {
        let changed_lines: u32 = file.hunks.iter().map(Hunk::changed_lines).sum();
        let mut fc = FileCoverage {
            path: file.path.clone(),
            status: CoverageStatus::Skipped,
            reason: None,
            hunks: file.hunks.len().max(usize::from(file.binary)) as u32,
            hunks_reviewed: 0,
            changed_lines,
            changed_lines_reviewed: 0,
        };
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        let skip = if excluded.is_match(&file.path) || excluded.is_match(name) {
            Some("excluded by review.exclude".to_string())
        } else if file.binary {
            Some("binary file".to_string())
        } else if file.change == FileChange::Deleted {
            Some("deleted: nothing on the new side to comment on".to_string())
        } else if file.hunks.is_empty() {
            Some(match file.change {
                FileChange::Renamed => "renamed without content changes".to_string(),
                FileChange::TypeChange => "only its file type or mode changed".to_string(),
                _ => "no content changes".to_string(),
            })
        } else if changed_lines > config.max_file_lines {
            Some(format!(
                "too large: {changed_lines} changed lines (review.max_file_lines = {})",
                config.max_file_lines
            ))
        } else {
            None
        };
        let mut changed_new = Vec::new();
        if let Some(reason) = skip {
            fc.reason = Some(reason);
            out.files.push(fc);
            out.changed.push(changed_new);
            continue;
        }
        let mut over_budget = false;
        for (hi, hunk) in file.hunks.iter().enumerate() {
            let n = hunk.changed_lines();
            if n > budget {
                over_budget = true;
                continue;
            }
            budget -= n;
            fc.hunks_reviewed += 1;
            fc.changed_lines_reviewed += n;
            for piece in split_hunk(hunk, config.request_lines as usize, max_chars) {
                changed_new.extend(piece.changed_new_lines.iter().copied());
                // Small hunks of one file share a request while they fit.
                if let Some(last) = out.parts.last_mut()
                    && last.file == fi
                    && last.text.lines().count() + piece.text.lines().count()
                        <= config.request_lines as usize
                    && last.text.len() + piece.text.len() <= max_chars
                {
                    last.text.push_str(&piece.text);
                    last.changed_new_lines.extend(piece.changed_new_lines);
                    last.hunks.push((hi, piece.counted));
                    merge_words(&mut last.used, piece.used);
                    merge_words(&mut last.defined, piece.defined);
                    continue;
                }
                out.parts.push(Part {
                    file: fi,
                    hunks: vec![(hi, piece.counted)],
                    text: piece.text,
                    changed_new_lines: piece.changed_new_lines,
                    used: piece.used,
                    defined: piece.defined,
                });
            }
        }
        fc.status = if fc.hunks_reviewed == fc.hunks {
            CoverageStatus::Reviewed
        } else if fc.hunks_reviewed == 0 {
            CoverageStatus::Skipped
        } else {
            CoverageStatus::Clipped
        };
        if over_budget {
            fc.reason = Some(format!(
                "over the review budget: {} of {} changed lines reviewed (review.max_diff_lines = {})",
                fc.changed_lines_reviewed, fc.changed_lines, config.max_diff_lines
            ));
        }
        out.files.push(fc);
        out.changed.push(changed_new);
    }
    Ok(out)
}

/// A window of one hunk.
struct Piece {
    text: String,
    changed_new_lines: Vec<u32>,
    /// Changed lines of the hunk this piece accounts for.
    counted: u32,
    used: Vec<String>,
    defined: Vec<String>,
}

/// Renders a hunk as numbered lines, split into windows of at most `max_lines` lines and about
/// `max_chars` characters.
fn split_hunk(hunk: &Hunk, max_lines: usize, max_chars: usize) -> Vec<Piece> {
    let mut windows: Vec<&[crate::git::DiffLine]> = Vec::new();
    let (mut start, mut chars) = (0, 0);
    for (i, line) in hunk.lines.iter().enumerate() {
        let cost = line.text.len().min(MAX_LINE_CHARS + 12) + 8;
        if i > start && (i - start >= max_lines.max(1) || chars + cost > max_chars) {
            windows.push(&hunk.lines[start..i]);
            (start, chars) = (i, 0);
        }
        chars += cost;
    }
    if start < hunk.lines.len() {
        windows.push(&hunk.lines[start..]);
    }
    let mut pieces = Vec::new();
    for (w, window) in windows.into_iter().enumerate() {
        let mut text = if w == 0 {
            format!("{}\n", hunk.header)
        } else {
            format!("{} (continued)\n", hunk.header)
        };
        let mut changed = Vec::new();
        let mut counted = 0;
        let mut added_text = String::new();
        for line in window {
            let number = match (line.origin, line.new_line) {
                ('-', _) | (_, None) => "     ".to_string(),
                (_, Some(n)) => format!("{n:>5}"),
            };
            let mut shown: String = line.text.chars().take(MAX_LINE_CHARS).collect();
            if shown.len() < line.text.len() {
                shown.push_str(" [line cut]");
            }
            text.push_str(&format!("{number} {}{shown}\n", line.origin));
            if line.origin != ' ' {
                counted += 1;
            }
            if line.origin == '+' {
                if let Some(n) = line.new_line {
                    changed.push(n);
                }
                added_text.push_str(&line.text);
                added_text.push('\n');
            }
        }
        let (used, defined) = identifiers(&added_text);
        pieces.push(Piece {
            text,
            changed_new_lines: changed,
            counted,
            used,
            defined,
        });
    }
    pieces
}

fn merge_words(into: &mut Vec<String>, more: Vec<String>) {
    for w in more {
        if !into.contains(&w) {
            into.push(w);
        }
    }
}

/// Words that are not worth searching for.
const STOP_WORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "let",
    "mut",
    "pub",
    "use",
    "mod",
    "self",
    "Self",
    "impl",
    "return",
    "else",
    "while",
    "loop",
    "match",
    "true",
    "false",
    "None",
    "Some",
    "Ok",
    "Err",
    "def",
    "class",
    "import",
    "from",
    "const",
    "var",
    "func",
    "function",
    "this",
    "new",
    "null",
    "nil",
    "void",
    "int",
    "str",
    "string",
    "bool",
    "async",
    "await",
    "static",
    "struct",
    "enum",
    "trait",
    "type",
    "interface",
    "package",
    "public",
    "private",
    "protected",
    "String",
    "Vec",
    "Option",
    "Result",
    "print",
    "println",
    "len",
    "not",
    "with",
    "into",
    "elif",
    "pass",
    "raise",
    "try",
    "except",
    "finally",
    "lambda",
    "yield",
    "break",
    "continue",
    "where",
    "dyn",
    "ref",
    "crate",
    "super",
    "extern",
    "unsafe",
    "static",
    "char",
    "float",
    "double",
    "long",
    "unsigned",
];

/// Keywords after which a name is defined.
const DEFINERS: &[&str] = &[
    "fn",
    "def",
    "func",
    "function",
    "class",
    "struct",
    "enum",
    "trait",
    "interface",
    "type",
];

/// Identifiers the text uses (most frequent first, at most 8) and the names it defines.
fn identifiers(text: &str) -> (Vec<String>, Vec<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut defined = Vec::new();
    let mut prev = "";
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if word.is_empty() {
            continue;
        }
        if DEFINERS.contains(&prev)
            && word.len() >= 2
            && !defined.iter().any(|d: &String| d == word)
        {
            defined.push(word.to_string());
        }
        prev = word;
        if word.len() < 3
            || word.chars().next().is_some_and(|c| c.is_ascii_digit())
            || STOP_WORDS.contains(&word)
            || DEFINERS.contains(&word)
        {
            continue;
        }
        *counts.entry(word).or_default() += 1;
    }
    let mut used: Vec<(&str, usize)> = counts
        .into_iter()
        .filter(|(w, _)| !defined.iter().any(|d| d == w))
        .collect();
    used.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    (
        used.into_iter()
            .take(8)
            .map(|(w, _)| w.to_string())
            .collect(),
        defined,
    )
}

/// One excerpt of repository context.
#[derive(Debug, Clone)]
struct Excerpt {
    label: &'static str,
    path: String,
    start_line: usize,
    end_line: usize,
    text: String,
}

/// The context a reviewer needs for one part: definitions the change uses, callers of what it
/// defines, and related tests, from the index, within `budget_tokens`.
fn context_for(
    search: &dyn CodeSearch,
    root: &Path,
    path: &str,
    part: &Part,
    budget_tokens: usize,
) -> Vec<Excerpt> {
    let mut out: Vec<Excerpt> = Vec::new();
    let budget = budget_tokens * 4;
    let mut used_chars = 0;
    let own_lines = |h: &crate::agents::SearchHit| {
        h.path == path
            && part
                .changed_new_lines
                .iter()
                .any(|&n| (h.start_line..=h.end_line).contains(&(n as usize)))
    };
    let mut add =
        |label: &'static str, hits: Vec<crate::agents::SearchHit>, out: &mut Vec<Excerpt>| {
            for h in hits {
                if own_lines(&h)
                    || out.iter().any(|e| {
                        e.path == h.path && h.start_line <= e.end_line && h.end_line >= e.start_line
                    })
                {
                    continue;
                }
                let text: String = h.snippet.lines().take(40).collect::<Vec<_>>().join("\n");
                if used_chars + text.len() > budget {
                    continue;
                }
                used_chars += text.len();
                out.push(Excerpt {
                    label,
                    path: h.path,
                    start_line: h.start_line,
                    end_line: h.end_line,
                    text,
                });
            }
        };
    let query = |q: &str, limit: usize| search.search(root, q, limit).unwrap_or_default();
    if !part.used.is_empty() {
        let hits = query(&part.used.join(" "), 6);
        // Definitions first: hits whose symbol is one of the used names.
        let (defs, _rest): (Vec<_>, Vec<_>) = hits.into_iter().partition(|h| {
            h.symbol
                .as_deref()
                .is_some_and(|s| part.used.iter().any(|u| s.ends_with(u.as_str())))
        });
        add(
            "definition used by the change",
            defs.into_iter().take(2).collect(),
            &mut out,
        );
    }
    if !part.defined.is_empty() {
        let names = part.defined.join(" ");
        let hits = query(&names, 8);
        let callers: Vec<_> = hits
            .iter()
            .filter(|h| {
                !h.path.contains("test")
                    && part
                        .defined
                        .iter()
                        .any(|d| h.snippet.contains(&format!("{d}(")))
            })
            .take(2)
            .cloned()
            .collect();
        add("caller of what the change defines", callers, &mut out);
        let tests: Vec<_> = query(&format!("test {names}"), 8)
            .into_iter()
            .filter(|h| h.path.contains("test"))
            .take(1)
            .collect();
        add("related test", tests, &mut out);
    }
    out
}

/// A markdown fence for quoted text: longer than any run of backticks in it (at least three).
pub fn fence(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

fn user_message(path: &str, part: &Part, context: &[Excerpt]) -> String {
    let mut out = String::new();
    if !context.is_empty() {
        out.push_str("Repository context (data, for reference only):\n\n");
        for e in context {
            let f = fence(&e.text);
            out.push_str(&format!(
                "{} — {}:{}-{}\n{f}\n{}\n{f}\n\n",
                e.label,
                e.path,
                e.start_line,
                e.end_line,
                e.text.trim_end()
            ));
        }
    }
    let f = fence(&part.text);
    out.push_str(&format!(
        "Review this part of the change to `{path}`. Each line shows its new-side line number, \
         then `+` (added), `-` (removed) or a space (context).\n\nBEGIN CHANGE\n{f}\n{}{f}\nEND CHANGE\n\n\
         Report problems on the added lines as JSON.",
        part.text
    ));
    out
}

fn system_prompt(root: &Path, instructions: &[(String, String)]) -> Result<String, Failure> {
    let repo_name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repository".into());
    let instructions: Vec<_> = instructions
        .iter()
        .map(|(path, text)| minijinja::context! { path => path, text => text })
        .collect();
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.render_str(
        PROMPT,
        minijinja::context! { repo => repo_name, instructions => instructions, categories => CATEGORIES },
    )
    .map_err(|e| fail(format!("prompts/review.md does not render: {e}")))
}

/// The answer grammar with the request's path as the only allowed file.
pub fn grammar_for(path: &str) -> String {
    let json = serde_json::to_string(path).unwrap_or_else(|_| "\"\"".into());
    let mut literal = String::from("\"");
    for c in json.chars() {
        match c {
            '"' => literal.push_str("\\\""),
            '\\' => literal.push_str("\\\\"),
            c => literal.push(c),
        }
    }
    literal.push('"');
    GRAMMAR
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with("file ") {
                format!("file     ::= {literal}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(serde::Deserialize)]
struct Answer {
    findings: Vec<Finding>,
}

/// The findings of an answer. An answer cut at the token limit is a prefix of the grammar's
/// language: the findings it completed are kept.
fn parse_answer(text: &str, cut: bool) -> Result<Vec<Finding>, String> {
    let text = text.trim();
    match serde_json::from_str::<Answer>(text) {
        Ok(a) => Ok(a.findings),
        Err(_) if cut => {
            // Close the list after the last complete finding (or before the first one).
            let ends = text.match_indices('}').map(|(i, _)| i).rev();
            for end in ends {
                let candidate = format!("{}]}}", &text[..=end]);
                if let Ok(a) = serde_json::from_str::<Answer>(&candidate) {
                    return Ok(a.findings);
                }
            }
            Ok(Vec::new())
        }
        Err(e) => Err(format!(
            "the model's answer is not the finding schema ({e})"
        )),
    }
}

/// Puts a finding on the new side of the diff: kept when it overlaps a changed line, moved onto
/// the nearest changed line when it is close, else dropped (`None`).
fn place(mut f: Finding, path: &str, part_lines: &[u32], file_lines: &[u32]) -> Option<Finding> {
    f.file = path.to_string();
    if f.end_line < f.start_line {
        std::mem::swap(&mut f.start_line, &mut f.end_line);
    }
    f.confidence = f.confidence.clamp(0.0, 1.0);
    f.title = f.title.trim().to_string();
    f.explanation = f.explanation.trim().to_string();
    let lines = if part_lines.is_empty() {
        file_lines
    } else {
        part_lines
    };
    if lines
        .iter()
        .any(|&n| (f.start_line..=f.end_line).contains(&n))
    {
        return Some(f);
    }
    let distance = |n: u32| {
        if n < f.start_line {
            f.start_line - n
        } else {
            n - f.end_line
        }
    };
    let nearest = lines.iter().copied().min_by_key(|&n| (distance(n), n))?;
    if distance(nearest) > RELOCATE_LINES {
        return None;
    }
    f.start_line = nearest;
    f.end_line = nearest;
    // A replacement was written for other lines; it no longer applies.
    f.suggestion = None;
    Some(f)
}

/// Merges repeated findings (same file and category, overlapping lines): the most severe and
/// confident one stays, spanning both. Sorted by file, line, severity (most severe first), title.
fn merge(mut findings: Vec<Finding>) -> Vec<Finding> {
    let key = |f: &Finding| {
        (
            f.file.clone(),
            f.start_line,
            std::cmp::Reverse(f.severity),
            f.title.clone(),
            f.end_line,
        )
    };
    findings.sort_by(|a, b| {
        key(a).cmp(&key(b)).then(
            b.confidence
                .partial_cmp(&a.confidence)
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    let mut out: Vec<Finding> = Vec::new();
    for f in findings {
        if let Some(same) = out.iter_mut().find(|g| {
            g.file == f.file
                && g.category == f.category
                && f.start_line <= g.end_line
                && f.end_line >= g.start_line
        }) {
            if f.severity > same.severity
                || (f.severity == same.severity && f.confidence > same.confidence)
            {
                let (start, end) = (
                    same.start_line.min(f.start_line),
                    same.end_line.max(f.end_line),
                );
                *same = f;
                same.start_line = start;
                same.end_line = end;
            } else {
                same.start_line = same.start_line.min(f.start_line);
                same.end_line = same.end_line.max(f.end_line);
            }
            continue;
        }
        out.push(f);
    }
    out.sort_by_key(key);
    out
}

fn coverage(files: Vec<FileCoverage>) -> Coverage {
    let hunks = files.iter().map(|f| f.hunks).sum();
    let hunks_reviewed = files.iter().map(|f| f.hunks_reviewed).sum();
    let changed_lines: u32 = files.iter().map(|f| f.changed_lines).sum();
    let changed_lines_reviewed: u32 = files.iter().map(|f| f.changed_lines_reviewed).sum();
    let ratio = if changed_lines == 0 {
        1.0
    } else {
        // Rounded so the JSON text does not depend on float formatting of long fractions.
        (f64::from(changed_lines_reviewed) / f64::from(changed_lines) * 10_000.0).round() / 10_000.0
    };
    Coverage {
        files,
        hunks,
        hunks_reviewed,
        changed_lines,
        changed_lines_reviewed,
        ratio,
    }
}

/// sha256 of the prompt template and the grammar.
pub fn prompt_sha256() -> String {
    let mut h = Sha256::new();
    h.update(PROMPT.as_bytes());
    h.update([0]);
    h.update(GRAMMAR.as_bytes());
    hex::encode(h.finalize())
}

async fn provenance(env: &ReviewEnv, resolved: &Resolved) -> Result<Provenance, Failure> {
    let model = env.model.clone();
    let root = env.repo_root.clone();
    let (model_sha256, index_state) = tokio::task::spawn_blocking(move || {
        let sha = match (&model.sha256, &model.path) {
            (Some(s), _) => Ok(Some(s.clone())),
            (None, Some(p)) => crate::models::store::sha256_file(p)
                .map(Some)
                .map_err(|e| e.to_string()),
            (None, None) => Ok(None),
        };
        (sha, crate::retrieve::index_state(&root))
    })
    .await
    .map_err(|e| fail(format!("provenance failed: {e}")))?;
    let model_sha256 = model_sha256.map_err(fail)?;
    Ok(Provenance {
        troupe_version: env!("CARGO_PKG_VERSION").to_string(),
        model: env.model.name.clone(),
        model_sha256,
        prompt_sha256: prompt_sha256(),
        index_state,
        base_commit: resolved.base_commit.clone(),
        head: resolved.head.clone(),
        diff_sha256: hex::encode(Sha256::digest(resolved.patch.as_bytes())),
    })
}

/// Whether the report fails the run: a finding at or above `fail_on`, or too little coverage.
pub fn verdict(
    report: &ReviewReport,
    fail_on: crate::config::FailOn,
    min_coverage: f64,
) -> Option<String> {
    use crate::config::FailOn;
    let threshold = match fail_on {
        FailOn::None => None,
        FailOn::Low => Some(Severity::Low),
        FailOn::Medium => Some(Severity::Medium),
        FailOn::High => Some(Severity::High),
    };
    if let Some(t) = threshold {
        let n = report.findings.iter().filter(|f| f.severity >= t).count();
        if n > 0 {
            return Some(format!(
                "{n} finding(s) at or above --fail-on {}",
                format!("{fail_on:?}").to_lowercase()
            ));
        }
    }
    if report.coverage.ratio + 1e-9 < min_coverage {
        return Some(format!(
            "coverage {:.1}% is below --min-coverage {:.1}%",
            report.coverage.ratio * 100.0,
            min_coverage * 100.0
        ));
    }
    None
}

#[cfg(test)]
mod tests;
