//! The agents' tools: parsing one grammar-constrained tool call, and running it in the task's
//! worktree.
//!
//! A call that does not parse, names an unknown tool or one the role may not use, or has bad
//! arguments is handed back to the model as a [`ToolOutcome::Failed`] message; a refused path or
//! command is a [`ToolOutcome::Denied`]. Neither ends the task. Commands report
//! `ExecCommandBegin`/`ExecCommandEnd` through the task's event sink.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::edit::{self, EditError};
use super::exec::{ExecOutput, ExecPolicy};
use super::orchestrator::Emitter;
use super::search::{self, CodeSearch};
use crate::protocol::{EventMsg, Finding};

/// Every tool name a role may list.
pub const TOOL_NAMES: &[&str] = &[
    "search",
    "read_file",
    "list_files",
    "symbols",
    "edit",
    "write_file",
    "run_tests",
    "run",
    "diff",
    "done",
    "review",
];

/// How each tool is called, as the prompts show it: the shape of the call with `<...>` where a
/// value goes (small models copy example values verbatim, so there are none).
pub fn usage(tool: &str) -> &'static str {
    match tool {
        "search" => r#"{"tool": "search", "query": <words>}: find code in the repository"#,
        "read_file" => {
            r#"{"tool": "read_file", "path": <file>, "start_line": <n>, "end_line": <m>}: read a file (the lines are optional)"#
        }
        "list_files" => r#"{"tool": "list_files", "dir": <folder>}: list files (dir optional)"#,
        "symbols" => {
            r#"{"tool": "symbols", "path": <file>}: functions and classes with their lines (path optional)"#
        }
        "edit" => {
            r#"{"tool": "edit", "path": <file>, "search": <lines copied exactly from the file>, "replace": <the new lines>}: replace lines of a file"#
        }
        "write_file" => {
            r#"{"tool": "write_file", "path": <file>} followed by the file's complete new content in one fenced block (```): create or rewrite a whole file"#
        }
        "run_tests" => r#"{"tool": "run_tests"}: run the test suite"#,
        "run" => r#"{"tool": "run", "command": <program and arguments>}: run an allowed command"#,
        "diff" => r#"{"tool": "diff"}: show the change so far"#,
        "done" => r#"{"tool": "done", "summary": <one line>}: end your turn"#,
        "review" => {
            r#"{"tool": "review", "verdict": "approve" or "request_changes", "findings": [<finding>, ...]}: end the review; a finding is {"file", "start_line", "end_line", "severity", "category", "title", "explanation", "suggestion", "confidence"}"#
        }
        _ => "",
    }
}

/// A reviewer's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The change is correct and complete.
    Approve,
    /// The findings must be addressed.
    RequestChanges,
}

/// One parsed tool call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
pub enum ToolCall {
    /// Code search.
    Search {
        /// Words to look for.
        query: String,
    },
    /// Read a file or a line range.
    ReadFile {
        /// Relative path.
        path: String,
        /// First line (1-based).
        #[serde(default)]
        start_line: Option<usize>,
        /// Last line (inclusive).
        #[serde(default)]
        end_line: Option<usize>,
    },
    /// List files.
    ListFiles {
        /// A folder to list (default: everything).
        #[serde(default)]
        dir: Option<String>,
    },
    /// The symbol map.
    Symbols {
        /// One file (default: all).
        #[serde(default)]
        path: Option<String>,
    },
    /// A search/replace edit.
    Edit {
        /// Relative path.
        path: String,
        /// Exact text to replace; empty writes the whole file.
        search: String,
        /// The new text.
        replace: String,
    },
    /// A whole file, created or rewritten. Its content comes in a fenced block after the JSON
    /// object (small models write code far more reliably there than as an escaped JSON string);
    /// an unconstrained back end may give it as a `content` key instead.
    WriteFile {
        /// Relative path.
        path: String,
        /// The complete new text.
        content: String,
    },
    /// Run the configured test command.
    RunTests,
    /// Run an allow-listed command.
    Run {
        /// The command line.
        command: String,
    },
    /// The diff against the task's base.
    Diff,
    /// End of a writer's or tester's turn.
    Done {
        /// What was done.
        #[serde(default)]
        summary: String,
    },
    /// End of a reviewer's turn.
    Review {
        /// The verdict.
        verdict: Verdict,
        /// Findings in the fixed schema.
        #[serde(default)]
        findings: Vec<Finding>,
    },
}

impl ToolCall {
    /// The tool's name.
    pub fn name(&self) -> &'static str {
        match self {
            ToolCall::Search { .. } => "search",
            ToolCall::ReadFile { .. } => "read_file",
            ToolCall::ListFiles { .. } => "list_files",
            ToolCall::Symbols { .. } => "symbols",
            ToolCall::Edit { .. } => "edit",
            ToolCall::WriteFile { .. } => "write_file",
            ToolCall::RunTests => "run_tests",
            ToolCall::Run { .. } => "run",
            ToolCall::Diff => "diff",
            ToolCall::Done { .. } => "done",
            ToolCall::Review { .. } => "review",
        }
    }
}

/// What a tool call produced, for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolOutcome {
    /// It worked; the output.
    Output(String),
    /// It did not work (bad call, no match, command failed to start); the reason.
    Failed(String),
    /// Refused by policy; the reason.
    Denied(String),
}

impl ToolOutcome {
    /// Whether the call worked.
    pub fn ok(&self) -> bool {
        matches!(self, ToolOutcome::Output(_))
    }

    /// The text handed back to the model.
    pub fn for_model(&self) -> String {
        match self {
            ToolOutcome::Output(s) => s.clone(),
            ToolOutcome::Failed(s) => format!("ERROR: {s}"),
            ToolOutcome::Denied(s) => format!("DENIED: {s}"),
        }
    }
}

/// Parses a model's answer into a tool call. The JSON object may be surrounded by other text
/// (unconstrained back ends); the arguments must match the tool. `write_file`'s content is the
/// fenced block after the object. Returns the call and the raw arguments (for events), or a
/// message for the model.
pub fn parse_call(text: &str) -> Result<(ToolCall, serde_json::Value), String> {
    let Some(start) = text.find('{') else {
        return Err(format!(
            "expected one JSON object like {{\"tool\": \"read_file\", \"path\": \"...\"}}, got {:?}",
            clip(text, 120)
        ));
    };
    let mut stream =
        serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
    let value = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            return Err(format!(
                "the tool call is not valid JSON ({e}); the output may have been cut by the token limit: keep arguments short"
            ));
        }
        None => return Err("the answer is empty; call a tool".into()),
    };
    let rest = &text[start + stream.byte_offset()..];
    let mut value = value;
    let Some(tool) = value.get("tool").and_then(|t| t.as_str()) else {
        return Err("the JSON object has no string field \"tool\"".into());
    };
    if tool == "write_file"
        && let Some(obj) = value.as_object_mut()
        && !obj.contains_key("content")
    {
        let content = fenced_block(rest).ok_or_else(|| {
            if rest.trim_start().starts_with("```") {
                "the fenced block after `write_file` is not closed with ``` (nothing was written)".to_string()
            } else {
                "`write_file` needs the file's complete content in a fenced block (```) right after the JSON object".to_string()
            }
        })?;
        obj.insert("content".into(), content.into());
    }
    let tool = value["tool"].as_str().unwrap_or_default();
    if !TOOL_NAMES.contains(&tool) {
        return Err(format!(
            "unknown tool `{tool}`; tools: {}",
            TOOL_NAMES.join(", ")
        ));
    }
    let call: ToolCall = serde_json::from_value(value.clone())
        .map_err(|e| format!("bad arguments for `{tool}`: {e}"))?;
    let mut args = value;
    if let Some(obj) = args.as_object_mut() {
        obj.remove("tool");
    }
    Ok((call, args))
}

/// The body of the first fenced block (```lang ... ```) in `text`, which must come first (after
/// blank space); `None` when there is none or it is not closed.
fn fenced_block(text: &str) -> Option<String> {
    let open = text.trim_start().strip_prefix("```")?;
    let body = &open[open.find('\n')? + 1..];
    if let Some(rest) = body.strip_prefix("```") {
        return rest.trim().is_empty().then(String::new);
    }
    let end = body.find("\n```")?;
    Some(body[..=end].to_string())
}

/// Runs tool calls for one agent in one worktree.
#[derive(Clone)]
pub struct Toolbox {
    /// The task's worktree.
    pub root: PathBuf,
    /// The base commit (for diffs).
    pub base: String,
    /// Command policy.
    pub exec: ExecPolicy,
    /// Code search.
    pub search: Arc<dyn CodeSearch>,
    /// Whether commands need the user's approval first.
    pub approval: bool,
}

/// Largest tool output handed to the model, in bytes.
const MAX_OUTPUT: usize = 6_000;

impl Toolbox {
    /// Runs `call` for `agent` (allowed `tools`), reporting commands through `emitter`.
    /// Terminal calls (`done`, `review`) are not run here.
    pub async fn run(
        &self,
        call: &ToolCall,
        agent: &str,
        tools: &[String],
        emitter: &Emitter,
    ) -> ToolOutcome {
        if !tools.iter().any(|t| t == call.name()) {
            return ToolOutcome::Denied(format!(
                "the {agent} may not use `{}`; its tools: {}",
                call.name(),
                tools.join(", ")
            ));
        }
        let outcome = match call {
            ToolCall::Search { query } => match self.search.search(&self.root, query, 8) {
                Ok(hits) if hits.is_empty() => ToolOutcome::Output("no results".into()),
                Ok(hits) => ToolOutcome::Output(
                    hits.iter()
                        .map(|h| format!("{}:{}-{}\n{}", h.path, h.start_line, h.end_line, h.snippet))
                        .collect::<Vec<_>>()
                        .join("\n\n"),
                ),
                Err(e) => ToolOutcome::Failed(e),
            },
            ToolCall::ReadFile {
                path,
                start_line,
                end_line,
            } => self.read_file(path, *start_line, *end_line),
            ToolCall::ListFiles { dir } => {
                let dir_path = match dir.as_deref().filter(|d| !d.is_empty() && *d != ".") {
                    Some(d) => match edit::validate_path(&self.root, d) {
                        Ok(p) => Some(p),
                        Err(e) => return edit_outcome(e),
                    },
                    None => None,
                };
                let files = search::list_files(&self.root, dir_path.as_deref(), 300);
                if files.is_empty() {
                    ToolOutcome::Output("no files".into())
                } else {
                    ToolOutcome::Output(files.join("\n"))
                }
            }
            ToolCall::Symbols { path } => {
                if let Some(p) = path.as_deref().filter(|p| !p.is_empty())
                    && let Err(e) = edit::validate_path(&self.root, p)
                {
                    return edit_outcome(e);
                }
                ToolOutcome::Output(search::symbol_map(
                    &self.root,
                    path.as_deref().filter(|p| !p.is_empty()),
                    200,
                ))
            }
            ToolCall::Edit {
                path,
                search,
                replace,
            } => match edit::apply_edit(&self.root, path, search, replace) {
                Ok(msg) => ToolOutcome::Output(msg),
                Err(e) => edit_outcome(e),
            },
            ToolCall::WriteFile { path, content } => {
                match edit::apply_edit(&self.root, path, "", content) {
                    Ok(msg) => ToolOutcome::Output(msg),
                    Err(e) => edit_outcome(e),
                }
            }
            ToolCall::RunTests => match self.exec.test_argv() {
                Some(argv) => {
                    let display = self.exec.test_command.clone().unwrap_or_default();
                    self.run_command(argv, display, agent, emitter)
                        .await
                        .map_or_else(|o| o, |(outcome, _)| outcome)
                }
                None => ToolOutcome::Failed(
                    "no test command is configured or detected (agents.test_command in troupe.toml)"
                        .into(),
                ),
            },
            ToolCall::Run { command } => match self.exec.check(command) {
                Ok(argv) => self
                    .run_command(argv, command.clone(), agent, emitter)
                    .await
                    .map_or_else(|o| o, |(outcome, _)| outcome),
                Err(why) => ToolOutcome::Denied(why),
            },
            ToolCall::Diff => match crate::git::worktree_diff(&self.root, &self.base) {
                Ok(d) if d.is_empty() => ToolOutcome::Output("no changes yet".into()),
                Ok(d) => ToolOutcome::Output(d),
                Err(e) => ToolOutcome::Failed(e.to_string()),
            },
            ToolCall::Done { .. } | ToolCall::Review { .. } => {
                ToolOutcome::Output("turn ended".into())
            }
        };
        match outcome {
            ToolOutcome::Output(s) => ToolOutcome::Output(clip(&s, MAX_OUTPUT)),
            other => other,
        }
    }

    /// Runs `argv` as troupe's own run of the user's configured test command (so no approval
    /// is asked), in `dir` (a copy of the worktree's files at some commit) or, with `None`, in
    /// the worktree; otherwise as [`Self::run_command`].
    pub async fn run_unattended(
        &self,
        argv: Vec<String>,
        dir: Option<&std::path::Path>,
        label: String,
        agent: &str,
        emitter: &Emitter,
    ) -> Result<(ToolOutcome, ExecOutput), ToolOutcome> {
        let own = Toolbox {
            root: dir.map_or_else(|| self.root.clone(), std::path::Path::to_path_buf),
            approval: false,
            ..self.clone()
        };
        own.run_command(argv, label, agent, emitter).await
    }

    /// Runs a command (already allowed) with Begin/End events, after approval when required.
    /// `Err(outcome)` when it could not run; `Ok((outcome, output))` otherwise.
    pub async fn run_command(
        &self,
        argv: Vec<String>,
        display: String,
        agent: &str,
        emitter: &Emitter,
    ) -> Result<(ToolOutcome, ExecOutput), ToolOutcome> {
        let call_id = emitter.next_call_id();
        if self.approval && !emitter.ask_approval(agent, &call_id, &display).await {
            return Err(ToolOutcome::Denied(format!(
                "the user did not approve `{display}`"
            )));
        }
        emitter.emit(
            Some(agent),
            EventMsg::ExecCommandBegin {
                call_id: call_id.clone(),
                command: display.clone(),
            },
        );
        // A cancelled task does not wait for its command: dropping the run kills its group.
        let result = tokio::select! {
            r = self.exec.run(&argv, &self.root) => r,
            _ = emitter.cancelled() => Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "cancelled; the command was killed",
            )),
        };
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let msg = format!("could not run `{display}`: {e}");
                emitter.emit(
                    Some(agent),
                    EventMsg::ExecCommandEnd {
                        call_id,
                        exit_code: None,
                        timed_out: false,
                        output: msg.clone(),
                        duration_ms: 0,
                    },
                );
                return Err(ToolOutcome::Failed(msg));
            }
        };
        emitter.emit(
            Some(agent),
            EventMsg::ExecCommandEnd {
                call_id,
                exit_code: out.exit_code,
                timed_out: out.timed_out,
                output: out.output.clone(),
                duration_ms: out.duration_ms,
            },
        );
        let status = if out.timed_out {
            format!("timed out after {} ms (killed)", out.duration_ms)
        } else {
            match out.exit_code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".into(),
            }
        };
        let text = format!("`{display}`: {status}\n{}", tail(&out.output, MAX_OUTPUT));
        let outcome = if out.success() {
            ToolOutcome::Output(text)
        } else {
            ToolOutcome::Failed(text)
        };
        Ok((outcome, out))
    }

    fn read_file(&self, path: &str, start: Option<usize>, end: Option<usize>) -> ToolOutcome {
        let full = match edit::validate_path(&self.root, path) {
            Ok(p) => p,
            Err(e) => return edit_outcome(e),
        };
        let text = match std::fs::read_to_string(&full) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return ToolOutcome::Failed(format!(
                    "{path} does not exist; list_files shows the files"
                ));
            }
            Err(e) => return ToolOutcome::Failed(format!("cannot read {path}: {e}")),
        };
        let lines: Vec<&str> = text.lines().collect();
        let first = start.unwrap_or(1).max(1);
        let last = end.unwrap_or(first + 199).min(lines.len()).min(first + 399);
        if lines.is_empty() {
            return ToolOutcome::Output(format!("{path} is empty"));
        }
        if first > lines.len() {
            return ToolOutcome::Failed(format!("{path} has only {} lines", lines.len()));
        }
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate().take(last).skip(first - 1) {
            out.push_str(&format!("{:>4} {line}\n", i + 1));
        }
        if last < lines.len() {
            out.push_str(&format!("... ({} lines in all)\n", lines.len()));
        }
        ToolOutcome::Output(out)
    }
}

fn edit_outcome(e: EditError) -> ToolOutcome {
    match e {
        EditError::Denied(m) => ToolOutcome::Denied(m),
        EditError::Failed(m) => ToolOutcome::Failed(m),
    }
}

/// The first `max` bytes of `s` (on a character boundary), marked when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... cut at {max} bytes]", &s[..end])
}

/// The last `max` bytes of `s` (on a character boundary), marked when cut.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... cut]\n{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constrained_call_parses_with_its_arguments() {
        let (call, args) = parse_call(
            r#"{"tool": "read_file", "path": "src/a.py", "start_line": 1, "end_line": 9}"#,
        )
        .unwrap();
        assert_eq!(
            call,
            ToolCall::ReadFile {
                path: "src/a.py".into(),
                start_line: Some(1),
                end_line: Some(9)
            }
        );
        assert_eq!(args["path"], "src/a.py");
        let (call, _) = parse_call("sure:\n```json\n{\"tool\": \"run_tests\"}\n```").unwrap();
        assert_eq!(call, ToolCall::RunTests);
    }

    #[test]
    fn malformed_calls_come_back_as_messages_for_the_model() {
        for (text, expect) in [
            ("I will read the file", "expected one JSON object"),
            (
                r#"{"tool": "edit", "path": "a.py", "search": "x"#,
                "not valid JSON",
            ),
            (r#"{"path": "a.py"}"#, "no string field"),
            (r#"{"tool": "rm_rf"}"#, "unknown tool `rm_rf`"),
            (
                r#"{"tool": "edit", "path": "a.py"}"#,
                "bad arguments for `edit`",
            ),
            (
                r#"{"tool": "review", "verdict": "maybe", "findings": []}"#,
                "bad arguments for `review`",
            ),
        ] {
            let err = parse_call(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn a_whole_file_comes_in_the_fenced_block_after_the_call() {
        let text = "{\"tool\": \"write_file\", \"path\": \"a.py\"}\n```python\ndef f(s):\n    return \"\\\"\" + s\n\n```";
        let (call, args) = parse_call(text).unwrap();
        let content = "def f(s):\n    return \"\\\"\" + s\n\n";
        assert_eq!(
            call,
            ToolCall::WriteFile {
                path: "a.py".into(),
                content: content.into()
            }
        );
        assert_eq!(args["content"], content);
        // An empty file, and a back end that puts the content in the object.
        let (call, _) =
            parse_call("{\"tool\": \"write_file\", \"path\": \"e.py\"}\n```\n```").unwrap();
        assert_eq!(
            call,
            ToolCall::WriteFile {
                path: "e.py".into(),
                content: String::new()
            }
        );
        let (call, _) =
            parse_call(r#"{"tool": "write_file", "path": "b.py", "content": "x = 1\n"}"#).unwrap();
        assert_eq!(
            call,
            ToolCall::WriteFile {
                path: "b.py".into(),
                content: "x = 1\n".into()
            }
        );
        for (text, expect) in [
            (
                "{\"tool\": \"write_file\", \"path\": \"a.py\"}",
                "needs the file's complete content in a fenced block",
            ),
            (
                "{\"tool\": \"write_file\", \"path\": \"a.py\"}\n```python\nx = 1\ny = ",
                "is not closed",
            ),
        ] {
            let err = parse_call(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn a_review_parses_findings_in_the_fixed_schema() {
        let text = r#"{"tool": "review", "verdict": "request_changes", "findings": [{"file": "a.py", "start_line": 3, "end_line": 4, "severity": "high", "category": "bug", "title": "off by one", "explanation": "the loop skips the last item", "suggestion": "use <=", "confidence": 0.8}]}"#;
        let (call, _) = parse_call(text).unwrap();
        let ToolCall::Review { verdict, findings } = call else {
            panic!()
        };
        assert_eq!(verdict, Verdict::RequestChanges);
        assert_eq!(findings[0].severity, crate::protocol::Severity::High);
        assert_eq!(findings[0].suggestion.as_deref(), Some("use <="));
    }
}
