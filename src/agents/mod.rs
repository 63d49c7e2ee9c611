//! Agents: a writer, reviewers and testers working on one task in an isolated git worktree, all
//! served by one shared engine, behind a [`Session`] that takes [`crate::protocol::Submission`]s
//! and emits [`crate::protocol::Event`]s.
//!
//! - [`roles`]: roles as data (`agents/*.toml`), prompt templates (`prompts/*.md`) and tool-call
//!   grammars (`grammars/gbnf/*.gbnf`), embedded and overridable from the user's config dir.
//! - [`tools`]: parsing a grammar-constrained tool call and running it inside the worktree
//!   ([`edit`] for validated search/replace edits, [`exec`] for allow-listed commands with a
//!   timeout and an output cap, [`search`] for code search and the symbol map).
//! - [`context`]: the shared prompt prefix (file list, instruction files, task), identical for
//!   every agent so the engine computes it once.
//! - [`orchestrator`]: the rounds: writer, then reviewers and testers concurrently, feedback,
//!   a commit per round on `troupe/<task>`, until the tests pass with no high-severity finding
//!   or out of budget; a round that tests worse than the best one so far is undone.
//! - [`rounds`]: each round's test result and snapshot, and which round the task keeps.
//! - [`store`]: everything persisted under `.troupe/tasks/<id>/` as it happens; list, show,
//!   apply and discard.
//! - [`ask`], [`explain`], [`rewrite`]: the editor's one-shot requests (questions, explanations,
//!   proposed edits of a range); [`target`] checks the file and range they point at.
//! - [`searcher`]: `troupe search` with the index and the embedding model kept open, for the
//!   command and for a session's `Op::Search` (so a running instance answers it).
//! - [`complete`]: raw model requests and embeddings for `troupe serve` (no context, no tools).
//! - [`session`]: the facade the front ends share.
//!
//! Depends on engine, retrieve, git, config, models, protocol (and of `index`, the chunker for
//! the symbol map and the embedding model for searches); front ends depend on this module and `protocol` only. Async (tokio): every agent turn is
//! a task; model requests go to the engine thread and stream back; commands run as child
//! processes in their own process group.
//!
//! Four outcomes stay apart: a failed tool call is data handed back to the model
//! ([`tools::ToolOutcome::Failed`]); a policy denial too, marked as such
//! ([`tools::ToolOutcome::Denied`]); a cancellation ends a task with
//! [`crate::protocol::TaskOutcome::Cancelled`] and is not an error; a broken invariant is
//! [`Error::Invariant`].

pub mod ask;
pub mod complete;
pub mod context;
pub mod edit;
pub mod exec;
pub mod explain;
pub mod orchestrator;
pub mod review;
pub mod rewrite;
pub mod roles;
pub mod rounds;
pub mod search;
pub mod searcher;
pub mod session;
pub mod store;
pub mod target;
pub mod tools;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use roles::{RoleKind, RoleSpec, Roles};
pub use search::{CodeSearch, IndexedSearch, LexicalSearch, SearchHit};
pub use session::{Session, SessionOptions};
pub use store::{TaskRecord, TaskStatus};

/// Errors of the agents layer; each names the thing involved and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A role file does not parse or names something that does not exist.
    #[error("role {name}: {message}; see agents/README.md")]
    Role {
        /// The role file or role name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A prompt template does not render.
    #[error("prompt template {name} does not render: {message}; see prompts/README.md")]
    Template {
        /// The template name.
        name: String,
        /// minijinja's message.
        message: String,
    },
    /// There is no writer-kind role.
    #[error(
        "no role of kind `writer` takes part; keep agents/writer.toml and name it in agents.roles (if set)"
    )]
    NoWriter,
    /// A task id that has no saved state.
    #[error("no task `{id}` in {dir}; `troupe tasks list` shows the tasks")]
    TaskNotFound {
        /// The id asked for.
        id: String,
        /// Where tasks are kept.
        dir: PathBuf,
    },
    /// A task is in a state that does not allow the operation.
    #[error("task {id}: {message}")]
    TaskState {
        /// The task.
        id: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A task's saved state cannot be read.
    #[error("task state {path} is unreadable ({message}); inspect or delete it")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// The chat model could not be found or verified.
    #[error(transparent)]
    Model(#[from] crate::models::Error),
    /// The engine failed to start or stopped.
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    /// A git operation failed.
    #[error(transparent)]
    Git(#[from] crate::git::Error),
    /// A file could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The session has shut down; no more submissions are accepted.
    #[error("the session has shut down; start a new one")]
    SessionClosed,
    /// Something that must hold did not: a bug in troupe.
    #[error("internal error (a bug in troupe, please report it): {0}")]
    Invariant(String),
}

/// Result of agents operations.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(
    context: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        context,
        path,
        source,
    }
}
