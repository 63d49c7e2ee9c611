//! One trait over the places generation can run: the embedded llama.cpp [`Engine`] (default)
//! and an OpenAI-compatible HTTP endpoint ([`super::openai::OpenAiBackend`]) for users whose
//! load outgrows one machine. Agents hold an `Arc<dyn Backend>` and never know which one it is.

use super::request::{GenerateRequest, RequestId};
use super::stream::GenerationStream;
use super::thread::{Engine, EngineMetrics};

/// Somewhere requests are generated.
pub trait Backend: Send + Sync {
    /// Starts a request. Returns at once; the answer streams back on the returned stream: deltas,
    /// then exactly one terminal event (a `Done` with stats, or an error). Dropping the stream
    /// cancels the request.
    fn generate(&self, request: GenerateRequest) -> GenerationStream;

    /// Starts several requests together. The embedded engine queues them in one step, in order,
    /// so the same group is scheduled (and, greedy, answered) the same way on every run; other
    /// back ends start them one by one.
    fn generate_group(&self, requests: Vec<GenerateRequest>) -> Vec<GenerationStream> {
        requests.into_iter().map(|r| self.generate(r)).collect()
    }

    /// Cancels a request by id; its stream ends with `FinishReason::Cancelled` (or, for a remote
    /// back end, as soon as the connection is closed). Unknown ids are ignored.
    fn cancel(&self, id: RequestId);

    /// A short human-readable description (model path or endpoint URL).
    fn describe(&self) -> String;

    /// The back end's live counters, when it keeps them (the embedded engine does; a remote
    /// server does not, and returns `None`).
    fn metrics(&self) -> Option<EngineMetrics> {
        None
    }
}

impl Backend for Engine {
    fn generate(&self, request: GenerateRequest) -> GenerationStream {
        Engine::generate(self, request)
    }

    fn generate_group(&self, requests: Vec<GenerateRequest>) -> Vec<GenerationStream> {
        Engine::generate_group(self, requests)
    }

    fn cancel(&self, id: RequestId) {
        Engine::cancel(self, id);
    }

    fn describe(&self) -> String {
        format!("llama.cpp (embedded): {}", self.model_info().path.display())
    }

    fn metrics(&self) -> Option<EngineMetrics> {
        Some(Engine::metrics(self))
    }
}
