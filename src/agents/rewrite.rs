//! Proposed edits of a file or of a range of its lines (`troupe edit`, the editor's "edit
//! selection"): the model rewrites the selected lines following an instruction, its output
//! constrained by a grammar (`grammars/gbnf/edit.gbnf`: one fenced block of at most a bounded
//! number of lines), and the replacement is spliced into the file in place of exactly those
//! lines. Lines outside the range cannot change, whatever the model writes.
//!
//! Nothing is written: the result is an [`EditProposal`] with a unified diff and the new text;
//! front ends write it with [`super::target::write_if_unchanged`] on request.

use crate::engine::{
    ChatMessage, Constraint, FinishReason, GenerateEvent, GenerateRequest, Sampling,
};
use crate::protocol::{EditProposal, EventMsg, RequestStats};

use super::ask::AskEnv;
use super::explain::location_error;
use super::orchestrator::convert_stats;
use super::target::Target;

/// The embedded system prompt template.
const SYSTEM: &str = include_str!("../../prompts/edit.md");
/// The embedded grammar template (rendered with `max_lines`).
const GRAMMAR: &str = include_str!("../../grammars/gbnf/edit.gbnf");
/// Lines of the file shown before and after the selection, for context.
const CONTEXT_LINES: usize = 30;

/// An edit to propose.
#[derive(Debug, Clone, Default)]
pub struct EditRequest {
    /// The file, relative to the repository root.
    pub file: String,
    /// 1-based inclusive lines to rewrite (`None`: the whole file).
    pub range: Option<(u32, u32)>,
    /// What to change.
    pub instruction: String,
    /// The file's text when it is not the disk's (an unsaved buffer).
    pub content: Option<String>,
}

/// Proposes the edit, streaming the model's output through `emit`, then an `EditComplete`.
/// A bad location, an empty instruction or a failed request comes back as an `Error` event.
pub async fn propose(env: &AskEnv, req: EditRequest, emit: &(dyn Fn(EventMsg) + Send + Sync)) {
    match propose_inner(env, req, emit).await {
        Ok(proposal) => emit(EventMsg::EditComplete { proposal }),
        Err(msg) => emit(msg),
    }
}

async fn propose_inner(
    env: &AskEnv,
    req: EditRequest,
    emit: &(dyn Fn(EventMsg) + Send + Sync),
) -> Result<EditProposal, EventMsg> {
    let fail = |message: String, fix: Option<&str>| EventMsg::Error {
        message,
        fix: fix.map(str::to_string),
    };
    if req.instruction.trim().is_empty() {
        return Err(fail(
            "the edit instruction is empty".into(),
            Some("say what to change with --instruction TEXT"),
        ));
    }
    let target = Target::load(&env.repo_root, &req.file, req.content).map_err(location_error)?;
    let (start, end) = target.check_range(req.range).map_err(location_error)?;
    let split = Split::new(&target.text, start, end);

    // The selection must fit one sequence's context with room for its rewrite.
    let budget_chars = (env.context_tokens * 3).max(1000);
    if split.selected.len() > budget_chars {
        return Err(fail(
            format!(
                "the selection ({} lines, {} characters) is too large for the model's context",
                split.selected.lines().count(),
                split.selected.len()
            ),
            Some("select fewer lines with --range, or raise engine.ctx_per_seq"),
        ));
    }
    let selected_lines = split.selected.lines().count();
    let max_lines = selected_lines * 2 + 20;
    let grammar = minijinja::Environment::new()
        .render_str(GRAMMAR, minijinja::context! { max_lines => max_lines })
        .map_err(|e| {
            fail(
                format!("grammars/gbnf/edit.gbnf does not render: {e}"),
                None,
            )
        })?;
    let system = minijinja::Environment::new()
        .render_str(SYSTEM, minijinja::context! {})
        .map_err(|e| fail(format!("prompts/edit.md does not render: {e}"), None))?;
    let user = user_message(&target.path, &split, start, end, &req.instruction);
    // About a token per three characters, twice the selection's size, with a floor for growth.
    let max_tokens = ((split.selected.len() / 3) * 2 + 256).min(env.max_tokens as usize) as u32;
    let request = GenerateRequest::chat(vec![ChatMessage::system(system), ChatMessage::user(user)])
        .with_max_tokens(max_tokens)
        .with_sampling(Sampling::greedy())
        .with_constraint(Constraint::Gbnf(grammar));

    let mut stream = env.backend.generate(request);
    let mut output = String::new();
    let mut done: Option<(RequestStats, FinishReason)> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(GenerateEvent::Delta { text, .. }) => {
                if !text.is_empty() {
                    output.push_str(&text);
                    emit(EventMsg::AgentMessageDelta { delta: text });
                }
            }
            Ok(GenerateEvent::Done {
                stats,
                finish_reason,
            }) => done = Some((convert_stats(&stats), finish_reason)),
            Err(e) => return Err(fail(format!("the model request failed: {e}"), None)),
        }
    }
    let Some((stats, finish)) = done else {
        return Err(fail(
            "the model's answer ended without its final statistics".into(),
            None,
        ));
    };
    emit(EventMsg::AgentMessage {
        text: output.clone(),
    });
    match finish {
        FinishReason::Stop => {}
        FinishReason::Length => {
            return Err(fail(
                format!("the model's rewrite was cut off at {max_tokens} tokens"),
                Some("select fewer lines with --range or make the instruction narrower"),
            ));
        }
        FinishReason::Cancelled => return Err(fail("the edit was cancelled".into(), None)),
    }
    let body = parse_block(&output).ok_or_else(|| {
        fail(
            format!("the model's answer is not one fenced code block: {output:?}"),
            Some("run the edit again; if it persists, use a larger model (--model)"),
        )
    })?;
    let replacement = fit_line_endings(&body, &split.selected);
    let new_text = format!("{}{}{}", split.before, replacement, split.after);
    let (diff, lines_added, lines_removed) = unified_diff(&target.path, &target.text, &new_text);
    Ok(EditProposal {
        path: target.path,
        start_line: start,
        end_line: end,
        diff,
        new_text,
        replacement,
        lines_added,
        lines_removed,
        stats,
    })
}

/// A file cut around the selected lines; the three parts concatenate to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Split {
    before: String,
    selected: String,
    after: String,
}

impl Split {
    /// `start..=end` are 1-based lines known to be within the file (`(1, 0)`: an empty file).
    fn new(text: &str, start: u32, end: u32) -> Split {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let a = (start.max(1) as usize - 1).min(lines.len());
        let b = (end as usize).clamp(a, lines.len());
        Split {
            before: lines[..a].concat(),
            selected: lines[a..b].concat(),
            after: lines[b..].concat(),
        }
    }
}

/// The prompt: the context before and after, the selected lines, the instruction.
fn user_message(path: &str, split: &Split, start: u32, end: u32, instruction: &str) -> String {
    let tail = |s: &str| -> String {
        let lines: Vec<&str> = s.split_inclusive('\n').collect();
        lines[lines.len().saturating_sub(CONTEXT_LINES)..].concat()
    };
    let head = |s: &str| -> String { s.split_inclusive('\n').take(CONTEXT_LINES).collect() };
    let mut user = format!("File: {path}\n\n");
    let before = tail(&split.before);
    if !before.is_empty() {
        user.push_str(&format!(
            "Code before the selection (context only, do not repeat it):\n```\n{}```\n\n",
            ensure_newline(&before)
        ));
    }
    user.push_str(&format!(
        "Selected lines {start}-{end} (rewrite these):\n```\n{}```\n\n",
        ensure_newline(&split.selected)
    ));
    let after = head(&split.after);
    if !after.is_empty() {
        user.push_str(&format!(
            "Code after the selection (context only, do not repeat it):\n```\n{}```\n\n",
            ensure_newline(&after)
        ));
    }
    user.push_str(&format!(
        "Instruction: {}\n\nReply with the new version of the selected lines only, in one fenced code block.",
        instruction.trim()
    ));
    user
}

fn ensure_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// The body of the one fenced block the grammar allows: "```lang\n" lines "```".
fn parse_block(output: &str) -> Option<String> {
    let rest = output.trim_start().strip_prefix("```")?;
    let (_lang, rest) = rest.split_once('\n')?;
    let body = rest.trim_end().strip_suffix("```")?;
    // The body is whole lines; the grammar ends each with a newline.
    Some(body.to_string())
}

/// Gives the replacement the line endings of the text it replaces: CRLF when the selection uses
/// CRLF, and no final newline when the selection (the file's last line) has none.
fn fit_line_endings(body: &str, selected: &str) -> String {
    let mut out = body.replace("\r\n", "\n");
    if selected.contains("\r\n") {
        out = out.replace('\n', "\r\n");
    }
    if !selected.is_empty() && !selected.ends_with('\n') {
        while out.ends_with('\n') {
            out.pop();
            if out.ends_with('\r') {
                out.pop();
            }
        }
    }
    out
}

/// A git-style unified diff of one file (`git apply` takes it) and its added and removed lines.
fn unified_diff(path: &str, old: &str, new: &str) -> (String, u32, u32) {
    let diff = similar::TextDiff::from_lines(old, new);
    let (mut added, mut removed) = (0, 0);
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => added += 1,
            similar::ChangeTag::Delete => removed += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    if added == 0 && removed == 0 {
        return (String::new(), 0, 0);
    }
    let body = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string();
    (
        format!("diff --git a/{path} b/{path}\n{body}"),
        added,
        removed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_concatenates_back_to_the_file() {
        let text = "a\nb\nc\nd";
        let s = Split::new(text, 2, 3);
        assert_eq!((s.before.as_str(), s.selected.as_str()), ("a\n", "b\nc\n"));
        assert_eq!(s.after, "d");
        let s = Split::new(text, 4, 4);
        assert_eq!(s.selected, "d");
        assert_eq!(format!("{}{}{}", s.before, s.selected, s.after), text);
        let s = Split::new("", 1, 0);
        assert_eq!(s.selected, "");
    }

    #[test]
    fn the_fenced_block_parses_with_or_without_a_language() {
        assert_eq!(
            parse_block("```python\nx = 1\ny = 2\n```").unwrap(),
            "x = 1\ny = 2\n"
        );
        assert_eq!(parse_block("```\n```").unwrap(), "");
        assert!(parse_block("x = 1").is_none());
    }

    #[test]
    fn replacements_keep_the_line_endings_of_the_selection() {
        assert_eq!(fit_line_endings("x\ny\n", "a\r\nb\r\n"), "x\r\ny\r\n");
        assert_eq!(fit_line_endings("x\ny\n", "last"), "x\ny");
        assert_eq!(fit_line_endings("x\n", "a\n"), "x\n");
    }

    #[test]
    fn diffs_count_lines_and_are_empty_without_a_change() {
        let (d, add, rm) = unified_diff("a.py", "x\ny\nz\n", "x\nY\nz\n");
        assert!(
            d.starts_with("diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@"),
            "{d}"
        );
        assert_eq!((add, rm), (1, 1));
        assert_eq!(unified_diff("a.py", "x\n", "x\n"), (String::new(), 0, 0));
    }

    #[test]
    fn the_grammar_renders_with_a_line_bound() {
        let g = minijinja::Environment::new()
            .render_str(GRAMMAR, minijinja::context! { max_lines => 7 })
            .unwrap();
        assert!(g.contains("line{0,7}"), "{g}");
        assert!(g.lines().any(|l| l.starts_with("root")), "{g}");
    }
}
