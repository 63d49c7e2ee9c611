//! Headless front end: `troupe run` and `troupe tasks ...`, for scripts and CI.
//!
//! Like codex-rs's `exec`, it is just another consumer of the session's event stream: an
//! [`EventProcessor`] turns events into output, with two implementations: [`HumanProgress`]
//! (readable progress, written to stderr) and [`JsonLines`] (exactly one event per line, written
//! to stdout with `--json`). Speaks only to [`crate::agents`] and [`crate::protocol`] (a test
//! enforces it). Runs its own tokio runtime; exit codes follow the command-line contract
//! (0 converged, 1 not converged, 2 and above errors).

pub mod review;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::agents::store::{self, TaskStore};
use crate::agents::{Session, SessionOptions, TaskRecord};
use crate::commands::{Context, exit};
use crate::protocol::{Event, EventMsg, Op, Submission, TaskOutcome, write_jsonl};

/// Turns session events into output.
pub trait EventProcessor {
    /// Handles one event, in order. An `Err` (a closed pipe) stops the front end.
    fn process(&mut self, event: &Event) -> std::io::Result<()>;
}

/// One JSON object per event, one per line, flushed at once.
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    /// Writes to `out` (stdout for `--json`).
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write> EventProcessor for JsonLines<W> {
    fn process(&mut self, event: &Event) -> std::io::Result<()> {
        write_jsonl(&mut self.out, event)
    }
}

/// Readable progress: one line per tool call, command, finding and round.
pub struct HumanProgress<W: Write> {
    out: W,
    /// Tool calls in flight: call id to a label.
    pending: std::collections::HashMap<String, String>,
}

impl<W: Write> HumanProgress<W> {
    /// Writes to `out` (stderr).
    pub fn new(out: W) -> Self {
        Self {
            out,
            pending: Default::default(),
        }
    }
}

impl<W: Write> EventProcessor for HumanProgress<W> {
    fn process(&mut self, event: &Event) -> std::io::Result<()> {
        let who = event.agent.as_deref().unwrap_or("troupe");
        let line = match &event.msg {
            EventMsg::SessionConfigured { model, repo } => {
                format!("troupe: {repo} with {model}")
            }
            EventMsg::TaskStarted { task_id, text } => {
                format!("task {task_id}: {}", one_line(text, 100))
            }
            EventMsg::TaskComplete {
                task_id,
                outcome,
                rounds,
                kept,
            } => {
                let what = match outcome {
                    TaskOutcome::Converged => "converged",
                    TaskOutcome::BudgetExhausted => "not converged: the budget ran out",
                    TaskOutcome::Cancelled => "cancelled",
                    TaskOutcome::Failed => "failed",
                };
                let kept = kept
                    .as_ref()
                    .map(|k| format!("; keeps {}", k.reason))
                    .unwrap_or_default();
                format!(
                    "task {task_id} {what} after {rounds} round(s){kept}; branch troupe/{task_id}; `troupe tasks show {task_id}`, `troupe tasks apply {task_id}`"
                )
            }
            EventMsg::AgentMessageDelta { .. } | EventMsg::AgentMessage { .. } => return Ok(()),
            EventMsg::ModelRequestEnd { .. } | EventMsg::EngineMetrics { .. } => return Ok(()),
            EventMsg::ToolCallBegin {
                call_id,
                tool,
                arguments,
            } => {
                let args = one_line(&arguments.to_string(), 80);
                self.pending
                    .insert(call_id.clone(), format!("[{who}] {tool} {args}"));
                return Ok(());
            }
            EventMsg::ToolCallEnd {
                call_id,
                ok,
                output,
            } => {
                let label = self
                    .pending
                    .remove(call_id)
                    .unwrap_or_else(|| format!("[{who}] {call_id}"));
                if *ok {
                    format!("{label}: ok")
                } else {
                    format!("{label}: {}", one_line(output, 120))
                }
            }
            EventMsg::ApprovalRequest { command, .. } => {
                format!("[{who}] wants to run `{command}` (approval needed)")
            }
            EventMsg::ExecCommandBegin { command, .. } => format!("[{who}] $ {command}"),
            EventMsg::ExecCommandEnd {
                exit_code,
                timed_out,
                duration_ms,
                ..
            } => {
                let status = match (timed_out, exit_code) {
                    (true, _) => "timed out, killed".to_string(),
                    (false, Some(c)) => format!("exit {c}"),
                    (false, None) => "killed".to_string(),
                };
                format!(
                    "[{who}]   -> {status} ({:.1} s)",
                    *duration_ms as f64 / 1000.0
                )
            }
            EventMsg::DiffUpdated { diff } => {
                let (plus, minus) = diff.lines().fold((0, 0), |(p, m), l| {
                    if l.starts_with('+') && !l.starts_with("+++") {
                        (p + 1, m)
                    } else if l.starts_with('-') && !l.starts_with("---") {
                        (p, m + 1)
                    } else {
                        (p, m)
                    }
                });
                format!("[{who}] diff: +{plus} -{minus}")
            }
            EventMsg::ReviewFinding { finding: f } => format!(
                "[{who}] {:?} {}:{}-{} {}",
                f.severity,
                f.file,
                f.start_line,
                f.end_line,
                one_line(&f.title, 80)
            ),
            EventMsg::ReviewStarted {
                files,
                hunks,
                requests,
            } => format!("review: {files} files, {hunks} hunks, {requests} model requests"),
            EventMsg::ReviewProgress { done, total } => format!("review: {done}/{total} requests"),
            EventMsg::ReviewComplete { report } => format!(
                "review: {} findings, {:.0}% of changed lines reviewed",
                report.findings.len(),
                report.coverage.ratio * 100.0
            ),
            EventMsg::RoundComplete {
                round,
                approved,
                tests_passed,
                tests_fail_before,
                commit,
                ..
            } => format!(
                "round {round}: {}, {}{}{}",
                if *approved {
                    "approved"
                } else {
                    "not approved"
                },
                match tests_passed {
                    Some(true) => "tests pass",
                    Some(false) => "tests fail",
                    None => "no tests run",
                },
                match tests_fail_before {
                    Some(true) => ", the new tests fail before the change",
                    Some(false) => ", the new tests pass before the change too",
                    None => "",
                },
                commit
                    .as_deref()
                    .map(|c| format!(" (commit {})", &c[..c.len().min(10)]))
                    .unwrap_or_default()
            ),
            EventMsg::TaskApplied { task_id } => {
                format!("task {task_id} applied to your working tree")
            }
            EventMsg::TaskDiscarded { task_id } => format!("task {task_id} discarded"),
            EventMsg::RoundReverted {
                round,
                kept_round,
                reason,
                ..
            } => format!("round {round} undone, back to round {kept_round}: {reason}"),
            EventMsg::SearchResults { results } => format!("{} search results", results.len()),
            EventMsg::IndexProgress { phase, done, total } => {
                format!("index {phase}: {done}/{total}")
            }
            EventMsg::Warning { message } => format!("warning: [{who}] {message}"),
            EventMsg::Error { message, fix } => match fix {
                Some(fix) => format!("error: {message}\n  fix: {fix}"),
                None => format!("error: {message}"),
            },
            EventMsg::AskComplete { citations, .. } => {
                format!("answered from {} code chunks", citations.len())
            }
            EventMsg::ShutdownComplete => return Ok(()),
            EventMsg::TaskList { .. } | EventMsg::TaskOpened { .. } => return Ok(()),
            EventMsg::IndexState { exists, stale, .. } => match (exists, stale) {
                (false, _) => "no index; build it with `troupe index`".to_string(),
                (true, true) => "the index is stale; update it with `troupe index`".to_string(),
                (true, false) => "the index is current".to_string(),
            },
            EventMsg::ExplainComplete { citations, .. } => {
                format!("explained from {} code chunks", citations.len())
            }
            EventMsg::EditComplete { proposal: p } => format!(
                "proposed an edit of {}: +{} -{}",
                p.path, p.lines_added, p.lines_removed
            ),
            EventMsg::CompletionDelta { .. } | EventMsg::Embeddings { .. } => return Ok(()),
            EventMsg::CompletionComplete { .. } => return Ok(()),
            EventMsg::CompletionRejected { message, .. } => format!("rejected: {message}"),
        };
        writeln!(self.out, "{line}")
    }
}

/// `troupe run TASK|- [--max-rounds N] [--tasks-file FILE [--sequential]]`. With a tasks
/// file (one task per line), every task runs in the same session on the one model: all at once,
/// or one after another with `--sequential`; the exit code is the worst outcome.
pub fn run(
    ctx: &Context,
    task: Option<&str>,
    max_rounds: Option<u32>,
    tasks_file: Option<&Path>,
    sequential: bool,
) -> anyhow::Result<u8> {
    let texts: Vec<String> = match (task, tasks_file) {
        (Some(_), Some(_)) => bail!("pass either TASK or --tasks-file, not both"),
        (None, None) => {
            bail!("say what to do: `troupe run TASK`, `troupe run -` (stdin) or --tasks-file FILE")
        }
        (Some("-"), None) => {
            let mut text = String::new();
            for line in std::io::stdin().lock().lines() {
                text.push_str(&line.context("reading the task from stdin")?);
                text.push('\n');
            }
            vec![text]
        }
        (Some(t), None) => vec![t.to_string()],
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the tasks file {}", file.display()))?
            .lines()
            .map(str::to_string)
            .filter(|l| !l.trim().is_empty())
            .collect(),
    };
    if texts.iter().all(|t| t.trim().is_empty()) {
        bail!("the task is empty; pass it as an argument or on stdin with `-`");
    }
    let ops = texts
        .into_iter()
        .map(|t| Op::UserTask {
            text: t.trim().to_string(),
            max_rounds,
        })
        .collect();
    drive(ctx, ops, sequential)
}

/// `troupe tasks resume ID`.
pub fn resume(ctx: &Context, id: &str) -> anyhow::Result<u8> {
    let repo = repo_root(ctx)?;
    // Fail fast, before loading a model, on an unknown id.
    TaskStore::new(&repo).load(id)?;
    drive(
        ctx,
        vec![Op::ResumeTask {
            task_id: id.to_string(),
        }],
        false,
    )
}

/// `troupe tasks list`.
pub fn list(ctx: &Context) -> anyhow::Result<u8> {
    let repo = repo_root(ctx)?;
    let tasks = TaskStore::new(&repo).list()?;
    let mut out = std::io::stdout().lock();
    if ctx.json {
        for t in &tasks {
            serde_json::to_writer(&mut out, t)?;
            out.write_all(b"\n")?;
        }
    } else if tasks.is_empty() {
        writeln!(out, "no tasks yet; start one with `troupe run TASK`")?;
    } else {
        writeln!(out, "{:<21} {:<16} {:>6}  task", "id", "status", "rounds")?;
        for t in &tasks {
            writeln!(
                out,
                "{:<21} {:<16} {:>6}  {}",
                t.id,
                t.status.as_str(),
                format!("{}/{}", t.rounds_done, t.max_rounds),
                one_line(&t.text, 60)
            )?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// `troupe tasks show ID`: the record, the round results and the change.
pub fn show(ctx: &Context, id: &str) -> anyhow::Result<u8> {
    let repo = repo_root(ctx)?;
    let store = TaskStore::new(&repo);
    let record = store.load(id)?;
    let events = store.events(id)?;
    let diff = store::task_diff(&repo, &record).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if ctx.json {
        let mut value = serde_json::to_value(&record)?;
        value["events"] = serde_json::json!(events.len());
        value["diff"] = serde_json::json!(diff);
        serde_json::to_writer(&mut out, &value)?;
        out.write_all(b"\n")?;
    } else {
        print_record(&mut out, &record)?;
        let mut human = HumanProgress::new(&mut out);
        for e in events.iter().filter(|e| {
            matches!(
                e.msg,
                EventMsg::RoundComplete { .. }
                    | EventMsg::RoundReverted { .. }
                    | EventMsg::ReviewFinding { .. }
                    | EventMsg::TaskComplete { .. }
                    | EventMsg::Error { .. }
            )
        }) {
            human.process(e)?;
        }
        if !diff.is_empty() {
            writeln!(out, "\n{diff}")?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// `troupe tasks apply ID`.
pub fn apply(ctx: &Context, id: &str) -> anyhow::Result<u8> {
    let repo = repo_root(ctx)?;
    let record = store::apply_task(&repo, id)?;
    report_state(
        ctx,
        &record,
        "applied to your working tree (not staged, not committed)",
    )
}

/// `troupe tasks discard ID`.
pub fn discard(ctx: &Context, id: &str) -> anyhow::Result<u8> {
    let repo = repo_root(ctx)?;
    let record = store::discard_task(&repo, id)?;
    report_state(
        ctx,
        &record,
        "discarded: its worktree and branch are deleted",
    )
}

fn report_state(ctx: &Context, record: &TaskRecord, what: &str) -> anyhow::Result<u8> {
    if ctx.json {
        crate::commands::print_json(&serde_json::json!({
            "task_id": record.id,
            "status": record.status.as_str(),
        }))?;
    } else {
        eprintln!("task {} {what}", record.id);
    }
    Ok(exit::OK)
}

fn print_record(out: &mut impl Write, r: &TaskRecord) -> std::io::Result<()> {
    writeln!(out, "task      {}", r.id)?;
    writeln!(out, "status    {}", r.status.as_str())?;
    writeln!(out, "rounds    {}/{}", r.rounds_done, r.max_rounds)?;
    if let Some(kept) = r.kept_round {
        writeln!(out, "kept      round {kept}: {}", r.kept_reason)?;
    }
    writeln!(out, "branch    {}", r.branch)?;
    writeln!(out, "worktree  {}", r.worktree.display())?;
    writeln!(out, "base      {}", r.base)?;
    writeln!(out, "text      {}", r.text.trim())
}

fn repo_root(ctx: &Context) -> anyhow::Result<PathBuf> {
    match &ctx.repo {
        Some(r) => Ok(r.clone()),
        None => bail!(
            "{}",
            ctx.repo_error
                .clone()
                .unwrap_or_else(|| "not inside a git repository; pass --repo PATH".into())
        ),
    }
}

/// Starts a session, submits the ops (all at once, or each after the previous one's task ended),
/// prints events until every task has ended, shuts down. Returns the worst exit code.
fn drive(ctx: &Context, ops: Vec<Op>, sequential: bool) -> anyhow::Result<u8> {
    let repo = repo_root(ctx)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(drive_async(ctx, &repo, ops, sequential))
}

async fn drive_async(
    ctx: &Context,
    repo: &Path,
    ops: Vec<Op>,
    sequential: bool,
) -> anyhow::Result<u8> {
    let options = SessionOptions::new(repo, ctx.config.config.clone());
    let mut session = Session::start(options).await?;
    let mut human = HumanProgress::new(std::io::stderr());
    let mut json = ctx.json.then(|| JsonLines::new(std::io::stdout()));
    let single = ops.len() == 1;
    let mut queue: std::collections::VecDeque<(String, Op)> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let id = if single {
                "run".to_string()
            } else {
                format!("run-{}", i + 1)
            };
            (id, op)
        })
        .collect();
    let mut running = 0usize;
    let submit_next = |session: &Session,
                       queue: &mut std::collections::VecDeque<(String, Op)>,
                       running: &mut usize|
     -> anyhow::Result<()> {
        if let Some((id, op)) = queue.pop_front() {
            session.submit(Submission { id, op })?;
            *running += 1;
        }
        Ok(())
    };
    if sequential {
        submit_next(&session, &mut queue, &mut running)?;
    } else {
        while !queue.is_empty() {
            submit_next(&session, &mut queue, &mut running)?;
        }
    }
    let mut started = std::collections::HashSet::new();
    let mut code = exit::OK;
    let mut interrupted = false;
    loop {
        let event = tokio::select! {
            e = session.next_event() => e,
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    // A second Ctrl-C: stop now; the tasks' state is already on disk.
                    return Ok(130);
                }
                interrupted = true;
                queue.clear();
                eprintln!("interrupting (press Ctrl-C again to stop at once)");
                session.submit(Submission { id: "interrupt".into(), op: Op::Interrupt })?;
                continue;
            }
        };
        let Some(event) = event else { break };
        human.process(&event)?;
        if let Some(json) = json.as_mut() {
            json.process(&event)?;
        }
        let ended = match &event.msg {
            EventMsg::TaskStarted { .. } => {
                started.insert(event.id.clone());
                None
            }
            EventMsg::TaskComplete { outcome, .. } => Some(match outcome {
                TaskOutcome::Converged => exit::OK,
                TaskOutcome::BudgetExhausted | TaskOutcome::Cancelled => exit::NEGATIVE,
                TaskOutcome::Failed => exit::ERROR,
            }),
            // Reported before the task started (e.g. an unknown id): nothing more comes for it.
            // Interrupted while waiting for a task slot, it ends like an interrupted task.
            EventMsg::Error { .. }
                if event.id.starts_with("run") && !started.contains(&event.id) =>
            {
                Some(if interrupted {
                    exit::NEGATIVE
                } else {
                    exit::ERROR
                })
            }
            EventMsg::ApprovalRequest { call_id, command } => {
                // Nobody can answer in a headless run: deny, so the agent hears it at once.
                eprintln!(
                    "denied `{command}`: a headless run cannot ask for approval (set agents.approval = false to let allow-listed commands run)"
                );
                session.submit(Submission {
                    id: "approval".into(),
                    op: Op::Approval {
                        call_id: call_id.clone(),
                        approved: false,
                    },
                })?;
                None
            }
            EventMsg::ShutdownComplete => break,
            _ => None,
        };
        if let Some(c) = ended {
            code = code.max(c);
            running = running.saturating_sub(1);
            submit_next(&session, &mut queue, &mut running)?;
            if running == 0 && queue.is_empty() {
                session.submit(Submission {
                    id: "shutdown".into(),
                    op: Op::Shutdown,
                })?;
            }
        }
    }
    Ok(code)
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Front ends speak only to the session and the protocol (STYLE.md).
    #[test]
    fn front_ends_do_not_reach_past_the_session() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut checked = 0;
        for dir in ["tui", "headless", "editor", "serve"] {
            for entry in walkdir::WalkDir::new(root.join(dir)).into_iter().flatten() {
                if entry.path().extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(entry.path()).unwrap();
                    for forbidden in ["crate::engine", "crate::index", "crate::git"] {
                        let hits = text
                            .lines()
                            .filter(|l| !l.trim_start().starts_with("for forbidden in"))
                            .any(|l| l.contains(forbidden));
                        assert!(
                            !hits,
                            "{} uses {forbidden}; front ends use only crate::agents and crate::protocol",
                            entry.path().display()
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
    }

    #[test]
    fn json_lines_prints_exactly_one_event_per_line() {
        let mut buf = Vec::new();
        let mut p = JsonLines::new(&mut buf);
        for msg in [
            EventMsg::AgentMessageDelta {
                delta: "a\nb".into(),
            },
            EventMsg::ShutdownComplete,
        ] {
            p.process(&Event {
                id: "1".into(),
                agent: None,
                msg,
            })
            .unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            serde_json::from_str::<Event>(line).unwrap();
        }
    }

    #[test]
    fn human_progress_pairs_tool_calls_into_one_line() {
        let mut buf = Vec::new();
        let mut p = HumanProgress::new(&mut buf);
        let ev = |msg| Event {
            id: "1".into(),
            agent: Some("writer".into()),
            msg,
        };
        p.process(&ev(EventMsg::ToolCallBegin {
            call_id: "c1".into(),
            tool: "edit".into(),
            arguments: serde_json::json!({"path": "a.py"}),
        }))
        .unwrap();
        p.process(&ev(EventMsg::ToolCallEnd {
            call_id: "c1".into(),
            ok: false,
            output: "ERROR: the search text was not found".into(),
        }))
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "[writer] edit {\"path\":\"a.py\"}: ERROR: the search text was not found\n"
        );
    }

    #[test]
    fn human_progress_says_which_round_was_undone_and_which_the_task_keeps() {
        let mut buf = Vec::new();
        let mut p = HumanProgress::new(&mut buf);
        let ev = |msg| Event {
            id: "1".into(),
            agent: None,
            msg,
        };
        p.process(&ev(EventMsg::RoundReverted {
            task_id: "t1".into(),
            round: 2,
            kept_round: 1,
            reason: "round 2: the tests fail (1 of 1 fail)".into(),
            commit: None,
        }))
        .unwrap();
        p.process(&ev(EventMsg::TaskComplete {
            task_id: "t1".into(),
            outcome: TaskOutcome::BudgetExhausted,
            rounds: 2,
            kept: Some(crate::protocol::KeptRound {
                round: 1,
                reason: "round 1: the tests pass (1 passed)".into(),
            }),
        }))
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "round 2 undone, back to round 1: round 2: the tests fail (1 of 1 fail)"
        );
        assert!(
            lines[1].starts_with("task t1 not converged: the budget ran out after 2 round(s); keeps round 1: the tests pass (1 passed); branch troupe/t1"),
            "{}",
            lines[1]
        );
    }
}
