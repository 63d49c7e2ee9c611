//! `troupe bench engine`: throughput and latency of the embedded engine under concurrent
//! requests, in the shape of the command-line contract.
//!
//! For each concurrency level the engine is started afresh with that many parallel sequences,
//! then that many requests are sent at once (or, with `--stagger`, the first alone and the rest
//! once it has finished). Each prompt is `--shared-prefix-tokens` tokens common to all requests
//! followed by `--prompt-tokens` tokens of its own; each request generates exactly `--gen`
//! tokens (greedy, end-of-generation ignored). `aggregate_tok_s` is all generated tokens over the
//! wall time from the first request sent to the last token received.
//!
//! Setting `TROUPE_BENCH_WORKLOAD=FILE` writes the exact token prompts to FILE (JSON) so
//! `benches/peer_llamacpp.py` can replay the same workload against llama.cpp's server.
//! Requests are driven from plain threads (no async runtime needed or assumed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;

use crate::engine::{
    Engine, EngineOptions, GenerateEvent, GenerateRequest, Prompt, RequestStats, Sampling,
};

/// Flags of `troupe bench engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchEngineArgs {
    /// The GGUF model. On the command line this is the global `--model PATH` (one flag for
    /// every command), which the caller copies here.
    #[arg(skip)]
    pub model: Option<PathBuf>,
    /// Concurrency levels to measure, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8",
        value_name = "N,..."
    )]
    pub concurrency: Vec<usize>,
    /// Prompt tokens of each request after the shared prefix.
    #[arg(long, default_value_t = 104, value_name = "P")]
    pub prompt_tokens: usize,
    /// Tokens generated per request.
    #[arg(long = "gen", default_value_t = 128, value_name = "G")]
    pub gen_tokens: usize,
    /// Tokens of context shared by all requests, before each one's own prompt.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub shared_prefix_tokens: usize,
    /// Send the first request alone and the others once it has finished.
    #[arg(long)]
    pub stagger: bool,
    /// CPU threads (default: all cores).
    #[arg(long, value_name = "T")]
    pub threads: Option<i32>,
}

/// One concurrency level's results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub concurrency: usize,
    pub aggregate_tok_s: f64,
    pub per_seq_tok_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p95_ms: f64,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub wall_ms: f64,
    /// Time to first token of the first request sent.
    pub ttft_first_ms: f64,
    /// Largest time to first token among the other requests (each from its own send time).
    pub ttft_rest_max_ms: f64,
    /// Prompt tokens actually computed (prompt minus cached).
    pub prompt_tokens_computed: usize,
    /// Average tokens per decoded batch.
    pub avg_batch_tokens: f64,
}

/// Runs the benchmark and prints a table (or, with `json`, one JSON object `{"rows":[...]}`).
pub fn run(args: &BenchEngineArgs, json: bool) -> anyhow::Result<()> {
    let Some(model) = args.model.clone() else {
        bail!("no model given; pass --model PATH (a GGUF file)");
    };
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs positive numbers, e.g. 1,2,4,8");
    }
    if args.gen_tokens == 0 || args.prompt_tokens == 0 {
        bail!("--gen and --prompt-tokens must be at least 1");
    }
    let mut rows = Vec::new();
    let mut workload = Vec::new();
    for (row_index, &c) in args.concurrency.iter().enumerate() {
        let ctx_per_seq = (args.shared_prefix_tokens + args.prompt_tokens + args.gen_tokens + 64)
            .next_multiple_of(256) as u32;
        let mut options = EngineOptions::new(&model);
        options.n_parallel = c;
        options.ctx_per_seq = ctx_per_seq;
        options.n_threads = args.threads;
        // Up to one prefill chunk per request per step.
        options.step_tokens = 512;
        let engine = Engine::start(options)
            .with_context(|| format!("starting the engine for concurrency {c}"))?;
        let prompts = build_prompts(&engine, args, c, row_index)?;
        if !json {
            eprintln!("concurrency {c}: {} requests ...", prompts.len());
        }
        let row = run_row(&engine, args, &prompts)?;
        workload.push(json!({
            "concurrency": c,
            "stagger": args.stagger,
            "gen": args.gen_tokens,
            "prompts": prompts,
        }));
        rows.push(row);
        drop(engine);
    }
    if let Ok(path) = std::env::var("TROUPE_BENCH_WORKLOAD") {
        let text = serde_json::to_string(&json!({ "rows": workload }))?;
        std::fs::write(&path, text).with_context(|| format!("writing the workload to {path}"))?;
    }
    if json {
        super::print_json(&json!({ "rows": rows }))?;
    } else {
        let mut out = String::from(
            "conc  agg tok/s  per-seq tok/s  ttft p50 ms  ttft p95 ms  prompt  cached  computed  generated  wall ms\n",
        );
        for r in &rows {
            out.push_str(&format!(
                "{:>4}  {:>9.1}  {:>13.1}  {:>11.0}  {:>11.0}  {:>6}  {:>6}  {:>8}  {:>9}  {:>7.0}\n",
                r.concurrency,
                r.aggregate_tok_s,
                r.per_seq_tok_s,
                r.ttft_p50_ms,
                r.ttft_p95_ms,
                r.prompt_tokens,
                r.cached_tokens,
                r.prompt_tokens_computed,
                r.generated_tokens,
                r.wall_ms
            ));
        }
        super::print(&out)?;
    }
    Ok(())
}

/// Deterministic prompts: a shared prefix, then each request's own tokens.
fn build_prompts(
    engine: &Engine,
    args: &BenchEngineArgs,
    concurrency: usize,
    row: usize,
) -> anyhow::Result<Vec<Vec<i32>>> {
    let shared = text_tokens(engine, 7, args.shared_prefix_tokens, true)?;
    (0..concurrency)
        .map(|i| {
            let own = text_tokens(
                engine,
                1000 + (row * 100 + i) as u64,
                args.prompt_tokens,
                shared.is_empty(),
            )?;
            Ok([shared.clone(), own].concat())
        })
        .collect()
}

/// Exactly `n` tokens of varied English-like text from a seed.
fn text_tokens(engine: &Engine, seed: u64, n: usize, first: bool) -> anyhow::Result<Vec<i32>> {
    const WORDS: &[&str] = &[
        "the",
        "function",
        "returns",
        "a",
        "list",
        "of",
        "values",
        "when",
        "input",
        "is",
        "empty",
        "error",
        "handling",
        "should",
        "check",
        "each",
        "file",
        "in",
        "repository",
        "and",
        "review",
        "change",
        "test",
        "passes",
        "with",
        "new",
        "code",
        "module",
        "reads",
        "config",
        "writes",
        "output",
        "index",
        "query",
        "result",
        "struct",
        "field",
        "method",
        "call",
        "loop",
        "over",
        "items",
        "count",
        "sum",
        "string",
        "parse",
        "number",
        "branch",
        "merge",
        "commit",
        "patch",
        "line",
        "range",
        "symbol",
        "type",
        "trait",
        "impl",
        "async",
        "thread",
    ];
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut guard = 0;
    while tokens.len() < n {
        for _ in 0..(n + 16) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = WORDS[((state >> 33) as usize) % WORDS.len()];
            text.push_str(w);
            text.push(if (state >> 20) % 11 == 0 { '.' } else { ' ' });
        }
        tokens = engine.tokenize(&text);
        if !first {
            // Not the start of the prompt: drop a leading BOS the tokenizer may add.
            let with_bos = engine.tokenize("");
            if !with_bos.is_empty() && tokens.first() == with_bos.first() {
                tokens.remove(0);
            }
        }
        guard += 1;
        if guard > 100 {
            bail!("could not build a prompt of {n} tokens");
        }
    }
    tokens.truncate(n);
    Ok(tokens)
}

struct Outcome {
    sent: Instant,
    first_token: Option<Instant>,
    last_event: Instant,
    stats: RequestStats,
}

fn run_row(engine: &Engine, args: &BenchEngineArgs, prompts: &[Vec<i32>]) -> anyhow::Result<Row> {
    let request = |tokens: &Vec<i32>| GenerateRequest {
        max_tokens: Some(args.gen_tokens as u32),
        ignore_eos: true,
        sampling: Sampling::greedy(),
        ..GenerateRequest::new(Prompt::Tokens(tokens.clone()))
    };
    let steps_before = engine.metrics();
    let t0 = Instant::now();
    let mut outcomes = Vec::new();
    if args.stagger && prompts.len() > 1 {
        outcomes.extend(drive(engine, &[request(&prompts[0])])?);
        let rest: Vec<_> = prompts[1..].iter().map(request).collect();
        outcomes.extend(drive(engine, &rest)?);
    } else {
        let all: Vec<_> = prompts.iter().map(request).collect();
        outcomes.extend(drive(engine, &all)?);
    }
    let end = outcomes.iter().map(|o| o.last_event).max().unwrap_or(t0);
    let wall = end.duration_since(t0).as_secs_f64();
    let generated: usize = outcomes.iter().map(|o| o.stats.generated_tokens).sum();
    let ttfts: Vec<f64> = outcomes
        .iter()
        .map(|o| {
            o.first_token
                .map_or(0.0, |t| t.duration_since(o.sent).as_secs_f64() * 1000.0)
        })
        .collect();
    let mut sorted = ttfts.clone();
    sorted.sort_by(f64::total_cmp);
    let prompt_tokens: usize = outcomes.iter().map(|o| o.stats.prompt_tokens).sum();
    let cached_tokens: usize = outcomes.iter().map(|o| o.stats.cached_tokens).sum();
    let m = engine.metrics();
    let steps = m.steps - steps_before.steps;
    let batch_tokens = m.batch_tokens_total - steps_before.batch_tokens_total;
    Ok(Row {
        concurrency: prompts.len(),
        aggregate_tok_s: if wall > 0.0 {
            generated as f64 / wall
        } else {
            0.0
        },
        per_seq_tok_s: outcomes.iter().map(|o| o.stats.decode_tok_s).sum::<f64>()
            / outcomes.len().max(1) as f64,
        ttft_p50_ms: percentile(&sorted, 0.50),
        ttft_p95_ms: percentile(&sorted, 0.95),
        prompt_tokens,
        cached_tokens,
        generated_tokens: generated,
        wall_ms: wall * 1000.0,
        ttft_first_ms: ttfts.first().copied().unwrap_or(0.0),
        ttft_rest_max_ms: ttfts.iter().skip(1).copied().fold(0.0, f64::max),
        prompt_tokens_computed: prompt_tokens - cached_tokens,
        avg_batch_tokens: if steps > 0 {
            batch_tokens as f64 / steps as f64
        } else {
            0.0
        },
    })
}

/// Sends all requests at once and waits for every one to finish.
fn drive(engine: &Engine, requests: &[GenerateRequest]) -> anyhow::Result<Vec<Outcome>> {
    let handles: Vec<_> = requests
        .iter()
        .map(|r| {
            let sent = Instant::now();
            let mut stream = engine.generate(r.clone());
            std::thread::spawn(move || -> anyhow::Result<Outcome> {
                let mut first_token = None;
                while let Some(event) = stream.blocking_next() {
                    match event? {
                        GenerateEvent::Delta { tokens, .. } => {
                            if first_token.is_none() && !tokens.is_empty() {
                                first_token = Some(Instant::now());
                            }
                        }
                        GenerateEvent::Done { stats, .. } => {
                            return Ok(Outcome {
                                sent,
                                first_token,
                                last_event: Instant::now(),
                                stats,
                            });
                        }
                    }
                }
                bail!("the stream ended without a final event")
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut out = Vec::new();
    for h in handles {
        if Instant::now() > deadline {
            bail!("benchmark timed out");
        }
        match h.join() {
            Ok(r) => out.push(r?),
            Err(_) => bail!("a benchmark thread panicked"),
        }
    }
    Ok(out)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
