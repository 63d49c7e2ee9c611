//! Logging through `tracing`: a log file under `<repo>/.troupe/logs/` (or the user cache outside
//! a repository) at the configured level, and terse warnings on stderr, louder with `-v`.
//!
//! Human progress and results are not logged: commands print those themselves.

use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the background log writer alive; logs are flushed when it drops.
pub struct Guard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber. `verbosity`: -1 for `-q`, 0 by default, 1 for `-v`, 2+ for
/// `-vv`. `TROUPE_LOG` (an `EnvFilter` directive) overrides the stderr filter.
pub fn init(verbosity: i8, log_dir: Option<&Path>, file_level: &str) -> Guard {
    let stderr_default = match verbosity {
        i8::MIN..=-1 => "error",
        0 => "warn,llama_cpp_2=error,lance=error,lancedb=error,tantivy=error",
        1 => "info,llama_cpp_2=warn,lance=warn,lancedb=warn,tantivy=warn",
        2 => "debug",
        _ => "trace",
    };
    let stderr_filter = std::env::var("TROUPE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(stderr_default));
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(verbosity >= 2)
        .without_time()
        .with_filter(stderr_filter);

    let (file_layer, guard) = match log_dir.and_then(|dir| {
        std::fs::create_dir_all(dir).ok()?;
        // The log lives in the repository's `.troupe/`: keep it out of `git status` as the rest
        // of troupe's state is.
        if let Some(state) = dir.parent().filter(|p| p.ends_with(".troupe")) {
            let ignore = state.join(".gitignore");
            if !ignore.exists() {
                let _ = std::fs::write(&ignore, "# troupe's state: never committed\n*\n");
            }
        }
        Some(tracing_appender::rolling::never(dir, "troupe.log"))
    }) {
        Some(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let level = file_level
                .parse::<tracing::Level>()
                .unwrap_or(tracing::Level::INFO);
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer.with_max_level(level));
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
    Guard { _worker: guard }
}

/// Installs the global subscriber with the log file only: for the terminal UI, where anything
/// written to stderr would land on the screen it draws.
pub fn init_file_only(log_dir: Option<&Path>, file_level: &str) -> Guard {
    let Some(appender) = log_dir.and_then(|dir| {
        std::fs::create_dir_all(dir).ok()?;
        Some(tracing_appender::rolling::never(dir, "troupe.log"))
    }) else {
        return Guard { _worker: None };
    };
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let level = file_level
        .parse::<tracing::Level>()
        .unwrap_or(tracing::Level::INFO);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(writer.with_max_level(level));
    let _ = tracing_subscriber::registry().with(layer).try_init();
    Guard {
        _worker: Some(guard),
    }
}
