//! The terminal UI (`troupe` with no command): the agents working at the same time, the diff,
//! the tests and the review, and keys to steer them.
//!
//! The shape of codex-rs's TUI: an [`App`] state updated by [`AppEvent`]s (session events,
//! keys, resizes, ticks), a pure [`render`] of it (so `TestBackend` frames are reproducible),
//! and one tokio `select!` loop reading crossterm's event stream and the session's events, so
//! neither waits on the other: a slow model never freezes the keys. Frames are coalesced to at
//! most one per [`FRAME`] while output streams; keys and resizes draw at once.
//!
//! The session starts in the background, so the UI draws before the model has loaded and a
//! start failure (a missing model, say) is shown with its fix instead of ending the program.
//! The terminal is restored (raw mode off, main screen back) on every way out: a normal quit,
//! an error, a panic (the hook) and SIGTERM/SIGHUP/SIGINT.
//!
//! While it runs it is the repository's instance, as `troupe lsp` is: it listens on
//! `.troupe/editor.sock` ([`crate::editor::instance::Relay`]), so one-shot commands of other
//! terminals (`troupe search`, `ask`, `explain`, `edit`, `review`) run on its session, with its
//! loaded models. Their events go back to them and never onto the screen; the status bar counts
//! them (`N remote`). When another instance listens already, the UI carries on without.
//!
//! Speaks only to [`crate::agents`] and [`crate::protocol`] (a test enforces it; the socket's
//! transport in [`crate::editor::instance`] carries protocol messages only).

pub mod app;
pub mod bench;
pub mod render;

#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use crossterm::event::{Event as TermEvent, EventStream};
use futures::StreamExt;

pub use app::{App, AppEvent};
pub use render::render;

use crate::agents::session::error_event;
use crate::agents::{Session, SessionOptions};
use crate::commands::{Context, exit};
use crate::protocol::{EventMsg, Op, Submission};

/// The shortest time between two frames while output streams (about 30 frames a second).
pub const FRAME: Duration = Duration::from_millis(33);

/// How long quitting waits for the session to wind down (tasks record their end) before it
/// leaves anyway; the tasks' state is on disk already.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Runs the terminal UI on the repository of `ctx` until the user quits.
pub fn run(ctx: &Context) -> anyhow::Result<u8> {
    let repo = match &ctx.repo {
        Some(r) => r.clone(),
        None => bail!(
            "{}",
            ctx.repo_error
                .clone()
                .unwrap_or_else(|| "not inside a git repository; pass --repo PATH".into())
        ),
    };
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "the terminal UI needs a terminal; for scripts use `troupe run TASK` (add --json for one event per line)"
        );
    }
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let options = SessionOptions::new(&repo, ctx.config.config.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let mut guard = TerminalGuard::enter()?;
        event_loop(&mut guard.terminal, options, color).await
        // `guard` restores the terminal here, before the runtime winds down.
    });
    // Work still running (a model request mid-step) gets a moment, then is left behind.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result.map(|()| exit::OK)
}

/// Raw mode and the alternate screen while it lives; restored when dropped, and by the panic
/// hook `ratatui::try_init` installs.
struct TerminalGuard {
    terminal: ratatui::DefaultTerminal,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        let terminal = ratatui::try_init().context("cannot set up the terminal")?;
        Ok(Self { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

async fn next_event(session: &mut Option<Session>) -> Option<crate::protocol::Event> {
    match session {
        Some(s) => s.next_event().await,
        None => std::future::pending().await,
    }
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    options: SessionOptions,
    color: bool,
) -> anyhow::Result<()> {
    let mut app = App::new(color);
    if let Ok(size) = terminal.size() {
        app.width = size.width;
        app.height = size.height;
    }
    // One-shot commands of other terminals (`troupe search`, `troupe ask`, ...) reuse this
    // session through the socket, as they would a `troupe lsp`.
    let mut served = Served::listen(&options.repo).await;
    // Their requests that came before the session was ready.
    let mut queued: Vec<Submission> = Vec::new();
    let mut starting = tokio::spawn(Session::start(options));
    let mut session: Option<Session> = None;
    let mut keys = EventStream::new();
    let mut frame_tick = tokio::time::interval(FRAME);
    frame_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut spin = tokio::time::interval(Duration::from_millis(120));
    spin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut signals = Signals::new()?;
    let mut quitting: Option<Instant> = None;
    let mut next_sub = 0u64;
    terminal.draw(|f| render(&app, f))?;
    let mut last_draw = Instant::now();
    loop {
        let mut draw_now = false;
        let mut ops = Vec::new();
        tokio::select! {
            started = &mut starting, if session.is_none() && app.startup == app::Startup::Loading => {
                match started {
                    Ok(Ok(s)) => {
                        ops.push(Op::IndexStatus);
                        for sub in queued.drain(..) {
                            let id = sub.id.clone();
                            if let Err(e) = s.submit(sub) {
                                served.fail(&id, &e.to_string());
                            }
                        }
                        session = Some(s);
                    }
                    Ok(Err(e)) => {
                        let (message, fix) = match error_event(&e) {
                            EventMsg::Error { message, fix } => (message, fix),
                            _ => (e.to_string(), None),
                        };
                        served.fail_all(&message);
                        queued.clear();
                        app.update(AppEvent::StartFailed { message, fix });
                    }
                    Err(e) => {
                        let message = format!("starting the session failed: {e}");
                        served.fail_all(&message);
                        queued.clear();
                        app.update(AppEvent::StartFailed {
                            message,
                            fix: Some("see .troupe/logs/troupe.log".into()),
                        });
                    }
                }
                draw_now = true;
            }
            event = next_event(&mut session) => match event {
                Some(e) => {
                    let done = matches!(e.msg, EventMsg::ShutdownComplete);
                    // Events of requests from other terminals go back to them, not on screen.
                    if let Some(e) = served.route(e) {
                        app.update(AppEvent::Protocol(e));
                    }
                    if done {
                        break;
                    }
                }
                None => break,
            },
            incoming = served.next() => match (incoming, &session) {
                (Incoming::Request(sub), Some(s)) => {
                    let id = sub.id.clone();
                    if let Err(e) = s.submit(sub) {
                        served.fail(&id, &e.to_string());
                    }
                }
                (Incoming::Request(sub), None) => match app.startup {
                    app::Startup::Failed => served.fail(&sub.id, "the session of the troupe terminal UI did not start"),
                    _ => queued.push(sub),
                },
                (Incoming::Gone(id), Some(s)) => {
                    let _ = s.submit(Submission {
                        id: format!("cancel-{id}"),
                        op: Op::Cancel { id },
                    });
                }
                (Incoming::Gone(id), None) => queued.retain(|q| q.id != id),
            },
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(k))) => {
                    ops = app.update(AppEvent::Key(k));
                    draw_now = true;
                }
                Some(Ok(TermEvent::Resize(w, h))) => {
                    app.update(AppEvent::Resize(w, h));
                    terminal.autoresize()?;
                    draw_now = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading the terminal"),
                None => break,
            },
            _ = frame_tick.tick() => {}
            _ = spin.tick() => {
                app.update(AppEvent::Tick);
            }
            () = signals.recv() => {
                app.quit = true;
            }
        }
        if let Some(s) = &session {
            for op in ops {
                next_sub += 1;
                let id = match &op {
                    Op::UserTask { .. } | Op::ResumeTask { .. } => app
                        .task
                        .as_ref()
                        .map_or_else(|| format!("tui-{next_sub}"), |t| t.sub_id.clone()),
                    Op::Search { .. } => format!("search-{next_sub}"),
                    _ => format!("tui-{next_sub}"),
                };
                s.submit(Submission { id, op })?;
            }
        }
        if app.quit && quitting.is_none() {
            quitting = Some(Instant::now());
            match &session {
                Some(s) => {
                    s.submit(Submission {
                        id: "quit".into(),
                        op: Op::Shutdown,
                    })?;
                    app.update(AppEvent::Protocol(crate::protocol::Event {
                        id: "quit".into(),
                        agent: None,
                        msg: EventMsg::Warning {
                            message: "shutting down: cancelling running work...".into(),
                        },
                    }));
                    draw_now = true;
                }
                None => break,
            }
        }
        if quitting.is_some_and(|q| q.elapsed() > SHUTDOWN_WAIT) {
            break;
        }
        if app.remote_requests != served.waiting() {
            app.remote_requests = served.waiting();
            app.dirty = true;
        }
        if app.dirty && (draw_now || last_draw.elapsed() >= FRAME) {
            terminal.draw(|f| render(&app, f))?;
            app.dirty = false;
            last_draw = Instant::now();
        }
    }
    served.fail_all("the troupe terminal UI quit before the answer was complete");
    // `served` removes the socket file when dropped.
    Ok(())
}

#[cfg(unix)]
use crate::editor::instance::{Incoming, Relay as Served};

/// Without Unix domain sockets there is no instance to serve: nothing ever comes.
#[cfg(not(unix))]
mod no_socket {
    use crate::protocol::{Event, Submission};

    pub enum Incoming {
        Request(Submission),
        Gone(String),
    }

    pub struct Served;

    impl Served {
        pub async fn listen(_repo: &std::path::Path) -> Self {
            Served
        }
        pub async fn next(&mut self) -> Incoming {
            std::future::pending().await
        }
        pub fn route(&mut self, event: Event) -> Option<Event> {
            Some(event)
        }
        pub fn waiting(&self) -> usize {
            0
        }
        pub fn fail(&mut self, _id: &str, _message: &str) {}
        pub fn fail_all(&mut self, _message: &str) {}
    }
}
#[cfg(not(unix))]
use no_socket::{Incoming, Served};

/// SIGTERM, SIGHUP and SIGINT sent from outside (in raw mode Ctrl-C arrives as a key).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
