//! The engine: owns llama.cpp (one backend per process) and the loaded models.
//!
//! Generation runs on a dedicated thread that owns the model's `LlamaContext`; everyone else
//! holds an async, cloneable [`Engine`] handle. Each request owns its reply channel
//! ([`GenerationStream`]): deltas, then exactly one terminal event (a `Done` with the stats, or an
//! error). The engine thread runs a continuous-batching loop ([`scheduler`]): every step it admits
//! waiting requests, reuses the longest cached token prefix held by any sequence ([`prefix`]),
//! builds ONE llama.cpp batch with one token per decoding sequence plus prefill chunks within a
//! token budget, decodes, samples per sequence and streams the text ([`text`]).
//!
//! [`Backend`] puts the embedded engine and an OpenAI-compatible HTTP endpoint ([`openai`]) behind
//! one trait. Embeddings use their own model and context (`embed`).
//!
//! Threading: the `LlamaContext` never leaves the engine thread and never crosses an await point.
//! The model itself (`LlamaModel`, immutable after loading) is shared read-only so callers can
//! tokenize and render chat templates without a round trip to the engine thread.
//! Depends on `protocol` only; must not depend on index, retrieve, agents or front ends.

pub mod backend;
pub mod chat;
pub mod embed;
pub mod openai;
pub mod prefix;
pub mod request;
pub mod scheduler;
pub mod stream;
pub mod text;
pub mod thread;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::path::PathBuf;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

pub use backend::Backend;
pub use request::{
    ChatMessage, Completion, Constraint, FinishReason, GenerateEvent, GenerateRequest, Priority,
    Prompt, RequestId, RequestStats, Sampling,
};
pub use stream::GenerationStream;
pub use thread::{Engine, EngineMetrics, EngineOptions, KvType, ModelInfo};

/// Errors of the engine. Messages name the model file and say how to fix the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file is not there.
    #[error("model file {path} does not exist; run `troupe models pull NAME` or pass --model PATH")]
    ModelMissing {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The model file exists but llama.cpp cannot load it.
    #[error(
        "could not load model {path}: the file is not a valid GGUF model or is corrupt ({reason}); run `troupe models verify` or download it again"
    )]
    ModelLoad {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The model loads but cannot produce one vector per text (e.g. a chat model given as the
    /// embedding model).
    #[error(
        "model {path} is not an embedding model ({reason}); pass an embedding model such as all-minilm-l6-v2 (`--embed-model`)"
    )]
    NotEmbeddingModel {
        /// The model file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// llama.cpp could not be initialised.
    #[error("llama.cpp backend failed to initialise: {0}")]
    Backend(String),
    /// A llama.cpp call failed.
    #[error("{0}")]
    Llama(String),
    /// The context (KV cache) could not be created for the model.
    #[error(
        "could not create a context of {cells} KV cells for model {path}: {reason}; lower --ctx or the number of parallel sequences"
    )]
    Context {
        /// The model file.
        path: PathBuf,
        /// KV cells requested.
        cells: u32,
        /// What went wrong.
        reason: String,
    },
    /// The request could not be turned into a prompt.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt does not fit the context of one sequence.
    #[error(
        "prompt of {prompt_tokens} tokens does not fit the context of {ctx_per_seq} tokens per sequence; shorten the prompt or raise the context per sequence"
    )]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Context per sequence.
        ctx_per_seq: usize,
    },
    /// The chat template could not be applied.
    #[error("could not render the chat template of the model: {0}; pass a raw text prompt instead")]
    ChatTemplate(String),
    /// A GBNF grammar or JSON schema was rejected.
    #[error("invalid grammar: {0}; check the GBNF syntax (root rule `root`) or the JSON schema")]
    Grammar(String),
    /// llama_decode failed for a batch holding this request.
    #[error("llama.cpp decode failed ({0}); the request was dropped, the engine keeps serving")]
    Decode(String),
    /// The engine thread is gone (shut down or crashed).
    #[error("the engine has stopped; restart troupe (see the log for the cause)")]
    EngineStopped,
    /// An HTTP back end failed.
    #[error("http back end {url}: {reason}")]
    Http {
        /// The endpoint.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The process-wide llama.cpp backend. llama.cpp may be initialised only once per process, so
/// every model (chat and embedding) borrows this one.
pub fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs through tracing (quiet unless -v) rather than straight to stderr.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Backend(e.clone()))
}
