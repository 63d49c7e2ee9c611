//! troupe: a local, private, multi-agent coding assistant for a git repository.
//!
//! # Architecture
//!
//! A repository flows through four layers, each a module with hard edges:
//!
//! 1. **index** scans the repository with git (tracked files plus untracked files that are not
//!    ignored, identified by git blob id), chunks each file with tree-sitter, and stores the chunks
//!    in a tantivy full-text index (BM25) and a LanceDB vector table. A manifest keyed by blob id
//!    means unchanged content is never chunked or embedded twice.
//! 2. **retrieve** answers a query from both stores, fuses the rankings and packs the best chunks
//!    into a token budget. It only reads the index.
//! 3. **engine** owns ONE llama.cpp model on a dedicated thread. Requests from many agents are
//!    served in one batch per step (continuous batching), and token prefixes they share (system
//!    prompt, repository context) are computed once and reused from the KV cache.
//! 4. **agents** (writer, reviewer, tester) are data (`agents/*.toml`, `prompts/*.md`,
//!    `grammars/gbnf/*.gbnf`) driven by an orchestrator behind a `Session` that takes
//!    [`protocol::Submission`]s and emits [`protocol::Event`]s.
//!
//! The front ends (terminal UI, headless CI commands, editor commands and language server, and
//! `serve`, the OpenAI-compatible HTTP API over the same session) speak only to the session and
//! the protocol. `models` and `config` are the foundation every layer
//! reads: the model catalog and cache, and the layered configuration.

pub mod agents;
pub mod commands;
pub mod config;
pub mod editor;
pub mod engine;
pub mod git;
pub mod headless;
pub mod index;
pub mod logging;
pub mod models;
pub mod paths;
pub mod protocol;
pub mod retrieve;
pub mod serve;
pub mod tui;
