//! `troupe index [--status] [--no-vectors]`: build or update the repository's index, with a
//! progress bar on a terminal and a summary; `--status` says what is indexed and what is stale.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Context, exit, print, print_json};
use crate::index::vectors::{self, Embed, ModelEmbedder};
use crate::index::{self, Options, Progress};
use crate::models::catalog::Embedding;
use crate::models::{Role, Store};

/// Arguments of `troupe index`.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    /// Say what is indexed and what is stale, and change nothing (exit 1 when stale).
    #[arg(long)]
    pub status: bool,
    /// Build only the full-text index; skip embeddings.
    #[arg(long)]
    pub no_vectors: bool,
}

/// Runs `troupe index`.
pub fn run(ctx: &Context, store: &Store, args: &IndexArgs) -> anyhow::Result<u8> {
    let root = repo_root(ctx)?;
    let opts = options(ctx);
    if args.status {
        return status(ctx, store, &root, &opts);
    }
    let mut bar = Bar::new(ctx.json);
    let summary = index::update(&root, &opts, &mut |p| bar.on(p))
        .with_context(|| format!("indexing {}", root.display()))?;
    bar.finish();

    let want_vectors = ctx.config.config.index.vectors && !args.no_vectors;
    let mut vector_report = serde_json::json!({"status": "off"});
    let mut vector_error = None;
    if want_vectors {
        match load_embedder(ctx, store) {
            Ok(mut model) => {
                let mut bar = Bar::new(ctx.json);
                let r = vectors::embed_missing(&root, &opts, &mut model, &mut |p| bar.on(p));
                bar.finish();
                let s = r.with_context(|| {
                    format!(
                        "embedding {} (the text index is complete; BM25 search works)",
                        root.display()
                    )
                })?;
                let rate = if s.elapsed.as_secs_f64() > 0.0 {
                    s.embedded as f64 / s.elapsed.as_secs_f64()
                } else {
                    0.0
                };
                vector_report = serde_json::json!({
                    "status": "ok",
                    "model": model.model_id(),
                    "embedded": s.embedded,
                    "rows": s.rows,
                    "ann": s.ann,
                    "seconds": s.elapsed.as_secs_f64(),
                    "chunks_per_second": rate,
                });
            }
            Err(e) => {
                vector_report = serde_json::json!({"status": "error", "error": format!("{e:#}")});
                vector_error = Some(e);
            }
        }
    }

    if ctx.json {
        print_json(&serde_json::json!({
            "files": summary.files,
            "chunks": summary.chunks,
            "languages": summary.languages,
            "skipped": summary.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "updated": summary.updated,
            "removed": summary.removed,
            "chunked": summary.chunked,
            "rebuilt": summary.rebuilt,
            "seconds": summary.elapsed.as_secs_f64(),
            "vectors": vector_report,
        }))?;
    } else {
        let mut out = format!(
            "indexed {} files, {} chunks in {:.2}s ({} updated, {} removed, {} chunked)\n",
            summary.files,
            summary.chunks,
            summary.elapsed.as_secs_f64(),
            summary.updated,
            summary.removed,
            summary.chunked
        );
        if !summary.languages.is_empty() {
            let mut langs: Vec<_> = summary.languages.iter().collect();
            langs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let list: Vec<String> = langs.iter().map(|(l, n)| format!("{l} {n}")).collect();
            out.push_str(&format!("languages: {}\n", list.join(", ")));
        }
        let skipped: u64 = summary.skipped.values().sum();
        if skipped > 0 {
            let list: Vec<String> = summary
                .skipped
                .iter()
                .map(|(r, n)| format!("{} {n}", r.as_str()))
                .collect();
            out.push_str(&format!("skipped {skipped}: {}\n", list.join(", ")));
        }
        if vector_report["status"] == "ok" {
            out.push_str(&format!(
                "vectors: {} embedded now, {} in the table ({}){}\n",
                vector_report["embedded"],
                vector_report["rows"],
                vector_report["model"].as_str().unwrap_or_default(),
                if vector_report["ann"] == true {
                    ", ANN index"
                } else {
                    ", exact search"
                }
            ));
        } else if !want_vectors {
            out.push_str("vectors: off (BM25 only)\n");
        }
        print(&out)?;
    }
    match vector_error {
        Some(e) => Err(e.context(
            "the text index is up to date and BM25 search works, but embeddings were not computed; pass --no-vectors to skip them",
        )),
        None => Ok(exit::OK),
    }
}

/// The repository root from the context, or the reason there is none.
pub fn repo_root(ctx: &Context) -> anyhow::Result<PathBuf> {
    ctx.repo.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}",
            ctx.repo_error
                .clone()
                .unwrap_or_else(|| "not inside a git repository; pass --repo PATH".to_string())
        )
    })
}

/// Index options from the configuration.
pub fn options(ctx: &Context) -> Options {
    let c = &ctx.config.config.index;
    let mut opts = Options::default();
    opts.scan.max_file_bytes = c.max_file_bytes;
    opts.scan.exclude = c.exclude.clone();
    opts
}

/// The configured embedding model (`model.embed`, or `--embed-model`): its file, and how to use
/// it when it is a catalog model (named, or given by the path of its cache file).
fn resolve_embedder(ctx: &Context, store: &Store) -> anyhow::Result<(PathBuf, Option<Embedding>)> {
    let name = &ctx.config.config.model.embed;
    let resolved = store
        .resolve(name, Role::Embedding)
        .with_context(|| format!("the embedding model `{name}`"))?;
    let spec = resolved.embedding();
    Ok((resolved.path, spec))
}

/// Loads the configured embedding model (`model.embed`, or `--embed-model`).
pub fn load_embedder(ctx: &Context, store: &Store) -> anyhow::Result<ModelEmbedder> {
    let (path, spec) = resolve_embedder(ctx, store)?;
    let threads = match ctx.config.config.engine.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
        n => n as i32,
    };
    Ok(ModelEmbedder::load(
        &path,
        threads,
        &spec.unwrap_or(Embedding::UNKNOWN),
    )?)
}

fn status(ctx: &Context, store: &Store, root: &Path, opts: &Options) -> anyhow::Result<u8> {
    let st = index::status(root, opts)?;
    // Vectors: the model's identity names the table. A catalog model's size is known, so it is
    // not loaded; a GGUF path outside the catalog is loaded to learn its vector size.
    let identity = resolve_embedder(ctx, store).and_then(|(path, spec)| match spec {
        Some(spec) => Ok((vectors::model_id(&path), spec.dim as usize)),
        None => {
            let model = load_embedder(ctx, store)?;
            Ok((model.model_id(), model.dim()))
        }
    });
    let vectors = match identity {
        Ok((id, dim)) => match vectors::missing_blobs(root, &id, dim) {
            Ok((total, missing)) => serde_json::json!({
                "model": id, "blobs": total, "missing": missing,
            }),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        },
        Err(e) => serde_json::json!({"error": format!("{e:#}")}),
    };
    let vectors_stale = vectors["missing"].as_u64().is_some_and(|m| m > 0);
    let stale = st.is_stale() || (ctx.config.config.index.vectors && vectors_stale);
    if ctx.json {
        print_json(&serde_json::json!({
            "indexed": st.exists,
            "stale": stale,
            "current": st.current,
            "changed": st.changed,
            "added": st.added,
            "removed": st.removed,
            "interrupted": st.interrupted,
            "chunks": st.chunks,
            "updated_at": st.updated_at,
            "vectors": vectors,
        }))?;
    } else if !st.exists {
        print(&format!(
            "no index in {}; run `troupe index`\n",
            root.display()
        ))?;
    } else {
        let mut out = format!(
            "{} files current, {} changed, {} new, {} removed; {} chunks\n",
            st.current,
            st.changed.len(),
            st.added.len(),
            st.removed.len(),
            st.chunks
        );
        for (label, list) in [
            ("changed", &st.changed),
            ("new", &st.added),
            ("removed", &st.removed),
        ] {
            for p in list.iter().take(20) {
                out.push_str(&format!("  {label:8} {p}\n"));
            }
            if list.len() > 20 {
                out.push_str(&format!("  ... and {} more {label}\n", list.len() - 20));
            }
        }
        if st.interrupted {
            out.push_str("the last update was interrupted; `troupe index` repairs it\n");
        }
        match (vectors["blobs"].as_u64(), vectors["missing"].as_u64()) {
            (Some(total), Some(missing)) => out.push_str(&format!(
                "vectors: {} of {total} blobs embedded ({})\n",
                total - missing,
                vectors["model"].as_str().unwrap_or_default()
            )),
            _ => out.push_str(&format!(
                "vectors: unknown ({})\n",
                vectors["error"].as_str().unwrap_or_default()
            )),
        }
        out.push_str(if stale {
            "stale: run `troupe index`\n"
        } else {
            "up to date\n"
        });
        print(&out)?;
    }
    Ok(if stale { exit::NEGATIVE } else { exit::OK })
}

/// A progress bar on stderr when it is a terminal (and not in `--json` mode); silent otherwise.
struct Bar {
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Bar {
    fn new(json: bool) -> Self {
        Self {
            bar: None,
            enabled: !json && std::io::stderr().is_terminal(),
        }
    }

    fn on(&mut self, p: Progress) {
        if !self.enabled {
            if p == Progress::Waiting {
                eprintln!("waiting for another `troupe index` to finish");
            }
            return;
        }
        match p {
            Progress::Phase { name, total } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                let bar = if total == 0 {
                    let b = ProgressBar::new_spinner();
                    b.enable_steady_tick(Duration::from_millis(100));
                    b
                } else {
                    let b = ProgressBar::new(total);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{msg:>10} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
                    ) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b
                };
                bar.set_message(name);
                self.bar = Some(bar);
            }
            Progress::Advance(n) => {
                if let Some(b) = &self.bar {
                    b.inc(n);
                }
            }
            Progress::Waiting => {
                if let Some(b) = &self.bar {
                    b.set_message("waiting for another indexer");
                } else {
                    eprintln!("waiting for another `troupe index` to finish");
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
