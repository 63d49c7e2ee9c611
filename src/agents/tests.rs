//! Agent tests that need a model: a scripted back end for exact behaviour (malformed calls,
//! failed edits, escaping paths, hanging commands, interruption and resume), and the real tiny
//! model (SmolLM2-135M) end to end.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::roles::Roles;
use super::session::{Session, SessionOptions};
use super::store::{self, TaskStatus, TaskStore};
use crate::config::Config;
use crate::engine::stream::GenerationStream;
use crate::engine::{
    Backend, FinishReason, GenerateEvent, GenerateRequest, Prompt, RequestId, RequestStats,
};
use crate::protocol::{Event, EventMsg, Op, Submission, TaskOutcome};

/// Answers each role from its own script (the role is read from the first user message); an
/// exhausted script answers `done` (or `approve`). `hang_after` makes every request after that
/// many never answer (a process about to be killed).
struct Scripted {
    scripts: Mutex<HashMap<&'static str, VecDeque<String>>>,
    requests: Mutex<Vec<GenerateRequest>>,
    hang_after: Option<usize>,
    hung: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<crate::engine::Result<GenerateEvent>>>>,
}

impl Scripted {
    fn new(scripts: &[(&'static str, &[&str])]) -> Arc<Self> {
        Arc::new(Self {
            scripts: Mutex::new(
                scripts
                    .iter()
                    .map(|(r, s)| (*r, s.iter().map(|x| x.to_string()).collect()))
                    .collect(),
            ),
            requests: Mutex::new(Vec::new()),
            hang_after: None,
            hung: Mutex::new(Vec::new()),
        })
    }

    fn role_of(request: &GenerateRequest) -> &'static str {
        let Prompt::Messages(m) = &request.prompt else {
            return "writer";
        };
        let first = &m[1].content;
        if first.contains("You are the REVIEWER") {
            "reviewer"
        } else if first.contains("You are the TESTER") {
            "tester"
        } else {
            "writer"
        }
    }
}

/// The role of every request the back end was sent, in order.
fn roles_asked(backend: &Scripted) -> Vec<&'static str> {
    backend
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(Scripted::role_of)
        .collect()
}

/// See [`Scripted`]'s `generate`.
const CUT: &str = "<cut at the token limit>";

impl Backend for Scripted {
    fn generate(&self, request: GenerateRequest) -> GenerationStream {
        let role = Self::role_of(&request);
        let n = {
            let mut r = self.requests.lock().unwrap();
            r.push(request);
            r.len()
        };
        let (tx, stream) = GenerationStream::channel(RequestId(n as u64), Box::new(|| {}));
        if self.hang_after.is_some_and(|h| n > h) {
            self.hung.lock().unwrap().push(tx);
            return stream;
        }
        let text = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(role)
            .and_then(|q| q.pop_front())
            .unwrap_or_else(|| match role {
                "reviewer" => r#"{"tool": "review", "verdict": "approve", "findings": []}"#.into(),
                _ => r#"{"tool": "done", "summary": "finished"}"#.into(),
            });
        // An answer ending in CUT stands for one cut at the token limit.
        let (text, finish_reason) = match text.strip_suffix(CUT) {
            Some(cut) => (cut.to_string(), FinishReason::Length),
            None => (text, FinishReason::Stop),
        };
        let _ = tx.send(Ok(GenerateEvent::Delta {
            text,
            tokens: vec![],
        }));
        let _ = tx.send(Ok(GenerateEvent::Done {
            stats: RequestStats::default(),
            finish_reason,
        }));
        stream
    }

    fn cancel(&self, _id: RequestId) {}

    fn describe(&self) -> String {
        "scripted".into()
    }
}

pub(crate) use crate::git::test_fixture as fixture;

const CALC: &str = "def add(a, b):\n    return a - b\n";
const TEST_CALC: &str = "import unittest\n\nfrom calc import add\n\n\nclass TestAdd(unittest.TestCase):\n    def test_zero(self):\n        self.assertEqual(add(0, 0), 0)\n";

fn calc_repo() -> tempfile::TempDir {
    fixture(&[
        ("calc.py", CALC),
        ("test_calc.py", TEST_CALC),
        ("AGENTS.md", "Keep functions small.\n"),
    ])
}

/// The user's side of the repository: every file outside `.git` and `.troupe` with its bytes,
/// plus HEAD, the index file and the list of branches other than troupe's.
/// Files with their bytes, HEAD, the index file's bytes, the user's branches.
type UserState = (Vec<(String, Vec<u8>)>, String, Vec<u8>, Vec<String>);

fn user_state(root: &Path) -> UserState {
    let mut files: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            !e.path().starts_with(root.join(".git")) && !e.path().starts_with(root.join(".troupe"))
        })
        .map(|e| {
            (
                e.path().strip_prefix(root).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    let repo = git2::Repository::open(root).unwrap();
    let head = repo.head().unwrap().target().unwrap().to_string();
    let index = std::fs::read(root.join(".git/index")).unwrap_or_default();
    let mut branches: Vec<String> = repo
        .branches(Some(git2::BranchType::Local))
        .unwrap()
        .flatten()
        .filter_map(|(b, _)| b.name().ok().flatten().map(str::to_string))
        .filter(|n| !n.starts_with("troupe/"))
        .collect();
    branches.sort();
    (files, head, index, branches)
}

fn config(test_command: &str, max_rounds: u32) -> Config {
    let mut c = Config::default();
    c.agents.test_command = test_command.into();
    c.agents.max_rounds = max_rounds;
    c.agents.command_timeout_secs = 20;
    c
}

fn session(backend: Arc<dyn Backend>, repo: &Path, config: Config) -> Session {
    let options = SessionOptions {
        repo: repo.to_path_buf(),
        config,
        config_dir: None,
    };
    Session::with_backend(backend, "test".into(), Roles::builtin().unwrap(), options)
}

/// Submits `op`, reads events until the task completes (then shuts the session down) or until
/// `limit` passes (a failure).
/// Runs one task from `text` to its end (no round limit override).
async fn run_task(session: &mut Session, text: &str, limit: Duration) -> Vec<Event> {
    let op = Op::UserTask {
        text: text.into(),
        max_rounds: None,
    };
    run_to_end(session, op, limit).await
}

async fn run_to_end(session: &mut Session, op: Op, limit: Duration) -> Vec<Event> {
    session
        .submit(Submission {
            id: "s1".into(),
            op,
        })
        .unwrap();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, session.next_event())
            .await
            .unwrap_or_else(|_| panic!("no end within {limit:?}; events so far: {events:#?}"));
        let Some(event) = event else { break };
        if matches!(event.msg, EventMsg::TaskComplete { .. })
            || (matches!(event.msg, EventMsg::Error { .. }) && event.id == "s1")
        {
            session
                .submit(Submission {
                    id: "bye".into(),
                    op: Op::Shutdown,
                })
                .unwrap();
        }
        let end = matches!(event.msg, EventMsg::ShutdownComplete);
        events.push(event);
        if end {
            break;
        }
    }
    events
}

/// Exactly one TaskStarted first and one TaskComplete last (among task events; the session's
/// own events, such as its engine figures, come at any time), Begin/End pairs matched by call
/// id and closed, every event one JSON line. Returns the outcome.
pub(crate) fn check_events(events: &[Event]) -> TaskOutcome {
    let task: Vec<&Event> = events
        .iter()
        .filter(|e| {
            !matches!(
                e.msg,
                EventMsg::SessionConfigured { .. }
                    | EventMsg::ShutdownComplete
                    | EventMsg::EngineMetrics { .. }
            )
        })
        .collect();
    assert!(
        matches!(
            task.first().map(|e| &e.msg),
            Some(EventMsg::TaskStarted { .. })
        ),
        "{task:#?}"
    );
    let completes: Vec<_> = task
        .iter()
        .filter(|e| matches!(e.msg, EventMsg::TaskComplete { .. }))
        .collect();
    assert_eq!(completes.len(), 1, "exactly one TaskComplete");
    let Some(EventMsg::TaskComplete { outcome, .. }) = task.last().map(|e| &e.msg) else {
        panic!("TaskComplete is the last task event: {:#?}", task.last());
    };
    assert_eq!(
        task.iter()
            .filter(|e| matches!(e.msg, EventMsg::TaskStarted { .. }))
            .count(),
        1
    );
    let mut open_tools = std::collections::HashSet::new();
    let mut open_execs = std::collections::HashSet::new();
    for e in &task {
        let line = serde_json::to_string(e).unwrap();
        assert!(!line.contains('\n'));
        match &e.msg {
            EventMsg::ToolCallBegin { call_id, .. } => {
                assert!(open_tools.insert(call_id.clone()), "duplicate {call_id}")
            }
            EventMsg::ToolCallEnd { call_id, .. } => {
                assert!(open_tools.remove(call_id), "end without begin {call_id}")
            }
            EventMsg::ExecCommandBegin { call_id, .. } => {
                assert!(open_execs.insert(call_id.clone()))
            }
            EventMsg::ExecCommandEnd { call_id, .. } => assert!(open_execs.remove(call_id)),
            _ => {}
        }
    }
    assert!(open_tools.is_empty(), "unclosed tool calls {open_tools:?}");
    assert!(open_execs.is_empty(), "unclosed commands {open_execs:?}");
    *outcome
}

fn task_id(events: &[Event]) -> String {
    events
        .iter()
        .find_map(|e| match &e.msg {
            EventMsg::TaskStarted { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .unwrap()
}

fn tool_ends(events: &[Event], agent: &str) -> Vec<(bool, String)> {
    events
        .iter()
        .filter(|e| e.agent.as_deref() == Some(agent))
        .filter_map(|e| match &e.msg {
            EventMsg::ToolCallEnd { ok, output, .. } => Some((*ok, output.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn malformed_calls_failed_edits_and_escaping_paths_go_back_to_the_model() {
    let dir = calc_repo();
    let before = user_state(dir.path());
    let backend = Scripted::new(&[
        (
            "writer",
            &[
                "I think we should fix the add function.",
                r#"{"tool": "write_file", "path": "calc.py"}"#,
                &write("../evil.py", "import os\n"),
                r#"{"tool": "read_file", "path": "/etc/passwd"}"#,
                r#"{"tool": "review", "verdict": "approve", "findings": []}"#,
                r#"{"tool": "edit", "path": "calc.py", "search": "a - b", "replace": "a + b"}"#,
                &write("calc.py", &calc("a + b")),
                r#"{"tool": "done", "summary": "fixed add"}"#,
            ],
        ),
        (
            "tester",
            &[&write(
                "test_calc.py",
                "import unittest\n\nfrom calc import add\n\n\nclass TestAddMore(unittest.TestCase):\n    def test_two(self):\n        self.assertEqual(add(1, 1), 2)\n",
            )],
        ),
        (
            "reviewer",
            &[
                r#"{"tool": "diff"}"#,
                r#"{"tool": "review", "verdict": "approve", "findings": [{"file": "calc.py", "start_line": 2, "end_line": 2, "severity": "info", "category": "style", "title": "fine", "explanation": "ok", "suggestion": "", "confidence": 0.5}]}"#,
            ],
        ),
    ]);
    let mut s = session(
        backend.clone(),
        dir.path(),
        config("python3 -m unittest -q", 2),
    );
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let writer = tool_ends(&events, "writer");
    assert!(
        !writer[0].0 && writer[0].1.contains("expected one JSON object"),
        "{writer:?}"
    );
    assert!(
        !writer[1].0
            && writer[1]
                .1
                .contains("needs the file's complete content in a fenced block"),
        "{writer:?}"
    );
    assert!(
        writer[2].1.starts_with("DENIED") && writer[2].1.contains("`..`"),
        "{writer:?}"
    );
    assert!(
        writer[3].1.starts_with("DENIED") && writer[3].1.contains("absolute"),
        "{writer:?}"
    );
    assert!(writer[4].1.contains("may not use `review`"), "{writer:?}");
    // `edit` is a tool, but not one of the built-in writer's.
    assert!(
        writer[5].1.starts_with("DENIED") && writer[5].1.contains("may not use `edit`"),
        "{writer:?}"
    );
    assert!(writer[6].0, "{writer:?}");
    assert!(!dir.path().parent().unwrap().join("evil.py").exists());
    // The model saw each error as the next user message.
    let requests = backend.requests.lock().unwrap();
    let Prompt::Messages(m) = &requests[1].prompt else {
        panic!()
    };
    assert!(
        m.last()
            .unwrap()
            .content
            .starts_with("ERROR: expected one JSON object")
    );
    // The reviewer's finding came out in the fixed schema.
    assert!(events.iter().any(|e| matches!(&e.msg,
        EventMsg::ReviewFinding { finding } if finding.file == "calc.py" && finding.title == "fine")));
    // The tester's new test fails on the base code (checked in a copy) and passes after.
    assert!(events.iter().any(|e| matches!(
        e.msg,
        EventMsg::RoundComplete {
            tests_fail_before: Some(true),
            tests_passed: Some(true),
            ..
        }
    )));
    // Tests ran in the worktree and passed; the change and the tests are on the task branch.
    assert!(events.iter().any(|e| matches!(
        e.msg,
        EventMsg::ExecCommandEnd {
            exit_code: Some(0),
            ..
        }
    )));
    let id = task_id(&events);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    assert_eq!(record.status, TaskStatus::Converged);
    assert!(record.worktree.join("calc.py").is_file());
    let diff = store::task_diff(dir.path(), &record).unwrap();
    assert!(diff.contains("+    return a + b"), "{diff}");
    assert!(diff.contains("TestAddMore"), "{diff}");
    // The user's tree, index, HEAD and branches are untouched.
    assert_eq!(user_state(dir.path()), before);
    // Everything was persisted as it happened.
    let logged = TaskStore::new(dir.path()).events(&id).unwrap();
    let task_events = events
        .iter()
        .filter(|e| {
            !matches!(
                e.msg,
                EventMsg::SessionConfigured { .. } | EventMsg::ShutdownComplete
            )
        })
        .count();
    assert_eq!(logged.len(), task_events);
    let transcript =
        std::fs::read_to_string(TaskStore::new(dir.path()).transcript_path(&id)).unwrap();
    assert!(
        transcript.contains("Keep functions small."),
        "AGENTS.md is in the context"
    );

    // Applying brings the change into the user's working tree, and only there.
    store::apply_task(dir.path(), &id).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("calc.py")).unwrap(),
        "def add(a, b):\n    return a + b\n"
    );
    let (_, head, _, _) = user_state(dir.path());
    assert_eq!(head, before.1);
    store::discard_task(dir.path(), &id).unwrap();
    assert!(!record.worktree.exists());
    assert!(
        git2::Repository::open(dir.path())
            .unwrap()
            .find_branch(&record.branch, git2::BranchType::Local)
            .is_err()
    );
}

#[tokio::test]
async fn a_test_command_that_hangs_is_killed_and_the_task_ends_at_its_budget() {
    let dir = calc_repo();
    let backend = Scripted::new(&[("writer", &[&write("calc.py", &calc("a + b"))])]);
    let mut c = config("sleep 60", 1);
    c.agents.command_timeout_secs = 1;
    let mut s = session(backend, dir.path(), c);
    let started = std::time::Instant::now();
    let events = run_task(&mut s, "fix add", Duration::from_secs(30)).await;
    assert_eq!(check_events(&events), TaskOutcome::BudgetExhausted);
    assert!(events.iter().any(|e| matches!(
        e.msg,
        EventMsg::ExecCommandEnd {
            timed_out: true,
            exit_code: None,
            ..
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e.msg,
        EventMsg::RoundComplete {
            tests_passed: Some(false),
            approved: true,
            ..
        }
    )));
    // Two runs of the hanging command at most (the tester's turn runs none here).
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_task_killed_mid_round_is_resumed_from_its_saved_state() {
    let dir = calc_repo();
    // The first "process": the writer edits, then the model never answers again; its runtime is
    // then torn down without any task getting to record an end, as when the process is killed.
    let mut first = Scripted::new(&[("writer", &[&write("calc.py", &calc("a + b"))])]);
    Arc::get_mut(&mut first).unwrap().hang_after = Some(1);
    let rt1 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let id = rt1.block_on(async {
        let mut s = session(
            first.clone(),
            dir.path(),
            config("python3 -m unittest -q", 2),
        );
        s.submit(Submission {
            id: "s1".into(),
            op: Op::UserTask {
                text: "fix add".into(),
                max_rounds: None,
            },
        })
        .unwrap();
        let mut id = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while id.is_none() || first.requests.lock().unwrap().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer's second request comes"
            );
            if let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(100), s.next_event()).await
                && let EventMsg::TaskStarted { task_id, .. } = e.msg
            {
                id = Some(task_id);
            }
        }
        std::mem::forget(s);
        id
    });
    rt1.shutdown_background();
    let id = id.unwrap();
    let store = TaskStore::new(dir.path());
    let record = store.load(&id).unwrap();
    assert_eq!(record.status, TaskStatus::Running);
    assert_eq!(record.rounds_done, 0);
    assert!(
        std::fs::read_to_string(record.worktree.join("calc.py"))
            .unwrap()
            .contains("a + b"),
        "the edit made before the kill is in the worktree"
    );

    let rt2 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt2.block_on(resume_and_check(dir.path(), &id));
}

async fn resume_and_check(root: &Path, id: &str) {
    let store = TaskStore::new(root);
    let id = id.to_string();
    let second = Scripted::new(&[]);
    let mut s = session(second, root, config("python3 -m unittest -q", 2));
    let events = run_to_end(
        &mut s,
        Op::ResumeTask {
            task_id: id.clone(),
        },
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let record = store.load(&id).unwrap();
    assert_eq!(record.status, TaskStatus::Converged);
    assert!(
        store::task_diff(root, &record)
            .unwrap()
            .contains("+    return a + b")
    );
    let logged = store.events(&id).unwrap();
    let count = |f: fn(&EventMsg) -> bool| logged.iter().filter(|e| f(&e.msg)).count();
    assert_eq!(count(|m| matches!(m, EventMsg::TaskStarted { .. })), 2);
    assert_eq!(count(|m| matches!(m, EventMsg::TaskComplete { .. })), 1);

    // A finished task is not resumed again; an unknown one is named.
    let mut s = session(Scripted::new(&[]), root, config("", 1));
    let events = run_to_end(
        &mut s,
        Op::ResumeTask {
            task_id: "nope".into(),
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(events.iter().any(|e| matches!(&e.msg,
        EventMsg::Error { message, .. } if message.contains("no task `nope`"))));
}

#[tokio::test]
async fn an_interrupt_cancels_the_task_cleanly() {
    let dir = calc_repo();
    let mut backend = Scripted::new(&[]);
    Arc::get_mut(&mut backend).unwrap().hang_after = Some(0);
    let mut s = session(backend.clone(), dir.path(), config("", 3));
    s.submit(Submission {
        id: "s1".into(),
        op: Op::UserTask {
            text: "fix add".into(),
            max_rounds: None,
        },
    })
    .unwrap();
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while backend.requests.lock().unwrap().is_empty() {
        all.push(
            tokio::time::timeout_at(deadline, s.next_event())
                .await
                .expect("a request is made")
                .unwrap(),
        );
    }
    all.extend(run_to_end(&mut s, Op::Interrupt, Duration::from_secs(20)).await);
    assert_eq!(check_events(&all), TaskOutcome::Cancelled);
    let id = task_id(&all);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled);
}

/// Runs "Fix add in calc.py" on a real model (`model`) in a fresh calc repository with a small
/// budget, checks what every real-model run must do (the task ends cleanly, its events well
/// formed; the shared prefix reused from the KV cache; the worktree on branch `troupe/<id>`; the
/// user's checkout byte for byte as it was) and returns the events and the worktree's calc.py.
async fn fix_add_on(model: std::path::PathBuf, max_tokens: u32) -> (Vec<Event>, String) {
    let dir = calc_repo();
    let before = user_state(dir.path());
    let mut options = crate::engine::EngineOptions::new(model);
    options.n_parallel = 4;
    options.ctx_per_seq = 2048;
    options.n_threads = Some(2);
    let engine = crate::engine::testutil::start(options).await;
    let mut c = config("python3 -m unittest -q", 1);
    c.agents.max_steps = 3;
    c.agents.max_tokens = max_tokens;
    c.engine.ctx_per_seq = 2048;
    let mut s = session(Arc::new(engine), dir.path(), c);
    let events = run_task(
        &mut s,
        "Fix add in calc.py so it returns the sum.",
        // A guard against a hang, not a speed check: the other model tests share the cores.
        Duration::from_secs(240),
    )
    .await;
    let outcome = check_events(&events);
    assert!(
        matches!(
            outcome,
            TaskOutcome::Converged | TaskOutcome::BudgetExhausted
        ),
        "{outcome:?}"
    );
    let stats: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.msg {
            EventMsg::ModelRequestEnd { stats } => Some(stats.clone()),
            _ => None,
        })
        .collect();
    assert!(stats.len() >= 2, "{events:#?}");
    assert!(
        stats.iter().skip(1).any(|s| s.cached_tokens > 0),
        "the shared prefix is reused from the KV cache: {stats:?}"
    );
    let id = task_id(&events);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    let repo = git2::Repository::open(dir.path()).unwrap();
    assert!(
        repo.find_branch(&record.branch, git2::BranchType::Local)
            .is_ok()
    );
    assert_eq!(record.branch, format!("troupe/{id}"));
    assert_eq!(user_state(dir.path()), before);
    let calc = std::fs::read_to_string(record.worktree.join("calc.py")).unwrap();
    (events, calc)
}

/// The real tiny model, end to end. It cannot follow the tool protocol (it copies its prompt into
/// the file it writes, past the token limit): every answer it gives goes back to it as an error,
/// and the task still ends cleanly at its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_model_ends_cleanly_at_its_budget_in_a_worktree() {
    let (events, _) = fix_add_on(crate::engine::testutil::test_model(), 48).await;
    // Every answer became a tool call: a parsed one, or `invalid` with the error it got back.
    let answers = events
        .iter()
        .filter(|e| matches!(e.msg, EventMsg::AgentMessage { .. }))
        .count();
    let calls = events
        .iter()
        .filter(|e| matches!(e.msg, EventMsg::ToolCallBegin { .. }))
        .count();
    assert_eq!(answers, calls, "{events:#?}");
}

/// The default chat model (Qwen2.5-Coder-0.5B-Instruct): `TROUPE_CODER_MODEL`, else the user
/// cache. Fails (never skips) with the fix when it is missing. The agents' end-to-end test needs a
/// model that follows the tool protocol; the tiny test model copies the prompt into its files.
fn coder_model() -> std::path::PathBuf {
    let path = std::env::var_os("TROUPE_CODER_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            crate::paths::models_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        });
    assert!(
        path.is_file(),
        "model {} is missing; run scripts/test.sh (it fetches it) or set TROUPE_CODER_MODEL",
        path.display()
    );
    path
}

/// The real default model, end to end: the writer changes the code in its worktree with parsed
/// tool calls, then the reviewer and tester run concurrently on one engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_model_changes_the_code_in_a_worktree_and_the_task_ends_cleanly() {
    let (events, calc) = fix_add_on(coder_model(), 128).await;
    let parsed = events
        .iter()
        .filter(|e| matches!(&e.msg, EventMsg::ToolCallBegin { tool, .. } if tool != "invalid"))
        .count();
    assert!(parsed > 0, "no parseable tool call: {events:#?}");
    assert_ne!(
        calc, CALC,
        "calc.py is unchanged in the worktree: {events:#?}"
    );
}

#[tokio::test]
async fn a_command_the_user_does_not_approve_is_denied_and_the_writer_alone_converges() {
    let dir = calc_repo();
    let backend = Scripted::new(&[(
        "writer",
        &[
            r#"{"tool": "run_tests"}"#,
            &write("calc.py", &calc("a + b")),
        ],
    )]);
    let mut c = config("python3 -m unittest -q", 1);
    c.agents.approval = true;
    c.agents.roles = vec!["writer".into()];
    let mut s = session(backend.clone(), dir.path(), c);
    s.submit(Submission {
        id: "s1".into(),
        op: Op::UserTask {
            text: "fix add".into(),
            max_rounds: None,
        },
    })
    .unwrap();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = tokio::time::timeout_at(deadline, s.next_event())
            .await
            .expect("the task ends")
            .unwrap();
        match &e.msg {
            // Deny the writer's test run (troupe's own run of the tests asks nobody).
            EventMsg::ApprovalRequest { call_id, .. } => s
                .submit(Submission {
                    id: "a".into(),
                    op: Op::Approval {
                        call_id: call_id.clone(),
                        approved: false,
                    },
                })
                .unwrap(),
            EventMsg::TaskComplete { .. } => s
                .submit(Submission {
                    id: "bye".into(),
                    op: Op::Shutdown,
                })
                .unwrap(),
            _ => {}
        }
        let end = matches!(e.msg, EventMsg::ShutdownComplete);
        events.push(e);
        if end {
            break;
        }
    }
    // No reviewer or tester took part: approval is not asked for, the tests decide.
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.agent.as_deref(), Some("reviewer")))
    );
    let writer = tool_ends(&events, "writer");
    assert!(
        writer[0].1.starts_with("DENIED: the user did not approve"),
        "{writer:?}"
    );
}

#[tokio::test]
async fn a_cancelled_one_shot_request_drops_its_model_stream_and_says_so() {
    let dir = calc_repo();
    let backend = Arc::new(Scripted {
        hang_after: Some(0),
        ..Arc::into_inner(Scripted::new(&[])).unwrap()
    });
    let mut session = session(backend.clone(), dir.path(), config("true", 1));
    let explain = Op::Explain {
        file: "calc.py".into(),
        range: None,
        content: None,
    };
    session
        .submit(Submission {
            id: "x1".into(),
            op: explain,
        })
        .unwrap();
    // Wait until the request reaches the model (and hangs there).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while backend.hung.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the model was asked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    session
        .submit(Submission {
            id: "c1".into(),
            op: Op::Cancel { id: "x1".into() },
        })
        .unwrap();
    let event = loop {
        let e = tokio::time::timeout_at(deadline, session.next_event())
            .await
            .expect("an answer to the cancelled request")
            .expect("the session runs");
        if e.id == "x1" {
            break e;
        }
    };
    match event.msg {
        EventMsg::Error { message, .. } => assert!(message.contains("cancelled"), "{message}"),
        other => panic!("expected the cancellation, got {other:?}"),
    }
    assert!(
        backend.hung.lock().unwrap().iter().all(|tx| tx.is_closed()),
        "the model stream was dropped"
    );
}

/// `add` is wrong on the base commit and its one test says so.
fn sum_repo() -> tempfile::TempDir {
    fixture(&[
        ("calc.py", CALC),
        (
            "test_calc.py",
            "import unittest\n\nfrom calc import add\n\n\nclass TestAdd(unittest.TestCase):\n    def test_sum(self):\n        self.assertEqual(add(2, 3), 5)\n",
        ),
    ])
}

/// `python3 -B`: no `__pycache__` in the worktree, so its files are exactly the committed ones.
const UNITTEST: &str = "python3 -B -m unittest -q";

fn review(severity: &str, title: &str) -> String {
    format!(
        r#"{{"tool": "review", "verdict": "request_changes", "findings": [{{"file": "calc.py", "start_line": 2, "end_line": 2, "severity": "{severity}", "category": "bug", "title": "{title}", "explanation": "see the title", "suggestion": "", "confidence": 0.9}}]}}"#
    )
}

/// A `write_file` call as the grammar has the model write it: the JSON object, then the file's
/// content in a fenced block.
fn write(path: &str, content: &str) -> String {
    format!(
        "{}\n```python\n{content}```",
        serde_json::json!({"tool": "write_file", "path": path})
    )
}

/// calc.py with `add` returning `body`.
fn calc(body: &str) -> String {
    format!("def add(a, b):\n    return {body}\n")
}

/// Every file of a worktree (not `.git`) with its bytes.
fn files_of(worktree: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(worktree)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path() != worktree.join(".git"))
        .map(|e| {
            (
                e.path()
                    .strip_prefix(worktree)
                    .unwrap()
                    .display()
                    .to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Every file of a commit's tree with its bytes.
fn files_of_commit(repo: &Path, commit: &str) -> Vec<(String, Vec<u8>)> {
    let repo = git2::Repository::open(repo).unwrap();
    let tree = repo
        .revparse_single(commit)
        .unwrap()
        .peel_to_tree()
        .unwrap();
    let mut out = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if let Ok(blob) = repo.find_blob(entry.id()) {
            out.push((
                format!("{dir}{}", entry.name().unwrap()),
                blob.content().to_vec(),
            ));
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    out.sort();
    out
}

fn round_commit(events: &[Event], n: u32) -> String {
    events
        .iter()
        .find_map(|e| match &e.msg {
            EventMsg::RoundComplete { round, commit, .. } if *round == n => commit.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("round {n} has a commit: {events:#?}"))
}

fn reverts(events: &[Event]) -> Vec<(u32, u32, String)> {
    events
        .iter()
        .filter_map(|e| match &e.msg {
            EventMsg::RoundReverted {
                round,
                kept_round,
                reason,
                ..
            } => Some((*round, *kept_round, reason.clone())),
            _ => None,
        })
        .collect()
}

fn kept(events: &[Event]) -> Option<crate::protocol::KeptRound> {
    events.iter().find_map(|e| match &e.msg {
        EventMsg::TaskComplete { kept, .. } => kept.clone(),
        _ => None,
    })
}

/// The rule a request's grammar starts from: `root`, or the closing rule (`finish`, `write`) the
/// orchestrator made its root.
fn root_rule(request: &GenerateRequest) -> &'static str {
    let Some(crate::engine::Constraint::Gbnf(g)) = &request.constraint else {
        panic!(
            "every call is grammar-constrained: {:?}",
            request.constraint
        );
    };
    ["finish", "write"]
        .into_iter()
        .find(|rule| g.contains(&format!("\nroot ::= {rule}\n")))
        .unwrap_or("root")
}

/// The writer's first message of each round (its prompt), in order.
/// Each `RoundComplete`'s round and whether its tests passed.
fn round_tests(events: &[Event]) -> Vec<(u32, Option<bool>)> {
    events
        .iter()
        .filter_map(|e| match &e.msg {
            EventMsg::RoundComplete {
                round,
                tests_passed,
                ..
            } => Some((*round, *tests_passed)),
            _ => None,
        })
        .collect()
}

fn writer_prompts(backend: &Scripted) -> Vec<String> {
    backend
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| Scripted::role_of(r) == "writer")
        .filter_map(|r| match &r.prompt {
            Prompt::Messages(m) if m.len() == 2 => Some(m[1].content.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn rounds_that_break_passing_tests_are_undone_and_the_task_ends_with_the_best_rounds_files() {
    let dir = sum_repo();
    let backend = Scripted::new(&[
        (
            "writer",
            &[
                // Round 1: the right fix.
                &write("calc.py", &calc("a + b")),
                r#"{"tool": "done", "summary": "add returns the sum"}"#,
                // Round 2: "addressing" the review breaks it.
                &write("calc.py", &calc("a * b")),
                r#"{"tool": "done", "summary": "multiply"}"#,
                // Round 3: breaks it another way and adds a file.
                &write("calc.py", &calc("a + b + 1")),
                &write("helper.py", "ONE = 1\n"),
                r#"{"tool": "done", "summary": "off by one"}"#,
            ],
        ),
        // Round 1's change gets a high-severity finding, so the task goes on.
        ("reviewer", &[&review("high", "add may overflow")]),
    ]);
    let mut s = session(backend.clone(), dir.path(), config(UNITTEST, 3));
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    assert_eq!(check_events(&events), TaskOutcome::BudgetExhausted);
    let tests = round_tests(&events);
    assert_eq!(
        tests,
        vec![(1, Some(true)), (2, Some(false)), (3, Some(false))]
    );
    // Both breaking rounds were undone at once, back to round 1, and said why.
    let undone = reverts(&events);
    assert_eq!(
        undone.iter().map(|(r, k, _)| (*r, *k)).collect::<Vec<_>>(),
        vec![(2, 1), (3, 1)],
        "{undone:?}"
    );
    assert!(
        undone[0]
            .2
            .contains("round 2: the tests fail (1 of 1 fail)")
            && undone[0]
                .2
                .contains("round 1 was better: the tests pass (1 passed)"),
        "{undone:?}"
    );
    // Round 3 started from round 1's code (its edit of `a + b` applied) and the writer heard
    // what happened, with round 1's review again.
    let prompts = writer_prompts(&backend);
    assert_eq!(prompts.len(), 3, "{prompts:#?}");
    assert!(
        prompts[2].contains("Your change in round 2 was undone")
            && prompts[2].contains("back as they were after round 1")
            && prompts[2].contains("add may overflow"),
        "{}",
        prompts[2]
    );
    assert!(tool_ends(&events, "writer").iter().all(|(ok, _)| *ok));

    // The task ends with exactly round 1's files: the test-breaking edits and the added file are
    // gone, on the branch and in the worktree.
    let id = task_id(&events);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    let round1 = round_commit(&events, 1);
    assert_eq!(
        files_of(&record.worktree),
        files_of_commit(dir.path(), &round1)
    );
    assert_eq!(
        files_of_commit(dir.path(), &record.branch),
        files_of_commit(dir.path(), &round1)
    );
    assert!(!record.worktree.join("helper.py").exists());
    let diff = store::task_diff(dir.path(), &record).unwrap();
    assert!(diff.contains("+    return a + b"), "{diff}");
    assert!(!diff.contains("helper.py"), "{diff}");

    // The record and the last event say which round was kept and why.
    assert_eq!(record.status, TaskStatus::BudgetExhausted);
    assert_eq!(record.kept_round, Some(1));
    assert!(
        record
            .kept_reason
            .starts_with("round 1: the tests pass (1 passed)")
            && record.kept_reason.contains("high-severity"),
        "{}",
        record.kept_reason
    );
    assert_eq!(
        record
            .rounds
            .iter()
            .map(|r| (r.round, r.reverted_to))
            .collect::<Vec<_>>(),
        vec![(1, None), (2, Some(1)), (3, Some(1))]
    );
    let kept = kept(&events).expect("TaskComplete names the kept round");
    assert_eq!((kept.round, kept.reason), (1, record.kept_reason.clone()));
    // The undoing is in the persisted event log too.
    let logged = TaskStore::new(dir.path()).events(&id).unwrap();
    assert_eq!(reverts(&logged).len(), 2);
}

#[tokio::test]
async fn a_task_stopped_mid_round_keeps_its_best_round_and_commits_the_unfinished_edits() {
    let dir = sum_repo();
    let mut backend = Scripted::new(&[
        (
            "writer",
            &[
                // Round 1: the right fix, which passes the tests.
                &write("calc.py", &calc("a + b")),
                r#"{"tool": "done", "summary": "add returns the sum"}"#,
                // Round 2 breaks it; then the writer's next call never answers.
                &write("calc.py", &calc("a * b")),
            ],
        ),
        ("reviewer", &[&review("high", "add may overflow")]),
    ]);
    // Round 1 makes four requests (two writer calls, the reviewer, the tester); round 2's
    // writer makes one, and its second hangs.
    Arc::get_mut(&mut backend).unwrap().hang_after = Some(5);
    let mut s = session(backend.clone(), dir.path(), config(UNITTEST, 3));
    s.submit(Submission {
        id: "s1".into(),
        op: Op::UserTask {
            text: "make add return the sum".into(),
            max_rounds: None,
        },
    })
    .unwrap();
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while backend.requests.lock().unwrap().len() < 6 {
        all.push(
            tokio::time::timeout_at(deadline, s.next_event())
                .await
                .expect("round 2's writer makes its second request")
                .unwrap(),
        );
    }
    all.extend(run_to_end(&mut s, Op::Interrupt, Duration::from_secs(20)).await);
    assert_eq!(check_events(&all), TaskOutcome::Cancelled);

    // The task ends with round 1's files, not round 2's half-done edit, and says so.
    let id = task_id(&all);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    let round1 = round_commit(&all, 1);
    assert_eq!(
        files_of(&record.worktree),
        files_of_commit(dir.path(), &round1)
    );
    assert_eq!(
        files_of_commit(dir.path(), &record.branch),
        files_of_commit(dir.path(), &round1)
    );
    let undone = reverts(&all);
    assert_eq!(
        undone.iter().map(|(r, k, _)| (*r, *k)).collect::<Vec<_>>(),
        vec![(2, 1)],
        "{undone:?}"
    );
    assert_eq!(record.status, TaskStatus::Cancelled);
    assert_eq!(record.kept_round, Some(1));
    assert!(
        record
            .kept_reason
            .starts_with("round 1: the tests pass (1 passed)")
            && record
                .kept_reason
                .contains("round 2 was stopped before it ended"),
        "{}",
        record.kept_reason
    );
    assert_eq!(kept(&all).map(|k| k.round), Some(1));

    // Round 2's unfinished edit is not lost: it is the branch's commit before the restore.
    let repo = git2::Repository::open(dir.path()).unwrap();
    let tip = repo
        .revparse_single(&record.branch)
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let interrupted = tip.parent(0).unwrap();
    assert!(
        interrupted
            .message()
            .unwrap()
            .starts_with("troupe: round 2 (interrupted)"),
        "{:?}",
        interrupted.message()
    );
    let blob = interrupted
        .tree()
        .unwrap()
        .get_path(Path::new("calc.py"))
        .unwrap()
        .to_object(&repo)
        .unwrap()
        .peel_to_blob()
        .unwrap();
    assert!(
        String::from_utf8_lossy(blob.content()).contains("return a * b"),
        "the unfinished edit is in the interrupted commit"
    );
}

#[tokio::test]
async fn a_first_round_that_passes_the_tests_with_no_high_finding_ends_the_task() {
    let dir = sum_repo();
    let backend = Scripted::new(&[
        (
            "writer",
            &[
                &write("calc.py", &calc("a + b")),
                r#"{"tool": "done", "summary": "add returns the sum"}"#,
                // Never reached: the task ends after round 1.
                &write("calc.py", &calc("a * b")),
            ],
        ),
        // A medium finding and "request_changes": not enough to hold back tested code.
        (
            "reviewer",
            &[&review("medium", "name the parameters better")],
        ),
    ]);
    let mut s = session(backend.clone(), dir.path(), config(UNITTEST, 3));
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let rounds = events
        .iter()
        .filter(|e| matches!(e.msg, EventMsg::RoundComplete { .. }))
        .count();
    assert_eq!(rounds, 1);
    assert_eq!(writer_prompts(&backend).len(), 1, "no second writer round");
    assert!(reverts(&events).is_empty());
    let kept = kept(&events).expect("TaskComplete names the kept round");
    assert_eq!(kept.round, 1);
    assert_eq!(
        kept.reason,
        "round 1: the tests pass (1 passed) and no reviewer reports a high-severity finding"
    );
    let id = task_id(&events);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    assert_eq!(record.status, TaskStatus::Converged);
    assert_eq!(record.rounds_done, 1);
    assert_eq!(record.kept_round, Some(1));
    assert_eq!(
        std::fs::read_to_string(record.worktree.join("calc.py")).unwrap(),
        "def add(a, b):\n    return a + b\n"
    );
}

#[tokio::test]
async fn a_high_finding_on_passing_code_gets_another_round_and_an_equally_tested_answer_is_kept() {
    let dir = sum_repo();
    let backend = Scripted::new(&[
        (
            "writer",
            &[
                &write("calc.py", &calc("a + b")),
                r#"{"tool": "done", "summary": "add returns the sum"}"#,
                &write(
                    "calc.py",
                    "def add(a, b):\n    \"\"\"The sum of a and b.\"\"\"\n    return a + b\n",
                ),
                r#"{"tool": "done", "summary": "documented"}"#,
            ],
        ),
        // An approval does not wave a high-severity finding through.
        (
            "reviewer",
            &[&review("high", "undocumented").replace("request_changes", "approve")],
        ),
    ]);
    let mut s = session(backend.clone(), dir.path(), config(UNITTEST, 3));
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let prompts = writer_prompts(&backend);
    assert_eq!(prompts.len(), 2);
    assert!(
        prompts[1]
            .contains("Reviewer reviewer approves but reports:\n- [High] calc.py:2-2 undocumented")
            && prompts[1].contains("The tests pass (1 passed): keep them passing"),
        "{}",
        prompts[1]
    );
    assert!(
        reverts(&events).is_empty(),
        "equal test results: nothing undone"
    );
    assert_eq!(kept(&events).map(|k| k.round), Some(2));
    let id = task_id(&events);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    assert!(
        std::fs::read_to_string(record.worktree.join("calc.py"))
            .unwrap()
            .contains("The sum of a and b.")
    );
}

#[tokio::test]
async fn engine_status_is_answered_by_its_id_and_a_back_end_without_figures_says_so() {
    let dir = calc_repo();
    let mut session = session(Scripted::new(&[]), dir.path(), config("true", 1));
    session
        .submit(Submission {
            id: "s1".into(),
            op: Op::EngineStatus,
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let event = loop {
        let e = tokio::time::timeout_at(deadline, session.next_event())
            .await
            .expect("an answer to the status request")
            .expect("the session runs");
        if e.id == "s1" {
            break e;
        }
    };
    match event.msg {
        EventMsg::Error { message, .. } => {
            assert!(message.contains("no engine figures"), "{message}")
        }
        other => panic!("expected the back end's refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_search_with_a_mode_answers_with_the_notes_and_results_of_the_command() {
    let dir = calc_repo();
    crate::index::update(dir.path(), &Default::default(), &mut |_| {}).unwrap();
    let mut config = config("true", 1);
    config.model.embed = "/nonexistent/embed.gguf".into();
    let mut session = session(Scripted::new(&[]), dir.path(), config.clone());
    session
        .submit(Submission {
            id: "q".into(),
            op: Op::Search {
                query: "add".into(),
                limit: Some(3),
                mode: Some(crate::protocol::SearchMode::Hybrid),
                files: true,
            },
        })
        .unwrap();
    let (mut warnings, mut results) = (Vec::new(), None);
    while results.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(30), session.next_event())
            .await
            .expect("an answer within 30 s")
            .expect("the session runs");
        if event.id != "q" {
            continue;
        }
        match event.msg {
            EventMsg::Warning { message } => warnings.push(message),
            EventMsg::SearchResults { results: r } => results = Some(r),
            other => panic!("unexpected {other:?}"),
        }
    }
    // What the command prints in-process for the same search.
    let found = super::searcher::Searcher::new(dir.path(), config, crate::models::Store::default())
        .search(&super::searcher::SearchRequest {
            query: "add".into(),
            mode: crate::config::SearchMode::Hybrid,
            limit: Some(3),
            files: true,
        })
        .unwrap();
    assert_eq!(warnings, found.notes);
    assert!(
        warnings.iter().any(|w| w.starts_with("BM25 only: ")),
        "{warnings:?}"
    );
    let want: Vec<serde_json::Value> = found.results.iter().map(|r| r.to_json()).collect();
    assert!(!want.is_empty());
    assert_eq!(results.unwrap(), want);
}

#[tokio::test]
async fn a_repeated_call_is_pointed_out_and_closed_and_a_failed_round_is_retried_sampled() {
    let dir = sum_repo();
    let diff = r#"{"tool": "diff"}"#.to_string();
    let (events, backend) = multiply_then_sum(&dir, &[diff.clone(), diff.clone(), diff]).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let requests = backend.requests.lock().unwrap();
    let last_user = |i: usize| {
        let Prompt::Messages(m) = &requests[i].prompt else {
            panic!()
        };
        m.last().unwrap().content.clone()
    };
    // The first diff is answered plainly, the second and third with the note.
    assert!(!last_user(1).contains("You made exactly this call"));
    assert!(last_user(2).contains("You made exactly this call just before"));
    assert!(last_user(3).contains("You made exactly this call just before"));
    // After a repeated call, the next calls are held to a closing rule until the model does
    // something else: a write while it has written nothing this turn. Round 2 follows failed
    // tests of a file the system prompt shows, so its first call is the write itself.
    let roots: Vec<&str> = requests.iter().map(|r| root_rule(r)).collect();
    assert_eq!(
        roots,
        ["root", "root", "write", "write", "root", "write", "root"]
    );
    // Round 1 is greedy; round 2 follows failed tests, so it samples at the writer's retry
    // temperature, with its own seeds.
    let temperatures: Vec<f32> = requests.iter().map(|r| r.sampling.temperature).collect();
    assert_eq!(temperatures, [0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.8]);
    assert_ne!(requests[5].sampling.seed, requests[0].sampling.seed);
    // Round 2's writer is asked for a fresh attempt: shown the failing tests, not the code
    // that failed (a small model copies code it is shown).
    let round2 = last_user(5);
    assert!(
        round2.contains("Your previous attempt failed the tests. Do not repeat it"),
        "{round2}"
    );
    assert!(!round2.contains("The files you changed"), "{round2}");
    assert!(!round2.contains("return a * b\n```"), "{round2}");
    assert!(
        round2.contains("The tests fail (`python3 -B -m unittest -q`, exit code 1)"),
        "{round2}"
    );
}

#[tokio::test]
async fn a_failed_round_that_changed_a_file_the_writer_was_not_shown_is_retried_without_a_forced_write()
 {
    let dir = sum_repo();
    let (events, backend) = multiply_then_sum(&dir, &[write("helper.py", "SCALE = 1\n")]).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let requests = backend.requests.lock().unwrap();
    // helper.py was not in the system prompt: round 2 may read it before writing, so no call
    // is held to the write rule; it still samples, as a retry.
    let roots: Vec<&str> = requests.iter().map(|r| root_rule(r)).collect();
    assert_eq!(roots, ["root"; 5]);
    let temperatures: Vec<f32> = requests.iter().map(|r| r.sampling.temperature).collect();
    assert_eq!(temperatures, [0.0, 0.0, 0.0, 0.8, 0.8]);
}

/// Runs "make add return the sum" in `dir` with the writer alone (one round, six steps) on
/// `script`; returns the events and the backend with its requests.
async fn writer_alone(dir: &tempfile::TempDir, script: &[&str]) -> (Vec<Event>, Arc<Scripted>) {
    writer_alone_rounds(dir, 1, script).await
}

/// The writer alone over two rounds: `first` calls, then round 1 makes `add` multiply (the
/// tests fail) and round 2 makes it sum.
async fn multiply_then_sum(
    dir: &tempfile::TempDir,
    first: &[String],
) -> (Vec<Event>, Arc<Scripted>) {
    let mut script = first.to_vec();
    script.extend([
        write("calc.py", &calc("a * b")),
        r#"{"tool": "done", "summary": "multiply"}"#.into(),
        // Round 2, after the tests failed.
        write("calc.py", &calc("a + b")),
        r#"{"tool": "done", "summary": "sum"}"#.into(),
    ]);
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    writer_alone_rounds(dir, 2, &script).await
}

/// [`writer_alone`] with a budget of `rounds` rounds.
async fn writer_alone_rounds(
    dir: &tempfile::TempDir,
    rounds: u32,
    script: &[&str],
) -> (Vec<Event>, Arc<Scripted>) {
    let backend = Scripted::new(&[("writer", script)]);
    let mut c = config(UNITTEST, rounds);
    c.agents.roles = vec!["writer".into()];
    c.agents.max_steps = 6;
    let mut s = session(backend.clone(), dir.path(), c);
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    (events, backend)
}

#[tokio::test]
async fn a_rewrite_that_changes_nothing_is_not_progress_and_a_done_without_a_change_is_sent_back_once()
 {
    let dir = sum_repo();
    let before = std::fs::read_to_string(dir.path().join("calc.py")).unwrap();
    let (events, backend) = writer_alone(
        &dir,
        &[
            // The file as it was, then `done`: neither ends the turn.
            &write("calc.py", &before),
            r#"{"tool": "done", "summary": "nothing to do"}"#,
            &write("calc.py", &before),
            &write("calc.py", &calc("a + b")),
            r#"{"tool": "done", "summary": "sum"}"#,
        ],
    )
    .await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let requests = backend.requests.lock().unwrap();
    assert_eq!(requests.len(), 5);
    let last_user = |i: usize| {
        let Prompt::Messages(m) = &requests[i].prompt else {
            panic!()
        };
        m.last().unwrap().content.clone()
    };
    let unchanged = last_user(1);
    assert!(
        unchanged.starts_with("ERROR: calc.py already has exactly this content")
            && unchanged.contains("the task: make add return the sum"),
        "{unchanged}"
    );
    let pushed_back = last_user(2);
    assert!(
        pushed_back.starts_with("DENIED: you have not changed any file this turn"),
        "{pushed_back}"
    );
    // Greedy decoding would write the same file again: after a rewrite that changed nothing,
    // the calls sample at the writer's retry temperature, and each further one a step hotter.
    let temperatures: Vec<f32> = requests.iter().map(|r| r.sampling.temperature).collect();
    assert_eq!(temperatures, [0.0, 0.8, 0.8, 0.8 + 0.15, 0.8 + 0.15]);
}

#[tokio::test]
async fn a_rewrite_as_it_was_after_a_change_ends_the_turn_and_a_cut_answer_is_sampled_again() {
    let dir = sum_repo();
    let fixed = calc("a + b");
    let cut = format!(
        "{}\n```python\ndef add(a, b):\n    return a +{CUT}",
        r#"{"tool": "write_file", "path": "calc.py"}"#
    );
    let (events, backend) = writer_alone(
        &dir,
        &[&cut, &write("calc.py", &fixed), &write("calc.py", &fixed)],
    )
    .await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    // The second identical write ended the turn: no fourth call.
    let requests = backend.requests.lock().unwrap();
    assert_eq!(requests.len(), 3);
    let Prompt::Messages(m) = &requests[1].prompt else {
        panic!()
    };
    let after_cut = &m.last().unwrap().content;
    assert!(
        after_cut.contains("the answer hit the limit") && after_cut.contains("write less"),
        "{after_cut}"
    );
    let temperatures: Vec<f32> = requests.iter().map(|r| r.sampling.temperature).collect();
    assert_eq!(temperatures, [0.0, 0.8, 0.8]);
}

#[tokio::test]
async fn a_writer_may_end_a_turn_without_a_change_when_it_says_so_twice() {
    let dir = sum_repo();
    let backend = Scripted::new(&[(
        "writer",
        &[
            r#"{"tool": "done", "summary": "already right"}"#,
            r#"{"tool": "done", "summary": "already right"}"#,
        ],
    )]);
    let mut c = config(UNITTEST, 1);
    c.agents.roles = vec!["writer".into()];
    let mut s = session(backend.clone(), dir.path(), c);
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    // The round ends (no change, so not converged) after exactly two calls, not at the budget.
    assert_eq!(check_events(&events), TaskOutcome::BudgetExhausted);
    assert_eq!(backend.requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_wrong_test_by_the_tester_does_not_undo_a_correct_round_and_the_tester_cannot_touch_the_code()
 {
    let dir = sum_repo();
    let wrong_test = "import unittest\n\nfrom calc import add\n\n\nclass TestMore(unittest.TestCase):\n    def test_ones(self):\n        self.assertEqual(add(1, 1), 3)\n";
    let backend = Scripted::new(&[
        (
            "writer",
            &[
                &write("calc.py", &calc("a + b")),
                r#"{"tool": "done", "summary": "sum"}"#,
                // Round 2: the code bent to the tester's wrong test.
                &write("calc.py", &calc("a + b + 1")),
                r#"{"tool": "done", "summary": "plus one"}"#,
            ],
        ),
        (
            "tester",
            &[
                &write("calc.py", &calc("0")),
                &write("test_more.py", wrong_test),
                r#"{"tool": "done", "summary": "a test"}"#,
            ],
        ),
    ]);
    let mut s = session(backend.clone(), dir.path(), config(UNITTEST, 2));
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    assert_eq!(check_events(&events), TaskOutcome::BudgetExhausted);

    // The tester's write of the code under test was refused back to it, the test file landed.
    let tester = tool_ends(&events, "tester");
    assert!(
        !tester[0].0
            && tester[0].1.contains("may write only files matching")
            && tester[0]
                .1
                .contains("write the tests for `calc.py` to `test_calc.py` instead"),
        "{tester:?}"
    );
    assert!(tester[1].0, "{tester:?}");
    // Greedy decoding would repeat the refused call: the tester's next call samples.
    let temperatures: Vec<f32> = backend
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| Scripted::role_of(r) == "tester")
        .map(|r| r.sampling.temperature)
        .collect();
    assert_eq!(temperatures[..2], [0.0, 0.7], "{temperatures:?}");

    // Round 1 fails only the tester's test; round 2 passes it but fails the repository's own
    // test, so round 2 is undone and the task keeps round 1.
    let id = task_id(&events);
    let record = TaskStore::new(dir.path()).load(&id).unwrap();
    assert_eq!(record.tester_paths, ["test_more.py"]);
    let r1 = &record.rounds[0];
    assert_eq!(r1.tests.map(|t| t.passed), Some(false));
    assert_eq!(r1.own_tests.map(|t| t.passed), Some(true));
    assert!(!r1.tests_id.is_empty());
    assert_eq!(record.rounds[1].own_tests.map(|t| t.passed), Some(false));
    let undone = reverts(&events);
    assert_eq!(
        undone.iter().map(|(r, k, _)| (*r, *k)).collect::<Vec<_>>(),
        [(2, 1)],
        "{undone:?}"
    );
    assert!(
        undone[0]
            .2
            .contains("round 1 was better: the tests fail (1 of 2 fail); without the testers' tests, the tests pass (1 passed)"),
        "{undone:?}"
    );
    assert_eq!(record.kept_round, Some(1));
    let round1 = round_commit(&events, 1);
    assert_eq!(
        files_of_commit(dir.path(), &record.branch),
        files_of_commit(dir.path(), &round1)
    );
    let diff = store::task_diff(dir.path(), &record).unwrap();
    assert!(diff.contains("+    return a + b\n"), "{diff}");

    // The writer heard that only the tester's tests failed.
    let prompts = writer_prompts(&backend);
    assert!(
        prompts[1].contains(
            "The repository's own tests pass; what fails are tests the tester wrote (test_more.py)"
        ),
        "{}",
        prompts[1]
    );
}

#[tokio::test]
async fn a_reviewer_that_repeats_a_call_is_held_to_its_review_and_its_last_step_reviews() {
    let dir = sum_repo();
    let backend = Scripted::new(&[
        (
            "writer",
            &[
                &write("calc.py", &calc("a + b")),
                r#"{"tool": "done", "summary": "sum"}"#,
            ],
        ),
        (
            "reviewer",
            &[
                r#"{"tool": "diff"}"#,
                r#"{"tool": "diff"}"#,
                &review("low", "name"),
            ],
        ),
    ]);
    let mut c = config(UNITTEST, 1);
    c.agents.roles = vec!["writer".into(), "reviewer".into()];
    c.agents.max_steps = 2;
    let mut s = session(backend.clone(), dir.path(), c);
    let events = run_task(&mut s, "make add return the sum", Duration::from_secs(60)).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let requests = backend.requests.lock().unwrap();
    let reviewer: Vec<&GenerateRequest> = requests
        .iter()
        .filter(|r| Scripted::role_of(r) == "reviewer")
        .collect();
    // Two steps: the second is the last, so it may only review.
    assert_eq!(reviewer.len(), 2);
    let grammar = |r: &GenerateRequest| match &r.constraint {
        Some(crate::engine::Constraint::Gbnf(g)) => g.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(root_rule(reviewer[0]), "root");
    assert_eq!(root_rule(reviewer[1]), "finish");
    let last = grammar(reviewer[1]);
    assert!(
        last.contains("finish   ::= \"{\\\"tool\\\": \" review \"}\""),
        "{last}"
    );
}

/// Submits a task under its own submission id.
fn submit_task(s: &Session, id: &str, text: &str) {
    s.submit(Submission {
        id: id.into(),
        op: Op::UserTask {
            text: text.into(),
            max_rounds: None,
        },
    })
    .unwrap();
}

/// Reads events until `done` holds for the events so far, or fails after `limit`.
async fn events_until(
    s: &mut Session,
    events: &mut Vec<Event>,
    limit: Duration,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(events) {
        let e = tokio::time::timeout_at(deadline, s.next_event())
            .await
            .unwrap_or_else(|_| panic!("no end within {limit:?}; events so far: {events:#?}"))
            .expect("the session ended early");
        events.push(e);
    }
}

/// The position of the first event of submission `id` matching `f`.
fn position(events: &[Event], id: &str, f: impl Fn(&EventMsg) -> bool) -> Option<usize> {
    events.iter().position(|e| e.id == id && f(&e.msg))
}

#[tokio::test]
async fn tasks_beyond_the_parallel_limit_wait_their_turn_and_run_after() {
    let dir = sum_repo();
    let done = r#"{"tool": "done", "summary": "add returns the sum"}"#;
    let sum = write("calc.py", &calc("a + b"));
    let backend = Scripted::new(&[("writer", &[&sum, done, &sum, done])]);
    let mut c = config(UNITTEST, 1);
    c.agents.roles = vec!["writer".into()];
    c.agents.parallel_tasks = 1;
    let mut s = session(backend.clone(), dir.path(), c);
    submit_task(&s, "t1", "make add return the sum");
    submit_task(&s, "t2", "make add return the sum");
    let mut events = Vec::new();
    let completes = |e: &[Event]| {
        e.iter()
            .filter(|e| matches!(e.msg, EventMsg::TaskComplete { .. }))
            .count()
            == 2
    };
    events_until(&mut s, &mut events, Duration::from_secs(60), completes).await;
    let queued = position(
        &events,
        "t2",
        |m| matches!(m, EventMsg::Warning { message } if message.starts_with("queued")),
    )
    .expect("the second task says it is queued");
    let first_done = position(&events, "t1", |m| {
        matches!(m, EventMsg::TaskComplete { .. })
    })
    .unwrap();
    let second_started =
        position(&events, "t2", |m| matches!(m, EventMsg::TaskStarted { .. })).unwrap();
    assert!(
        queued < first_done && first_done < second_started,
        "{events:#?}"
    );
    assert!(
        position(&events, "t1", |m| matches!(m, EventMsg::Warning { .. })).is_none(),
        "the first task starts at once"
    );
    for id in ["t1", "t2"] {
        let mine: Vec<Event> = events
            .iter()
            .filter(|e| e.id == id && !matches!(e.msg, EventMsg::Warning { .. }))
            .cloned()
            .collect();
        assert_eq!(check_events(&mine), TaskOutcome::Converged, "{id}");
    }
    assert_eq!(TaskStore::new(dir.path()).list().unwrap().len(), 2);
}

#[tokio::test]
async fn an_interrupt_ends_a_queued_task_before_it_starts() {
    let dir = calc_repo();
    let mut backend = Scripted::new(&[]);
    Arc::get_mut(&mut backend).unwrap().hang_after = Some(0);
    let mut c = config("", 3);
    c.agents.parallel_tasks = 1;
    let mut s = session(backend.clone(), dir.path(), c);
    submit_task(&s, "t1", "fix add");
    submit_task(&s, "t2", "fix add in another way");
    let mut events = Vec::new();
    // The first task's writer is waiting for the model, the second task for a task slot.
    events_until(&mut s, &mut events, Duration::from_secs(20), |e| {
        position(e, "t2", |m| matches!(m, EventMsg::Warning { .. })).is_some()
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while backend.requests.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no model request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.submit(Submission {
        id: "stop".into(),
        op: Op::Interrupt,
    })
    .unwrap();
    events_until(&mut s, &mut events, Duration::from_secs(20), |e| {
        position(e, "t1", |m| matches!(m, EventMsg::TaskComplete { .. })).is_some()
            && position(e, "t2", |m| matches!(m, EventMsg::Error { .. })).is_some()
    })
    .await;
    let Some(EventMsg::Error { message, .. }) = events
        .iter()
        .find(|e| e.id == "t2" && matches!(e.msg, EventMsg::Error { .. }))
        .map(|e| &e.msg)
    else {
        unreachable!()
    };
    assert!(
        message.contains("interrupted before it started"),
        "{message}"
    );
    assert!(position(&events, "t2", |m| matches!(m, EventMsg::TaskStarted { .. })).is_none());
    assert_eq!(
        backend.requests.lock().unwrap().len(),
        1,
        "t2 never asked the model"
    );
    let records = TaskStore::new(dir.path()).list().unwrap();
    assert_eq!(
        records.len(),
        1,
        "no record for the task that never started"
    );
    assert_eq!(records[0].status, TaskStatus::Cancelled);
}

#[tokio::test]
async fn a_change_that_fails_the_own_tests_goes_back_to_the_writer_unreviewed_until_the_last_round()
{
    let dir = sum_repo();
    let done = r#"{"tool": "done", "summary": "done"}"#;
    let writer = [
        &write("calc.py", &calc("a * b")),
        done,
        &write("calc.py", &calc("a // b")),
        done,
        // The last round: reviewed and tested whatever its tests say; these pass.
        &write("calc.py", &calc("a + b")),
        done,
    ];
    let (events, backend) = scripted_task(&dir, "make add return the sum", 3, &writer, &[]).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let roles = roles_asked(&backend);
    // Rounds 1 and 2 failed the repository's test: the writer alone; round 3 reviewed and tested.
    assert_eq!(
        roles.iter().filter(|r| **r == "reviewer").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == "tester").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(roles[..6], ["writer"; 6]);
    let rounds = round_tests(&events);
    assert_eq!(
        rounds,
        [(1, Some(false)), (2, Some(false)), (3, Some(true))]
    );
    // The test runs of rounds 1 and 2 were shown as the writer's.
    let writer_runs = events
        .iter()
        .filter(|e| {
            e.agent.as_deref() == Some("writer") && matches!(e.msg, EventMsg::ExecCommandEnd { .. })
        })
        .count();
    assert_eq!(writer_runs, 2);
    // Round 2's writer heard the failure and why nobody reviewed it.
    let prompts = writer_prompts(&backend);
    assert!(
        prompts[1].contains("The tests fail (`python3 -B -m unittest -q`, exit code 1)")
            && prompts[1].contains("AssertionError: 6 != 5")
            && prompts[1].contains("The reviewer and the tester look at the change once"),
        "{}",
        prompts[1]
    );
    let record = TaskStore::new(dir.path()).load(&task_id(&events)).unwrap();
    assert_eq!(record.kept_round, Some(3));
    assert_eq!(
        record
            .rounds
            .iter()
            .map(|r| r.tests.map(|t| t.passed))
            .collect::<Vec<_>>(),
        [Some(false), Some(false), Some(true)]
    );
}

/// `add`'s tests are the examples in its docstring, run by doctest: code without them runs no
/// test at all.
fn doctest_repo() -> tempfile::TempDir {
    fixture(&[
        (
            "calc.py",
            "def add(a, b):\n    \"\"\"\n    >>> add(2, 3)\n    5\n    \"\"\"\n    raise NotImplementedError\n",
        ),
        (
            "test_calc.py",
            "import doctest\n\nimport calc\n\n\ndef load_tests(loader, tests, ignore):\n    tests.addTests(doctest.DocTestSuite(calc))\n    return tests\n",
        ),
    ])
}

#[tokio::test]
async fn a_change_that_leaves_the_tests_nothing_to_run_goes_back_to_the_writer_and_never_ranks_above_a_failure()
 {
    let dir = doctest_repo();
    let done = r#"{"tool": "done", "summary": "done"}"#;
    let documented = |body: &str| {
        format!(
            "def add(a, b):\n    \"\"\"\n    >>> add(2, 3)\n    5\n    \"\"\"\n    return {body}\n"
        )
    };
    let writer = [
        // Round 1 drops the docstring: `Ran 0 tests`, exit 0.
        &write("calc.py", "def add(a, b):\n    return a + b\n"),
        done,
        // Round 2 keeps it and fails it; round 3 passes it.
        &write("calc.py", &documented("a * b")),
        done,
        &write("calc.py", &documented("a + b")),
        done,
    ];
    let (events, backend) = scripted_task(&dir, "implement add", 3, &writer, &[]).await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    // Round 1 was sent back unreviewed, with why.
    let roles = roles_asked(&backend);
    assert_eq!(roles[..6], ["writer"; 6], "{roles:?}");
    let prompts = writer_prompts(&backend);
    assert!(
        prompts[1].contains("ran no tests, but on the code before your change it runs some"),
        "{}",
        prompts[1]
    );
    // The base was asked once, on its own copy.
    let base_runs = events
        .iter()
        .filter(|e| {
            matches!(&e.msg, EventMsg::ExecCommandBegin { command, .. } if command.ends_with("# on the base commit"))
        })
        .count();
    assert_eq!(base_runs, 1);
    // Round 2 fails its test and still ranks above round 1: it was not undone.
    assert!(reverts(&events).is_empty(), "{:?}", reverts(&events));
    let record = TaskStore::new(dir.path()).load(&task_id(&events)).unwrap();
    assert_eq!(
        record
            .rounds
            .iter()
            .map(|r| r.tests.map(|t| t.ran_tests()))
            .collect::<Vec<_>>(),
        [Some(false), Some(true), Some(true)]
    );
    assert_eq!(record.kept_round, Some(3));
}

/// `task` run to its end in `dir` over at most `rounds` rounds, the writer and the tester
/// answering from their scripts (the reviewer approves).
async fn scripted_task(
    dir: &tempfile::TempDir,
    task: &str,
    rounds: u32,
    writer: &[&str],
    tester: &[&str],
) -> (Vec<Event>, Arc<Scripted>) {
    let backend = Scripted::new(&[("writer", writer), ("tester", tester)]);
    let mut s = session(backend.clone(), dir.path(), config(UNITTEST, rounds));
    let events = run_task(&mut s, task, Duration::from_secs(60)).await;
    (events, backend)
}

/// The writer makes `add` return the sum in one round; the tester answers from `tester`.
async fn sum_with_tester(dir: &tempfile::TempDir, tester: &[&str]) -> (Vec<Event>, Arc<Scripted>) {
    let writer = [
        &write("calc.py", &calc("a + b")),
        r#"{"tool": "done", "summary": "sum"}"#,
    ];
    scripted_task(dir, "make add return the sum", 1, &writer, tester).await
}

#[tokio::test]
async fn a_tester_is_answered_with_the_suites_result_and_fixes_a_test_that_fails_on_its_own() {
    let dir = sum_repo();
    let broken = "import unittest\n\nimport calc\n\n\nclass TestMore(unittest.TestCase):\n    def test_ones(self):\n        self.assertEqual(add(1, 1), 2)\n";
    let fixed = broken.replace("import calc\n", "from calc import add\n");
    let (events, _) = sum_with_tester(
        &dir,
        &[
            &write("test_more.py", broken),
            &write("test_more.py", &fixed),
            r#"{"tool": "done", "summary": "a test"}"#,
        ],
    )
    .await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let tester = tool_ends(&events, "tester");
    assert!(
        tester[0].0
            && tester[0].1.contains("NameError: name 'add' is not defined")
            && tester[0].1.contains("is yours: fix the test file"),
        "{tester:?}"
    );
    assert!(
        tester[1].0
            && tester[1]
                .1
                .ends_with("With your tests, the tests pass (2 passed)"),
        "{tester:?}"
    );
    let record = TaskStore::new(dir.path()).load(&task_id(&events)).unwrap();
    assert_eq!(record.rounds[0].tests.map(|t| t.passed), Some(true));
}

#[tokio::test]
async fn a_turn_ends_after_two_answers_in_a_row_cut_at_the_token_limit() {
    let dir = sum_repo();
    let runaway = format!(
        "{}\n```python\nimport unittest\n\nfrom calc import add\n\n\nclass TestMore(unittest.TestCase):\n    def test_many(self):\n        self.assertEqual(add(1, 1), 2)\n        self.assertEqual(add(1, 2), 3){CUT}",
        r#"{"tool": "write_file", "path": "test_more.py"}"#
    );
    let (events, backend) = sum_with_tester(
        &dir,
        &[
            &runaway,
            &runaway,
            &write("test_more.py", "never written\n"),
        ],
    )
    .await;
    // Nothing was written by the tester; the repository's own tests decide.
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let tester_requests = roles_asked(&backend)
        .iter()
        .filter(|r| **r == "tester")
        .count();
    assert_eq!(tester_requests, 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.msg, EventMsg::Warning { message }
            if message.contains("tester: 2 answers in a row hit the limit"))),
        "no warning"
    );
    let record = TaskStore::new(dir.path()).load(&task_id(&events)).unwrap();
    assert!(record.tester_paths.is_empty(), "{:?}", record.tester_paths);
}

#[tokio::test]
async fn a_tester_that_rewrites_a_test_file_as_it_was_ends_its_turn_with_its_tests_standing() {
    let dir = sum_repo();
    let as_it_was = std::fs::read_to_string(dir.path().join("test_calc.py")).unwrap();
    let (events, _) = sum_with_tester(
        &dir,
        &[
            &write("test_calc.py", &as_it_was),
            &write("test_more.py", "never written\n"),
        ],
    )
    .await;
    assert_eq!(check_events(&events), TaskOutcome::Converged);
    let tester = tool_ends(&events, "tester");
    assert_eq!(tester.len(), 1, "{tester:?}");
    assert!(
        tester[0].0
            && tester[0]
                .1
                .ends_with("nothing changed. If the change is complete, end your turn; turn ended"),
        "{tester:?}"
    );
}
