//! `troupe search QUERY|- [--limit N] [--mode hybrid|bm25|vector] [--files]`: search the index.
//! With `--json`, one line per result:
//! `{"path","start_line","end_line","symbol","language","score","snippet"}`.
//!
//! When a `troupe lsp` or terminal UI of the repository is running, the search goes to it
//! (`Op::Search` over `.troupe/editor.sock`), which has the embedding model loaded and the index
//! open; else, with `--no-instance`, or when the instance goes away or fails before answering,
//! it runs here ([`crate::agents::searcher`] either way). Both print the same notes, results, errors
//! and exit codes; mode, limit and `--files` are the command's, the embedding model and the
//! fusion settings the instance's.

use std::io::Read;
#[cfg(unix)]
use std::path::Path;

use anyhow::Context as _;

use super::index_cmd::{load_embedder, repo_root};
use super::{Context, exit, print, print_json};
use crate::agents::searcher::{Found, SearchRequest, Searcher};
use crate::config::SearchMode;
use crate::index::vectors::Embed;
use crate::models::Store;
use crate::retrieve::{Retriever, SearchResult};

/// Arguments of `troupe search`.
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// The query; `-` reads it from stdin.
    pub query: String,
    /// Results wanted (default: retrieve.limit).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Rankers: BM25, vectors or both fused (default: retrieve.mode).
    #[arg(long, value_enum)]
    pub mode: Option<SearchMode>,
    /// One result per file (its best chunk).
    #[arg(long)]
    pub files: bool,
}

/// Runs `troupe search`; exit 1 when nothing matches. A running instance of the repository
/// (`troupe lsp`, the terminal UI) answers when one listens, with its embedding model and index
/// already open; else, or with `--no-instance`, the search runs here. The output is the same
/// either way.
pub fn run(ctx: &Context, store: &Store, args: &SearchArgs) -> anyhow::Result<u8> {
    let root = repo_root(ctx)?;
    let query = if args.query == "-" {
        let mut q = String::new();
        std::io::stdin()
            .read_to_string(&mut q)
            .context("cannot read the query from stdin")?;
        q
    } else {
        args.query.clone()
    };
    let req = SearchRequest {
        query,
        mode: args.mode.unwrap_or(ctx.config.config.retrieve.mode),
        limit: Some(
            args.limit
                .unwrap_or(ctx.config.config.retrieve.limit as usize),
        ),
        files: args.files,
    };
    #[cfg(unix)]
    let remote = if ctx.no_instance {
        None
    } else {
        through_instance(&root, &req)?
    };
    #[cfg(not(unix))]
    let remote = None;
    let found = match remote {
        Some(found) => found,
        None => Searcher::new(&root, ctx.config.config.clone(), store.clone()).search(&req)?,
    };
    for note in &found.notes {
        eprintln!("note: {note}");
    }
    let results = &found.results;
    if ctx.json {
        for r in results {
            print_json(&r.to_json())?;
        }
    } else {
        print(&render(results))?;
        if results.is_empty() {
            eprintln!("no results");
        }
    }
    Ok(if results.is_empty() {
        exit::NEGATIVE
    } else {
        exit::OK
    })
}

/// The longest a search waits for a running instance's answer (an instance still loading its
/// model answers once it has).
#[cfg(unix)]
const INSTANCE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Sends the search to the running instance of `root`: its answer, or `None` when nobody
/// listens, the instance went away before answering or it answered with an error (the caller
/// then searches here: a search changes nothing, so running it again is safe, and an error of
/// the search itself comes back the same from the search here).
#[cfg(unix)]
fn through_instance(root: &Path, req: &SearchRequest) -> anyhow::Result<Option<Found>> {
    use crate::editor::instance;
    use crate::protocol::{EventMsg, Op, SearchMode as Mode, Submission};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let Some(mut remote) = instance::connect(root).await else {
            return Ok(None);
        };
        let op = Op::Search {
            query: req.query.clone(),
            limit: req.limit,
            mode: Some(match req.mode {
                SearchMode::Hybrid => Mode::Hybrid,
                SearchMode::Bm25 => Mode::Bm25,
                SearchMode::Vector => Mode::Vector,
            }),
            files: req.files,
        };
        let submission = Submission {
            id: "search".into(),
            op,
        };
        if let Err(e) = remote.submit(&submission).await {
            tracing::info!("the running instance did not take the search: {e}");
            return Ok(None);
        }
        // Notes are kept until the results come, so nothing is printed twice if the
        // instance goes away in between.
        let mut notes = Vec::new();
        loop {
            let event = tokio::time::timeout(INSTANCE_WAIT, remote.next_event())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the running troupe instance of {} did not answer the search within {} s; pass --no-instance to search in this process",
                        root.display(),
                        INSTANCE_WAIT.as_secs()
                    )
                })?;
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => {
                    tracing::info!("the running instance went away; searching here");
                    return Ok(None);
                }
            };
            if event.id != submission.id {
                continue;
            }
            match event.msg {
                EventMsg::Warning { message } => notes.push(message),
                EventMsg::SearchResults { results } => {
                    let results = results
                        .into_iter()
                        .map(serde_json::from_value)
                        .collect::<Result<Vec<SearchResult>, _>>()
                        .context("the running troupe instance sent a malformed search result")?;
                    return Ok(Some(Found { notes, results }));
                }
                // The instance's own trouble (its model did not load, say) is no reason for
                // the search to fail, and a genuine search error comes back the same here.
                EventMsg::Error { message, .. } => {
                    tracing::info!("the running instance answered the search with an error ({message}); searching here");
                    return Ok(None);
                }
                _ => {}
            }
        }
    })
}

/// Opens the index for `mode`: loads the embedding model unless BM25 alone is asked for. In
/// hybrid mode a missing model degrades to BM25 with a note; in vector mode it is an error.
pub fn open(
    ctx: &Context,
    store: &Store,
    root: &std::path::Path,
    mode: SearchMode,
) -> anyhow::Result<Retriever> {
    let embedder: Option<Box<dyn Embed>> = match mode {
        SearchMode::Bm25 => None,
        SearchMode::Vector => Some(Box::new(load_embedder(ctx, store)?)),
        SearchMode::Hybrid => match load_embedder(ctx, store) {
            Ok(m) => Some(Box::new(m)),
            Err(e) => {
                eprintln!("note: {e:#}");
                None
            }
        },
    };
    Ok(Retriever::open(root, embedder)?)
}

/// Results as text: a header line per result and its first lines, indented.
fn render(results: &[SearchResult]) -> String {
    const LINES: usize = 8;
    let mut out = String::new();
    for r in results {
        let symbol = if r.symbol.is_empty() {
            String::new()
        } else {
            format!("  {}", r.symbol)
        };
        out.push_str(&format!(
            "{}:{}-{}{symbol}  [{:.4}]\n",
            r.path, r.start_line, r.end_line, r.score
        ));
        let lines: Vec<&str> = r.snippet.lines().collect();
        for l in lines.iter().take(LINES) {
            out.push_str(&format!("    {l}\n"));
        }
        if lines.len() > LINES {
            out.push_str(&format!("    ... {} more lines\n", lines.len() - LINES));
        }
        out.push('\n');
    }
    out
}
