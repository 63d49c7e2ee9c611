//! Editor front end: one-shot commands an editor runs with the current file and selection
//! (`troupe ask`, `troupe explain`, `troupe edit`) and a language server over stdio
//! (`troupe lsp`, in [`lsp`]). Speaks only to [`crate::agents`] and [`crate::protocol`] (a test
//! enforces it).
//!
//! Text mode streams answers to stdout as they are generated; `--json` prints one object at the
//! end, a shape scripts and editor plugins may rely on:
//!
//! - ask: `{"answer","citations":[{"path","start_line","end_line"}],"stats":{...}}`
//! - explain: `{"explanation","citations":[...],"stats":{...}}`
//! - edit: `{"path","start_line","end_line","diff","new_text","replacement","lines_added",
//!   "lines_removed","stats":{...},"written"}`
//!
//! Files and ranges are checked before the model loads, so a bad location fails at once. When a
//! `troupe lsp` or terminal UI of the repository is running, the one-shot commands send their
//! request to it ([`instance`]) instead of loading the model again (`--no-instance`: never).

#[cfg(unix)]
pub mod instance;
pub mod lsp;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::agents::target::{LocationError, Target, write_if_unchanged};
use crate::agents::{Session, SessionOptions};
use crate::commands::{Context, exit};
use crate::config::Config;
use crate::protocol::{Citation, Event, EventMsg, Op, RequestStats, Submission};

/// Where in a file a question points.
#[derive(Debug, Clone, Default)]
pub struct Location {
    pub file: Option<String>,
    pub line: Option<u32>,
    /// `A:B`, 1-based inclusive.
    pub range: Option<String>,
}

/// `troupe ask QUESTION|- [--file F [--line L | --range A:B]]`.
pub fn ask(ctx: &Context, question: &str, at: &Location) -> anyhow::Result<u8> {
    let question = if question == "-" {
        read_stdin("the question")?
    } else {
        question.to_string()
    };
    if question.trim().is_empty() {
        bail!("the question is empty; pass it as an argument or on stdin with `-`");
    }
    let range = match (&at.file, at.line, &at.range) {
        (None, Some(_), _) | (None, _, Some(_)) => bail!("--line and --range need --file"),
        (_, Some(_), Some(_)) => bail!("pass either --line or --range, not both"),
        (_, Some(line), None) => Some(crate::agents::ask::around(line)),
        (_, None, Some(r)) => Some(parse_range(r)?),
        (_, None, None) => None,
    };
    let repo = repo_root(ctx)?;
    let file = at.file.as_deref().map(|f| repo_relative(&repo, f));
    let op = Op::Ask {
        question,
        file,
        range,
    };
    one_shot(ctx, &repo, op, |msg, out| match msg {
        EventMsg::AgentMessageDelta { delta } if !ctx.json => {
            out.write_all(delta.as_bytes())?;
            out.flush()?;
            Ok(None)
        }
        EventMsg::AskComplete {
            answer,
            citations,
            stats,
        } => {
            let json = serde_json::json!({
                "answer": answer,
                "citations": citations,
                "stats": stats,
            });
            finish_answer(ctx, out, json, &citations, &stats)?;
            Ok(Some(exit::OK))
        }
        _ => Ok(None),
    })
}

/// `troupe explain --file F [--range A:B]`.
pub fn explain(ctx: &Context, file: &str, range: Option<&str>) -> anyhow::Result<u8> {
    let repo = repo_root(ctx)?;
    let range = range.map(parse_range).transpose()?;
    let file = repo_relative(&repo, file);
    // Checked here so a bad location fails before the model loads.
    let target = Target::load(&repo, &file, None).map_err(located)?;
    target.check_range(range).map_err(located)?;
    let op = Op::Explain {
        file,
        range,
        content: Some(target.text),
    };
    one_shot(ctx, &repo, op, |msg, out| match msg {
        EventMsg::AgentMessageDelta { delta } if !ctx.json => {
            out.write_all(delta.as_bytes())?;
            out.flush()?;
            Ok(None)
        }
        EventMsg::ExplainComplete {
            explanation,
            citations,
            stats,
        } => {
            let json = serde_json::json!({
                "explanation": explanation,
                "citations": citations,
                "stats": stats,
            });
            finish_answer(ctx, out, json, &citations, &stats)?;
            Ok(Some(exit::OK))
        }
        _ => Ok(None),
    })
}

/// What `troupe edit` was asked.
#[derive(Debug, Clone, Default)]
pub struct EditArgs {
    pub file: String,
    /// `A:B`, 1-based inclusive.
    pub range: Option<String>,
    pub instruction: String,
    /// Write the change to the file (only if it still has the content the edit was made from).
    pub write: bool,
    /// Take the file's current content (an unsaved editor buffer) from stdin.
    pub stdin: bool,
}

/// `troupe edit --file F [--range A:B] --instruction TEXT [--write] [--stdin]`.
pub fn edit(ctx: &Context, args: &EditArgs) -> anyhow::Result<u8> {
    if args.instruction.trim().is_empty() {
        bail!("the edit instruction is empty; say what to change with --instruction TEXT");
    }
    let repo = repo_root(ctx)?;
    let range = args.range.as_deref().map(parse_range).transpose()?;
    let file = repo_relative(&repo, &args.file);
    let content = if args.stdin {
        Some(read_stdin("the file's content")?)
    } else {
        None
    };
    let target = Target::load(&repo, &file, content).map_err(located)?;
    target.check_range(range).map_err(located)?;
    let base = target.text.clone();
    let op = Op::Edit {
        file: file.clone(),
        range,
        instruction: args.instruction.clone(),
        content: Some(target.text),
    };
    one_shot(ctx, &repo, op, |msg, out| {
        let EventMsg::EditComplete { proposal } = msg else {
            return Ok(None);
        };
        let unchanged = proposal.diff.is_empty();
        let written = if args.write && !unchanged {
            write_if_unchanged(&repo, &file, &base, &proposal.new_text).map_err(located)?;
            true
        } else {
            false
        };
        if ctx.json {
            let mut json = serde_json::to_value(&proposal)?;
            json["written"] = serde_json::Value::Bool(written);
            serde_json::to_writer(&mut *out, &json)?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(proposal.diff.as_bytes())?;
        }
        out.flush()?;
        if unchanged {
            eprintln!("the model proposed no change to {file}");
        } else if written {
            eprintln!(
                "wrote {file} (+{} -{})",
                proposal.lines_added, proposal.lines_removed
            );
        }
        print_stats(&proposal.stats);
        Ok(Some(exit::OK))
    })
}

/// Submits `op` to the running instance of the repository (`troupe lsp`, the terminal UI)
/// when one listens and `--no-instance` is not given, else to a session started here, and
/// feeds its events to `handle` (with stdout) until it returns an exit code. An `Error` event ends the command with its message and fix.
fn one_shot(
    ctx: &Context,
    repo: &Path,
    op: Op,
    mut handle: impl FnMut(EventMsg, &mut dyn Write) -> anyhow::Result<Option<u8>>,
) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let submission = Submission {
            id: "editor".into(),
            op,
        };
        let mut link = Link::open(repo, &ctx.config.config, &submission, !ctx.no_instance).await?;
        let mut out = std::io::stdout().lock();
        loop {
            // A generous bound: a slow CPU answers at a few tokens per second.
            let Some(event) = link.next_event(Duration::from_secs(1800)).await? else {
                bail!("the session ended before the answer was complete");
            };
            if event.id != "editor" {
                continue;
            }
            match event.msg {
                EventMsg::Error { message, fix } => match fix {
                    Some(fix) => bail!("{message}; {fix}"),
                    None => bail!("{message}"),
                },
                msg => {
                    if let Some(code) = handle(msg, &mut out)? {
                        return Ok(code);
                    }
                }
            }
        }
    })
}

/// Where a one-shot request (ask, explain, edit, review) runs: the running instance of the
/// repository (`troupe lsp` or the terminal UI, through [`instance`]) when one listens, else a
/// session started in this process. Either way the same events come back, so what a command
/// prints does not depend on where it ran.
pub struct Link(LinkTo);

enum LinkTo {
    #[cfg(unix)]
    Remote(instance::Remote),
    Local(Box<Session>),
}

impl Link {
    /// Sends `submission` to the running instance if there is one (and `reuse` allows it:
    /// `--no-instance` does not), else starts a session with `config` (loading the model) and
    /// submits it there.
    pub async fn open(
        repo: &Path,
        config: &Config,
        submission: &Submission,
        reuse: bool,
    ) -> anyhow::Result<Link> {
        #[cfg(unix)]
        if reuse && let Some(mut remote) = instance::connect(repo).await {
            match remote.submit(submission).await {
                Ok(()) => {
                    tracing::info!("sent to the running instance of {}", repo.display());
                    return Ok(Link(LinkTo::Remote(remote)));
                }
                Err(e) => tracing::info!("the running instance did not take the request: {e}"),
            }
        }
        let options = SessionOptions::new(repo, config.clone());
        let session = Session::start(options).await?;
        session.submit(submission.clone())?;
        Ok(Link(LinkTo::Local(Box::new(session))))
    }

    /// Whether the request went to a running instance.
    pub fn is_remote(&self) -> bool {
        match self.0 {
            #[cfg(unix)]
            LinkTo::Remote(_) => true,
            LinkTo::Local(_) => false,
        }
    }

    /// The next event; `None` when the session or the connection ended; an error when none
    /// came within `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> anyhow::Result<Option<Event>> {
        let late = || format!("no answer from the model for {} s", limit.as_secs());
        match &mut self.0 {
            #[cfg(unix)]
            LinkTo::Remote(r) => tokio::time::timeout(limit, r.next_event())
                .await
                .with_context(late)?
                .context("reading from the running troupe instance"),
            LinkTo::Local(s) => tokio::time::timeout(limit, s.next_event())
                .await
                .with_context(late),
        }
    }

    /// Ends a session started here (a running instance carries on).
    pub fn finish(&self) {
        if let LinkTo::Local(s) = &self.0 {
            let _ = s.submit(Submission {
                id: "end".into(),
                op: Op::Shutdown,
            });
        }
    }
}

/// Prints an answer's end: the JSON object, or the sources and (on stderr) the stats.
fn finish_answer(
    ctx: &Context,
    out: &mut dyn Write,
    json: serde_json::Value,
    citations: &[Citation],
    stats: &RequestStats,
) -> anyhow::Result<()> {
    if ctx.json {
        serde_json::to_writer(&mut *out, &json)?;
        out.write_all(b"\n")?;
    } else {
        let mut text = String::from("\n\nSources:\n");
        for (i, c) in citations.iter().enumerate() {
            text.push_str(&format!(
                "  [{}] {}:{}-{}\n",
                i + 1,
                c.path,
                c.start_line,
                c.end_line
            ));
        }
        out.write_all(text.as_bytes())?;
        print_stats(stats);
    }
    out.flush()?;
    Ok(())
}

fn print_stats(stats: &RequestStats) {
    eprintln!(
        "{} prompt tokens ({} cached), {} generated at {:.1} tok/s",
        stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens, stats.decode_tok_s
    );
}

fn repo_root(ctx: &Context) -> anyhow::Result<PathBuf> {
    match ctx.repo.clone() {
        Some(repo) => Ok(repo),
        None => bail!(
            "{}",
            ctx.repo_error
                .clone()
                .unwrap_or_else(|| "not inside a git repository".into())
        ),
    }
}

/// `file` relative to the repository root: an absolute path inside the repository (as editors
/// pass them) loses its root; anything else is taken as given.
pub fn repo_relative(repo: &Path, file: &str) -> String {
    let path = Path::new(file);
    if !path.is_absolute() {
        return file.to_string();
    }
    let canonical_repo = repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf());
    let canonical_file = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    for (root, p) in [
        (repo, path),
        (canonical_repo.as_path(), canonical_file.as_path()),
    ] {
        if let Ok(rel) = p.strip_prefix(root) {
            return rel.to_string_lossy().into_owned();
        }
    }
    file.to_string()
}

fn located(e: LocationError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.with_fix())
}

fn read_stdin(what: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .with_context(|| format!("reading {what} from stdin (it must be UTF-8 text)"))?;
    Ok(text)
}

fn parse_range(r: &str) -> anyhow::Result<(u32, u32)> {
    let bad =
        || anyhow::anyhow!("bad --range `{r}`: expected START:END, 1-based lines, e.g. 10:42");
    let (a, b) = r.split_once(':').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_say_the_expected_form() {
        assert_eq!(parse_range("10:42").unwrap(), (10, 42));
        for bad in ["10", "a:b", "0:3", "9:2", ""] {
            let msg = parse_range(bad).unwrap_err().to_string();
            assert!(msg.contains("expected START:END"), "{msg}");
        }
    }

    #[test]
    fn absolute_paths_inside_the_repository_become_relative() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.rs"), "").unwrap();
        let abs = dir.path().join("src/a.rs");
        assert_eq!(repo_relative(dir.path(), abs.to_str().unwrap()), "src/a.rs");
        assert_eq!(repo_relative(dir.path(), "src/a.rs"), "src/a.rs");
        assert_eq!(repo_relative(dir.path(), "/elsewhere/x"), "/elsewhere/x");
    }
}
