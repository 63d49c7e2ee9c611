//! Editor front end: one-shot commands an editor runs with the current file and selection
//! (`troupe ask`). Speaks only to [`crate::agents`] and [`crate::protocol`] (a test enforces it).
//!
//! Text mode streams the answer to stdout as it is generated, then the cited code; `--json`
//! prints one object at the end: `{"answer","citations":[{"path","start_line","end_line"}],
//! "stats":{...}}`, a shape scripts and editor plugins may rely on.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::agents::{Session, SessionOptions};
use crate::commands::{Context, exit};
use crate::protocol::{EventMsg, Op, Submission};

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
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the question from stdin")?;
        text
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
    let Some(repo) = ctx.repo.clone() else {
        bail!(
            "{}",
            ctx.repo_error
                .clone()
                .unwrap_or_else(|| "not inside a git repository".into())
        );
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let op = Op::Ask {
        question,
        file: at.file.clone(),
        range,
    };
    runtime.block_on(async {
        let options = SessionOptions::new(&repo, ctx.config.config.clone());
        let mut session = Session::start(options).await?;
        session.submit(Submission {
            id: "ask".into(),
            op,
        })?;
        let mut out = std::io::stdout().lock();
        loop {
            // A generous bound: a slow CPU answers at a few tokens per second.
            let next = tokio::time::timeout(Duration::from_secs(1800), session.next_event())
                .await
                .context("no answer from the model for 30 minutes")?;
            let Some(event) = next else {
                bail!("the session ended before the answer was complete");
            };
            match event.msg {
                EventMsg::AgentMessageDelta { delta } if !ctx.json => {
                    out.write_all(delta.as_bytes())?;
                    out.flush()?;
                }
                EventMsg::AskComplete {
                    answer,
                    citations,
                    stats,
                } => {
                    if ctx.json {
                        serde_json::to_writer(
                            &mut out,
                            &serde_json::json!({
                                "answer": answer,
                                "citations": citations,
                                "stats": stats,
                            }),
                        )?;
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
                        eprintln!(
                            "{} prompt tokens ({} cached), {} generated at {:.1} tok/s",
                            stats.prompt_tokens,
                            stats.cached_tokens,
                            stats.generated_tokens,
                            stats.decode_tok_s
                        );
                    }
                    out.flush()?;
                    return Ok(exit::OK);
                }
                EventMsg::Error { message, fix } => match fix {
                    Some(fix) => bail!("{message} ({fix})"),
                    None => bail!("{message}"),
                },
                _ => {}
            }
        }
    })
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
}
