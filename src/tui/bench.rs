//! `troupe bench tui`: the time to update and draw one frame while four agents stream, on a
//! `TestBackend` (no terminal I/O: what is measured is troupe's own work per frame), next to
//! an idle frame of the same screen for comparison.

use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::app::{App, AppEvent};
use super::render::render;
use crate::protocol::{Event, EventMsg};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchTuiArgs {
    /// Agents streaming at the same time.
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Frames measured (after 50 warm-up frames).
    #[arg(long, default_value_t = 2000)]
    pub frames: usize,
    /// Screen size, WIDTHxHEIGHT.
    #[arg(long, default_value = "120x40")]
    pub size: String,
    /// Streamed characters per agent per frame (about four tokens).
    #[arg(long, default_value_t = 16)]
    pub chars_per_frame: usize,
}

/// Frame-time percentiles, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FrameTimes {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// The result of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchTuiReport {
    pub agents: usize,
    pub frames: usize,
    pub width: u16,
    pub height: u16,
    /// Lines each agent pane held at the end.
    pub lines_per_agent: usize,
    /// Four agents streaming: events applied and the frame drawn.
    pub streaming: FrameTimes,
    /// The same screen with nothing new: the frame drawn only.
    pub idle: FrameTimes,
}

/// Runs the benchmark.
pub fn run(args: &BenchTuiArgs) -> anyhow::Result<BenchTuiReport> {
    let (w, h) = parse_size(&args.size)?;
    let agents: Vec<String> = [
        "writer",
        "reviewer",
        "tester",
        "reviewer-2",
        "tester-2",
        "docs",
    ]
    .iter()
    .cycle()
    .take(args.agents.max(1))
    .enumerate()
    .map(|(i, n)| {
        if i < 6 {
            n.to_string()
        } else {
            format!("agent-{i}")
        }
    })
    .collect();
    let mut app = App::new(true);
    app.width = w;
    app.height = h;
    let mut terminal = Terminal::new(TestBackend::new(w, h))?;
    let ev = |agent: Option<&str>, msg: EventMsg| {
        AppEvent::Protocol(Event {
            id: "task-1".into(),
            agent: agent.map(str::to_string),
            msg,
        })
    };
    app.update(ev(
        None,
        EventMsg::SessionConfigured {
            model: "model.gguf".into(),
            repo: "/repo".into(),
        },
    ));
    app.update(AppEvent::Key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Char('n'),
    )));
    for c in "stream".chars() {
        app.update(AppEvent::Key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Char(c),
        )));
    }
    app.update(AppEvent::Key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Enter,
    )));
    app.update(ev(
        None,
        EventMsg::TaskStarted {
            task_id: "bench".into(),
            text: "stream".into(),
        },
    ));
    app.update(ev(
        None,
        EventMsg::DiffUpdated {
            diff: SAMPLE_DIFF.into(),
        },
    ));
    let words = "let value = compute(input, &options)?; // the next step reads it\n";
    let mut cursor = 0usize;
    let mut next_delta = || {
        let chars: Vec<char> = words.chars().collect();
        let s: String = (0..args.chars_per_frame)
            .map(|i| chars[(cursor + i) % chars.len()])
            .collect();
        cursor += args.chars_per_frame;
        s
    };
    let mut streaming = Vec::with_capacity(args.frames);
    for frame in 0..(args.frames + 50) {
        let start = Instant::now();
        for a in &agents {
            app.update(ev(
                Some(a),
                EventMsg::AgentMessageDelta {
                    delta: next_delta(),
                },
            ));
        }
        if frame % 25 == 0 {
            app.update(ev(
                Some(&agents[frame / 25 % agents.len()]),
                EventMsg::EngineMetrics {
                    active_sequences: agents.len() as u32,
                    aggregate_tok_s: 120.0,
                    cached_prompt_tokens: 4096,
                    kv_used: 3000,
                    kv_total: 8192,
                },
            ));
        }
        terminal.draw(|f| render(&app, f))?;
        if frame >= 50 {
            streaming.push(start.elapsed());
        }
    }
    let mut idle = Vec::with_capacity(args.frames);
    for _ in 0..args.frames {
        let start = Instant::now();
        terminal.draw(|f| render(&app, f))?;
        idle.push(start.elapsed());
    }
    Ok(BenchTuiReport {
        agents: agents.len(),
        frames: args.frames,
        width: w,
        height: h,
        lines_per_agent: app.agents.iter().map(|a| a.lines.len()).max().unwrap_or(0),
        streaming: percentiles(streaming),
        idle: percentiles(idle),
    })
}

/// Prints a report as text, or as one JSON object.
pub fn print(report: &BenchTuiReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!(
            "{} agents streaming, {}x{}, {} frames ({} lines per agent pane at the end)",
            report.agents, report.width, report.height, report.frames, report.lines_per_agent
        );
        for (what, t) in [("streaming", &report.streaming), ("idle", &report.idle)] {
            println!(
                "  {what:<9} frame p50 {:.3} ms  p95 {:.3} ms  max {:.3} ms",
                t.p50_ms, t.p95_ms, t.max_ms
            );
        }
    }
    Ok(())
}

fn percentiles(mut v: Vec<Duration>) -> FrameTimes {
    v.sort();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    FrameTimes {
        p50_ms: at(0.5),
        p95_ms: at(0.95),
        max_ms: at(1.0),
    }
}

fn parse_size(s: &str) -> anyhow::Result<(u16, u16)> {
    let bad = || anyhow::anyhow!("bad --size `{s}`: expected WIDTHxHEIGHT, e.g. 120x40");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (u16, u16) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w < 20 || h < 10 {
        return Err(bad());
    }
    Ok((w, h))
}

const SAMPLE_DIFF: &str = "diff --git a/src/lib.rs b/src/lib.rs
index 1111111..2222222 100644
--- a/src/lib.rs
+++ b/src/lib.rs
@@ -1,6 +1,8 @@
 pub fn add(a: i32, b: i32) -> i32 {
-    a - b
+    a + b
 }
+
+pub fn twice(a: i32) -> i32 { add(a, a) }
";
