//! Administrative commands that are not front ends of a session: `models`, `config`, `doctor`,
//! `bench`. Each has a `run` returning the process exit code (0 success, 1 negative outcome).

pub mod bench;
pub mod config_cmd;
pub mod doctor;
pub mod eval_cmd;
pub mod index_cmd;
pub mod models_cmd;
pub mod search_cmd;

use std::io::Write;
use std::path::PathBuf;

use crate::config::Loaded;

/// What every command gets from the global options.
#[derive(Debug, Clone)]
pub struct Context {
    /// The repository root, when troupe runs inside one (or `--repo` named one).
    pub repo: Option<PathBuf>,
    /// Why there is no repository, when there is none.
    pub repo_error: Option<String>,
    pub config: Loaded,
    /// Why the configuration could not be read (only `doctor` runs on with the defaults).
    pub config_error: Option<String>,
    /// `--json`: machine-readable output on stdout.
    pub json: bool,
    /// `--no-instance`: one-shot commands run in this process, never on a running instance.
    pub no_instance: bool,
}

/// Exit codes of the command-line contract.
pub mod exit {
    pub const OK: u8 = 0;
    /// Ran, but the outcome is negative (problems found, findings over the threshold, ...).
    pub const NEGATIVE: u8 = 1;
    pub const ERROR: u8 = 2;
}

/// Prints a JSON value as one line on stdout.
pub fn print_json(value: &serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Prints text on stdout (a broken pipe surfaces as an `io::Error` the caller treats as a clean
/// exit, rather than a panic).
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Human-readable byte size.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
