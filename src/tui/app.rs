//! The terminal UI's state and how it changes: [`App`] is updated by [`AppEvent`]s (session
//! events, keys, resizes, ticks) and answers with [`Op`]s for the session to run. No I/O here,
//! so every state is reproducible in tests by feeding events.

use std::collections::{HashMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::protocol::{Event, EventMsg, Finding, Op, TaskOutcome, TaskSummary};

/// Lines kept per agent pane; older ones are dropped.
const MAX_LINES: usize = 4000;

/// Lines of a command's output the tests pane shows (its end).
pub const OUTPUT_TAIL: usize = 20;

/// Everything the UI reacts to.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// An event from the session.
    Protocol(Event),
    /// A key press.
    Key(KeyEvent),
    /// The terminal changed size.
    Resize(u16, u16),
    /// Time passed (spinners).
    Tick,
    /// The session could not start: what went wrong and the fix.
    StartFailed {
        message: String,
        fix: Option<String>,
    },
}

/// Where keys go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Keys move focus, scroll and run commands.
    Normal,
    /// Typing a task.
    TaskInput,
    /// Typing a search query.
    SearchInput,
    /// The key help overlay.
    Help,
    /// The saved tasks overlay.
    Tasks,
    /// Asking to confirm an action.
    Confirm(Confirm),
}

/// Actions that need a yes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// Quit while work runs (it is cancelled; its state is saved).
    Quit,
    /// Delete a task's worktree and branch.
    Discard(String),
}

/// A pane that can take focus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pane {
    Agent(String),
    Diff,
    Tests,
    Review,
    Search,
}

impl Pane {
    /// The pane's title.
    pub fn title(&self) -> String {
        match self {
            Pane::Agent(name) => name.clone(),
            Pane::Diff => "diff".into(),
            Pane::Tests => "tests".into(),
            Pane::Review => "review".into(),
            Pane::Search => "search".into(),
        }
    }
}

/// What kind of text a pane line is, for colouring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Streamed model output.
    Text,
    /// A tool call the agent made.
    Call,
    /// A tool call that worked.
    Ok,
    /// A tool call or command that failed.
    Failed,
    /// A note from troupe (turn boundaries, cancellations).
    Note,
}

/// One line of an agent pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaneLine {
    pub kind: LineKind,
    pub text: String,
}

/// What an agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Has not started in this task.
    Idle,
    /// A model request is streaming.
    Streaming,
    /// Running a tool or command.
    Working,
    /// Its last turn ended.
    Done,
}

/// One agent's pane.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub name: String,
    pub lines: Vec<PaneLine>,
    pub state: AgentState,
    /// Tokens generated in this task (from finished requests).
    pub tokens: u64,
    /// Whether the last line is an open line of streamed text.
    open: bool,
}

impl AgentView {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            lines: Vec::new(),
            state: AgentState::Idle,
            tokens: 0,
            open: false,
        }
    }

    fn push(&mut self, kind: LineKind, text: &str) {
        self.open = false;
        for l in text.lines() {
            self.lines.push(PaneLine {
                kind,
                text: l.to_string(),
            });
        }
        self.trim();
    }

    fn stream(&mut self, delta: &str) {
        let mut parts = delta.split('\n');
        if let Some(first) = parts.next() {
            match self.lines.last_mut() {
                Some(last) if self.open => last.text.push_str(first),
                _ => self.lines.push(PaneLine {
                    kind: LineKind::Text,
                    text: first.to_string(),
                }),
            }
        }
        for p in parts {
            self.lines.push(PaneLine {
                kind: LineKind::Text,
                text: p.to_string(),
            });
        }
        self.open = true;
        self.trim();
    }

    fn trim(&mut self) {
        if self.lines.len() > MAX_LINES {
            let drop = self.lines.len() - MAX_LINES;
            self.lines.drain(..drop);
        }
    }
}

/// A command an agent (or troupe) ran, usually the tests.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRun {
    pub agent: String,
    pub command: String,
    /// `None` while it runs.
    pub result: Option<CommandResult>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub output: String,
}

/// A message for the user: an error with its fix, a warning or a note.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub level: Level,
    pub text: String,
    pub fix: Option<String>,
}

/// How serious a notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// A command waiting for the user's approval.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub call_id: String,
    pub agent: String,
    pub command: String,
}

/// The task on screen.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    /// The submission that started it (events carry it).
    pub sub_id: String,
    /// Known once `TaskStarted` arrives.
    pub task_id: Option<String>,
    pub text: String,
    pub round: u32,
    /// The last round's verdict and test result.
    pub approved: Option<bool>,
    pub tests_passed: Option<bool>,
    /// `None` while it runs.
    pub outcome: Option<TaskOutcome>,
    /// Reopened from its saved state (not running here).
    pub reopened: bool,
    /// Applied or discarded since.
    pub settled: Option<&'static str>,
}

/// The engine's figures for the status bar.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub active_sequences: u32,
    pub aggregate_tok_s: f64,
    pub cached_prompt_tokens: u64,
    pub kv_used: u32,
    pub kv_total: u32,
}

/// The index as the status bar shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexView {
    /// Not asked yet.
    Unknown,
    /// No index: search falls back to a scan.
    Missing,
    /// Exists; `stale` when the working tree changed since.
    Ready {
        stale: bool,
        files: u64,
        chunks: u64,
    },
    /// An update runs.
    Indexing {
        phase: String,
        done: u64,
        total: u64,
    },
}

/// How the session stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Startup {
    /// Loading the model.
    Loading,
    /// Serving.
    Ready,
    /// Could not start (the notice says why); only quitting, help and the saved tasks work.
    Failed,
}

/// A search hit for the search pane.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRow {
    pub path: String,
    pub start_line: u64,
    pub end_line: u64,
    pub symbol: String,
    pub snippet: String,
}

/// The terminal UI's whole state.
#[derive(Debug, Clone)]
pub struct App {
    pub startup: Startup,
    pub model: String,
    pub repo: String,
    pub mode: Mode,
    /// The text being typed (task or search).
    pub input: String,
    pub agents: Vec<AgentView>,
    pub task: Option<TaskView>,
    pub diff: String,
    pub commands: Vec<CommandRun>,
    pub findings: Vec<(String, Finding)>,
    pub search_query: String,
    pub search: Vec<SearchRow>,
    pub searching: bool,
    pub approvals: VecDeque<Approval>,
    pub notices: Vec<Notice>,
    pub metrics: Option<Metrics>,
    pub index: IndexView,
    pub saved_tasks: Vec<TaskSummary>,
    pub selected_task: usize,
    pub focus: Pane,
    pub zoomed: bool,
    /// Rows scrolled per pane (agent panes: up from the end; others: down from the top).
    pub scroll: HashMap<Pane, usize>,
    /// Whether colours are used (off with NO_COLOR).
    pub color: bool,
    pub width: u16,
    pub height: u16,
    pub ticks: u64,
    /// Set when the user confirmed quitting; the loop shuts the session down and exits.
    pub quit: bool,
    /// Whether anything changed since the last frame.
    pub dirty: bool,
    /// Requests from one-shot commands of other terminals (`troupe search`, `troupe ask`, ...)
    /// this session is serving; only the status bar mentions them.
    pub remote_requests: usize,
    next_id: u64,
    /// Asks running (id), so quitting knows work runs.
    asks: Vec<String>,
}

/// The agents shown before any event names them.
pub const DEFAULT_AGENTS: [&str; 3] = ["writer", "reviewer", "tester"];

impl App {
    /// A fresh UI, waiting for the session; `color` is false under NO_COLOR.
    pub fn new(color: bool) -> Self {
        Self {
            startup: Startup::Loading,
            model: String::new(),
            repo: String::new(),
            mode: Mode::Normal,
            input: String::new(),
            agents: DEFAULT_AGENTS.iter().map(|a| AgentView::new(a)).collect(),
            task: None,
            diff: String::new(),
            commands: Vec::new(),
            findings: Vec::new(),
            search_query: String::new(),
            search: Vec::new(),
            searching: false,
            approvals: VecDeque::new(),
            notices: Vec::new(),
            metrics: None,
            index: IndexView::Unknown,
            saved_tasks: Vec::new(),
            selected_task: 0,
            focus: Pane::Agent(DEFAULT_AGENTS[0].into()),
            zoomed: false,
            scroll: HashMap::new(),
            color,
            width: 80,
            height: 24,
            ticks: 0,
            quit: false,
            dirty: true,
            remote_requests: 0,
            next_id: 1,
            asks: Vec::new(),
        }
    }

    /// Whether a task (or another piece of work) is running.
    pub fn busy(&self) -> bool {
        self.task
            .as_ref()
            .is_some_and(|t| t.outcome.is_none() && !t.reopened)
            || !self.asks.is_empty()
    }

    /// The panes in focus order.
    pub fn panes(&self) -> Vec<Pane> {
        let mut p: Vec<Pane> = self
            .agents
            .iter()
            .map(|a| Pane::Agent(a.name.clone()))
            .collect();
        p.extend([Pane::Diff, Pane::Tests, Pane::Review]);
        if self.shows_search() {
            p.push(Pane::Search);
        }
        p
    }

    /// Whether the search pane is on screen.
    pub fn shows_search(&self) -> bool {
        self.searching || !self.search.is_empty() || !self.search_query.is_empty()
    }

    /// Applies one event; returns what to submit to the session.
    pub fn update(&mut self, event: AppEvent) -> Vec<Op> {
        self.dirty = true;
        match event {
            AppEvent::Protocol(e) => {
                self.on_protocol(e);
                Vec::new()
            }
            AppEvent::Key(k) => self.on_key(k),
            AppEvent::Resize(w, h) => {
                self.width = w;
                self.height = h;
                Vec::new()
            }
            AppEvent::Tick => {
                self.ticks += 1;
                // Only a spinner moves: redraw only when something is going on.
                self.dirty = self.busy()
                    || self.startup == Startup::Loading
                    || matches!(self.index, IndexView::Indexing { .. });
                Vec::new()
            }
            AppEvent::StartFailed { message, fix } => {
                self.startup = Startup::Failed;
                self.notices.push(Notice {
                    level: Level::Error,
                    text: message,
                    fix,
                });
                Vec::new()
            }
        }
    }

    /// A fresh submission id with `prefix`.
    pub fn next_id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}-{}", self.next_id);
        self.next_id += 1;
        id
    }

    fn agent_mut(&mut self, name: &str) -> &mut AgentView {
        let i = match self.agents.iter().position(|a| a.name == name) {
            Some(i) => i,
            None => {
                self.agents.push(AgentView::new(name));
                self.agents.len() - 1
            }
        };
        &mut self.agents[i]
    }

    fn is_current(&self, e: &Event) -> bool {
        self.task.as_ref().is_some_and(|t| t.sub_id == e.id)
    }

    fn reset_task_view(&mut self) {
        for a in &mut self.agents {
            *a = AgentView::new(&a.name);
        }
        self.diff.clear();
        self.commands.clear();
        self.findings.clear();
        self.approvals.clear();
        self.scroll.clear();
    }

    fn on_protocol(&mut self, e: Event) {
        let agent = e.agent.clone().unwrap_or_else(|| "troupe".into());
        // Events of other submissions (an earlier task still winding down) only feed the
        // notices; the panes show the current task.
        let current = self.is_current(&e);
        match e.msg {
            EventMsg::SessionConfigured { model, repo } => {
                self.startup = Startup::Ready;
                self.model = model;
                self.repo = repo;
            }
            EventMsg::TaskStarted { task_id, text } => {
                if let Some(t) = self.task.as_mut().filter(|_| current) {
                    t.task_id = Some(task_id);
                    t.text = text;
                }
            }
            EventMsg::TaskComplete {
                task_id,
                outcome,
                rounds,
                kept,
            } => {
                if let Some(t) = self.task.as_mut().filter(|_| current) {
                    t.outcome = Some(outcome);
                    t.round = rounds;
                    for a in &mut self.agents {
                        if a.state != AgentState::Idle {
                            a.state = AgentState::Done;
                        }
                    }
                    self.approvals.clear();
                    let what = match outcome {
                        TaskOutcome::Converged => "converged",
                        TaskOutcome::BudgetExhausted => "not converged: the budget ran out",
                        TaskOutcome::Cancelled => "cancelled",
                        TaskOutcome::Failed => "failed",
                    };
                    self.note(
                        Level::Info,
                        format!(
                            "task {task_id} {what} after {rounds} round(s); a: apply, D: discard"
                        ),
                        None,
                    );
                    if let Some(k) = kept {
                        self.note(Level::Info, format!("keeps {}", k.reason), None);
                    }
                }
            }
            EventMsg::AgentMessageDelta { delta } if current => {
                let a = self.agent_mut(&agent);
                a.state = AgentState::Streaming;
                a.stream(&delta);
            }
            EventMsg::AgentMessage { .. } if current => {
                let a = self.agent_mut(&agent);
                a.open = false;
                a.state = AgentState::Working;
            }
            EventMsg::ModelRequestEnd { stats } if current => {
                self.agent_mut(&agent).tokens += u64::from(stats.generated_tokens);
            }
            EventMsg::ToolCallBegin {
                tool, arguments, ..
            } if current => {
                let args = one_line(&arguments.to_string(), 200);
                let a = self.agent_mut(&agent);
                a.state = AgentState::Working;
                a.push(LineKind::Call, &format!("▶ {tool} {args}"));
            }
            EventMsg::ToolCallEnd { ok, output, .. } if current => {
                let a = self.agent_mut(&agent);
                if ok {
                    a.push(LineKind::Ok, &format!("✓ {}", one_line(&output, 200)));
                } else {
                    a.push(LineKind::Failed, &format!("✗ {}", one_line(&output, 200)));
                }
            }
            EventMsg::ApprovalRequest { call_id, command } => {
                self.approvals.push_back(Approval {
                    call_id,
                    agent,
                    command,
                });
            }
            EventMsg::ExecCommandBegin { command, .. } if current => {
                self.agent_mut(&agent)
                    .push(LineKind::Call, &format!("$ {command}"));
                self.commands.push(CommandRun {
                    agent,
                    command,
                    result: None,
                });
            }
            EventMsg::ExecCommandEnd {
                exit_code,
                timed_out,
                output,
                duration_ms,
                ..
            } if current => {
                let ok = exit_code == Some(0) && !timed_out;
                let status = status_text(exit_code, timed_out);
                self.agent_mut(&agent).push(
                    if ok { LineKind::Ok } else { LineKind::Failed },
                    &format!("  -> {status}"),
                );
                if let Some(run) = self
                    .commands
                    .iter_mut()
                    .rev()
                    .find(|r| r.agent == agent && r.result.is_none())
                {
                    run.result = Some(CommandResult {
                        exit_code,
                        timed_out,
                        duration_ms,
                        output,
                    });
                }
            }
            EventMsg::RoundComplete {
                round,
                approved,
                tests_passed,
                ..
            } if current => {
                if let Some(t) = self.task.as_mut() {
                    t.round = round;
                    t.approved = Some(approved);
                    t.tests_passed = tests_passed;
                }
                for a in &mut self.agents {
                    if a.state != AgentState::Idle {
                        a.push(LineKind::Note, &format!("── round {round} ended ──"));
                    }
                }
            }
            EventMsg::TaskApplied { task_id } => {
                if let Some(t) = self.task.as_mut() {
                    t.settled = Some("applied");
                }
                self.note(
                    Level::Info,
                    format!(
                        "task {task_id} applied to your working tree (not staged, not committed)"
                    ),
                    None,
                );
            }
            EventMsg::RoundReverted {
                round,
                kept_round,
                reason,
                ..
            } => self.note(
                Level::Warning,
                format!("round {round} undone, back to round {kept_round}: {reason}"),
                None,
            ),
            EventMsg::TaskDiscarded { task_id } => {
                if let Some(t) = self.task.as_mut() {
                    t.settled = Some("discarded");
                }
                self.note(
                    Level::Info,
                    format!("task {task_id} discarded: its worktree and branch are deleted"),
                    None,
                );
            }
            EventMsg::DiffUpdated { diff } if current => self.diff = diff,
            EventMsg::ReviewFinding { finding } if current => {
                self.findings.push((agent, finding));
            }
            EventMsg::SearchResults { results } => {
                self.searching = false;
                self.search = results.iter().map(search_row).collect();
                self.scroll.remove(&Pane::Search);
            }
            EventMsg::IndexProgress { phase, done, total } => {
                self.index = IndexView::Indexing { phase, done, total };
            }
            EventMsg::EngineMetrics {
                active_sequences,
                aggregate_tok_s,
                cached_prompt_tokens,
                kv_used,
                kv_total,
            } => {
                self.metrics = Some(Metrics {
                    active_sequences,
                    aggregate_tok_s,
                    cached_prompt_tokens,
                    kv_used,
                    kv_total,
                });
            }
            EventMsg::Warning { message } => {
                self.note(Level::Warning, format!("[{agent}] {message}"), None);
            }
            EventMsg::Error { message, fix } => {
                if e.id.starts_with("search") {
                    self.searching = false;
                }
                // An error before the task started ends it (nothing more comes for it).
                if let Some(t) = self.task.as_mut().filter(|_| current)
                    && t.task_id.is_none()
                {
                    t.outcome = Some(TaskOutcome::Failed);
                }
                self.note(Level::Error, message, fix);
            }
            EventMsg::AskComplete { .. } => self.asks.retain(|a| *a != e.id),
            EventMsg::ShutdownComplete => self.quit = true,
            EventMsg::TaskList { tasks } => {
                self.saved_tasks = tasks;
                self.selected_task = 0;
            }
            EventMsg::TaskOpened { task, events } => self.reopen(task, events),
            EventMsg::IndexState {
                exists,
                stale,
                files,
                chunks,
            } => {
                self.index = if exists {
                    IndexView::Ready {
                        stale,
                        files,
                        chunks,
                    }
                } else {
                    IndexView::Missing
                };
            }
            // Stream events of a task that is not on screen.
            EventMsg::AgentMessageDelta { .. }
            | EventMsg::AgentMessage { .. }
            | EventMsg::ModelRequestEnd { .. }
            | EventMsg::ToolCallBegin { .. }
            | EventMsg::ToolCallEnd { .. }
            | EventMsg::ExecCommandBegin { .. }
            | EventMsg::ExecCommandEnd { .. }
            | EventMsg::RoundComplete { .. }
            | EventMsg::DiffUpdated { .. }
            | EventMsg::ReviewFinding { .. } => {}
            // The terminal UI starts no change reviews (`troupe review` is headless).
            EventMsg::ReviewStarted { .. }
            | EventMsg::ReviewProgress { .. }
            | EventMsg::ReviewComplete { .. } => {}
            // Editor one-shots (`explain`, `edit`) are not started from the terminal UI.
            EventMsg::ExplainComplete { .. } | EventMsg::EditComplete { .. } => {}
            // Raw completions and embeddings are `troupe serve`'s.
            EventMsg::CompletionDelta { .. }
            | EventMsg::CompletionComplete { .. }
            | EventMsg::CompletionRejected { .. }
            | EventMsg::Embeddings { .. } => {}
        }
    }

    /// Shows a saved task from its event log.
    fn reopen(&mut self, task: TaskSummary, events: Vec<Event>) {
        self.reset_task_view();
        let sub_id = format!("reopened:{}", task.id);
        self.task = Some(TaskView {
            sub_id: sub_id.clone(),
            task_id: Some(task.id.clone()),
            text: task.text.clone(),
            round: task.rounds_done,
            approved: None,
            tests_passed: None,
            outcome: None,
            reopened: true,
            settled: None,
        });
        for mut e in events {
            // The log holds every run of the task under its own submission ids.
            e.id = sub_id.clone();
            // Approvals and errors of the past are not for now.
            if matches!(
                e.msg,
                EventMsg::ApprovalRequest { .. }
                    | EventMsg::Error { .. }
                    | EventMsg::Warning { .. }
            ) {
                continue;
            }
            let was_complete = matches!(e.msg, EventMsg::TaskComplete { .. });
            if was_complete {
                if let EventMsg::TaskComplete {
                    outcome, rounds, ..
                } = e.msg
                    && let Some(t) = self.task.as_mut()
                {
                    t.outcome = Some(outcome);
                    t.round = rounds;
                }
                continue;
            }
            self.on_protocol(e);
        }
        for a in &mut self.agents {
            if a.state != AgentState::Idle {
                a.state = AgentState::Done;
            }
        }
        self.note(
            Level::Info,
            format!(
                "reopened task {} ({}); R: resume, a: apply, D: discard",
                task.id, task.status
            ),
            None,
        );
    }

    fn note(&mut self, level: Level, text: String, fix: Option<String>) {
        self.notices.push(Notice { level, text, fix });
        if self.notices.len() > 50 {
            self.notices.remove(0);
        }
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Op> {
        if key.kind == KeyEventKind::Release {
            self.dirty = false;
            return Vec::new();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            return self.ask_quit();
        }
        match self.mode.clone() {
            Mode::TaskInput | Mode::SearchInput => self.on_input_key(key),
            Mode::Help => {
                self.mode = Mode::Normal;
                Vec::new()
            }
            Mode::Tasks => self.on_tasks_key(key),
            Mode::Confirm(what) => {
                self.mode = Mode::Normal;
                match (key.code, what) {
                    (KeyCode::Char('y') | KeyCode::Char('Y'), Confirm::Quit) => {
                        self.quit = true;
                        vec![Op::Interrupt]
                    }
                    (KeyCode::Char('y') | KeyCode::Char('Y'), Confirm::Discard(task_id)) => {
                        vec![Op::DiscardTask { task_id }]
                    }
                    _ => Vec::new(),
                }
            }
            Mode::Normal => self.on_normal_key(key),
        }
    }

    fn ask_quit(&mut self) -> Vec<Op> {
        if self.busy() {
            self.mode = Mode::Confirm(Confirm::Quit);
        } else {
            self.quit = true;
        }
        Vec::new()
    }

    fn on_input_key(&mut self, key: KeyEvent) -> Vec<Op> {
        match key.code {
            KeyCode::Esc => {
                self.mode = Mode::Normal;
                self.input.clear();
            }
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Enter => {
                let text = self.input.trim().to_string();
                let mode = std::mem::replace(&mut self.mode, Mode::Normal);
                self.input.clear();
                if text.is_empty() {
                    return Vec::new();
                }
                return match mode {
                    Mode::SearchInput => {
                        self.search_query = text.clone();
                        self.search.clear();
                        self.searching = true;
                        self.focus = Pane::Search;
                        vec![Op::Search {
                            query: text,
                            limit: Some(20),
                            mode: None,
                            files: false,
                        }]
                    }
                    _ => self.start_task(text),
                };
            }
            KeyCode::Char(c) => self.input.push(c),
            _ => {}
        }
        Vec::new()
    }

    fn start_task(&mut self, text: String) -> Vec<Op> {
        if self.busy() {
            self.note(
                Level::Warning,
                "a task is running; cancel it with c before starting another".into(),
                None,
            );
            return Vec::new();
        }
        self.reset_task_view();
        let sub_id = self.next_id("task");
        self.task = Some(TaskView {
            sub_id,
            task_id: None,
            text: text.clone(),
            round: 0,
            approved: None,
            tests_passed: None,
            outcome: None,
            reopened: false,
            settled: None,
        });
        self.focus = Pane::Agent(DEFAULT_AGENTS[0].into());
        vec![Op::UserTask {
            text,
            max_rounds: None,
        }]
    }

    fn on_tasks_key(&mut self, key: KeyEvent) -> Vec<Op> {
        let n = self.saved_tasks.len();
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('t') => self.mode = Mode::Normal,
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected_task = self.selected_task.saturating_sub(1);
            }
            KeyCode::Down | KeyCode::Char('j') if n > 0 => {
                self.selected_task = (self.selected_task + 1).min(n - 1);
            }
            KeyCode::Enter => {
                if let Some(t) = self.saved_tasks.get(self.selected_task) {
                    let task_id = t.id.clone();
                    self.mode = Mode::Normal;
                    if self.busy() {
                        self.note(
                            Level::Warning,
                            "a task is running; cancel it with c before reopening another".into(),
                            None,
                        );
                        return Vec::new();
                    }
                    return vec![Op::OpenTask { task_id }];
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Vec<Op> {
        let shift = key.modifiers.contains(KeyModifiers::SHIFT);
        match key.code {
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('q') => return self.ask_quit(),
            KeyCode::Esc => {
                if self.zoomed {
                    self.zoomed = false;
                } else {
                    self.notices.clear();
                }
            }
            KeyCode::Char('n') | KeyCode::Char('i') => {
                if self.startup == Startup::Ready {
                    self.mode = Mode::TaskInput;
                    self.input.clear();
                } else {
                    self.not_ready();
                }
            }
            KeyCode::Char('/') => {
                if self.startup == Startup::Ready {
                    self.mode = Mode::SearchInput;
                    self.input.clear();
                } else {
                    self.not_ready();
                }
            }
            KeyCode::Char('t') => {
                self.mode = Mode::Tasks;
                if self.startup == Startup::Ready {
                    return vec![Op::ListTasks];
                }
                self.not_ready();
            }
            KeyCode::Tab => self.move_focus(1),
            KeyCode::BackTab => self.move_focus(-1),
            KeyCode::Right | KeyCode::Char('l') if !shift => self.move_focus(1),
            KeyCode::Left | KeyCode::Char('h') => self.move_focus(-1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_by(1),
            KeyCode::PageUp => self.scroll_by(-10),
            KeyCode::PageDown => self.scroll_by(10),
            KeyCode::Home | KeyCode::Char('g') => self.scroll_to(true),
            KeyCode::End | KeyCode::Char('G') => self.scroll_to(false),
            KeyCode::Char('z') | KeyCode::Enter => self.zoomed = !self.zoomed,
            KeyCode::Char('c') => {
                if self.busy() {
                    self.note(Level::Info, "cancelling the task...".into(), None);
                    return vec![Op::Interrupt];
                }
            }
            KeyCode::Char('x') => {
                if let (Pane::Agent(agent), true) = (&self.focus, self.busy()) {
                    let agent = agent.clone();
                    self.note(
                        Level::Info,
                        format!("cancelling {agent}'s current turn..."),
                        None,
                    );
                    return vec![Op::CancelAgent { agent }];
                }
            }
            KeyCode::Char('y') | KeyCode::Char('r') => {
                if let Some(a) = self.approvals.pop_front() {
                    let approved = key.code == KeyCode::Char('y');
                    return vec![Op::Approval {
                        call_id: a.call_id,
                        approved,
                    }];
                }
            }
            KeyCode::Char('a') => {
                if let Some(task_id) = self.finished_task() {
                    return vec![Op::ApplyTask { task_id }];
                }
            }
            KeyCode::Char('D') => {
                if let Some(task_id) = self.finished_task() {
                    self.mode = Mode::Confirm(Confirm::Discard(task_id));
                }
            }
            KeyCode::Char('R') => {
                if let Some((task_id, text)) = self
                    .task
                    .as_ref()
                    .filter(|t| t.reopened)
                    .and_then(|t| Some((t.task_id.clone()?, t.text.clone())))
                {
                    let sub_id = self.next_id("resume");
                    self.reset_task_view();
                    self.task = Some(TaskView {
                        sub_id,
                        task_id: Some(task_id.clone()),
                        text,
                        round: 0,
                        approved: None,
                        tests_passed: None,
                        outcome: None,
                        reopened: false,
                        settled: None,
                    });
                    return vec![Op::ResumeTask { task_id }];
                }
            }
            KeyCode::Char('I') => {
                if self.startup == Startup::Ready {
                    self.index = IndexView::Indexing {
                        phase: "starting".into(),
                        done: 0,
                        total: 0,
                    };
                    return vec![Op::UpdateIndex];
                }
            }
            _ => self.dirty = false,
        }
        Vec::new()
    }

    fn not_ready(&mut self) {
        let text = match self.startup {
            Startup::Loading => "the model is still loading",
            _ => "troupe could not start; see the error above",
        };
        self.note(Level::Warning, text.into(), None);
    }

    /// The task on screen, when it has ended (so it can be applied or discarded).
    fn finished_task(&mut self) -> Option<String> {
        let t = self.task.as_ref()?;
        if t.settled.is_some() {
            return None;
        }
        if t.outcome.is_none() && !t.reopened {
            self.note(
                Level::Warning,
                "the task is still running; wait for it to end or cancel it with c".into(),
                None,
            );
            return None;
        }
        t.task_id.clone()
    }

    fn move_focus(&mut self, by: i32) {
        let panes = self.panes();
        let i = panes.iter().position(|p| *p == self.focus).unwrap_or(0) as i32;
        let n = panes.len() as i32;
        if let Some(p) = panes.get(((i + by).rem_euclid(n)) as usize) {
            self.focus = p.clone();
        }
    }

    /// Scrolls the focused pane: `by` < 0 shows earlier lines.
    fn scroll_by(&mut self, by: i32) {
        let from_end = matches!(self.focus, Pane::Agent(_));
        let max = self.content_len(&self.focus);
        let s = self.scroll.entry(self.focus.clone()).or_insert(0);
        let delta = if from_end { -by } else { by };
        *s = if delta < 0 {
            s.saturating_sub(delta.unsigned_abs() as usize)
        } else {
            s.saturating_add(delta as usize)
        }
        .min(max);
    }

    fn scroll_to(&mut self, top: bool) {
        let from_end = matches!(self.focus, Pane::Agent(_));
        let v = if top == from_end {
            self.content_len(&self.focus)
        } else {
            0
        };
        self.scroll.insert(self.focus.clone(), v);
    }

    /// Lines of content in a pane (the most it can scroll).
    fn content_len(&self, pane: &Pane) -> usize {
        match pane {
            Pane::Agent(name) => self
                .agents
                .iter()
                .find(|a| a.name == *name)
                .map_or(0, |a| a.lines.len()),
            Pane::Diff => self.diff.lines().count(),
            Pane::Tests => self
                .commands
                .iter()
                .map(|c| {
                    2 + c
                        .result
                        .as_ref()
                        .map_or(0, |r| r.output.lines().count().min(OUTPUT_TAIL))
                })
                .sum(),
            Pane::Review => 1 + self.findings.len() * 3,
            Pane::Search => 1 + self.search.len() * 2,
        }
    }
}

/// How a command ended, in words.
pub fn status_text(exit_code: Option<i32>, timed_out: bool) -> String {
    match (timed_out, exit_code) {
        (true, _) => "timed out, killed".to_string(),
        (false, Some(c)) => format!("exit {c}"),
        (false, None) => "killed".to_string(),
    }
}

/// Text on one line, cut at `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

fn search_row(v: &serde_json::Value) -> SearchRow {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    SearchRow {
        path: s("path"),
        start_line: v["start_line"].as_u64().unwrap_or(0),
        end_line: v["end_line"].as_u64().unwrap_or(0),
        symbol: s("symbol"),
        snippet: s("snippet"),
    }
}
