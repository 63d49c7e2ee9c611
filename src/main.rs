//! The `troupe` command: parse the command line, set up logging and configuration, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use troupe::commands::{self, Context, exit};
use troupe::config::{Loaded, Sources};
use troupe::models::Store;
use troupe::models::pull::{PullOptions, SourceKind};

/// A local, private, multi-agent coding assistant: writer, reviewer and tester agents sharing
/// one model on your machine.
#[derive(Debug, Parser)]
#[command(name = "troupe", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    /// Without a command: the terminal UI in the current repository.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct Global {
    /// The repository (default: the git root above the current directory).
    #[arg(long, global = true, value_name = "PATH")]
    repo: Option<PathBuf>,
    /// A config file read after troupe.toml and ~/.config/troupe/config.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The chat model: a catalog name or a GGUF path (overrides model.chat).
    #[arg(long, global = true, value_name = "PATH|NAME")]
    model: Option<String>,
    /// The embedding model: a catalog name or a GGUF path (overrides model.embed).
    #[arg(long, global = true, value_name = "PATH|NAME")]
    embed_model: Option<String>,
    /// Machine-readable output on stdout (one JSON object per line); progress stays on stderr.
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Run one-shot commands (ask, explain, edit, review, search) in this process even when a
    /// `troupe lsp`, `troupe serve` or terminal UI of the repository is running.
    #[arg(long, global = true)]
    no_instance: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List, download, verify and locate models.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Show the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Check what is installed, found and verified, and say how to fix the rest.
    Doctor,
    /// Build or update the code index, with progress.
    Index(commands::index_cmd::IndexArgs),
    /// Search the code index (BM25, vectors, or both fused).
    Search(commands::search_cmd::SearchArgs),
    /// Measure retrieval quality and speed.
    #[command(subcommand)]
    Eval(commands::eval_cmd::EvalCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Answer a question about the repository from its code, citing the code it used.
    Ask {
        /// The question; `-` reads it from stdin.
        question: String,
        /// A file the question is about (relative to the repository root).
        #[arg(long, value_name = "F")]
        file: Option<String>,
        /// A line of --file the question is about (the lines around it are shown).
        #[arg(long, value_name = "L", conflicts_with = "range")]
        line: Option<u32>,
        /// Lines A to B of --file (1-based, inclusive).
        #[arg(long, value_name = "A:B")]
        range: Option<String>,
    },
    /// Explain code of a file (streamed; --json: one object).
    Explain {
        /// The file (relative to the repository root, or absolute inside it).
        #[arg(long, value_name = "F")]
        file: String,
        /// Lines A to B of --file (1-based, inclusive; default: the whole file).
        #[arg(long, value_name = "A:B")]
        range: Option<String>,
    },
    /// Propose a change to a file or a range of its lines; prints a unified diff.
    Edit {
        /// The file (relative to the repository root, or absolute inside it).
        #[arg(long, value_name = "F")]
        file: String,
        /// Lines A to B of --file (1-based, inclusive); no line outside them changes.
        #[arg(long, value_name = "A:B")]
        range: Option<String>,
        /// What to change.
        #[arg(long, value_name = "TEXT")]
        instruction: String,
        /// Write the change to the file, only if the file still has the content the edit was
        /// made from.
        #[arg(long)]
        write: bool,
        /// Read the file's current content (an unsaved editor buffer) from stdin.
        #[arg(long)]
        stdin: bool,
    },
    /// Language server over stdio (code actions: explain, edit selection, review file).
    Lsp,
    /// OpenAI-compatible HTTP API over the shared engine (loopback by default, no
    /// authentication); also serves the one-shot commands of the repository over its socket.
    Serve(troupe::serve::ServeArgs),
    /// Run a writer/reviewer/tester task headless (exit 0 converged, 1 not converged).
    Run {
        /// What to do; `-` reads it from stdin.
        task: Option<String>,
        /// Rounds before the task stops unconverged (default: agents.max_rounds).
        #[arg(long, value_name = "N")]
        max_rounds: Option<u32>,
        /// Run every line of FILE as a task, all at once in one session (shared model).
        #[arg(long, value_name = "FILE", conflicts_with = "task")]
        tasks_file: Option<PathBuf>,
        /// With --tasks-file: one task after another instead of all at once.
        #[arg(long, requires = "tasks_file")]
        sequential: bool,
    },
    /// List, inspect, resume, apply or discard tasks.
    #[command(subcommand)]
    Tasks(TasksCmd),
    /// Review a change: every changed hunk, reproducibly (exit 1 on findings at --fail-on or
    /// coverage under --min-coverage).
    Review {
        /// The old side (default HEAD). With --head REF the diff starts at their merge base.
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// The new side: a commit, branch or tag (default: the working tree).
        #[arg(long, value_name = "REF", conflicts_with_all = ["staged", "worktree"])]
        head: Option<String>,
        /// Review the staged changes.
        #[arg(long, conflicts_with = "worktree")]
        staged: bool,
        /// Review the working tree, untracked files included (the default).
        #[arg(long)]
        worktree: bool,
        /// Output format (default: text, or json with --json).
        #[arg(long, value_enum)]
        format: Option<troupe::headless::review::Format>,
        /// Lowest severity that makes the review exit 1 (default: review.fail_on).
        #[arg(long, value_enum)]
        fail_on: Option<troupe::config::FailOn>,
        /// Fraction (0 to 1) of changed lines that must be reviewed (default: review.min_coverage).
        #[arg(long, value_name = "F")]
        min_coverage: Option<f64>,
        /// Write the output to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Also write the same report as FORMAT to FILE (repeatable), e.g. `sarif:troupe.sarif`.
        #[arg(long, value_name = "FORMAT:FILE", value_parser = troupe::headless::review::parse_also)]
        also: Vec<(troupe::headless::review::Format, PathBuf)>,
    },
}

#[derive(Debug, Subcommand)]
enum TasksCmd {
    /// Every task of the repository.
    List,
    /// A task's state, rounds, findings and change.
    Show { id: String },
    /// Continue an unfinished task.
    Resume { id: String },
    /// Apply a task's change to your working tree (only if it applies cleanly).
    Apply { id: String },
    /// Delete a task's worktree and branch.
    Discard { id: String },
}

#[derive(Debug, Subcommand)]
enum ModelsCmd {
    /// The catalog and what is in the cache.
    List,
    /// Download and verify models (default: the configured chat and embedding models).
    Pull {
        /// Catalog names.
        names: Vec<String>,
        /// Use only this kind of source.
        #[arg(long, value_enum)]
        source: Option<SourceKind>,
        /// Take the model from a local GGUF file (or checkpoint folder for embedding models).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        /// Fetch again even if a verified copy is present.
        #[arg(long)]
        force: bool,
    },
    /// Re-hash models and compare with the catalog (default: every model in the cache).
    Verify { name: Option<String> },
    /// Print the path of a downloaded model.
    Path { name: String },
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Aggregate throughput and time to first token at several concurrencies on the chat model
    /// (--model PATH|NAME, default model.chat).
    Engine(troupe::commands::bench::BenchEngineArgs),
    /// Frame time of the terminal UI while agents stream (update plus draw, no terminal I/O).
    Tui(troupe::tui::bench::BenchTuiArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Every setting with its value and where it came from.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = if cli.global.quiet {
        -1
    } else {
        cli.global.verbose.min(3) as i8
    };
    match run(cli, verbosity) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // A closed stdout (`troupe ... | head`) is a clean exit, not an error.
            if err
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::from(exit::OK);
            }
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit::ERROR)
        }
    }
}

fn run(cli: Cli, verbosity: i8) -> anyhow::Result<u8> {
    let g = &cli.global;
    let start = match &g.repo {
        Some(p) => p.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let (repo, repo_error) = match troupe::git::discover_root(&start) {
        Ok(root) => (Some(root), None),
        Err(e) if g.repo.is_some() => return Err(e.into()),
        Err(e) => (None, Some(e.to_string())),
    };

    let loaded = Loaded::load(&Sources {
        user_file: Some(troupe::paths::user_config_file()),
        repo: repo.clone(),
        explicit: g.config.clone(),
    });
    // `doctor` reports a broken config among its checks; every other command stops on it.
    let (mut config, config_error) = match loaded {
        Ok(c) => (c, None),
        Err(e) if matches!(cli.command, Some(Command::Doctor)) => {
            (Loaded::defaults(), Some(e.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(m) = &g.model {
        config.apply_flag("model.chat", "--model", toml::Value::String(m.clone()))?;
    }
    if let Some(m) = &g.embed_model {
        config.apply_flag(
            "model.embed",
            "--embed-model",
            toml::Value::String(m.clone()),
        )?;
    }
    // Fusion settings tuned for the embedding model, where the configuration keeps defaults.
    if let Some((id, fusion)) = troupe::models::catalog::tuned_fusion(&config.config.model.embed) {
        for (key, value) in [
            ("retrieve.rrf_k", fusion.rrf_k),
            ("retrieve.vector_weight", fusion.vector_weight),
            ("retrieve.file_decay", fusion.file_decay),
        ] {
            config.apply_model_default(key, id, toml::Value::Float(value))?;
        }
    }

    let log_dir = match &repo {
        Some(r) => troupe::paths::state_dir(r).join("logs"),
        None => troupe::paths::cache_dir().join("logs"),
    };
    let level = &config.config.log.level;
    // The terminal UI owns the screen: its logs go to the file only.
    let _log = match cli.command {
        None => troupe::logging::init_file_only(Some(&log_dir), level),
        Some(_) => troupe::logging::init(verbosity, Some(&log_dir), level),
    };
    tracing::info!(command = ?cli.command, "troupe {}", env!("CARGO_PKG_VERSION"));

    let ctx = Context {
        repo,
        repo_error,
        config,
        config_error,
        json: g.json,
        no_instance: g.no_instance,
    };
    let store = Store::default();
    let Some(command) = &cli.command else {
        return troupe::tui::run(&ctx);
    };
    match command {
        Command::Models(ModelsCmd::List) => commands::models_cmd::list(&ctx, &store),
        Command::Models(ModelsCmd::Pull {
            names,
            source,
            from,
            force,
        }) => {
            let opts = PullOptions {
                source: *source,
                from: from.clone(),
                force: *force,
            };
            commands::models_cmd::pull(&ctx, &store, names, &opts)
        }
        Command::Models(ModelsCmd::Verify { name }) => {
            commands::models_cmd::verify(&ctx, &store, name.as_deref())
        }
        Command::Models(ModelsCmd::Path { name }) => commands::models_cmd::path(&ctx, &store, name),
        Command::Config(ConfigCmd::Show) => commands::config_cmd::show(&ctx),
        Command::Doctor => commands::doctor::run(&ctx, &store),
        Command::Index(args) => commands::index_cmd::run(&ctx, &store, args),
        Command::Search(args) => commands::search_cmd::run(&ctx, &store, args),
        Command::Eval(cmd) => commands::eval_cmd::run(&ctx, &store, cmd),
        Command::Bench(BenchCmd::Engine(args)) => {
            // The global --model (or model.chat) names the model; resolve it to a file here.
            let resolved =
                store.resolve(&ctx.config.config.model.chat, troupe::models::Role::Chat)?;
            let mut args = args.clone();
            args.model = Some(resolved.path);
            troupe::commands::bench::run(&args, ctx.json).map(|()| exit::OK)
        }
        Command::Bench(BenchCmd::Tui(args)) => {
            let report = troupe::tui::bench::run(args)?;
            troupe::tui::bench::print(&report, ctx.json).map(|()| exit::OK)
        }
        Command::Ask {
            question,
            file,
            line,
            range,
        } => troupe::editor::ask(
            &ctx,
            question,
            &troupe::editor::Location {
                file: file.clone(),
                line: *line,
                range: range.clone(),
            },
        ),
        Command::Review {
            base,
            head,
            staged,
            worktree: _,
            format,
            fail_on,
            min_coverage,
            output,
            also,
        } => troupe::headless::review::run(
            &ctx,
            &troupe::headless::review::ReviewArgs {
                base: base.clone(),
                head: match (head, staged) {
                    (Some(r), _) => troupe::protocol::ReviewHead::Ref(r.clone()),
                    (None, true) => troupe::protocol::ReviewHead::Staged,
                    (None, false) => troupe::protocol::ReviewHead::Worktree,
                },
                format: *format,
                fail_on: *fail_on,
                min_coverage: *min_coverage,
                output: output.clone(),
                also: also.clone(),
            },
        ),
        Command::Explain { file, range } => troupe::editor::explain(&ctx, file, range.as_deref()),
        Command::Edit {
            file,
            range,
            instruction,
            write,
            stdin,
        } => troupe::editor::edit(
            &ctx,
            &troupe::editor::EditArgs {
                file: file.clone(),
                range: range.clone(),
                instruction: instruction.clone(),
                write: *write,
                stdin: *stdin,
            },
        ),
        Command::Lsp => troupe::editor::lsp::run(&ctx),
        Command::Serve(args) => troupe::serve::run(&ctx, args),
        Command::Run {
            task,
            max_rounds,
            tasks_file,
            sequential,
        } => troupe::headless::run(
            &ctx,
            task.as_deref(),
            *max_rounds,
            tasks_file.as_deref(),
            *sequential,
        ),
        Command::Tasks(TasksCmd::List) => troupe::headless::list(&ctx),
        Command::Tasks(TasksCmd::Show { id }) => troupe::headless::show(&ctx, id),
        Command::Tasks(TasksCmd::Resume { id }) => troupe::headless::resume(&ctx, id),
        Command::Tasks(TasksCmd::Apply { id }) => troupe::headless::apply(&ctx, id),
        Command::Tasks(TasksCmd::Discard { id }) => troupe::headless::discard(&ctx, id),
    }
}
