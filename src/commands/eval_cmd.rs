//! `troupe eval retrieval --cases FILE.jsonl [--k 1,5,10]`: retrieval quality and speed on a set
//! of cases `{"query", "gold": [paths]}` against the repository given by `--repo`, at file
//! level: Recall@k (share of gold files among the first k distinct files), MRR (of the first
//! gold file) and per-query latency p50/p95 (query embedding included, index opened once).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::index_cmd::repo_root;
use super::search_cmd::open;
use super::{Context, exit, print, print_json};
use crate::config::SearchMode;
use crate::models::Store;
use crate::retrieve::Params;

/// `troupe eval ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EvalCmd {
    /// Recall@k, MRR and latency of `troupe search` on a set of cases.
    Retrieval(RetrievalArgs),
}

/// Arguments of `troupe eval retrieval`.
#[derive(Debug, Clone, clap::Args)]
pub struct RetrievalArgs {
    /// JSON lines `{"query": "...", "gold": ["path", ...]}`.
    #[arg(long, value_name = "FILE.jsonl")]
    pub cases: PathBuf,
    /// Cut-offs for Recall@k.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    pub k: Vec<usize>,
    /// Modes to measure, side by side (default: retrieve.mode).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub modes: Vec<SearchMode>,
    /// Override retrieve.rrf_k (for tuning).
    #[arg(long)]
    pub rrf_k: Option<f64>,
    /// Override retrieve.bm25_weight (for tuning).
    #[arg(long)]
    pub bm25_weight: Option<f64>,
    /// Override retrieve.vector_weight (for tuning).
    #[arg(long)]
    pub vector_weight: Option<f64>,
    /// Override retrieve.signal_weight (for tuning).
    #[arg(long)]
    pub signal_weight: Option<f64>,
    /// File-level aggregation: weight of a file's n-th best chunk is DECAY^(n-1) (for tuning).
    #[arg(long)]
    pub file_decay: Option<f64>,
    /// Also measure BM25 over whole files (one document per file) as a baseline.
    #[arg(long)]
    pub whole_file_baseline: bool,
    /// Grid-search the fusion parameters (rrf_k, vector and signal weights, file decay) on
    /// rankings computed once per case, and print the best settings.
    #[arg(long)]
    pub tune: bool,
    /// Evaluate only the first N cases.
    #[arg(long)]
    pub max_cases: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct Case {
    query: String,
    gold: Vec<String>,
}

/// Runs `troupe eval ...`.
pub fn run(ctx: &Context, store: &Store, cmd: &EvalCmd) -> anyhow::Result<u8> {
    match cmd {
        EvalCmd::Retrieval(args) => retrieval(ctx, store, args),
    }
}

fn retrieval(ctx: &Context, store: &Store, args: &RetrievalArgs) -> anyhow::Result<u8> {
    let root = repo_root(ctx)?;
    let text = std::fs::read_to_string(&args.cases)
        .with_context(|| format!("cannot read the cases file {}", args.cases.display()))?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a case; expected {{\"query\": \"...\", \"gold\": [\"path\", ...]}}",
                args.cases.display(),
                i + 1
            )
        })?;
        cases.push(case);
    }
    if let Some(n) = args.max_cases {
        cases.truncate(n);
    }
    if cases.is_empty() {
        bail!("{} holds no cases", args.cases.display());
    }
    let mut ks = args.k.clone();
    ks.retain(|&k| k > 0);
    ks.sort_unstable();
    ks.dedup();
    let depth = ks.last().copied().unwrap_or(10).max(10);
    if args.tune {
        return tune(ctx, store, &root, &cases);
    }
    let mut modes: Vec<(SearchMode, bool)> = if args.modes.is_empty() {
        vec![(ctx.config.config.retrieve.mode, false)]
    } else {
        args.modes.iter().map(|m| (*m, false)).collect()
    };
    if args.whole_file_baseline {
        modes.insert(0, (SearchMode::Bm25, true));
    }

    let mut rows = Vec::new();
    for (mode, whole_files) in modes {
        let mut params = Params::from_config(&ctx.config.config.retrieve);
        params.mode = mode;
        params.files = true;
        params.limit = depth;
        if let Some(v) = args.rrf_k {
            params.rrf_k = v;
        }
        if let Some(v) = args.bm25_weight {
            params.bm25_weight = v;
        }
        if let Some(v) = args.vector_weight {
            params.vector_weight = v;
        }
        if let Some(v) = args.signal_weight {
            params.signal_weight = v;
        }
        if let Some(v) = args.file_decay {
            params.file_decay = v;
        }
        let mut retriever = if whole_files {
            crate::retrieve::Retriever::open_whole_files(&root)?
        } else {
            open(ctx, store, &root, mode)?
        };
        if mode == SearchMode::Hybrid
            && let Some(why) = retriever.vectors_unavailable()
        {
            bail!("hybrid evaluation needs vectors: {why}");
        }
        // One warm-up query: the first search pays for loading index files.
        retriever.search(&cases[0].query, &params)?;
        let mut recall = vec![0.0; ks.len()];
        let mut mrr = 0.0;
        let mut latencies = Vec::with_capacity(cases.len());
        for case in &cases {
            let started = Instant::now();
            let results = retriever.search(&case.query, &params)?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let files: Vec<&str> = results.iter().map(|r| r.path.as_str()).collect();
            for (i, &k) in ks.iter().enumerate() {
                let hit = case
                    .gold
                    .iter()
                    .filter(|g| files.iter().take(k).any(|f| f == g))
                    .count();
                recall[i] += hit as f64 / case.gold.len().max(1) as f64;
            }
            if let Some(rank) = files.iter().position(|f| case.gold.iter().any(|g| g == f)) {
                mrr += 1.0 / (rank as f64 + 1.0);
            }
        }
        let n = cases.len() as f64;
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
        rows.push(serde_json::json!({
            "mode": if whole_files { "bm25-file" } else { mode_name(mode) },
            "cases": cases.len(),
            "recall": ks.iter().zip(&recall).map(|(k, r)| (k.to_string(), serde_json::json!(r / n))).collect::<serde_json::Map<_, _>>(),
            "mrr": mrr / n,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95)},
            "params": {
                "rrf_k": params.rrf_k,
                "bm25_weight": params.bm25_weight,
                "vector_weight": params.vector_weight,
                "signal_weight": params.signal_weight,
                "file_decay": params.file_decay,
            },
        }));
    }

    if ctx.json {
        print_json(&serde_json::json!({"repo": root, "rows": rows}))?;
    } else {
        let mut out = format!("{} cases on {}\n", cases.len(), root.display());
        out.push_str(&format!("{:9}", "mode"));
        for k in &ks {
            out.push_str(&format!("  {:>9}", format!("Recall@{k}")));
        }
        out.push_str("      MRR  p50 ms  p95 ms\n");
        for row in &rows {
            out.push_str(&format!("{:9}", row["mode"].as_str().unwrap_or_default()));
            for k in &ks {
                out.push_str(&format!(
                    "  {:>9.3}",
                    row["recall"][k.to_string()].as_f64().unwrap_or_default()
                ));
            }
            out.push_str(&format!(
                "  {:>7.3}  {:>6.1}  {:>6.1}\n",
                row["mrr"].as_f64().unwrap_or_default(),
                row["latency_ms"]["p50"].as_f64().unwrap_or_default(),
                row["latency_ms"]["p95"].as_f64().unwrap_or_default()
            ));
        }
        print(&out)?;
    }
    Ok(exit::OK)
}

/// Recall@5 and MRR (over the first 10 files) of file-level results.
fn score(files: &[&str], gold: &[String]) -> (f64, f64) {
    let hit = gold
        .iter()
        .filter(|g| files.iter().take(5).any(|f| f == g))
        .count();
    let mrr = files
        .iter()
        .take(10)
        .position(|f| gold.iter().any(|g| g == f))
        .map_or(0.0, |r| 1.0 / (r as f64 + 1.0));
    (hit as f64 / gold.len().max(1) as f64, mrr)
}

fn tune(
    ctx: &Context,
    store: &Store,
    root: &std::path::Path,
    cases: &[Case],
) -> anyhow::Result<u8> {
    let mut retriever = open(ctx, store, root, SearchMode::Hybrid)?;
    if let Some(why) = retriever.vectors_unavailable() {
        bail!("tuning fusion needs vectors: {why}");
    }
    let mut all = Vec::with_capacity(cases.len());
    for case in cases {
        all.push(retriever.rankings(&case.query, 100)?);
    }
    let base = Params::from_config(&ctx.config.config.retrieve);
    let mut rows: Vec<(f64, f64, Params)> = Vec::new();
    for rrf_k in [5.0, 10.0, 20.0, 30.0, 60.0, 100.0] {
        for vector_weight in [0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0] {
            for signal_weight in [0.0, 0.25, 0.5, 1.0] {
                for file_decay in [0.0, 0.2, 0.5] {
                    let params = Params {
                        mode: SearchMode::Hybrid,
                        limit: 10,
                        files: true,
                        rrf_k,
                        bm25_weight: 1.0,
                        vector_weight,
                        signal_weight,
                        file_decay,
                        ..base.clone()
                    };
                    let (mut r5, mut mrr) = (0.0, 0.0);
                    for (case, rankings) in cases.iter().zip(&all) {
                        let results = crate::retrieve::rank(&case.query, rankings, &params);
                        let files: Vec<&str> = results.iter().map(|r| r.path.as_str()).collect();
                        let (a, b) = score(&files, &case.gold);
                        r5 += a;
                        mrr += b;
                    }
                    let n = cases.len() as f64;
                    rows.push((r5 / n, mrr / n, params));
                }
            }
        }
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut out = String::from("Recall@5    MRR  rrf_k  vector_w  signal_w  file_decay\n");
    for (r5, mrr, p) in rows.iter().take(15) {
        out.push_str(&format!(
            "{r5:8.3}  {mrr:5.3}  {:5}  {:8}  {:8}  {:10}\n",
            p.rrf_k, p.vector_weight, p.signal_weight, p.file_decay
        ));
    }
    if !ctx.json {
        print(&out)?;
    } else {
        let best: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r5, mrr, p)| {
                serde_json::json!({"recall5": r5, "mrr": mrr, "rrf_k": p.rrf_k,
                    "vector_weight": p.vector_weight, "signal_weight": p.signal_weight,
                    "file_decay": p.file_decay})
            })
            .collect();
        print_json(&serde_json::json!({"grid": best}))?;
    }
    Ok(exit::OK)
}

fn mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Hybrid => "hybrid",
        SearchMode::Bm25 => "bm25",
        SearchMode::Vector => "vector",
    }
}
