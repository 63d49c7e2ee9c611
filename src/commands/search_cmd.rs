//! `troupe search QUERY|- [--limit N] [--mode hybrid|bm25|vector] [--files]`: search the index.
//! With `--json`, one line per result:
//! `{"path","start_line","end_line","symbol","language","score","snippet"}`.

use std::io::Read;

use anyhow::Context as _;

use super::index_cmd::{load_embedder, repo_root};
use super::{Context, exit, print, print_json};
use crate::config::SearchMode;
use crate::index::vectors::Embed;
use crate::models::Store;
use crate::retrieve::{Params, Retriever, SearchResult};

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

/// Runs `troupe search`; exit 1 when nothing matches.
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
    let mut params = Params::from_config(&ctx.config.config.retrieve);
    if let Some(m) = args.mode {
        params.mode = m;
    }
    if let Some(l) = args.limit {
        params.limit = l.max(1);
    }
    params.files = args.files;
    let mut retriever = open(ctx, store, &root, params.mode)?;
    if params.mode == SearchMode::Hybrid
        && let Some(why) = retriever.vectors_unavailable()
    {
        eprintln!("note: BM25 only: {why}");
    }
    let results = retriever
        .search(&query, &params)
        .with_context(|| format!("searching {}", root.display()))?;
    if ctx.json {
        for r in &results {
            print_json(&r.to_json())?;
        }
    } else {
        print(&render(&results))?;
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
