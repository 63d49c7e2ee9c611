//! Helpers for the engine tests: the tiny test model and a small engine.

use std::path::PathBuf;

use super::{Engine, EngineOptions};

/// The tiny chat model for tests: `TROUPE_TEST_MODEL`, else the cache path. Panics (fails the
/// test, never skips it) with the fix when the file is missing.
pub(crate) fn test_model() -> PathBuf {
    let path = std::env::var_os("TROUPE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::paths::models_dir().join("smollm2-135m-instruct.gguf"));
    assert!(
        path.is_file(),
        "test model {} is missing; run `scripts/setup.sh --test` (or set TROUPE_TEST_MODEL)",
        path.display()
    );
    path
}

/// Options for a small, fast engine on the test model.
pub(crate) fn small_options(n_parallel: usize, ctx_per_seq: u32) -> EngineOptions {
    let mut o = EngineOptions::new(test_model());
    o.n_parallel = n_parallel;
    o.ctx_per_seq = ctx_per_seq;
    o.n_threads = Some(2);
    o
}

/// Starts an engine on a blocking thread (model load is blocking).
pub(crate) async fn start(options: EngineOptions) -> Engine {
    tokio::task::spawn_blocking(move || Engine::start(options))
        .await
        .expect("join")
        .expect("engine starts on the test model")
}
