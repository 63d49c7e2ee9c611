//! The protocol between the core session and its front ends: [`Submission`]s (carrying an
//! [`Op`]) go in, [`Event`]s (carrying an [`EventMsg`]) come out.
//!
//! Plain serde types and nothing else: this module depends on no other module of the crate, so
//! every front end (terminal UI, headless, editor) and every remote client can share it. With
//! `--json`, headless commands print exactly one [`Event`] per line on stdout ([`write_jsonl`]).
//!
//! Conventions: every event carries the submission id it answers and, when an agent produced it,
//! the agent's role; lifecycle events come in `XxxBegin`/`XxxEnd` pairs matched by `call_id`;
//! streamed text comes as `XxxDelta`. Front ends match exhaustively (no `_` arm), so a new event
//! shows up in each of them at compile time.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// A request from a front end to the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// Chosen by the front end; every event caused by this submission carries it.
    pub id: String,
    pub op: Op,
}

/// What a front end asks the session to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Start a task for the writer, reviewer and tester.
    UserTask {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_rounds: Option<u32>,
    },
    /// Resume a saved task from its persisted state.
    ResumeTask { task_id: String },
    /// Cancel the running task (all agents).
    Interrupt,
    /// Cancel one agent of the running task.
    CancelAgent { agent: String },
    /// Answer a pending approval request for a command.
    Approval { call_id: String, approved: bool },
    /// Search the repository index; answered by `SearchResults`.
    ///
    /// With a `mode`, exactly as `troupe search --mode` (the index alone: no index is an
    /// `Error`, no match an empty list; results in its JSON-line shape; a `Warning` before the
    /// results for each note it prints, such as "BM25 only: ..."). Without one, the search the
    /// agents' tool does (the index, BM25, falling back to a scan of the files when there is no
    /// index or it finds nothing).
    Search {
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<SearchMode>,
        /// One result per file (its best chunk); with a `mode` only.
        #[serde(default, skip_serializing_if = "is_false")]
        files: bool,
    },
    /// Bring a finished task's change onto the user's branch (only when it applies cleanly).
    ApplyTask { task_id: String },
    /// Delete a task's worktree and branch.
    DiscardTask { task_id: String },
    /// Answer a question about the repository from its indexed code (one-shot, no tools).
    Ask {
        question: String,
        /// A file the question is about (relative to the repository root), shown first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        /// 1-based inclusive line range of `file` the question is about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        range: Option<(u32, u32)>,
    },
    /// Review a change (`troupe review`): every changed hunk, read-only, reproducible.
    Review { spec: ReviewSpec },
    /// Finish: cancel running work and end the event stream.
    Shutdown,
    /// List the repository's saved tasks (answered by `TaskList`).
    ListTasks,
    /// Load a saved task's record and event log (answered by `TaskOpened`).
    OpenTask { task_id: String },
    /// Say whether the repository's index exists and is current (answered by `IndexState`).
    IndexStatus,
    /// Build or update the full-text index (`IndexProgress` while it runs, then `IndexState`).
    UpdateIndex,
    /// Explain code of a file (one-shot, no tools); answered by `ExplainComplete`.
    Explain {
        /// The file (relative to the repository root).
        file: String,
        /// 1-based inclusive line range of `file` (`None`: the whole file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        range: Option<(u32, u32)>,
        /// The file's current text, when it differs from the disk (an unsaved editor buffer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    /// Propose a change to a file, or to a range of its lines only, following an instruction;
    /// answered by `EditComplete`. Nothing is written.
    Edit {
        /// The file (relative to the repository root).
        file: String,
        /// 1-based inclusive line range of `file`; no line outside it changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        range: Option<(u32, u32)>,
        /// What to change.
        instruction: String,
        /// The file's current text, when it differs from the disk (an unsaved editor buffer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    /// Stop a running one-shot request (ask, explain, edit, review) by its submission id: its
    /// model requests end and it answers with an `Error` saying it was cancelled. Unknown or
    /// finished ids are ignored.
    Cancel { id: String },
    /// Report the engine's figures now (answered by `EngineMetrics` with this submission's id;
    /// its `aggregate_tok_s` is 0 in such a snapshot), e.g. to see that a cancelled request
    /// freed its sequence. A back end without figures answers with an `Error`.
    EngineStatus,
    /// Generate text from a prompt with the model directly: no repository context, no tools
    /// (`troupe serve`). Answered by `CompletionDelta`s, then one `CompletionComplete`, or one
    /// `CompletionRejected` (the request cannot be served as given) or `Error`. Cancellable with
    /// `Cancel`, which frees its model sequence.
    Complete { request: CompletionRequest },
    /// Embed texts with the embedding model (`troupe serve`): answered by one `Embeddings` (one
    /// vector per text, in order) or an `Error`. The model loads on the first such request.
    Embed { input: Vec<String> },
}

/// A raw model request, as OpenAI-compatible clients send it. Settings left `None` take the
/// model's defaults (greedy decoding, no limit but the sequence's context).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub prompt: CompletionPrompt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// 0 (or none): greedy decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// Multiplies down the odds of recently generated tokens (1: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    /// Subtracted from a token's logit once per time it occurred (0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Subtracted from a token's logit once it occurred (0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Generation stops before the first of these strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Keep generating past the model's end-of-generation tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    /// The formal language the output must follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<OutputConstraint>,
}

/// What a raw model request continues from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CompletionPrompt {
    /// Chat messages, rendered with the model's chat template, answered as the assistant.
    Messages { messages: Vec<ChatTurn> },
    /// Raw text, continued as is.
    Text { text: String },
}

impl Default for CompletionPrompt {
    fn default() -> Self {
        Self::Text {
            text: String::new(),
        }
    }
}

/// One chat message of a raw model request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A formal language a raw model request's output follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputConstraint {
    /// A GBNF grammar (llama.cpp's), start rule `root`.
    Gbnf { grammar: String },
    /// A JSON schema the output is an instance of.
    JsonSchema { schema: serde_json::Value },
}

/// Why a raw model request stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionFinish {
    /// The model ended its answer, or a stop string matched.
    Stop,
    /// `max_tokens` was reached, or the sequence's context is full.
    Length,
}

/// The part of a raw model request a rejection is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestPart {
    /// The messages or prompt text (too long, empty, not renderable).
    Prompt,
    /// The grammar or JSON schema.
    Constraint,
}

/// Which rankers an `Op::Search` runs (`troupe search --mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// BM25 and vectors, fused.
    Hybrid,
    /// BM25 only.
    Bm25,
    /// Vectors only.
    Vector,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// A saved task, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub id: String,
    pub text: String,
    /// `running`, `converged`, `budget_exhausted`, `cancelled`, `failed`, `applied`, `discarded`.
    pub status: String,
    pub rounds_done: u32,
    pub max_rounds: u32,
    /// Seconds since the epoch.
    pub updated_unix: u64,
}

/// The new side of a reviewed change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "ref", rename_all = "snake_case")]
pub enum ReviewHead {
    /// The working tree (tracked changes and untracked files that are not ignored).
    Worktree,
    /// The staged changes (git's index).
    Staged,
    /// A commit, branch or tag.
    Ref(String),
}

/// What `troupe review` compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewSpec {
    /// The old side; `None`: `HEAD`. With a ref as head, the diff starts at their merge base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub head: ReviewHead,
    /// Review only these files of the change (repository-relative, `/`-separated); empty:
    /// every file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Whether a file of the change was reviewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoverageStatus {
    /// Every hunk was reviewed.
    Reviewed,
    /// Some hunks were reviewed, the rest not (see `reason`).
    Clipped,
    /// Nothing of it was reviewed (see `reason`).
    Skipped,
}

/// How much of one changed file was reviewed, and why not all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileCoverage {
    pub path: String,
    pub status: CoverageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub hunks: u32,
    pub hunks_reviewed: u32,
    /// Added and removed lines.
    pub changed_lines: u32,
    pub changed_lines_reviewed: u32,
}

/// What a review saw of the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub files: Vec<FileCoverage>,
    pub hunks: u32,
    pub hunks_reviewed: u32,
    pub changed_lines: u32,
    pub changed_lines_reviewed: u32,
    /// `changed_lines_reviewed / changed_lines` (1 for an empty change).
    pub ratio: f64,
}

/// Where a review's output comes from, so a rerun can be checked against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub troupe_version: String,
    /// The model's file name (or the server's model name).
    pub model: String,
    /// sha256 of the model file (`None` for a remote server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// sha256 of the review prompt template and output grammar.
    pub prompt_sha256: String,
    /// The index the context came from, e.g. `commit 1a2b3c4 +2 uncommitted files` or `none`.
    pub index_state: String,
    pub base_commit: String,
    /// The head commit, or `worktree` / `staged`.
    pub head: String,
    /// sha256 of the reviewed diff text.
    pub diff_sha256: String,
}

/// The whole result of a review, in the order every output format prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewReport {
    pub provenance: Provenance,
    pub coverage: Coverage,
    /// Sorted by file, line, severity (most severe first), title.
    pub findings: Vec<Finding>,
    /// Findings the model gave outside the new side of the diff, dropped.
    pub findings_dropped: u32,
    /// Answers cut at `review.max_tokens`; the findings they completed are kept.
    pub answers_cut: u32,
}

/// A piece of repository code an answer was given from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Citation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
}

/// One event from the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The submission this event answers (empty for events the session emits on its own).
    pub id: String,
    /// The agent role that produced it (`writer`, `reviewer`, `tester`, or a user-defined role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub msg: EventMsg,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The tests pass and no reviewer reports a high-severity finding (with no test command:
    /// every reviewer approves).
    Converged,
    /// The round or time budget ran out first.
    BudgetExhausted,
    /// The user cancelled it.
    Cancelled,
    /// It stopped on an error (see the preceding `Error` event).
    Failed,
}

/// Severity of a review finding, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

/// A reviewer's finding in the fixed schema shared by agents and `troupe review`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub file: String,
    pub start_line: u32,
    pub end_line: u32,
    pub severity: Severity,
    pub category: String,
    pub title: String,
    pub explanation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    /// 0.0 to 1.0.
    pub confidence: f32,
}

/// Statistics of one model request, as the engine measured them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestStats {
    pub queue_ms: f64,
    pub ttft_ms: f64,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub generated_tokens: u32,
    pub decode_tok_s: f64,
}

/// What the session reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventMsg {
    /// The session is ready: which model and repository it serves.
    SessionConfigured {
        model: String,
        repo: String,
    },
    TaskStarted {
        task_id: String,
        text: String,
    },
    TaskComplete {
        task_id: String,
        outcome: TaskOutcome,
        rounds: u32,
        /// The round whose files the task ends with, and why (`None`: cancelled, failed, or no
        /// round changed anything).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept: Option<KeptRound>,
    },
    /// A chunk of an agent's streamed output.
    AgentMessageDelta {
        delta: String,
    },
    /// An agent's complete message, after its deltas.
    AgentMessage {
        text: String,
    },
    /// A model request finished; its measured statistics.
    ModelRequestEnd {
        stats: RequestStats,
    },
    ToolCallBegin {
        call_id: String,
        tool: String,
        arguments: serde_json::Value,
    },
    ToolCallEnd {
        call_id: String,
        ok: bool,
        output: String,
    },
    /// A command needs the user's approval before it runs (approval mode).
    ApprovalRequest {
        call_id: String,
        command: String,
    },
    ExecCommandBegin {
        call_id: String,
        command: String,
    },
    ExecCommandEnd {
        call_id: String,
        exit_code: Option<i32>,
        timed_out: bool,
        output: String,
        duration_ms: u64,
    },
    /// A round ended: the reviewers' verdict, the test result (`None`: no test command),
    /// whether the new tests fail before the change, and the commit recording the round.
    RoundComplete {
        task_id: String,
        round: u32,
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tests_passed: Option<bool>,
        /// Whether the testers' new tests fail on the base commit, as tests of a behaviour
        /// change must (`None`: no new tests this round).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tests_fail_before: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
    /// A task's change was applied to the user's working tree (on request).
    TaskApplied {
        task_id: String,
    },
    /// A task's worktree and branch were deleted (on request).
    TaskDiscarded {
        task_id: String,
    },
    /// The task's current diff against its base.
    DiffUpdated {
        diff: String,
    },
    ReviewFinding {
        finding: Finding,
    },
    /// A review started: how many files, hunks and model requests it has.
    ReviewStarted {
        files: u32,
        hunks: u32,
        requests: u32,
    },
    /// One review request finished (progress).
    ReviewProgress {
        done: u32,
        total: u32,
    },
    /// The review ended; its report (no timings, so reruns compare byte for byte).
    ReviewComplete {
        report: Box<ReviewReport>,
    },
    /// Search results, as `troupe search --json` prints them.
    SearchResults {
        results: Vec<serde_json::Value>,
    },
    IndexProgress {
        phase: String,
        done: u64,
        total: u64,
    },
    /// Engine-wide figures for status bars.
    EngineMetrics {
        active_sequences: u32,
        aggregate_tok_s: f64,
        cached_prompt_tokens: u64,
        kv_used: u32,
        kv_total: u32,
    },
    Warning {
        message: String,
    },
    /// Something failed; `fix` says what the user can do about it.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fix: Option<String>,
    },
    /// An `Ask` finished: the whole answer (after its deltas), the code it was given, the stats.
    AskComplete {
        answer: String,
        citations: Vec<Citation>,
        stats: RequestStats,
    },
    /// The session ended; no events follow.
    ShutdownComplete,
    /// The saved tasks, newest first.
    TaskList {
        tasks: Vec<TaskSummary>,
    },
    /// A saved task's record and every event it logged, in order.
    TaskOpened {
        task: TaskSummary,
        events: Vec<Event>,
    },
    /// The state of the repository's index: whether it exists, whether the working tree has
    /// changed since, and what it holds.
    IndexState {
        exists: bool,
        stale: bool,
        files: u64,
        chunks: u64,
    },
    /// An `Explain` finished: the whole explanation (after its deltas), the code it was given.
    ExplainComplete {
        explanation: String,
        citations: Vec<Citation>,
        stats: RequestStats,
    },
    /// An `Edit` finished: the proposed change (not written anywhere).
    EditComplete {
        proposal: EditProposal,
    },
    /// A round's change was undone because it tested worse than an earlier round (or, at the
    /// end of a task, because an earlier round tested best): the task's files are `kept_round`'s
    /// again, recorded by `commit` on the task branch (the undone round stays in its history).
    RoundReverted {
        task_id: String,
        /// The round whose change was undone (the last round, at the end of a task).
        round: u32,
        kept_round: u32,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
    /// Text generated for a `Complete` request.
    CompletionDelta {
        delta: String,
    },
    /// A `Complete` request finished: the whole text (after its deltas), why it stopped, the
    /// stats.
    CompletionComplete {
        text: String,
        finish_reason: CompletionFinish,
        stats: RequestStats,
    },
    /// A `Complete` request cannot be served as given (a prompt longer than the context, a
    /// grammar or schema the model's sampler rejects); `part` says what to change.
    CompletionRejected {
        message: String,
        part: RequestPart,
    },
    /// The answer to `Embed`: one unit-length vector per input text, in order.
    Embeddings {
        /// The embedding model's file name.
        model: String,
        vectors: Vec<Vec<f32>>,
        /// Tokens of all inputs together.
        prompt_tokens: u32,
    },
}

/// The round whose files a task ends with, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRound {
    pub round: u32,
    /// E.g. `round 1: the tests pass (3 passed) and no reviewer reports a high-severity finding`.
    pub reason: String,
}

/// A proposed change to one file, as `troupe edit --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditProposal {
    /// The file, relative to the repository root.
    pub path: String,
    /// The 1-based inclusive lines of the original that were replaced.
    pub start_line: u32,
    pub end_line: u32,
    /// A unified diff (`a/<path>`, `b/<path>`) from the original to `new_text`; empty when the
    /// model proposed no change. Applies with `git apply`.
    pub diff: String,
    /// The whole file after the change.
    pub new_text: String,
    /// The text that replaces lines `start_line..=end_line`.
    pub replacement: String,
    /// Lines the diff adds and removes.
    pub lines_added: u32,
    pub lines_removed: u32,
    /// The model request's statistics.
    pub stats: RequestStats,
}

/// Writes one event as a single JSON line and flushes, so a reader sees it at once.
pub fn write_jsonl<W: Write>(out: &mut W, event: &Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_one_tagged_json_line() {
        let event = Event {
            id: "s1".into(),
            agent: Some("writer".into()),
            msg: EventMsg::AgentMessageDelta {
                delta: "fn main() {}\n".into(),
            },
        };
        let mut out = Vec::new();
        write_jsonl(&mut out, &event).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "exactly one line: {text:?}");
        assert!(text.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(value["msg"]["type"], "agent_message_delta");
        assert_eq!(value["agent"], "writer");
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn submissions_round_trip_and_omit_empty_options() {
        let sub = Submission {
            id: "1".into(),
            op: Op::UserTask {
                text: "add a flag".into(),
                max_rounds: None,
            },
        };
        let json = serde_json::to_string(&sub).unwrap();
        assert_eq!(
            json,
            r#"{"id":"1","op":{"type":"user_task","text":"add a flag"}}"#
        );
        assert_eq!(serde_json::from_str::<Submission>(&json).unwrap(), sub);
    }

    #[test]
    fn a_search_with_a_mode_round_trips_and_one_without_keeps_its_old_shape() {
        let sub = Submission {
            id: "s".into(),
            op: Op::Search {
                query: "parse".into(),
                limit: Some(3),
                mode: Some(SearchMode::Bm25),
                files: true,
            },
        };
        let json = serde_json::to_string(&sub).unwrap();
        assert_eq!(
            json,
            r#"{"id":"s","op":{"type":"search","query":"parse","limit":3,"mode":"bm25","files":true}}"#
        );
        assert_eq!(serde_json::from_str::<Submission>(&json).unwrap(), sub);
        let old = r#"{"id":"s","op":{"type":"search","query":"parse"}}"#;
        let parsed: Submission = serde_json::from_str(old).unwrap();
        assert_eq!(
            parsed.op,
            Op::Search {
                query: "parse".into(),
                limit: None,
                mode: None,
                files: false,
            }
        );
        assert_eq!(serde_json::to_string(&parsed).unwrap(), old);
    }

    #[test]
    fn severities_order_from_info_to_high() {
        assert!(Severity::Info < Severity::Low);
        assert!(Severity::Low < Severity::Medium);
        assert!(Severity::Medium < Severity::High);
        let s: Severity = serde_json::from_str("\"medium\"").unwrap();
        assert_eq!(s, Severity::Medium);
    }
}
