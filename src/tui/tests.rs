//! The terminal UI driven by injected events: `TestBackend` snapshots of each state at 80x24
//! and 120x40 (task ids and durations filtered), the keys' effects, reopening a saved task,
//! NO_COLOR, and drawing at any size.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};

use super::app::{App, AppEvent, Confirm, Mode, Pane, Startup};
use super::render::render;
use crate::protocol::{
    Event, EventMsg, Finding, Op, RequestStats, Severity, TaskOutcome, TaskSummary,
};

const TASK_ID: &str = "20261124-190255-f194";

fn ev(id: &str, agent: Option<&str>, msg: EventMsg) -> AppEvent {
    AppEvent::Protocol(Event {
        id: id.into(),
        agent: agent.map(str::to_string),
        msg,
    })
}

fn key(code: KeyCode) -> AppEvent {
    AppEvent::Key(KeyEvent::from(code))
}

fn typed(app: &mut App, text: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    for c in text.chars() {
        ops.extend(app.update(key(KeyCode::Char(c))));
    }
    ops
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut app = app.clone();
    app.width = w;
    app.height = h;
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| render(&app, f)).unwrap();
    terminal
}

/// Snapshots `app` at 80x24 and 120x40.
fn snapshot(name: &str, app: &App) {
    for (w, h) in [(80, 24), (120, 40)] {
        let terminal = draw(app, w, h);
        insta::with_settings!({
            filters => vec![
                (r"\d{8}-\d{6}-[0-9a-f]{4}", "[task-id]"),
                (r"\d+\.\d s\b", "[secs]"),
            ],
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!(format!("tui_{name}_{w}x{h}"), terminal.backend());
        });
    }
}

fn ready() -> App {
    let mut app = App::new(true);
    app.update(ev(
        "",
        None,
        EventMsg::SessionConfigured {
            model: "/home/u/.cache/troupe/models/smollm2-135m-instruct.gguf".into(),
            repo: "/home/u/src/calc".into(),
        },
    ));
    app.update(ev(
        "tui-1",
        None,
        EventMsg::IndexState {
            exists: true,
            stale: false,
            files: 12,
            chunks: 48,
        },
    ));
    app
}

const DIFF: &str = "diff --git a/calc.py b/calc.py
index 3b18e51..a2c4f0e 100644
--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
";

/// A task under way: the writer has changed calc.py, the reviewer and tester stream.
fn running() -> (App, String) {
    let mut app = ready();
    app.update(key(KeyCode::Char('n')));
    typed(&mut app, "Fix add in calc.py so it returns the sum.");
    let ops = app.update(key(KeyCode::Enter));
    assert!(matches!(&ops[..], [Op::UserTask { .. }]), "{ops:?}");
    let sub = app.task.as_ref().unwrap().sub_id.clone();
    let s = sub.as_str();
    app.update(ev(
        s,
        None,
        EventMsg::TaskStarted {
            task_id: TASK_ID.into(),
            text: "Fix add in calc.py so it returns the sum.".into(),
        },
    ));
    let w = Some("writer");
    for d in ["{\"tool\": \"read_file\", ", "\"path\": \"calc.py\"}"] {
        app.update(ev(s, w, EventMsg::AgentMessageDelta { delta: d.into() }));
    }
    app.update(ev(
        s,
        w,
        EventMsg::AgentMessage {
            text: "{\"tool\": \"read_file\", \"path\": \"calc.py\"}".into(),
        },
    ));
    app.update(ev(
        s,
        w,
        EventMsg::ModelRequestEnd {
            stats: RequestStats {
                generated_tokens: 14,
                ..Default::default()
            },
        },
    ));
    app.update(ev(
        s,
        w,
        EventMsg::ToolCallBegin {
            call_id: "call-1".into(),
            tool: "read_file".into(),
            arguments: serde_json::json!({"path": "calc.py"}),
        },
    ));
    app.update(ev(
        s,
        w,
        EventMsg::ToolCallEnd {
            call_id: "call-1".into(),
            ok: true,
            output: "def add(a, b):\n    return a - b\n".into(),
        },
    ));
    app.update(ev(
        s,
        w,
        EventMsg::ToolCallBegin {
            call_id: "call-2".into(),
            tool: "edit".into(),
            arguments: serde_json::json!({"path": "calc.py", "search": "a - b", "replace": "a + b"}),
        },
    ));
    app.update(ev(
        s,
        w,
        EventMsg::ToolCallEnd {
            call_id: "call-2".into(),
            ok: true,
            output: "edited calc.py".into(),
        },
    ));
    app.update(ev(s, w, EventMsg::DiffUpdated { diff: DIFF.into() }));
    app.update(ev(
        s,
        Some("reviewer"),
        EventMsg::AgentMessageDelta {
            delta: "{\"tool\": \"review\", \"verdict\": \"request_changes\", \"findings\": ["
                .into(),
        },
    ));
    app.update(ev(
        s,
        Some("reviewer"),
        EventMsg::ReviewFinding {
            finding: Finding {
                file: "calc.py".into(),
                start_line: 1,
                end_line: 2,
                severity: Severity::Medium,
                category: "testing".into(),
                title: "no test covers negative numbers".into(),
                explanation: "add(-1, 1) is not checked".into(),
                suggestion: Some("add a test with a negative operand".into()),
                confidence: 0.8,
            },
        },
    ));
    app.update(ev(
        s,
        Some("tester"),
        EventMsg::AgentMessageDelta {
            delta: "{\"tool\": \"edit\", \"path\": \"test_calc.py\", ".into(),
        },
    ));
    app.update(ev(
        s,
        Some("tester"),
        EventMsg::ExecCommandBegin {
            call_id: "call-3".into(),
            command: "python3 -m unittest -q".into(),
        },
    ));
    app.update(ev(
        s,
        Some("tester"),
        EventMsg::ExecCommandEnd {
            call_id: "call-3".into(),
            exit_code: Some(0),
            timed_out: false,
            output: "----------------------------------------------------------------------\nRan 2 tests in 0.001s\n\nOK\n".into(),
            duration_ms: 140,
        },
    ));
    app.update(ev(
        "",
        None,
        EventMsg::EngineMetrics {
            active_sequences: 2,
            aggregate_tok_s: 61.5,
            cached_prompt_tokens: 1830,
            kv_used: 2100,
            kv_total: 8192,
        },
    ));
    (app, sub)
}

#[test]
fn the_ui_draws_while_the_model_loads() {
    let app = App::new(true);
    assert_eq!(app.startup, Startup::Loading);
    snapshot("loading", &app);
}

#[test]
fn a_missing_model_is_shown_with_its_fix_instead_of_crashing() {
    let mut app = App::new(true);
    app.update(AppEvent::StartFailed {
        message: "model `smollm2-135m-instruct` is not downloaded".into(),
        fix: Some("run `troupe models pull` or pass --model PATH".into()),
    });
    assert_eq!(app.startup, Startup::Failed);
    // Keys that need the session say so instead of doing nothing.
    assert!(app.update(key(KeyCode::Char('n'))).is_empty());
    assert_eq!(app.mode, Mode::Normal);
    assert!(
        app.notices
            .iter()
            .any(|n| n.text.contains("could not start"))
    );
    // The error stays on screen: drop the note the key added.
    app.notices.pop();
    snapshot("start_failed", &app);
    // Quitting works without a session.
    app.update(key(KeyCode::Char('q')));
    assert!(app.quit);
}

#[test]
fn a_ready_session_shows_the_model_and_the_index_state() {
    let app = ready();
    snapshot("ready", &app);
}

#[test]
fn typing_a_task_shows_the_input_and_enter_submits_it() {
    let mut app = ready();
    app.update(key(KeyCode::Char('n')));
    assert_eq!(app.mode, Mode::TaskInput);
    typed(&mut app, "add a --verbose flg");
    app.update(key(KeyCode::Backspace));
    typed(&mut app, "ag");
    snapshot("task_input", &app);
    let ops = app.update(key(KeyCode::Enter));
    assert_eq!(
        ops,
        vec![Op::UserTask {
            text: "add a --verbose flag".into(),
            max_rounds: None
        }]
    );
    assert!(app.busy());
    // An empty task is not sent.
    let mut idle = ready();
    idle.update(key(KeyCode::Char('n')));
    assert!(idle.update(key(KeyCode::Enter)).is_empty());
}

#[test]
fn three_agents_stream_into_their_panes_with_the_diff_tests_and_findings() {
    let (app, _) = running();
    let screen = format!("{}", draw(&app, 120, 40).backend());
    for needle in [
        "writer",
        "reviewer",
        "tester",
        "▶ edit",
        "+    return a + b",
        "exit 0",
        "no test covers negative numbers",
        "61.5 tok/s",
        "2 seq",
        "1.8k cached",
        "index current",
    ] {
        assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
    }
    snapshot("running", &app);
}

#[test]
fn a_pending_command_is_approved_or_rejected_with_y_and_r() {
    let (mut app, sub) = running();
    for n in 1..=2 {
        app.update(ev(
            &sub,
            Some("tester"),
            EventMsg::ApprovalRequest {
                call_id: format!("call-{}", 8 + n),
                command: "python3 -m unittest -q".into(),
            },
        ));
    }
    snapshot("approval", &app);
    assert_eq!(
        app.update(key(KeyCode::Char('y'))),
        vec![Op::Approval {
            call_id: "call-9".into(),
            approved: true
        }]
    );
    assert_eq!(
        app.update(key(KeyCode::Char('r'))),
        vec![Op::Approval {
            call_id: "call-10".into(),
            approved: false
        }]
    );
    assert!(app.update(key(KeyCode::Char('y'))).is_empty());
}

#[test]
fn focus_moves_between_panes_and_a_pane_zooms() {
    let (mut app, _) = running();
    assert_eq!(app.focus, Pane::Agent("writer".into()));
    app.update(key(KeyCode::Tab));
    assert_eq!(app.focus, Pane::Agent("reviewer".into()));
    app.update(AppEvent::Key(KeyEvent::new(
        KeyCode::BackTab,
        KeyModifiers::SHIFT,
    )));
    app.update(AppEvent::Key(KeyEvent::new(
        KeyCode::BackTab,
        KeyModifiers::SHIFT,
    )));
    assert_eq!(app.focus, Pane::Review, "focus wraps around");
    for _ in 0..4 {
        app.update(key(KeyCode::Tab));
    }
    assert_eq!(app.focus, Pane::Diff);
    app.update(key(KeyCode::Char('z')));
    assert!(app.zoomed);
    snapshot("zoomed_diff", &app);
    app.update(key(KeyCode::Esc));
    assert!(!app.zoomed);
}

#[test]
fn scrolling_an_agent_pane_shows_earlier_output_and_end_follows_again() {
    let (mut app, sub) = running();
    for i in 0..100 {
        app.update(ev(
            &sub,
            Some("writer"),
            EventMsg::AgentMessageDelta {
                delta: format!("line {i}\n"),
            },
        ));
    }
    let screen = |app: &App| format!("{}", draw(app, 80, 24).backend());
    assert!(screen(&app).contains("line 98"));
    app.update(key(KeyCode::PageUp));
    app.update(key(KeyCode::PageUp));
    let up = screen(&app);
    assert!(!up.contains("line 98") && up.contains("line 80"), "{up}");
    app.update(key(KeyCode::Home));
    assert!(screen(&app).contains("read_file"));
    app.update(key(KeyCode::End));
    assert!(screen(&app).contains("line 98"));
}

#[test]
fn cancel_keys_interrupt_the_task_or_the_focused_agent() {
    let (mut app, _) = running();
    assert_eq!(app.update(key(KeyCode::Char('c'))), vec![Op::Interrupt]);
    app.update(key(KeyCode::Tab));
    assert_eq!(
        app.update(key(KeyCode::Char('x'))),
        vec![Op::CancelAgent {
            agent: "reviewer".into()
        }]
    );
    // Nothing to cancel once no task runs.
    let mut idle = ready();
    assert!(idle.update(key(KeyCode::Char('c'))).is_empty());
}

#[test]
fn the_help_overlay_opens_on_question_mark_and_any_key_closes_it() {
    let (mut app, _) = running();
    app.update(key(KeyCode::Char('?')));
    assert_eq!(app.mode, Mode::Help);
    snapshot("help", &app);
    assert!(
        app.update(key(KeyCode::Char('c'))).is_empty(),
        "closing runs nothing"
    );
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn quitting_while_work_runs_asks_first() {
    let (mut app, _) = running();
    app.update(key(KeyCode::Char('q')));
    assert_eq!(app.mode, Mode::Confirm(Confirm::Quit));
    assert!(!app.quit);
    snapshot("confirm_quit", &app);
    app.update(key(KeyCode::Char('n')));
    assert!(!app.quit, "any key but y keeps working");
    app.update(AppEvent::Key(KeyEvent::new(
        KeyCode::Char('c'),
        KeyModifiers::CONTROL,
    )));
    assert_eq!(app.update(key(KeyCode::Char('y'))), vec![Op::Interrupt]);
    assert!(app.quit);
    // Idle: no question.
    let mut idle = ready();
    idle.update(key(KeyCode::Char('q')));
    assert!(idle.quit);
}

#[test]
fn a_search_shows_the_retrieval_results_in_a_pane() {
    let mut app = ready();
    app.update(key(KeyCode::Char('/')));
    typed(&mut app, "add numbers");
    assert_eq!(
        app.update(key(KeyCode::Enter)),
        vec![Op::Search {
            query: "add numbers".into(),
            limit: Some(20),
            mode: None,
            files: false,
        }]
    );
    assert_eq!(app.focus, Pane::Search);
    app.update(ev(
        "search-1",
        None,
        EventMsg::SearchResults {
            results: vec![
                serde_json::json!({"path": "calc.py", "start_line": 1, "end_line": 2,
                    "symbol": "add", "language": "python", "score": 0.9,
                    "snippet": "def add(a, b):\n    return a - b\n"}),
                serde_json::json!({"path": "test_calc.py", "start_line": 6, "end_line": 8,
                    "symbol": "T.test_zero", "language": "python", "score": 0.4,
                    "snippet": "    def test_zero(self):\n        self.assertEqual(add(0, 0), 0)\n"}),
            ],
        },
    ));
    snapshot("search", &app);
}

fn saved(id: &str, status: &str, text: &str) -> TaskSummary {
    TaskSummary {
        id: id.into(),
        text: text.into(),
        status: status.into(),
        rounds_done: 1,
        max_rounds: 3,
        updated_unix: 0,
    }
}

#[test]
fn earlier_tasks_are_listed_and_reopen_from_their_saved_events() {
    let mut app = ready();
    assert_eq!(app.update(key(KeyCode::Char('t'))), vec![Op::ListTasks]);
    app.update(ev(
        "tui-2",
        None,
        EventMsg::TaskList {
            tasks: vec![
                saved(TASK_ID, "budget_exhausted", "Fix add in calc.py"),
                saved("20261123-101010-0a0b", "converged", "add a --verbose flag"),
            ],
        },
    ));
    snapshot("tasks", &app);
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Up));
    assert_eq!(
        app.update(key(KeyCode::Enter)),
        vec![Op::OpenTask {
            task_id: TASK_ID.into()
        }]
    );
    // The saved log, as the session sends it back (submission ids of the run that wrote it).
    let log = vec![
        Event {
            id: "run".into(),
            agent: None,
            msg: EventMsg::TaskStarted {
                task_id: TASK_ID.into(),
                text: "Fix add in calc.py".into(),
            },
        },
        Event {
            id: "run".into(),
            agent: Some("writer".into()),
            msg: EventMsg::AgentMessageDelta {
                delta: "{\"tool\": \"edit\"}".into(),
            },
        },
        Event {
            id: "run".into(),
            agent: Some("writer".into()),
            msg: EventMsg::DiffUpdated { diff: DIFF.into() },
        },
        Event {
            id: "run".into(),
            agent: None,
            msg: EventMsg::TaskComplete {
                task_id: TASK_ID.into(),
                outcome: TaskOutcome::BudgetExhausted,
                rounds: 1,
                kept: None,
            },
        },
    ];
    app.update(ev(
        "tui-3",
        None,
        EventMsg::TaskOpened {
            task: saved(TASK_ID, "budget_exhausted", "Fix add in calc.py"),
            events: log,
        },
    ));
    let task = app.task.clone().unwrap();
    assert_eq!(task.task_id.as_deref(), Some(TASK_ID));
    assert_eq!(task.outcome, Some(TaskOutcome::BudgetExhausted));
    assert_eq!(app.diff, DIFF);
    assert!(!app.busy());
    snapshot("reopened", &app);
    assert_eq!(
        app.update(key(KeyCode::Char('R'))),
        vec![Op::ResumeTask {
            task_id: TASK_ID.into()
        }]
    );
    assert!(app.busy());
}

#[test]
fn a_finished_task_is_applied_or_discarded_after_a_yes() {
    let (mut app, sub) = running();
    assert!(
        app.update(key(KeyCode::Char('a'))).is_empty(),
        "not while it runs"
    );
    app.update(ev(
        &sub,
        None,
        EventMsg::RoundComplete {
            task_id: TASK_ID.into(),
            round: 1,
            approved: true,
            tests_passed: Some(true),
            tests_fail_before: Some(true),
            commit: Some("4fd1a64493".into()),
        },
    ));
    app.update(ev(
        &sub,
        None,
        EventMsg::TaskComplete {
            task_id: TASK_ID.into(),
            outcome: TaskOutcome::Converged,
            rounds: 1,
            kept: None,
        },
    ));
    assert!(!app.busy());
    snapshot("converged", &app);
    assert_eq!(
        app.update(key(KeyCode::Char('a'))),
        vec![Op::ApplyTask {
            task_id: TASK_ID.into()
        }]
    );
    assert!(app.update(key(KeyCode::Char('D'))).is_empty());
    assert_eq!(app.mode, Mode::Confirm(Confirm::Discard(TASK_ID.into())));
    assert_eq!(
        app.update(key(KeyCode::Char('y'))),
        vec![Op::DiscardTask {
            task_id: TASK_ID.into()
        }]
    );
    app.update(ev(
        "tui-9",
        None,
        EventMsg::TaskDiscarded {
            task_id: TASK_ID.into(),
        },
    ));
    assert!(
        app.update(key(KeyCode::Char('a'))).is_empty(),
        "a discarded task is not applied"
    );
}

#[test]
fn engine_errors_and_indexing_progress_show_in_the_ui() {
    let (mut app, sub) = running();
    app.update(ev(
        &sub,
        Some("reviewer"),
        EventMsg::Error {
            message: "the engine has stopped; restart troupe (see the log for the cause)".into(),
            fix: Some("restart troupe; `troupe doctor` checks the set-up".into()),
        },
    ));
    app.update(ev(
        "tui-4",
        None,
        EventMsg::IndexProgress {
            phase: "indexing".into(),
            done: 7,
            total: 12,
        },
    ));
    snapshot("engine_error_indexing", &app);
    let mut fresh = ready();
    fresh.update(ev(
        "tui-1",
        None,
        EventMsg::IndexState {
            exists: false,
            stale: true,
            files: 0,
            chunks: 0,
        },
    ));
    let screen = format!("{}", draw(&fresh, 80, 24).backend());
    assert!(screen.contains("no index (I: build)"), "{screen}");
    assert_eq!(fresh.update(key(KeyCode::Char('I'))), vec![Op::UpdateIndex]);
}

#[test]
fn no_color_draws_without_any_colour() {
    let (running_app, _) = running();
    let mut app = running_app.clone();
    app.color = false;
    let terminal = draw(&app, 120, 40);
    for cell in terminal.backend().buffer().content() {
        assert_eq!(cell.fg, Color::Reset, "{cell:?}");
        assert_eq!(cell.bg, Color::Reset, "{cell:?}");
    }
    // Focus stays visible without colour.
    let screen = format!("{}", terminal.backend());
    assert!(screen.contains("▶ writer"));
    assert!(
        terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .any(|c| c.modifier.contains(Modifier::REVERSED))
    );
    // With colour, the diff is coloured.
    let coloured = draw(&running_app, 120, 40);
    assert!(
        coloured
            .backend()
            .buffer()
            .content()
            .iter()
            .any(|c| c.fg == Color::Green)
    );
}

#[test]
fn every_state_draws_at_any_size_without_panicking() {
    let (mut app, _) = running();
    for mode in [
        Mode::Normal,
        Mode::Help,
        Mode::Tasks,
        Mode::TaskInput,
        Mode::Confirm(Confirm::Quit),
    ] {
        app.mode = mode;
        for zoomed in [false, true] {
            app.zoomed = zoomed;
            for (w, h) in [
                (1, 1),
                (10, 3),
                (20, 6),
                (40, 12),
                (80, 24),
                (200, 60),
                (300, 10),
            ] {
                let screen = format!("{}", draw(&app, w, h).backend());
                assert_eq!(screen.lines().count(), h as usize);
            }
        }
    }
    app.update(AppEvent::Resize(100, 30));
    assert_eq!((app.width, app.height), (100, 30));
}

#[test]
fn a_long_stream_is_bounded_and_draws_its_end() {
    let (mut app, sub) = running();
    for i in 0..10_000 {
        app.update(ev(
            &sub,
            Some("tester"),
            EventMsg::AgentMessageDelta {
                delta: format!("chunk {i}\n"),
            },
        ));
    }
    let tester = app.agents.iter().find(|a| a.name == "tester").unwrap();
    assert!(tester.lines.len() <= 4000);
    let screen = format!("{}", draw(&app, 120, 40).backend());
    assert!(screen.contains("chunk 9999"));
}

#[test]
fn events_of_another_submission_do_not_touch_the_panes() {
    let (mut app, _) = running();
    let before = app.agents[0].lines.clone();
    app.update(ev(
        "task-old",
        Some("writer"),
        EventMsg::AgentMessageDelta {
            delta: "stale output".into(),
        },
    ));
    assert_eq!(app.agents[0].lines, before);
}

#[test]
fn requests_from_other_terminals_show_in_the_status_bar_only() {
    let mut app = ready();
    app.remote_requests = 2;
    snapshot("serving_remote", &app);
    let bar = |app: &App| {
        let t = draw(app, 120, 40);
        let buffer = t.backend().buffer().clone();
        (0..120)
            .map(|x| buffer[(x, 39)].symbol().to_string())
            .collect::<String>()
    };
    assert!(bar(&app).contains("2 remote"), "{}", bar(&app));
    app.remote_requests = 0;
    assert!(!bar(&app).contains("remote"), "{}", bar(&app));
}
