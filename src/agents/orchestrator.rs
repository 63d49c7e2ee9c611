//! The rounds of a task. Round N: the writer works in the task's worktree on `troupe/<id>`; its
//! change is committed; when the repository's own tests fail on it (and N is not the last
//! round), the round ends there and the failure goes back to the writer; otherwise every
//! reviewer and tester role runs at the same time on the shared engine (their prompts share
//! the same prefix, so the engine reuses it from the KV cache); the testers' tests are committed; the orchestrator runs the test command
//! itself; the round ends with a commit. The task converges when the tests pass and no reviewer
//! reports a high-severity finding (with no test command: when every reviewer approves), and
//! otherwise ends at the round or time budget.
//!
//! The loop never ends worse than its best round: each round's commit is its snapshot and the
//! test run on it its score ([`super::rounds`]). A round that tests worse than the best round so
//! far is undone at once (the files go back to the best round's snapshot, as a new commit, and a
//! `RoundReverted` event says so); the writer then works from the best round again, with that
//! round's feedback. At the round or time budget the task keeps the best-tested round (the later
//! one among equals), and `TaskComplete` says which round it kept and why.
//!
//! Every event goes through the task's [`Emitter`], which appends it to
//! `.troupe/tasks/<id>/events.jsonl` before sending it to the session; the record (`task.json`)
//! is saved after every round, so a killed process loses at most the round in flight and
//! `resume` continues from the last completed round.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use super::exec::{ExecPolicy, detect_test_command};
use super::roles::{RoleKind, RoleSpec, Roles};
use super::rounds::{self, RoundResult, TestRun};
use super::search::CodeSearch;
use super::store::{AppendLog, TaskRecord, TaskStatus, TaskStore, new_task_id, now_unix};
use super::tools::{self, ToolCall, ToolOutcome, Toolbox, Verdict};
use super::{Error, Result, context, edit};
use crate::config::AgentsConfig;
use crate::engine::{
    Backend, ChatMessage, Constraint, FinishReason, GenerateEvent, GenerateRequest, Sampling,
};
use crate::protocol::{Event, EventMsg, Finding, KeptRound, RequestStats, Severity, TaskOutcome};

/// Pending approvals: call id to the waiting command.
pub(crate) type Approvals = Arc<Mutex<HashMap<String, oneshot::Sender<bool>>>>;

/// Cancellation of a task (all agents) or of single agents' current turns.
#[derive(Debug, Clone)]
pub struct Cancel {
    all: Arc<watch::Sender<bool>>,
    agents: Arc<watch::Sender<HashSet<String>>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self {
            all: Arc::new(watch::Sender::new(false)),
            agents: Arc::new(watch::Sender::new(HashSet::new())),
        }
    }
}

impl Cancel {
    /// Cancels everything.
    pub fn cancel(&self) {
        self.all.send_replace(true);
    }

    /// Ends `agent`'s current turn (once).
    pub fn cancel_agent(&self, agent: &str) {
        self.agents.send_modify(|set| {
            set.insert(agent.to_string());
        });
    }

    /// Whether everything is cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.all.borrow()
    }

    /// Resolves when everything is cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.all.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Resolves when everything, or `agent`, is cancelled; consumes the agent's cancellation.
    async fn agent_cancelled(&self, agent: &str) {
        let mut all = self.all.subscribe();
        let mut agents = self.agents.subscribe();
        tokio::select! {
            _ = all.wait_for(|v| *v) => {}
            _ = agents.wait_for(|s| s.contains(agent)) => {
                self.agents.send_modify(|s| { s.remove(agent); });
            }
        }
    }
}

/// Sends a task's events to the session and appends them to its event log.
#[derive(Clone)]
pub struct Emitter {
    sub_id: String,
    tx: mpsc::UnboundedSender<Event>,
    log: Arc<Mutex<Option<Arc<AppendLog>>>>,
    approvals: Approvals,
    calls: Arc<AtomicU64>,
    cancel: Cancel,
}

impl Emitter {
    pub(crate) fn new(
        sub_id: &str,
        tx: mpsc::UnboundedSender<Event>,
        approvals: Approvals,
        cancel: Cancel,
    ) -> Self {
        Self {
            sub_id: sub_id.to_string(),
            tx,
            log: Arc::new(Mutex::new(None)),
            approvals,
            calls: Arc::new(AtomicU64::new(1)),
            cancel,
        }
    }

    fn set_log(&self, log: AppendLog) {
        let mut slot = match self.log.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        *slot = Some(Arc::new(log));
    }

    /// Logs and sends one event.
    pub fn emit(&self, agent: Option<&str>, msg: EventMsg) {
        let event = Event {
            id: self.sub_id.clone(),
            agent: agent.map(str::to_string),
            msg,
        };
        let log = match self.log.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if let Some(log) = log
            && let Err(e) = log.append(&event)
        {
            let _ = self.tx.send(Event {
                id: self.sub_id.clone(),
                agent: None,
                msg: EventMsg::Warning {
                    message: e.to_string(),
                },
            });
        }
        // A front end that went away is not the task's problem: it is persisted anyway.
        let _ = self.tx.send(event);
    }

    /// Resolves when the task is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// A fresh call id, unique within the task.
    pub fn next_call_id(&self) -> String {
        format!("call-{}", self.calls.fetch_add(1, Ordering::Relaxed))
    }

    /// Asks the user to approve `command`; false when denied, cancelled or unanswered for ten
    /// minutes.
    pub async fn ask_approval(&self, agent: &str, call_id: &str, command: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.approvals.lock() {
            map.insert(call_id.to_string(), tx);
        }
        self.emit(
            Some(agent),
            EventMsg::ApprovalRequest {
                call_id: call_id.to_string(),
                command: command.to_string(),
            },
        );
        let answer = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(600), rx) => matches!(r, Ok(Ok(true))),
            _ = self.cancel.cancelled() => false,
        };
        if let Ok(mut map) = self.approvals.lock() {
            map.remove(call_id);
        }
        answer
    }
}

/// Limits that tests and benchmarks tighten; 0 means "the role's own value".
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Overrides every role's `max_tokens`.
    pub max_tokens: u32,
    /// Overrides every role's `max_steps`.
    pub max_steps: u32,
    /// Wall-clock budget of one run of a task.
    pub time_budget: Option<Duration>,
    /// Context of one sequence, in tokens (the prompt is kept within it).
    pub ctx_tokens: u32,
}

/// Everything a task needs that outlives it.
#[derive(Clone)]
pub struct TaskEnv {
    /// Where requests go.
    pub backend: Arc<dyn Backend>,
    /// Roles, prompts, grammars.
    pub roles: Arc<Roles>,
    /// The user's repository.
    pub repo_root: PathBuf,
    /// `[agents]` settings.
    pub config: AgentsConfig,
    /// Limits.
    pub limits: Limits,
    /// Code search.
    pub search: Arc<dyn CodeSearch>,
}

/// How a task run starts.
#[derive(Debug, Clone)]
pub enum TaskStart {
    /// A new task.
    New {
        /// The request.
        text: String,
        /// Round budget (default: `agents.max_rounds`).
        max_rounds: Option<u32>,
    },
    /// Continue a saved task.
    Resume {
        /// Its id.
        task_id: String,
    },
}

/// Runs a task to its end, emitting `TaskStarted` ... `TaskComplete` (exactly one each, once the
/// task exists). Errors before the task exists come back as `Err`; errors after it are reported
/// as an `Error` event and a `Failed` outcome.
pub async fn run_task(env: TaskEnv, emitter: Emitter, start: TaskStart) -> Result<TaskOutcome> {
    let (mut record, resumed) = prepare(&env, &start)?;
    let store = TaskStore::new(&env.repo_root);
    emitter.set_log(AppendLog::open(&store.events_path(&record.id))?);
    let transcript = Arc::new(AppendLog::open(&store.transcript_path(&record.id))?);
    emitter.emit(
        None,
        EventMsg::TaskStarted {
            task_id: record.id.clone(),
            text: record.text.clone(),
        },
    );
    if resumed {
        emitter.emit(
            None,
            EventMsg::Warning {
                message: format!(
                    "resuming task {} after round {} (budget: {} rounds)",
                    record.id, record.rounds_done, record.max_rounds
                ),
            },
        );
    }
    let mut runner = Runner {
        env: &env,
        emitter: &emitter,
        transcript,
        store: &store,
        started: Instant::now(),
        task: record.text.clone(),
        base_has_tests: tokio::sync::OnceCell::new(),
    };
    let outcome = match runner.rounds(&mut record).await {
        Ok(outcome) => outcome,
        Err(e) => {
            emitter.emit(
                None,
                EventMsg::Error {
                    message: e.to_string(),
                    fix: None,
                },
            );
            TaskOutcome::Failed
        }
    };
    if matches!(outcome, TaskOutcome::Cancelled | TaskOutcome::Failed)
        && let Err(e) = runner.keep_best_after_stop(&mut record)
    {
        emitter.emit(
            None,
            EventMsg::Warning {
                message: format!("the task's files could not be put back to its best round: {e}"),
            },
        );
    }
    record.status = TaskStatus::from(outcome);
    record.updated_unix = now_unix();
    if let Err(e) = store.save(&record) {
        emitter.emit(
            None,
            EventMsg::Warning {
                message: e.to_string(),
            },
        );
    }
    emitter.emit(
        None,
        EventMsg::TaskComplete {
            task_id: record.id.clone(),
            outcome,
            rounds: record.rounds_done,
            kept: record.kept_round.map(|round| KeptRound {
                round,
                reason: record.kept_reason.clone(),
            }),
        },
    );
    Ok(outcome)
}

/// Creates (or reopens) the task's worktree and record.
fn prepare(env: &TaskEnv, start: &TaskStart) -> Result<(TaskRecord, bool)> {
    let repo = crate::git::Repo::open(&env.repo_root)?;
    let store = TaskStore::new(&env.repo_root);
    match start {
        TaskStart::New { text, max_rounds } => {
            if text.trim().is_empty() {
                return Err(Error::TaskState {
                    id: "(new)".into(),
                    message: "the task text is empty; say what to do".into(),
                });
            }
            let base = repo.head()?;
            let id = new_task_id();
            repo.state_dir()?;
            let wt = repo.create_worktree(&id, base)?;
            let record = TaskRecord {
                id: id.clone(),
                text: text.clone(),
                base: wt.base.clone(),
                branch: wt.branch.clone(),
                worktree: wt.path.clone(),
                status: TaskStatus::Running,
                rounds_done: 0,
                max_rounds: max_rounds.unwrap_or(env.config.max_rounds).max(1),
                feedback: String::new(),
                approved: false,
                tests_passed: None,
                rounds: Vec::new(),
                kept_round: None,
                kept_reason: String::new(),
                tester_paths: Vec::new(),
                created_unix: now_unix(),
                updated_unix: now_unix(),
                pid: std::process::id(),
            };
            store.save(&record)?;
            Ok((record, false))
        }
        TaskStart::Resume { task_id } => {
            let mut record = store.load(task_id)?;
            match record.status {
                TaskStatus::Running
                | TaskStatus::BudgetExhausted
                | TaskStatus::Cancelled
                | TaskStatus::Failed => {}
                TaskStatus::Converged | TaskStatus::Applied | TaskStatus::Discarded => {
                    return Err(Error::TaskState {
                        id: task_id.clone(),
                        message: format!(
                            "it is {}; only unfinished tasks can be resumed",
                            record.status.as_str()
                        ),
                    });
                }
            }
            let base = repo.resolve(&record.base)?;
            let wt = repo.worktree(task_id, base)?;
            record.worktree = wt.path;
            // Edits made before an interruption are kept and recorded.
            crate::git::commit_all(
                &record.worktree,
                &format!("troupe: round {} (interrupted)", record.rounds_done + 1),
            )?;
            if record.status != TaskStatus::Running || record.rounds_done >= record.max_rounds {
                // It ended at its budget (or was stopped): grant a fresh budget.
                record.max_rounds = record.rounds_done + env.config.max_rounds.max(1);
            }
            record.status = TaskStatus::Running;
            record.kept_round = None;
            record.kept_reason.clear();
            record.pid = std::process::id();
            record.updated_unix = now_unix();
            store.save(&record)?;
            Ok((record, true))
        }
    }
}

/// What one agent's turn produced.
#[derive(Debug, Clone, Default)]
struct Turn {
    /// The agent ended its turn itself (`done` or `review`).
    finished: bool,
    /// The reviewer's verdict, if it gave one.
    verdict: Option<Verdict>,
    /// The reviewer's findings.
    findings: Vec<Finding>,
    /// The writer's or tester's summary.
    summary: String,
    /// The turn was cancelled.
    cancelled: bool,
}

struct Runner<'a> {
    env: &'a TaskEnv,
    emitter: &'a Emitter,
    transcript: Arc<AppendLog>,
    store: &'a TaskStore,
    started: Instant,
    /// The task's text, restated to an agent whose call changed nothing.
    task: String,
    /// Whether the test command counts any test on the base commit; asked once, the first
    /// time a round's run counts none.
    base_has_tests: tokio::sync::OnceCell<bool>,
}

impl Runner<'_> {
    async fn rounds(&mut self, record: &mut TaskRecord) -> Result<TaskOutcome> {
        let env = self.env;
        let roles = &env.roles;
        let chosen = &env.config.roles;
        let takes_part = |r: &&RoleSpec| chosen.is_empty() || chosen.contains(&r.name);
        let writer = if chosen.is_empty() {
            roles.writer()?.clone()
        } else {
            roles
                .of_kind(RoleKind::Writer)
                .into_iter()
                .find(takes_part)
                .ok_or(Error::NoWriter)?
                .clone()
        };
        let reviewers: Vec<RoleSpec> = roles
            .of_kind(RoleKind::Reviewer)
            .into_iter()
            .filter(takes_part)
            .cloned()
            .collect();
        let testers: Vec<RoleSpec> = roles
            .of_kind(RoleKind::Tester)
            .into_iter()
            .filter(takes_part)
            .cloned()
            .collect();
        let test_command = Some(env.config.test_command.trim().to_string())
            .filter(|c| !c.is_empty())
            .or_else(|| detect_test_command(&record.worktree));
        if test_command.is_none() {
            self.emitter.emit(
                None,
                EventMsg::Warning {
                    message: "no test command configured or detected; the task converges on the reviewers' approval alone (set agents.test_command in troupe.toml)".into(),
                },
            );
        }
        let toolbox = Toolbox {
            root: record.worktree.clone(),
            base: record.base.clone(),
            exec: ExecPolicy {
                test_command: test_command.clone(),
                allowed: env.config.allowed_commands.clone(),
                timeout: Duration::from_secs(env.config.command_timeout_secs.max(1)),
                output_limit: env.config.output_limit_bytes.max(256) as usize,
            },
            search: Arc::clone(&env.search),
            approval: env.config.approval,
        };
        let (system, shown_paths) = {
            let repo = crate::git::Repo::open(&env.repo_root)?;
            let instructions = context::instruction_files(&repo, &record.base);
            let name = env
                .repo_root
                .file_name()
                .map_or_else(|| "repository".into(), |n| n.to_string_lossy().into_owned());
            // About a third of a sequence's context for the files; three bytes per token.
            let budget = (env.limits.ctx_tokens.max(512) as usize / 3) * 3;
            let shown = context::relevant_files(
                &record.worktree,
                &record.text,
                env.search.as_ref(),
                budget,
            );
            let system = context::system_prompt(
                roles,
                &name,
                &record.worktree,
                &instructions,
                &shown,
                &record.text,
            )?;
            (
                system,
                shown.into_iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
        };
        self.transcript.append(&json!({
            "agent": null, "round": record.rounds_done + 1, "role": "system", "content": system,
        }))?;
        let cancel = self.emitter.cancel.clone();

        while record.rounds_done < record.max_rounds {
            if cancel.is_cancelled() {
                return Ok(TaskOutcome::Cancelled);
            }
            if self.out_of_time() {
                self.emitter.emit(
                    None,
                    EventMsg::Warning {
                        message: "the time budget (agents.time_budget_secs) ran out".into(),
                    },
                );
                self.keep_best(record)?;
                return Ok(TaskOutcome::BudgetExhausted);
            }
            let round = record.rounds_done + 1;
            // After a round whose tests failed (or that changed nothing), the writer samples
            // at its retry temperature: a fresh attempt instead of the same answer again. After
            // failed tests it is not shown the code that failed either: a small model shown its
            // own code copies it, sampled or not, while a fresh attempt often takes another way
            // (and the tests pick between the attempts); the failure output is still shown.
            let last = record.rounds.last();
            let fresh = last.is_some_and(|r| r.tests.is_some_and(|t| !t.passed));
            let retry = fresh || last.is_some_and(|r| r.commit.is_none());
            let changed = if fresh {
                Vec::new()
            } else {
                changed_files(&record.worktree, &record.base)
            };
            // A fresh attempt opens with the write when the writer has seen every file it
            // changed (the system prompt shows them as they were): a small model that first
            // reads the file that failed copies it.
            let attempt = if fresh && saw_every_change(record, &shown_paths) {
                Attempt::FreshWrite
            } else if retry {
                Attempt::Retry
            } else {
                Attempt::First
            };

            // 1. The writer.
            let prompt = roles.render(
                &writer.prompt,
                minijinja::context! {
                    round => round,
                    feedback => record.feedback,
                    changed => changed,
                    fresh => fresh,
                    test_command => test_command.clone().unwrap_or_default(),
                    tools => tool_usages(&writer),
                    diff => "",
                    task => record.text,
                    shown => shown_paths,
                },
            )?;
            let turn = self
                .agent_turn(&writer, &system, prompt, round, attempt, &toolbox)
                .await?;
            if turn.cancelled && cancel.is_cancelled() {
                return Ok(TaskOutcome::Cancelled);
            }
            let writer_commit = crate::git::commit_all(
                &record.worktree,
                &format!("troupe: round {round}, writer\n\n{}", turn.summary),
            )?;
            let diff = crate::git::worktree_diff(&record.worktree, &record.base)?;
            self.emitter.emit(
                Some(&writer.name),
                EventMsg::DiffUpdated { diff: diff.clone() },
            );
            if diff.trim().is_empty() {
                record.rounds_done = round;
                record.approved = false;
                record.tests_passed = None;
                record.feedback =
                    "You have not changed any file yet. Read the relevant files, then change them."
                        .into();
                record.rounds.push(RoundResult {
                    round,
                    commit: None,
                    tests: None,
                    own_tests: None,
                    tests_id: String::new(),
                    high_findings: 0,
                    feedback: String::new(),
                    reverted_to: None,
                });
                record.updated_unix = now_unix();
                self.store.save(record)?;
                self.emitter.emit(
                    None,
                    EventMsg::RoundComplete {
                        task_id: record.id.clone(),
                        round,
                        approved: false,
                        tests_passed: None,
                        tests_fail_before: None,
                        commit: writer_commit.map(|c| c.to_string()),
                    },
                );
                // Undoing every change is never better than a tested change.
                if let Some(best) = rounds::best(&record.rounds).cloned() {
                    let reason = format!(
                        "round {round} left no change against the base; round {} was better: {}",
                        best.round,
                        best.describe_tests()
                    );
                    self.revert(record, round, &best, reason, "")?;
                }
                continue;
            }

            // 2. A change that fails the repository's own tests goes straight back to the writer
            //    with the failure: the output says more than a review of code known to fail,
            //    and the round costs one test run instead of the reviewers' and testers' turns.
            //    The last round is always reviewed and tested, so a repository whose tests
            //    failed before the task still gets both.
            let gated = round < record.max_rounds && !(reviewers.is_empty() && testers.is_empty());
            if gated
                && let Some(argv) = toolbox.exec.test_argv()
                && let Some((run, failure)) = self
                    .own_tests_fail(
                        record,
                        &toolbox,
                        argv,
                        &writer.name,
                        test_command.as_deref().unwrap_or_default(),
                    )
                    .await
            {
                let feedback = format!(
                    "{failure}The reviewer and the tester look at the change once the tests pass.\n"
                );
                let this = RoundResult {
                    round,
                    commit: head_of(&record.worktree),
                    tests: Some(run),
                    own_tests: None,
                    tests_id: String::new(),
                    high_findings: 0,
                    feedback,
                    reverted_to: None,
                };
                if let Some((best, reason)) = self.record_round(record, this, false, None)? {
                    self.revert(record, round, &best, reason, &failure)?;
                }
                continue;
            }

            // 3. Reviewers and testers at the same time, on the shared engine.
            // At most about a quarter of a sequence's context; the rest is a `diff` call away.
            let diff_budget = (env.limits.ctx_tokens.max(512) as usize * 3 / 4).min(8_000);
            let shown_diff = tools::clip(&diff, diff_budget);
            let mut turns = Vec::new();
            for role in reviewers.iter().chain(testers.iter()) {
                let (test_files, test_path) = test_files_for(&record.worktree, &diff, role);
                let prompt = roles.render(
                    &role.prompt,
                    minijinja::context! {
                        round => round,
                        diff => shown_diff,
                        feedback => "",
                        test_command => test_command.clone().unwrap_or_default(),
                        tools => tool_usages(role),
                        task => record.text,
                        test_files => test_files,
                        test_path => test_path,
                    },
                )?;
                turns.push(self.agent_turn_owned(
                    role.clone(),
                    system.clone(),
                    prompt,
                    round,
                    toolbox.clone(),
                ));
            }
            let before_testers = head_of(&record.worktree);
            let results = futures::future::join_all(turns).await;
            // With no reviewer taking part (agents.roles), approval is not asked for.
            let mut approved = true;
            let mut feedback = String::new();
            let mut high_findings = 0u32;
            for (role, result) in reviewers.iter().chain(testers.iter()).zip(results) {
                let turn = result?;
                if role.kind != RoleKind::Reviewer {
                    continue;
                }
                high_findings += turn
                    .findings
                    .iter()
                    .filter(|f| f.severity >= Severity::High)
                    .count() as u32;
                let listed = |findings: &mut dyn Iterator<Item = &Finding>| {
                    findings
                        .map(|f| {
                            format!(
                                "- [{:?}] {}:{}-{} {}: {}{}\n",
                                f.severity,
                                f.file,
                                f.start_line,
                                f.end_line,
                                f.title,
                                f.explanation,
                                f.suggestion
                                    .as_deref()
                                    .filter(|s| !s.is_empty())
                                    .map(|s| format!(" Suggestion: {s}"))
                                    .unwrap_or_default()
                            )
                        })
                        .collect::<String>()
                };
                match turn.verdict {
                    Some(Verdict::Approve) => {
                        // A high-severity finding holds the task back even with an approval.
                        let high = listed(
                            &mut turn
                                .findings
                                .iter()
                                .filter(|f| f.severity >= Severity::High),
                        );
                        if !high.is_empty() {
                            feedback.push_str(&format!(
                                "Reviewer {} approves but reports:\n{high}",
                                role.name
                            ));
                        }
                    }
                    Some(Verdict::RequestChanges) => {
                        approved = false;
                        feedback.push_str(&format!("Reviewer {} asks for changes:\n", role.name));
                        feedback.push_str(&listed(&mut turn.findings.iter()));
                    }
                    None => {
                        approved = false;
                        feedback.push_str(&format!(
                            "Reviewer {} gave no verdict this round.\n",
                            role.name
                        ));
                    }
                }
            }
            if cancel.is_cancelled() {
                return Ok(TaskOutcome::Cancelled);
            }
            crate::git::commit_all(&record.worktree, &format!("troupe: round {round}, tests"))?;

            // 4. The tests, run by the orchestrator itself: the result the task stands on. At
            //    the same time, the testers' new tests run against the BASE code (a test of a
            //    behaviour change must fail there), and, once testers have written tests, the
            //    repository's own tests run without them (what rounds are ranked by first).
            let after_testers = head_of(&record.worktree);
            let new_test_paths = match (&before_testers, &after_testers) {
                (Some(a), Some(b)) if a != b => changed_paths(&record.worktree, a, b),
                _ => Vec::new(),
            };
            for p in &new_test_paths {
                if !record.tester_paths.contains(p) {
                    record.tester_paths.push(p.clone());
                }
            }
            let tests_id = after_testers
                .as_deref()
                .map(|c| files_digest(&record.worktree, c, &record.tester_paths))
                .unwrap_or_default();
            let agent = testers.first().map_or("tester", |t| t.name.as_str());
            let mut test_feedback = String::new();
            let (test_run, own_run, fail_before) = match toolbox.exec.test_argv() {
                Some(argv) => {
                    let display = test_command.clone().unwrap_or_default();
                    // The base commit's files with the new tests laid over them.
                    let base_copy = after_testers.as_deref().and_then(|to| {
                        (!new_test_paths.is_empty()).then(|| {
                            commit_copy(&record.worktree, &record.base, &new_test_paths, to)
                        })?
                    });
                    // This round's files with every tester-written path as at the base.
                    let own_copy = after_testers.as_deref().and_then(|head| {
                        (!record.tester_paths.is_empty()).then(|| {
                            commit_copy(&record.worktree, head, &record.tester_paths, &record.base)
                        })?
                    });
                    let (emitter, toolbox) = (self.emitter, &toolbox);
                    let run_in = |dir: Option<std::path::PathBuf>, label: String| {
                        let argv = argv.clone();
                        async move {
                            toolbox
                                .run_unattended(argv, dir.as_deref(), label, agent, emitter)
                                .await
                        }
                    };
                    let after = run_in(None, display.clone());
                    let before = async {
                        let dir = base_copy.as_ref()?;
                        let label = format!(
                            "{display}  # on the base commit with the new tests ({})",
                            new_test_paths.join(", ")
                        );
                        let result = run_in(Some(dir.path().to_path_buf()), label).await;
                        Some(result.map(|(_, out)| !out.success()).unwrap_or(false))
                    };
                    let without = async {
                        let dir = own_copy.as_ref()?;
                        let label = format!(
                            "{display}  # without the testers' tests ({})",
                            record.tester_paths.join(", ")
                        );
                        Some(match run_in(Some(dir.path().to_path_buf()), label).await {
                            Ok((_, out)) => TestRun::from_output(out.success(), &out.output),
                            Err(_) => TestRun::broken(),
                        })
                    };
                    let (after, fail_before, own_run) = tokio::join!(after, before, without);
                    let run = match after {
                        Ok((_, out)) => {
                            if !out.success() {
                                test_feedback.push_str(&test_failure(
                                    &display,
                                    &out,
                                    &toolbox.root,
                                ));
                            }
                            TestRun::from_output(out.success(), &out.output)
                        }
                        Err(outcome) => {
                            test_feedback.push_str(&format!(
                                "The tests could not run: {}\n",
                                outcome.for_model()
                            ));
                            TestRun::broken()
                        }
                    };
                    if !run.passed && own_run.is_some_and(|o| o.passed) {
                        test_feedback.push_str(&format!(
                            "The repository's own tests pass; what fails are tests the tester wrote ({}), which may be wrong themselves: change the code only where the task asks for what they check.\n",
                            record.tester_paths.join(", ")
                        ));
                    }
                    if fail_before == Some(false) {
                        self.emitter.emit(Some(agent), EventMsg::Warning {
                            message: "the new tests also pass on the code before the change, so they do not test it".into(),
                        });
                    }
                    (Some(run), own_run, fail_before)
                }
                None => (None, None, None),
            };
            if let Some(run) = test_run.filter(|t| t.passed) {
                feedback.push_str(&format!(
                    "{}: keep them passing (a change that makes the tests worse is undone).\n",
                    capitalized(&run.describe())
                ));
            }
            feedback.push_str(&test_feedback);
            let this = RoundResult {
                round,
                commit: head_of(&record.worktree),
                tests: test_run,
                own_tests: own_run,
                tests_id,
                high_findings,
                feedback,
                reverted_to: None,
            };
            if let Some((best, reason)) = self.record_round(record, this, approved, fail_before)? {
                self.revert(record, round, &best, reason, &test_feedback)?;
                continue;
            }
            // Passing tests and no high-severity finding end the task; lesser findings do not
            // hold back a tested change. Without a test command, the reviewers' approval decides.
            let reason = match test_run {
                Some(run) if run.passed && high_findings == 0 => Some(format!(
                    "round {round}: {} and no reviewer reports a high-severity finding",
                    run.describe()
                )),
                None if approved => Some(format!(
                    "round {round}: every reviewer approves (there is no test command)"
                )),
                _ => None,
            };
            if let Some(reason) = reason {
                record.kept_round = Some(round);
                record.kept_reason = reason;
                return Ok(TaskOutcome::Converged);
            }
        }
        self.keep_best(record)?;
        Ok(TaskOutcome::BudgetExhausted)
    }

    /// Records the finished round `this` (the record saved, `RoundComplete` emitted). When it
    /// ranks below the best round before it, returns that round and why, for the caller to undo
    /// `this`.
    fn record_round(
        &self,
        record: &mut TaskRecord,
        this: RoundResult,
        approved: bool,
        fail_before: Option<bool>,
    ) -> Result<Option<(RoundResult, String)>> {
        let round = this.round;
        let worse = rounds::best(&record.rounds)
            .filter(|b| this.rank(b) == Some(std::cmp::Ordering::Less))
            .map(|best| {
                let reason = format!(
                    "round {round}: {}; round {} was better: {}",
                    this.describe_tests(),
                    best.round,
                    best.describe_tests()
                );
                (best.clone(), reason)
            });
        let tests_passed = this.tests.map(|t| t.passed);
        let commit = this.commit.clone();
        record.rounds_done = round;
        record.approved = approved;
        record.tests_passed = tests_passed;
        record.feedback = this.feedback.clone();
        record.rounds.push(this);
        record.updated_unix = now_unix();
        self.store.save(record)?;
        self.emitter.emit(
            None,
            EventMsg::RoundComplete {
                task_id: record.id.clone(),
                round,
                approved,
                tests_passed,
                tests_fail_before: fail_before,
                commit,
            },
        );
        Ok(worse)
    }

    /// Runs the repository's own tests on the worktree as it is (the files testers wrote put
    /// back as at the base). `Some((run, feedback for the writer))` when they ran and failed,
    /// or ran no test where the base commit runs some (the change removed or renamed what they
    /// test); `None` when they pass, ran no tests as at the base, or could not start (then the
    /// reviewers and testers go ahead).
    async fn own_tests_fail(
        &self,
        record: &TaskRecord,
        toolbox: &Toolbox,
        argv: Vec<String>,
        agent: &str,
        display: &str,
    ) -> Option<(TestRun, String)> {
        let mut label = display.to_string();
        let copy = if record.tester_paths.is_empty() {
            None
        } else {
            let head = head_of(&record.worktree)?;
            let dir = commit_copy(&record.worktree, &head, &record.tester_paths, &record.base)?;
            label = format!(
                "{display}  # without the testers' tests ({})",
                record.tester_paths.join(", ")
            );
            Some(dir)
        };
        let root = copy.as_ref().map(|d| d.path());
        let (_, out) = toolbox
            .run_unattended(argv, root, label, agent, self.emitter)
            .await
            .ok()?;
        let run = TestRun::from_output(out.success(), &out.output);
        if run.counted_none() {
            if !self.base_has_tests(record, toolbox, agent, display).await {
                return None;
            }
            let failure = format!(
                "`{display}` ran no tests, but on the code before your change it runs some: your change removed or renamed what they test. Keep every name and signature the task and the tests use.\n"
            );
            return Some((run, failure));
        }
        if out.success() {
            return None;
        }
        Some((
            run,
            test_failure(display, &out, root.unwrap_or(&toolbox.root)),
        ))
    }

    /// Whether the test command counts at least one test on the base commit (run once per
    /// task run, on a copy of the base; `false` when it cannot run there).
    async fn base_has_tests(
        &self,
        record: &TaskRecord,
        toolbox: &Toolbox,
        agent: &str,
        display: &str,
    ) -> bool {
        *self
            .base_has_tests
            .get_or_init(|| async {
                let Some(argv) = toolbox.exec.test_argv() else {
                    return false;
                };
                let Some(dir) = commit_copy(&record.worktree, &record.base, &[], &record.base)
                else {
                    return false;
                };
                let label = format!("{display}  # on the base commit");
                match toolbox
                    .run_unattended(argv, Some(dir.path()), label, agent, self.emitter)
                    .await
                {
                    Ok((_, out)) => TestRun::from_output(out.success(), &out.output).ran_tests(),
                    Err(_) => false,
                }
            })
            .await
    }

    /// Undoes round `round`: the worktree's files become `best`'s snapshot again (a new commit),
    /// the round is marked undone in the record, the writer's next feedback says what happened
    /// (with `what_broke`, the undone round's test output) and repeats `best`'s own feedback.
    fn revert(
        &self,
        record: &mut TaskRecord,
        round: u32,
        best: &RoundResult,
        reason: String,
        what_broke: &str,
    ) -> Result<()> {
        let Some(snapshot) = best.commit.as_deref() else {
            return Err(Error::Invariant(format!(
                "round {} is the best round but has no commit",
                best.round
            )));
        };
        let commit = crate::git::restore_commit(
            &record.worktree,
            snapshot,
            &format!(
                "troupe: round {round} undone, back to round {}\n\n{reason}",
                best.round
            ),
        )?;
        if let Some(r) = record.rounds.iter_mut().rev().find(|r| r.round == round) {
            r.reverted_to = Some(best.round);
        }
        record.feedback = format!(
            "Your change in round {round} was undone because it made things worse ({reason}). The files are back as they were after round {}; work from them.\n{what_broke}{}",
            best.round,
            if best.feedback.is_empty() {
                String::new()
            } else {
                format!(
                    "Feedback on round {}'s change:\n{}",
                    best.round, best.feedback
                )
            }
        );
        record.updated_unix = now_unix();
        self.store.save(record)?;
        if let Ok(diff) = crate::git::worktree_diff(&record.worktree, &record.base) {
            self.emitter.emit(None, EventMsg::DiffUpdated { diff });
        }
        self.emitter.emit(
            None,
            EventMsg::RoundReverted {
                task_id: record.id.clone(),
                round,
                kept_round: best.round,
                reason,
                commit: commit.map(|c| c.to_string()),
            },
        );
        Ok(())
    }

    /// At the end of the budget: the task keeps the best-tested round (the later among equals),
    /// restoring its files if the worktree holds anything else, and records which and why.
    fn keep_best(&self, record: &mut TaskRecord) -> Result<()> {
        let last = record.rounds_done;
        let Some(best) = rounds::best(&record.rounds).cloned() else {
            // No test run to compare rounds by: the last change stands.
            if let Some(r) = record.rounds.iter().rev().find(|r| r.commit.is_some()) {
                record.kept_round = Some(r.round);
                record.kept_reason = format!(
                    "round {}, the last round with a change (there is no test command to compare rounds by)",
                    r.round
                );
            }
            return Ok(());
        };
        let tests = best.describe_tests();
        let mut reason = if best.round == last {
            format!("round {}: {tests}, the best test result", best.round)
        } else {
            format!(
                "round {}: {tests}, the best test result; the rounds after it did worse and were undone",
                best.round
            )
        };
        if best.high_findings > 0 {
            reason.push_str(&format!(
                "; a reviewer still reports {} high-severity finding(s)",
                best.high_findings
            ));
        }
        if let Some(snapshot) = best.commit.as_deref() {
            let commit = crate::git::restore_commit(
                &record.worktree,
                snapshot,
                &format!("troupe: the task keeps round {}\n\n{reason}", best.round),
            )?;
            if let Some(commit) = commit {
                // Only when something after the best round was left in place.
                if let Some(r) = record.rounds.iter_mut().rev().find(|r| r.round == last) {
                    r.reverted_to = Some(best.round);
                }
                self.emitter.emit(
                    None,
                    EventMsg::RoundReverted {
                        task_id: record.id.clone(),
                        round: last,
                        kept_round: best.round,
                        reason: reason.clone(),
                        commit: Some(commit.to_string()),
                    },
                );
            }
        }
        record.kept_round = Some(best.round);
        record.kept_reason = reason;
        Ok(())
    }

    /// A task stopped mid-round (cancelled, or ended by an error): the unfinished round's edits
    /// are committed on the task branch (nothing is lost), then the files go back to the
    /// best-tested round (else the last finished one), so the task never ends on half-written
    /// code; `tasks apply` takes that round, and a resumed task goes on from it.
    fn keep_best_after_stop(&self, record: &mut TaskRecord) -> Result<()> {
        let stopped = record.rounds_done + 1;
        let partial = crate::git::commit_all(
            &record.worktree,
            &format!("troupe: round {stopped} (interrupted)"),
        )?;
        let (round, snapshot, why) = match rounds::best(&record.rounds) {
            Some(best) => (
                best.round,
                best.commit.clone(),
                format!("{}, the best test result", best.describe_tests()),
            ),
            None => match record.rounds.iter().rev().find(|r| r.commit.is_some()) {
                Some(r) => (r.round, r.commit.clone(), "the last finished round".into()),
                None => return Ok(()),
            },
        };
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        let mut reason =
            format!("round {round}: {why}; round {stopped} was stopped before it ended");
        if let Some(p) = partial {
            let p = p.to_string();
            reason.push_str(&format!(
                " (its edits are kept in commit {})",
                &p[..p.len().min(10)]
            ));
        }
        let commit = crate::git::restore_commit(
            &record.worktree,
            &snapshot,
            &format!("troupe: the task keeps round {round}\n\n{reason}"),
        )?;
        if let Some(commit) = commit {
            self.emitter.emit(
                None,
                EventMsg::RoundReverted {
                    task_id: record.id.clone(),
                    round: stopped,
                    kept_round: round,
                    reason: reason.clone(),
                    commit: Some(commit.to_string()),
                },
            );
        }
        record.kept_round = Some(round);
        record.kept_reason = reason;
        Ok(())
    }

    fn out_of_time(&self) -> bool {
        self.env
            .limits
            .time_budget
            .is_some_and(|b| self.started.elapsed() >= b)
    }

    async fn agent_turn_owned(
        &self,
        role: RoleSpec,
        system: String,
        prompt: String,
        round: u32,
        toolbox: Toolbox,
    ) -> Result<Turn> {
        self.agent_turn(&role, &system, prompt, round, Attempt::First, &toolbox)
            .await
    }

    /// One agent's turn: up to `max_steps` model calls, each one grammar-constrained tool call,
    /// each result fed back, until the agent ends its turn. The last call, and the call after
    /// one the model repeated, are constrained to the grammar's `finish` rule when it has one
    /// (the role's closing calls), or to its `write` rule while a role that writes files has not
    /// written one this turn. A retry samples at the role's retry temperature; a fresh write
    /// also holds the first call to the `write` rule.
    async fn agent_turn(
        &self,
        role: &RoleSpec,
        system: &str,
        prompt: String,
        round: u32,
        attempt: Attempt,
        toolbox: &Toolbox,
    ) -> Result<Turn> {
        let limits = &self.env.limits;
        let max_steps = if limits.max_steps > 0 {
            limits.max_steps
        } else {
            role.max_steps
        };
        let max_tokens = if limits.max_tokens > 0 {
            limits.max_tokens
        } else {
            role.max_tokens
        };
        let grammar = self.env.roles.grammar(&role.grammar)?.to_string();
        let finish_grammar = self.env.roles.closing_grammar(&role.grammar, "finish")?;
        // A role that writes files and has not written one this turn closes with a write.
        let write_grammar = self
            .env
            .roles
            .closing_grammar(&role.grammar, "write")?
            .filter(|_| role.tools.iter().any(|t| t == "write_file"));
        // The writer ends a turn without a change only when it says so twice: small models
        // call `done` after rewriting a file as it was.
        let writes = role.kind == RoleKind::Writer;
        let mut wrote = false;
        // Whether a `done` without a change was already sent back once this turn.
        let mut pushed_back = false;
        // Whether the calls sample from now on (after a rewrite that changed nothing, or an
        // answer cut at the token limit: greedy decoding would give the same again).
        let mut sample = false;
        // Writes that changed nothing this turn: each one raises the sampling temperature a
        // step, since a small model shown a file copies it even when sampled.
        let mut unchanged_writes = 0u32;
        let retry_temperature = if role.sampling.retry_temperature > 0.0 {
            role.sampling.retry_temperature
        } else {
            REPEAT_TEMPERATURE
        };
        let retry = attempt != Attempt::First;
        let temperature = if retry && role.sampling.retry_temperature > 0.0 {
            role.sampling.retry_temperature
        } else {
            role.sampling.temperature
        };
        let agent = role.name.as_str();
        self.log(agent, round, "user", &prompt)?;
        let mut messages = vec![ChatMessage::system(system), ChatMessage::user(prompt)];
        let mut turn = Turn::default();
        // About three characters per token for code and prose; keep room for the answer.
        let mut budget_chars =
            (limits.ctx_tokens.max(512) as usize).saturating_sub(max_tokens as usize) * 3;
        let mut step = 0;
        // The previous answer, and how many times in a row it has come back unchanged.
        let mut last_text = String::new();
        let mut repeats = 0u32;
        // Answers cut at the token limit in a row: a small model that runs into the limit twice
        // is repeating itself (a list of assertions without end), and a third try costs as much.
        let mut cut_in_a_row = 0u32;
        while step < max_steps {
            step += 1;
            if self.emitter.cancel.is_cancelled() {
                turn.cancelled = true;
                return Ok(turn);
            }
            if self.out_of_time() {
                return Ok(turn);
            }
            fit(&mut messages, budget_chars);
            // The last step, or the step after a repeated call: the role's closing call.
            let closing = if step == 1 && attempt == Attempt::FreshWrite {
                write_grammar.as_ref()
            } else if step == max_steps || repeats >= 1 {
                write_grammar
                    .as_ref()
                    .filter(|_| !wrote)
                    .or(finish_grammar.as_ref())
            } else {
                None
            };
            // Greedy decoding answers the same conversation the same way: after the same call
            // three times in a row, sample (seeded, so a run is still reproducible).
            let temperature = if sample {
                let raised = UNCHANGED_STEP * unchanged_writes.saturating_sub(1) as f32;
                temperature
                    .max(retry_temperature)
                    .max((retry_temperature + raised).min(MAX_UNCHANGED_TEMPERATURE))
            } else if repeats >= 2 && closing.is_none() {
                temperature.max(REPEAT_TEMPERATURE)
            } else {
                temperature
            };
            let sampling = Sampling {
                temperature,
                top_p: role.sampling.top_p,
                top_k: role.sampling.top_k,
                seed: role
                    .sampling
                    .seed
                    .wrapping_add(round.wrapping_mul(1_000))
                    .wrapping_add(step),
                ..Sampling::greedy()
            };
            let request = GenerateRequest::chat(messages.clone())
                .with_max_tokens(max_tokens)
                .with_sampling(sampling)
                .with_constraint(Constraint::Gbnf(closing.unwrap_or(&grammar).clone()));
            let mut stream = self.env.backend.generate(request);
            let mut text = String::new();
            let mut finished: Option<(RequestStats, FinishReason)> = None;
            let mut failure: Option<crate::engine::Error> = None;
            loop {
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = self.emitter.cancel.agent_cancelled(agent) => {
                        // Dropping the stream cancels the request and frees its sequence.
                        drop(stream);
                        turn.cancelled = true;
                        self.emitter.emit(Some(agent), EventMsg::Warning {
                            message: format!("{agent}: turn cancelled"),
                        });
                        return Ok(turn);
                    }
                };
                match next {
                    Some(Ok(GenerateEvent::Delta { text: delta, .. })) => {
                        if !delta.is_empty() {
                            text.push_str(&delta);
                            self.emitter
                                .emit(Some(agent), EventMsg::AgentMessageDelta { delta });
                        }
                    }
                    Some(Ok(GenerateEvent::Done {
                        stats,
                        finish_reason,
                    })) => {
                        finished = Some((convert_stats(&stats), finish_reason));
                    }
                    Some(Err(e)) => failure = Some(e),
                    None => break,
                }
            }
            if let Some(e) = failure {
                match e {
                    crate::engine::Error::EngineStopped => return Err(Error::Engine(e)),
                    crate::engine::Error::PromptTooLong { .. }
                        if messages.len() > 2 || budget_chars > 2_000 =>
                    {
                        // Keep less history and try again (counts as a step).
                        budget_chars = budget_chars * 2 / 3;
                        self.emitter.emit(
                            Some(agent),
                            EventMsg::Warning {
                                message: format!(
                                    "{agent}: prompt too long for the context; keeping less history"
                                ),
                            },
                        );
                        continue;
                    }
                    other => {
                        self.emitter.emit(
                            Some(agent),
                            EventMsg::Warning {
                                message: format!("{agent}: model request failed: {other}"),
                            },
                        );
                        return Ok(turn);
                    }
                }
            }
            let Some((stats, reason)) = finished else {
                return Err(Error::Invariant(
                    "a generation stream ended without a terminal event".into(),
                ));
            };
            if reason == FinishReason::Cancelled {
                turn.cancelled = true;
                return Ok(turn);
            }
            self.emitter
                .emit(Some(agent), EventMsg::AgentMessage { text: text.clone() });
            self.emitter
                .emit(Some(agent), EventMsg::ModelRequestEnd { stats });
            self.log(agent, round, "assistant", &text)?;
            cut_in_a_row = if reason == FinishReason::Length {
                cut_in_a_row + 1
            } else {
                0
            };
            let call_id = self.emitter.next_call_id();
            let reply = match tools::parse_call(&text) {
                Err(msg) => {
                    let msg = if reason == FinishReason::Length {
                        // Greedy decoding would run into the limit the same way again.
                        sample = true;
                        format!(
                            "{msg} (the answer hit the limit of {max_tokens} tokens: write less, a shorter file or fewer and shorter tests)"
                        )
                    } else {
                        msg
                    };
                    self.emitter.emit(
                        Some(agent),
                        EventMsg::ToolCallBegin {
                            call_id: call_id.clone(),
                            tool: "invalid".into(),
                            arguments: json!({ "text": tools::clip(&text, 2_000) }),
                        },
                    );
                    let outcome = ToolOutcome::Failed(format!(
                        "{msg}. Answer with exactly one JSON tool call."
                    ));
                    self.emitter.emit(
                        Some(agent),
                        EventMsg::ToolCallEnd {
                            call_id,
                            ok: false,
                            output: outcome.for_model(),
                        },
                    );
                    outcome.for_model()
                }
                Ok((call, arguments)) => {
                    self.emitter.emit(
                        Some(agent),
                        EventMsg::ToolCallBegin {
                            call_id: call_id.clone(),
                            tool: call.name().to_string(),
                            arguments,
                        },
                    );
                    let allowed = role.tools.iter().any(|t| t == call.name());
                    let refused = match &call {
                        ToolCall::WriteFile { path, .. } | ToolCall::Edit { path, .. }
                            if allowed =>
                        {
                            role.may_write(path).err().map(|why| {
                                // Named where its tests would go, the model writes there.
                                match Some(new_test_path(path))
                                    .filter(|p| role.may_write(p).is_ok())
                                {
                                    Some(p) => format!(
                                        "{why}: write the tests for `{path}` to `{p}` instead; `{path}` stays as it is"
                                    ),
                                    None => why,
                                }
                            })
                        }
                        _ => None,
                    };
                    let outcome = match (&call, allowed, refused) {
                        (_, _, Some(why)) => {
                            // Greedy decoding would make the same call again.
                            sample = true;
                            ToolOutcome::Denied(why)
                        }
                        (ToolCall::Done { .. }, true, None) if writes && !wrote && !pushed_back => {
                            pushed_back = true;
                            ToolOutcome::Denied(format!(
                                "you have not changed any file this turn, so the task is not done yet. {}, then call `done`; call `done` again now only if the task needs no change.",
                                write_again(role.kind, &self.task)
                            ))
                        }
                        (ToolCall::Done { summary }, true, None) => {
                            turn.finished = true;
                            turn.summary = summary.clone();
                            ToolOutcome::Output("turn ended".into())
                        }
                        (ToolCall::Review { verdict, findings }, true, None) => {
                            turn.finished = true;
                            turn.verdict = Some(*verdict);
                            turn.findings = findings.clone();
                            for finding in findings {
                                self.emitter.emit(
                                    Some(agent),
                                    EventMsg::ReviewFinding {
                                        finding: finding.clone(),
                                    },
                                );
                            }
                            ToolOutcome::Output(format!("review recorded: {verdict:?}"))
                        }
                        _ => {
                            let outcome =
                                toolbox.run(&call, agent, &role.tools, self.emitter).await;
                            match (&call, outcome) {
                                (
                                    ToolCall::WriteFile { path, .. } | ToolCall::Edit { path, .. },
                                    ToolOutcome::Output(msg),
                                ) if edit::is_unchanged(&msg) => {
                                    // The file as it was. After a change this turn, or from a
                                    // tester (its tests stand as they are): the agent has
                                    // nothing more to change, so the turn ends (small models
                                    // rewrite a finished file until their step limit). A
                                    // writer's before any change: no progress; say so plainly
                                    // and sample from now on, since greedy decoding would write
                                    // the same again.
                                    sample = true;
                                    unchanged_writes += 1;
                                    if wrote || role.kind == RoleKind::Tester {
                                        turn.finished = true;
                                        turn.summary = format!("{path} written");
                                        ToolOutcome::Output(format!("{msg}; turn ended"))
                                    } else {
                                        ToolOutcome::Failed(format!(
                                            "{path} already has exactly this content: writing it as it is changes nothing, and the task is not done. {}.",
                                            write_again(role.kind, &self.task)
                                        ))
                                    }
                                }
                                (call, outcome) => {
                                    let written = outcome.ok()
                                        && matches!(
                                            call,
                                            ToolCall::WriteFile { .. } | ToolCall::Edit { .. }
                                        );
                                    wrote |= written;
                                    match outcome {
                                        ToolOutcome::Output(msg)
                                            if written && role.kind == RoleKind::Tester =>
                                        {
                                            ToolOutcome::Output(
                                                self.tests_after_write(msg, toolbox, agent).await,
                                            )
                                        }
                                        outcome => outcome,
                                    }
                                }
                            }
                        }
                    };
                    self.emitter.emit(
                        Some(agent),
                        EventMsg::ToolCallEnd {
                            call_id,
                            ok: outcome.ok(),
                            output: tools::clip(&outcome.for_model(), 4_000),
                        },
                    );
                    outcome.for_model()
                }
            };
            if turn.finished {
                return Ok(turn);
            }
            if cut_in_a_row >= MAX_CUT_IN_A_ROW {
                self.emitter.emit(
                    Some(agent),
                    EventMsg::Warning {
                        message: format!(
                            "{agent}: {MAX_CUT_IN_A_ROW} answers in a row hit the limit of {max_tokens} tokens; turn ended"
                        ),
                    },
                );
                return Ok(turn);
            }
            if text.trim() == last_text.trim() {
                repeats += 1;
            } else {
                repeats = 0;
                last_text = text.clone();
            }
            let reply = if repeats > 0 {
                format!(
                    "{reply}\n(You made exactly this call just before and got this answer. Do something else: a different call, or end your turn.)"
                )
            } else {
                reply
            };
            let reply = tools::clip(&reply, (budget_chars / 3).max(500));
            self.log(agent, round, "user", &reply)?;
            messages.push(ChatMessage::assistant(text));
            messages.push(ChatMessage::user(reply));
        }
        Ok(turn)
    }

    /// A tester's write, answered with the suite's result on the change: a small model's tests
    /// often fail for a reason of their own (a name they never import), and seeing the failure
    /// in its turn lets the tester fix its test before the round is judged on it. `msg` is the
    /// write's own answer; without a test command it is returned as it is.
    async fn tests_after_write(&self, msg: String, toolbox: &Toolbox, agent: &str) -> String {
        let Some(argv) = toolbox.exec.test_argv() else {
            return msg;
        };
        let display = toolbox.exec.test_command.clone().unwrap_or_default();
        match toolbox
            .run_unattended(argv, None, display.clone(), agent, self.emitter)
            .await
        {
            Ok((_, out)) if out.success() => {
                let run = TestRun::from_output(true, &out.output);
                format!("{msg}. With your tests, {}", run.describe())
            }
            Ok((_, out)) => format!(
                "{msg}. {}A failure that comes from a test itself (a name it uses is not defined or not imported, a wrong call, a syntax error) is yours: fix the test file. A test whose input and expected result you are sure of stays as it is even when the code gets it wrong: the writer fixes the code. Then call `done`.",
                test_failure(&display, &out, &toolbox.root)
            ),
            Err(outcome) => format!("{msg}. The tests could not run: {}", outcome.for_model()),
        }
    }

    fn log(&self, agent: &str, round: u32, role: &str, content: &str) -> Result<()> {
        self.transcript.append(&json!({
            "agent": agent, "round": round, "role": role, "content": content,
        }))
    }
}

/// What the writer is told of a failed test run: the command, how it ended, the condensed output.
fn test_failure(display: &str, out: &super::exec::ExecOutput, root: &std::path::Path) -> String {
    let how = match (out.timed_out, out.exit_code) {
        (true, _) => "timed out".to_string(),
        (false, Some(code)) => format!("exit code {code}"),
        (false, None) => "killed by a signal".to_string(),
    };
    format!(
        "The tests fail (`{display}`, {how}):\n{}\n",
        rounds::condense(&out.output, root, 2_000)
    )
}

/// What a role that writes files is told to do after a call that changed nothing.
fn write_again(kind: RoleKind, task: &str) -> String {
    match kind {
        RoleKind::Tester => {
            format!("Write a test file whose tests check what the task asks for (the task: {task})")
        }
        _ => format!("Write the file with the change the task asks for (the task: {task})"),
    }
}

/// Most bytes of changed files shown to the writer at the start of a round.
const CHANGED_FILES_LIMIT: usize = 12_000;

/// `{path, text}` of each file of the worktree that differs from `base`, as it is now, for the
/// writer's next round: its turn starts afresh, and a model that writes whole files needs what
/// it wrote last. Files that are gone, not text, or past [`CHANGED_FILES_LIMIT`] in all are left
/// out (the writer can still read them).
fn changed_files(worktree: &std::path::Path, base: &str) -> Vec<minijinja::Value> {
    let Ok(diff) = crate::git::worktree_diff(worktree, base) else {
        return Vec::new();
    };
    let mut room = CHANGED_FILES_LIMIT;
    diff.lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .filter_map(|path| {
            let text = std::fs::read_to_string(worktree.join(path)).ok()?;
            room = room.checked_sub(text.len())?;
            Some(minijinja::context! { path => path, text => text })
        })
        .collect()
}

/// Most bytes of existing test files shown to a tester.
const TEST_FILES_LIMIT: usize = 6_000;

/// For a role that writes tests (its `writable` globs), the existing test files that go with the
/// files `diff` changes, as `{path, text}` (at most two, within [`TEST_FILES_LIMIT`]): those whose
/// name holds a changed file's stem (`test_calc.py`, `calc_test.go` for `calc.py`, `calc.go`),
/// else those whose text names it; and the path to write tests to: the first of those, else the
/// conventional new test file for the first changed file. Empty for a role that may write
/// anywhere, or when the change touches only test files.
fn test_files_for(
    worktree: &std::path::Path,
    diff: &str,
    role: &RoleSpec,
) -> (Vec<minijinja::Value>, String) {
    if role.writable.is_empty() {
        return (Vec::new(), String::new());
    }
    let changed: Vec<&str> = diff
        .lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .filter(|p| role.may_write(p).is_err())
        .collect();
    let Some(first) = changed.first() else {
        return (Vec::new(), String::new());
    };
    let stem_of = |p: &str| {
        let name = p.rsplit('/').next().unwrap_or(p);
        name.split('.').next().unwrap_or(name).to_string()
    };
    let stems: Vec<String> = changed.iter().map(|p| stem_of(p)).collect();
    let tests: Vec<String> = super::search::list_files(worktree, None, 5_000)
        .into_iter()
        .filter(|p| role.may_write(p).is_ok())
        .collect();
    let by_name = tests
        .iter()
        .filter(|p| stems.iter().any(|s| stem_of(p).contains(s.as_str())));
    let by_text = tests.iter().filter(|p| {
        std::fs::read_to_string(worktree.join(p)).is_ok_and(|text| {
            stems.iter().any(|s| {
                text.lines()
                    .any(|l| l.contains("import") || l.contains("use ") || l.contains("require"))
                    && text.contains(s.as_str())
            })
        })
    });
    let mut picked: Vec<&String> = Vec::new();
    for p in by_name.chain(by_text) {
        if !picked.contains(&p) && picked.len() < 2 {
            picked.push(p);
        }
    }
    let mut room = TEST_FILES_LIMIT;
    let files: Vec<minijinja::Value> = picked
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(worktree.join(p)).ok()?;
            room = room.checked_sub(text.len())?;
            Some(minijinja::context! { path => p, text => text })
        })
        .collect();
    let path = picked
        .first()
        .map(|p| p.to_string())
        .unwrap_or_else(|| new_test_path(first));
    (files, path)
}

/// Where a new test file for `path` conventionally goes: `test_calc.py` beside `calc.py`,
/// `calc_test.go`, `calc.test.ts`, `tests/calc.rs`, else `tests/test_<name>`.
fn new_test_path(path: &str) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), path),
    };
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    match ext {
        "py" => format!("{dir}test_{stem}.py"),
        "go" => format!("{dir}{stem}_test.go"),
        "js" | "ts" | "jsx" | "tsx" | "mjs" => format!("{dir}{stem}.test.{ext}"),
        "rs" => format!("tests/{stem}.rs"),
        _ => format!("tests/test_{name}"),
    }
}

/// Whether every file the writer changed against the base (the testers' files aside) is
/// one of `shown`, the files the shared system prompt shows; false when it changed none.
fn saw_every_change(record: &TaskRecord, shown: &[String]) -> bool {
    let written: Vec<String> = head_of(&record.worktree)
        .map(|head| changed_paths(&record.worktree, &record.base, &head))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !record.tester_paths.contains(p))
        .collect();
    !written.is_empty() && written.iter().all(|p| shown.contains(p))
}

/// How an agent's turn starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// As the role's sampling says.
    First,
    /// After a round whose tests failed or that changed nothing: sampled at the role's retry
    /// temperature.
    Retry,
    /// A retry whose first call is the write (the `write` rule), for a writer that has seen
    /// the files it changed.
    FreshWrite,
}

/// The sampling temperature of an agent's call after it made the same call three times in a row.
const REPEAT_TEMPERATURE: f32 = 0.7;
/// Answers cut at the token limit in a row that end an agent's turn.
const MAX_CUT_IN_A_ROW: u32 = 2;
/// How much each further write that changed nothing raises the temperature, and up to where.
const UNCHANGED_STEP: f32 = 0.15;
const MAX_UNCHANGED_TEMPERATURE: f32 = 1.1;

/// `{name, usage}` of each tool of a role, for its prompt.
fn tool_usages(role: &RoleSpec) -> Vec<minijinja::Value> {
    role.tools
        .iter()
        .map(|t| minijinja::context! { name => t, usage => tools::usage(t) })
        .collect()
}

/// Drops the oldest call/result pairs (never the system prompt or the first user message) until
/// the conversation fits `budget` characters.
fn fit(messages: &mut Vec<ChatMessage>, budget: usize) {
    let size = |m: &[ChatMessage]| m.iter().map(|m| m.content.len() + 16).sum::<usize>();
    while messages.len() > 4 && size(messages) > budget {
        messages.drain(2..4);
    }
}

/// The paths added or changed (not deleted) between commits `from` and `to` of the worktree.
fn changed_paths(worktree: &std::path::Path, from: &str, to: &str) -> Vec<String> {
    let Ok(repo) = git2::Repository::open(worktree) else {
        return Vec::new();
    };
    let tree_of = |rev: &str| repo.revparse_single(rev).ok()?.peel_to_tree().ok();
    let Ok(diff) = repo.diff_tree_to_tree(tree_of(from).as_ref(), tree_of(to).as_ref(), None)
    else {
        return Vec::new();
    };
    diff.deltas()
        .filter(|d| d.status() != git2::Delta::Deleted)
        .filter_map(|d| {
            d.new_file()
                .path()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .collect()
}

/// A temporary directory with the files of commit `rev` of the worktree's repository, where each
/// of `paths` is instead as it is at commit `from` (left out when `from` has no such file).
/// Written from git objects, so neither the user's tree nor any index is touched; `None` when
/// the copy cannot be made.
fn commit_copy(
    worktree: &std::path::Path,
    rev: &str,
    paths: &[String],
    from: &str,
) -> Option<tempfile::TempDir> {
    let repo = git2::Repository::open(worktree).ok()?;
    let tree_of = |rev: &str| repo.revparse_single(rev).ok()?.peel_to_tree().ok();
    let dir = tempfile::Builder::new()
        .prefix("troupe-tests-")
        .tempdir()
        .ok()?;
    let write = |path: &std::path::Path, entry: &git2::TreeEntry<'_>| -> bool {
        let Ok(blob) = repo.find_blob(entry.id()) else {
            return false;
        };
        let ok = path
            .parent()
            .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
            && std::fs::write(path, blob.content()).is_ok();
        #[cfg(unix)]
        if ok && entry.filemode() == 0o100755 {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        }
        ok
    };
    let mut failed = false;
    tree_of(rev)?
        .walk(git2::TreeWalkMode::PreOrder, |parent, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                let rel = format!("{parent}{}", entry.name().unwrap_or_default());
                if !paths.contains(&rel) {
                    failed |= !write(&dir.path().join(rel), entry);
                }
            }
            git2::TreeWalkResult::Ok
        })
        .ok()?;
    let from_tree = tree_of(from)?;
    for p in paths {
        if let Ok(entry) = from_tree.get_path(std::path::Path::new(p))
            && entry.kind() == Some(git2::ObjectType::Blob)
        {
            failed |= !write(&dir.path().join(p), &entry);
        }
    }
    (!failed).then_some(dir)
}

/// A digest of `paths` as they are at commit `rev` (their blob ids; absent ones marked), so two
/// rounds can tell whether they ran the same tester-written tests. Empty for no paths.
fn files_digest(worktree: &std::path::Path, rev: &str, paths: &[String]) -> String {
    use sha2::Digest;
    if paths.is_empty() {
        return String::new();
    }
    let Ok(repo) = git2::Repository::open(worktree) else {
        return String::new();
    };
    let tree = repo
        .revparse_single(rev)
        .ok()
        .and_then(|o| o.peel_to_tree().ok());
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort();
    let mut hasher = sha2::Sha256::new();
    for p in sorted {
        let id = tree
            .as_ref()
            .and_then(|t| t.get_path(std::path::Path::new(p)).ok())
            .map_or_else(|| "-".to_string(), |e| e.id().to_string());
        hasher.update(format!("{p}\0{id}\n"));
    }
    hex::encode(&hasher.finalize()[..8])
}

/// `text` with its first letter upper-case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The commit at the worktree's HEAD.
fn head_of(worktree: &std::path::Path) -> Option<String> {
    let repo = git2::Repository::open(worktree).ok()?;
    let oid = repo.head().ok()?.target()?;
    Some(oid.to_string())
}

pub(crate) fn convert_stats(s: &crate::engine::RequestStats) -> RequestStats {
    let c = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    RequestStats {
        queue_ms: s.queue_ms,
        ttft_ms: s.ttft_ms,
        prompt_tokens: c(s.prompt_tokens),
        cached_tokens: c(s.cached_tokens),
        generated_tokens: c(s.generated_tokens),
        decode_tok_s: s.decode_tok_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tester_is_shown_the_test_files_of_the_changed_code_and_where_to_write() {
        let dir = crate::git::test_fixture(&[
            ("calc.py", "def add(a, b):\n    return a + b\n"),
            ("test_calc.py", "import calc\n"),
            ("test_other.py", "import other\n"),
            ("tests/test_api.py", "from calc import add\n"),
            ("other.py", "X = 1\n"),
        ]);
        let roles = crate::agents::roles::Roles::builtin().unwrap();
        let tester = roles.all().iter().find(|r| r.name == "tester").unwrap();
        let diff = "--- a/calc.py\n+++ b/calc.py\n@@ -1 +1 @@\n";
        let (files, path) = test_files_for(dir.path(), diff, tester);
        let paths: Vec<String> = files
            .iter()
            .map(|f| f.get_attr("path").unwrap().to_string())
            .collect();
        assert_eq!(paths, ["test_calc.py", "tests/test_api.py"]);
        assert_eq!(path, "test_calc.py");
        // No test file yet: the conventional new one.
        let diff = "--- /dev/null\n+++ b/pkg/new_mod.py\n@@ -0,0 +1 @@\n";
        let (files, path) = test_files_for(dir.path(), diff, tester);
        assert!(files.is_empty());
        assert_eq!(path, "pkg/test_new_mod.py");
        // A change to tests only, or a role that may write anywhere: nothing.
        let diff = "+++ b/test_calc.py\n";
        assert_eq!(test_files_for(dir.path(), diff, tester).1, "");
        let writer = roles.writer().unwrap();
        assert_eq!(test_files_for(dir.path(), "+++ b/calc.py\n", writer).1, "");
        assert_eq!(new_test_path("src/parse.go"), "src/parse_test.go");
        assert_eq!(new_test_path("web/app.ts"), "web/app.test.ts");
        assert_eq!(new_test_path("src/lib.rs"), "tests/lib.rs");
    }

    #[test]
    fn fitting_drops_the_oldest_exchanges_but_keeps_the_prompt() {
        let mut m = vec![
            ChatMessage::system("s".repeat(100)),
            ChatMessage::user("u".repeat(100)),
        ];
        for i in 0..10 {
            m.push(ChatMessage::assistant(format!("a{i}{}", "x".repeat(100))));
            m.push(ChatMessage::user(format!("r{i}{}", "x".repeat(100))));
        }
        fit(&mut m, 700);
        assert!(m.len() <= 6, "{}", m.len());
        assert_eq!(m[0].role, "system");
        assert!(m[1].content.starts_with('u'));
        assert!(m.last().unwrap().content.starts_with("r9"));
    }
}
