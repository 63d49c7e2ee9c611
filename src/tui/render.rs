//! Drawing: a pure function of the [`App`] state, so a `TestBackend` frame is reproducible.
//!
//! ```text
//! header: the task (or the input being typed), its round and state
//! ┌ writer ─────┐┌ reviewer ───┐┌ tester ─────┐   one pane per agent, streaming
//! └─────────────┘└─────────────┘└─────────────┘
//! ┌ diff ───────────────┐┌ tests ──────────────┐
//! │ +/-/@@ coloured     │├ review ─────────────┤   (search results join this column)
//! └─────────────────────┘└─────────────────────┘
//! approval request / last notice (errors with their fix)
//! status bar: model, tok/s, sequences, cached prompt tokens, KV, index
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::app::{
    AgentState, App, Confirm, IndexView, Level, LineKind, Mode, OUTPUT_TAIL, Pane, Startup,
    status_text,
};
use crate::protocol::{Severity, TaskOutcome};

const SPINNER: [&str; 8] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧"];

/// Draws the whole UI.
pub fn render(app: &App, frame: &mut Frame) {
    let t = Theme { color: app.color };
    let area = frame.area();
    let notice_rows = notice_lines(app, &t, area.width).len() as u16;
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(notice_rows),
            Constraint::Length(1),
        ])
        .split(area);
    header(app, &t, frame, rows[0]);
    body(app, &t, frame, rows[1]);
    frame.render_widget(Paragraph::new(notice_lines(app, &t, area.width)), rows[2]);
    status_bar(app, &t, frame, rows[3]);
    match &app.mode {
        Mode::Help => help(&t, frame, rows[1]),
        Mode::Tasks => tasks(app, &t, frame, rows[1]),
        Mode::Confirm(c) => confirm(c, &t, frame, rows[1]),
        Mode::Normal | Mode::TaskInput | Mode::SearchInput => {}
    }
    if app.startup == Startup::Failed && app.mode == Mode::Normal {
        start_failed(app, &t, frame, rows[1]);
    }
}

/// Styles that fall back to no colour (NO_COLOR); bold and reverse stay.
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default()
        }
    }

    fn bold(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }

    fn bar(&self) -> Style {
        if self.color {
            Style::default().bg(Color::Blue).fg(Color::White)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
}

fn spinner(app: &App) -> &'static str {
    SPINNER[(app.ticks as usize) % SPINNER.len()]
}

fn header(app: &App, t: &Theme, frame: &mut Frame, area: Rect) {
    let line = match app.mode {
        Mode::TaskInput => Line::from(vec![
            Span::styled(" new task> ", t.bold()),
            Span::raw(app.input.clone()),
            Span::styled("█", t.dim()),
            Span::styled("   enter: start  esc: back", t.dim()),
        ]),
        Mode::SearchInput => Line::from(vec![
            Span::styled(" search> ", t.bold()),
            Span::raw(app.input.clone()),
            Span::styled("█", t.dim()),
            Span::styled("   enter: search  esc: back", t.dim()),
        ]),
        _ => match (&app.startup, &app.task) {
            (Startup::Loading, _) => Line::from(vec![
                Span::styled(" troupe ", t.bold()),
                Span::raw(format!("{} loading the model...", spinner(app))),
            ]),
            (Startup::Failed, _) => Line::from(vec![
                Span::styled(" troupe ", t.bold()),
                Span::styled("could not start", t.fg(Color::Red)),
                Span::styled("  ?: help  q: quit", t.dim()),
            ]),
            (_, None) => Line::from(vec![
                Span::styled(" troupe ", t.bold()),
                Span::styled("n: new task  /: search  t: earlier tasks  ?: help", t.dim()),
            ]),
            (_, Some(task)) => {
                let state = match (task.settled, task.outcome, task.reopened) {
                    (Some(s), _, _) => Span::styled(s, t.fg(Color::Cyan)),
                    (None, Some(TaskOutcome::Converged), _) => {
                        Span::styled("converged", t.fg(Color::Green).add_modifier(Modifier::BOLD))
                    }
                    (None, Some(TaskOutcome::BudgetExhausted), _) => {
                        Span::styled("not converged", t.fg(Color::Yellow))
                    }
                    (None, Some(TaskOutcome::Cancelled), _) => {
                        Span::styled("cancelled", t.fg(Color::Yellow))
                    }
                    (None, Some(TaskOutcome::Failed), _) => {
                        Span::styled("failed", t.fg(Color::Red))
                    }
                    (None, None, true) => Span::styled("saved, unfinished", t.fg(Color::Yellow)),
                    (None, None, false) => {
                        Span::styled(format!("{} running", spinner(app)), t.fg(Color::Cyan))
                    }
                };
                let id = task.task_id.as_deref().unwrap_or("starting");
                let rounds = if task.outcome.is_none() && !task.reopened {
                    format!("round {} · ", task.round + 1)
                } else {
                    format!("{} round(s) · ", task.round)
                };
                Line::from(vec![
                    Span::styled(format!(" task {id} "), t.bold()),
                    Span::raw(rounds),
                    state,
                    Span::raw(" · "),
                    Span::raw(super::app::one_line(&task.text, 200)),
                ])
            }
        },
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn body(app: &App, t: &Theme, frame: &mut Frame, area: Rect) {
    if app.zoomed {
        pane(app, t, frame, area, &app.focus);
        return;
    }
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(area);
    let n = app.agents.len().max(1) as u32;
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints((0..n).map(|_| Constraint::Ratio(1, n)))
        .split(rows[0]);
    for (a, r) in app.agents.iter().zip(cols.iter()) {
        pane(app, t, frame, *r, &Pane::Agent(a.name.clone()));
    }
    let bottom = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
        .split(rows[1]);
    pane(app, t, frame, bottom[0], &Pane::Diff);
    let side: Vec<Pane> = if app.shows_search() {
        vec![Pane::Tests, Pane::Review, Pane::Search]
    } else {
        vec![Pane::Tests, Pane::Review]
    };
    // Search results get half the column: they are what the user just asked for.
    let shares: &[u32] = if side.len() == 3 { &[1, 1, 2] } else { &[1, 1] };
    let right = Layout::default()
        .direction(Direction::Vertical)
        .constraints(
            shares
                .iter()
                .map(|s| Constraint::Ratio(*s, shares.iter().sum())),
        )
        .split(bottom[1]);
    for (p, r) in side.iter().zip(right.iter()) {
        pane(app, t, frame, *r, p);
    }
}

fn pane(app: &App, t: &Theme, frame: &mut Frame, area: Rect, which: &Pane) {
    let focused = app.focus == *which;
    let mut title = vec![Span::styled(
        format!(" {}{} ", if focused { "▶ " } else { "" }, which.title()),
        if focused { t.bold() } else { Style::default() },
    )];
    let inner_w = area.width.saturating_sub(2) as usize;
    let inner_h = area.height.saturating_sub(2) as usize;
    let scroll = app.scroll.get(which).copied().unwrap_or(0);
    let lines: Vec<Line> = match which {
        Pane::Agent(name) => {
            let Some(a) = app.agents.iter().find(|a| a.name == *name) else {
                return;
            };
            let (mark, style) = match a.state {
                AgentState::Idle => ("idle".to_string(), t.dim()),
                AgentState::Streaming => (format!("{} streaming", spinner(app)), t.fg(Color::Cyan)),
                AgentState::Working => (format!("{} working", spinner(app)), t.fg(Color::Yellow)),
                AgentState::Done => ("done".to_string(), t.fg(Color::Green)),
            };
            title.push(Span::styled(mark, style));
            if a.tokens > 0 {
                title.push(Span::raw(format!(" · {} tok ", a.tokens)));
            } else {
                title.push(Span::raw(" "));
            }
            if a.lines.is_empty() {
                let text = match (a.state, &app.task) {
                    (AgentState::Idle, Some(_)) => "waiting for its turn",
                    _ => "no output yet",
                };
                vec![Line::styled(text, t.dim())]
            } else {
                tail_wrapped(
                    a.lines
                        .iter()
                        .map(|l| (l.text.as_str(), kind_style(t, l.kind))),
                    inner_w,
                    inner_h,
                    scroll,
                )
            }
        }
        Pane::Diff => {
            let (plus, minus) = diff_counts(&app.diff);
            if !app.diff.trim().is_empty() {
                title.push(Span::styled(format!("+{plus}"), t.fg(Color::Green)));
                title.push(Span::raw(" "));
                title.push(Span::styled(format!("-{minus} "), t.fg(Color::Red)));
            }
            if app.diff.trim().is_empty() {
                vec![Line::styled("no change yet", t.dim())]
            } else {
                app.diff
                    .lines()
                    .skip(scroll)
                    .take(inner_h)
                    .map(|l| Line::styled(clip(l, inner_w), diff_style(t, l)))
                    .collect()
            }
        }
        Pane::Tests => tests_lines(app, t, inner_w, &mut title)
            .into_iter()
            .skip(scroll)
            .take(inner_h)
            .collect(),
        Pane::Review => review_lines(app, t, inner_w, &mut title)
            .into_iter()
            .skip(scroll)
            .take(inner_h)
            .collect(),
        Pane::Search => search_lines(app, t, inner_w)
            .into_iter()
            .skip(scroll)
            .take(inner_h)
            .collect(),
    };
    let border = if focused {
        t.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    } else {
        t.dim()
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(border)
        .title(Line::from(title));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn kind_style(t: &Theme, k: LineKind) -> Style {
    match k {
        LineKind::Text => Style::default(),
        LineKind::Call => t.fg(Color::Cyan),
        LineKind::Ok => t.fg(Color::Green),
        LineKind::Failed => t.fg(Color::Red),
        LineKind::Note => t.dim(),
    }
}

fn diff_style(t: &Theme, line: &str) -> Style {
    if line.starts_with("diff --git")
        || line.starts_with("+++")
        || line.starts_with("---")
        || line.starts_with("index ")
    {
        t.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    } else if line.starts_with("@@") {
        t.fg(Color::Cyan)
    } else if line.starts_with('+') {
        t.fg(Color::Green)
    } else if line.starts_with('-') {
        t.fg(Color::Red)
    } else {
        Style::default()
    }
}

fn diff_counts(diff: &str) -> (usize, usize) {
    diff.lines().fold((0, 0), |(p, m), l| {
        if l.starts_with('+') && !l.starts_with("+++") {
            (p + 1, m)
        } else if l.starts_with('-') && !l.starts_with("---") {
            (p, m + 1)
        } else {
            (p, m)
        }
    })
}

fn tests_lines<'a>(
    app: &'a App,
    t: &Theme,
    width: usize,
    title: &mut Vec<Span<'a>>,
) -> Vec<Line<'a>> {
    if let Some(task) = &app.task {
        match task.tests_passed {
            Some(true) => title.push(Span::styled("pass ", t.fg(Color::Green))),
            Some(false) => title.push(Span::styled("fail ", t.fg(Color::Red))),
            None => {}
        }
    }
    if app.commands.is_empty() {
        return vec![Line::styled("no test run yet", t.dim())];
    }
    let mut out = Vec::new();
    for run in app.commands.iter().rev() {
        out.push(Line::from(vec![
            Span::styled(clip(&format!("$ {}", run.command), width), t.bold()),
            Span::styled(format!("  [{}]", run.agent), t.dim()),
        ]));
        match &run.result {
            None => out.push(Line::styled(
                format!("  {} running", spinner(app)),
                t.fg(Color::Cyan),
            )),
            Some(r) => {
                let ok = r.exit_code == Some(0) && !r.timed_out;
                out.push(Line::styled(
                    format!(
                        "  {} · {:.1} s",
                        status_text(r.exit_code, r.timed_out),
                        r.duration_ms as f64 / 1000.0
                    ),
                    if ok {
                        t.fg(Color::Green)
                    } else {
                        t.fg(Color::Red)
                    },
                ));
                let lines: Vec<&str> = r.output.lines().collect();
                let from = lines.len().saturating_sub(OUTPUT_TAIL);
                for l in &lines[from..] {
                    out.push(Line::styled(clip(&format!("  {l}"), width), t.dim()));
                }
            }
        }
    }
    out
}

fn review_lines<'a>(
    app: &'a App,
    t: &Theme,
    width: usize,
    title: &mut Vec<Span<'a>>,
) -> Vec<Line<'a>> {
    // A verdict only once a reviewer took part (a round without a diff has none).
    let reviewed = app
        .agents
        .iter()
        .any(|a| a.name.starts_with("review") && a.state != AgentState::Idle);
    if let Some(approved) = app
        .task
        .as_ref()
        .and_then(|t| t.approved)
        .filter(|_| reviewed)
    {
        title.push(if approved {
            Span::styled("approved ", t.fg(Color::Green))
        } else {
            Span::styled("changes requested ", t.fg(Color::Yellow))
        });
    }
    if app.findings.is_empty() {
        return vec![Line::styled("no findings yet", t.dim())];
    }
    let mut out = Vec::new();
    for (who, f) in &app.findings {
        let (label, style) = match f.severity {
            Severity::High => ("HIGH", t.fg(Color::Red).add_modifier(Modifier::BOLD)),
            Severity::Medium => ("MED ", t.fg(Color::Yellow)),
            Severity::Low => ("LOW ", t.fg(Color::Cyan)),
            Severity::Info => ("INFO", t.dim()),
        };
        out.push(Line::from(vec![
            Span::styled(label, style),
            Span::raw(clip(
                &format!(" {}:{}-{} {}", f.file, f.start_line, f.end_line, f.title),
                width.saturating_sub(4),
            )),
        ]));
        out.push(Line::styled(
            clip(
                &format!("     {} ({who})", super::app::one_line(&f.explanation, 500)),
                width,
            ),
            t.dim(),
        ));
        if let Some(s) = &f.suggestion {
            out.push(Line::styled(
                clip(
                    &format!("     fix: {}", super::app::one_line(s, 500)),
                    width,
                ),
                t.dim(),
            ));
        }
    }
    out
}

fn search_lines<'a>(app: &'a App, t: &Theme, width: usize) -> Vec<Line<'a>> {
    let mut out = vec![Line::from(vec![
        Span::styled("query: ", t.dim()),
        Span::styled(clip(&app.search_query, width.saturating_sub(20)), t.bold()),
        Span::raw(if app.searching {
            format!("  {} searching", spinner(app))
        } else {
            format!("  {} results", app.search.len())
        }),
    ])];
    for r in &app.search {
        let symbol = if r.symbol.is_empty() {
            String::new()
        } else {
            format!(" {}", r.symbol)
        };
        out.push(Line::from(vec![
            Span::styled(
                format!("{}:{}-{}", r.path, r.start_line, r.end_line),
                t.fg(Color::Cyan),
            ),
            Span::styled(clip(&symbol, width), t.bold()),
        ]));
        let first = r
            .snippet
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        out.push(Line::styled(
            clip(&format!("  {}", first.trim()), width),
            t.dim(),
        ));
    }
    out
}

fn notice_lines(app: &App, t: &Theme, width: u16) -> Vec<Line<'static>> {
    let w = width as usize;
    let mut out = Vec::new();
    if let Some(a) = app.approvals.front() {
        let more = if app.approvals.len() > 1 {
            format!(" (+{} more)", app.approvals.len() - 1)
        } else {
            String::new()
        };
        out.push(Line::from(vec![
            Span::styled(" approve? ", t.bar().add_modifier(Modifier::BOLD)),
            Span::styled(
                clip(
                    &format!(
                        " {} wants to run `{}`{more} · y: run it  r: reject",
                        a.agent, a.command
                    ),
                    w.saturating_sub(10),
                ),
                t.fg(Color::Yellow).add_modifier(Modifier::BOLD),
            ),
        ]));
    }
    if let Some(n) = app.notices.last() {
        let (label, style) = match n.level {
            Level::Error => ("error: ", t.fg(Color::Red).add_modifier(Modifier::BOLD)),
            Level::Warning => ("warning: ", t.fg(Color::Yellow)),
            Level::Info => ("", Style::default()),
        };
        out.push(Line::from(vec![
            Span::styled(format!(" {label}"), style),
            Span::raw(clip(&n.text, w.saturating_sub(label.len() + 2))),
        ]));
        if let Some(fix) = &n.fix {
            out.push(Line::from(vec![
                Span::styled("   fix: ", t.fg(Color::Green).add_modifier(Modifier::BOLD)),
                Span::raw(clip(fix, w.saturating_sub(9))),
            ]));
        }
    }
    out
}

fn status_bar(app: &App, t: &Theme, frame: &mut Frame, area: Rect) {
    let model = std::path::Path::new(&app.model)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| app.model.clone());
    let model = if model.is_empty() {
        match app.startup {
            Startup::Failed => "no model".to_string(),
            _ => "loading".to_string(),
        }
    } else {
        model.trim_end_matches(".gguf").to_string()
    };
    let narrow = area.width < 100;
    let sep = if narrow { " " } else { " │ " };
    let engine = match &app.metrics {
        Some(m) => {
            let kv = if m.kv_total > 0 {
                format!(
                    "{sep}kv {}%",
                    (u64::from(m.kv_used) * 100) / u64::from(m.kv_total)
                )
            } else {
                String::new()
            };
            format!(
                "{:.1} tok/s{sep}{} seq{sep}{} cached{kv}",
                m.aggregate_tok_s,
                m.active_sequences,
                human_count(m.cached_prompt_tokens)
            )
        }
        None => "engine idle".to_string(),
    };
    let engine = match app.remote_requests {
        0 => engine,
        n => format!("{engine}{sep}{n} remote"),
    };
    let model = if narrow { clip(&model, 22) } else { model };
    let index = match &app.index {
        IndexView::Unknown => "index ?".to_string(),
        IndexView::Missing => "no index (I: build)".to_string(),
        IndexView::Ready {
            stale,
            files,
            chunks,
        } => {
            let state = if *stale {
                "stale (I: update)"
            } else {
                "current"
            };
            if narrow {
                format!("index {state}")
            } else {
                format!("index {state} · {files} files · {chunks} chunks")
            }
        }
        IndexView::Indexing { phase, done, total } => {
            if *total > 0 {
                format!("{} {phase} {done}/{total}", spinner(app))
            } else {
                format!("{} {phase}", spinner(app))
            }
        }
    };
    let text = if narrow {
        format!(" {model} │ {engine} │ {index} │ ? ")
    } else {
        format!(" {model} │ {engine} │ {index} │ ?: help ")
    };
    let width = area.width as usize;
    let padded = format!("{:<width$}", clip(&text, width));
    frame.render_widget(Paragraph::new(Line::styled(padded, t.bar())), area);
}

fn human_count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// The part of `area` a centred box of `w` x `h` takes.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Every key, as the help overlay lists it.
pub const KEYS: [(&str, &str); 20] = [
    ("n", "new task"),
    ("tab / shift-tab", "move focus between panes (also ← →)"),
    ("↑ ↓ pgup pgdn", "scroll the focused pane (also j k)"),
    ("home end", "top / end (also g G)"),
    ("z / enter", "zoom the focused pane"),
    ("c", "cancel the task"),
    ("x", "cancel the focused agent's turn"),
    ("y / r", "approve / reject the pending command"),
    ("a", "apply the finished change to your tree"),
    ("D", "discard the task (worktree and branch)"),
    ("/", "search the repository"),
    ("t", "earlier tasks (enter: reopen)"),
    ("R", "resume a reopened, unfinished task"),
    ("I", "build or update the index"),
    ("esc", "unzoom, clear messages, leave a prompt"),
    ("?", "this help"),
    ("q / ctrl-c", "quit (asks while work runs)"),
    ("", ""),
    ("", "tasks are saved in .troupe/tasks as they run"),
    ("", "any key closes this help"),
];

fn help(t: &Theme, frame: &mut Frame, area: Rect) {
    let r = centered(area, 64, KEYS.len() as u16 + 2);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!(" {k:>15}  "),
                    t.fg(Color::Yellow).add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")),
        r,
    );
}

fn tasks(app: &App, t: &Theme, frame: &mut Frame, area: Rect) {
    let r = centered(
        area,
        area.width.saturating_sub(4).max(40),
        area.height.saturating_sub(2),
    );
    let inner_h = r.height.saturating_sub(2) as usize;
    let w = r.width.saturating_sub(2) as usize;
    let mut lines = Vec::new();
    if app.saved_tasks.is_empty() {
        lines.push(Line::styled("no saved tasks yet; n starts one", t.dim()));
    }
    let first = app.selected_task.saturating_sub(inner_h.saturating_sub(1));
    for (i, task) in app.saved_tasks.iter().enumerate().skip(first).take(inner_h) {
        let text = format!(
            "{:<21} {:<16} {:>5}  {}",
            task.id,
            task.status,
            format!("{}/{}", task.rounds_done, task.max_rounds),
            super::app::one_line(&task.text, 200)
        );
        let style = if i == app.selected_task {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        lines.push(Line::styled(clip(&text, w), style));
    }
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" earlier tasks · enter: reopen  esc: close "),
        ),
        r,
    );
}

fn confirm(c: &Confirm, t: &Theme, frame: &mut Frame, area: Rect) {
    let text = match c {
        Confirm::Quit => "Work is running. Quit and cancel it? Its state is saved.".to_string(),
        Confirm::Discard(id) => format!("Discard task {id}? Its worktree and branch are deleted."),
    };
    let r = centered(area, 62, 5);
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(vec![
            Line::raw(text),
            Line::raw(""),
            Line::styled("y: yes   any other key: no", t.bold()),
        ])
        .wrap(Wrap { trim: true })
        .block(Block::default().borders(Borders::ALL).title(" confirm ")),
        r,
    );
}

fn start_failed(app: &App, t: &Theme, frame: &mut Frame, area: Rect) {
    let Some(n) = app.notices.iter().rev().find(|n| n.level == Level::Error) else {
        return;
    };
    let mut lines = vec![
        Line::styled(
            "troupe could not start",
            t.fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        Line::raw(""),
        Line::raw(n.text.clone()),
    ];
    if let Some(fix) = &n.fix {
        lines.push(Line::raw(""));
        lines.push(Line::from(vec![
            Span::styled("fix: ", t.fg(Color::Green).add_modifier(Modifier::BOLD)),
            Span::raw(fix.clone()),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled("q: quit   ?: help", t.dim()));
    let r = centered(area, area.width.saturating_sub(8).max(30), 11);
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" error ")),
        r,
    );
}

/// The last `height` rows of `lines` wrapped to `width`, `scroll` rows up from the end. Only
/// the lines that can show are wrapped, so a long stream costs no more than a short one.
fn tail_wrapped<'a>(
    lines: impl DoubleEndedIterator<Item = (&'a str, Style)>,
    width: usize,
    height: usize,
    scroll: usize,
) -> Vec<Line<'a>> {
    let width = width.max(1);
    let want = height + scroll;
    let mut rows: Vec<Line<'a>> = Vec::new();
    for (text, style) in lines.rev() {
        let mut pieces = wrap(text, width);
        while let Some(p) = pieces.pop() {
            rows.push(Line::styled(p, style));
        }
        if rows.len() >= want {
            break;
        }
    }
    // `rows` is newest first; drop the scrolled-away rows, keep `height`, restore the order.
    let skip = scroll.min(rows.len().saturating_sub(height.min(rows.len())));
    let mut shown: Vec<Line<'a>> = rows.into_iter().skip(skip).take(height).collect();
    shown.reverse();
    shown
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    if text.is_empty() {
        return vec![String::new()];
    }
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(width).map(|c| c.iter().collect()).collect()
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else if width == 0 {
        String::new()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}
