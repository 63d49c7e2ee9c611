//! A [`Backend`] that speaks the OpenAI-compatible HTTP API (llama.cpp's server, vLLM, Ollama):
//! `/v1/chat/completions` for chat messages and `/v1/completions` for text or token prompts,
//! both streamed as server-sent events.
//!
//! Each request runs on its own blocking thread (ureq); events go back on the request's stream
//! like the embedded engine's. Cancelling (or dropping the stream) sets a flag checked after
//! every event; the connection is then closed, which makes the server stop generating.
//! Deltas carry text only (the API does not return token ids). llama.cpp extensions (`top_k`,
//! `min_p`, `repeat_penalty`, `grammar`, `ignore_eos`, `timings`) are sent and read; other
//! servers ignore them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::backend::Backend;
use super::request::{
    Constraint, FinishReason, GenerateEvent, GenerateRequest, Prompt, RequestId, RequestStats,
};
use super::stream::{EventSender, GenerationStream};
use super::{Error, Result};

/// An OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiBackend {
    base_url: String,
    model: String,
    api_key: Option<String>,
    agent: ureq::Agent,
    next_id: Arc<AtomicU64>,
    cancels: Arc<Mutex<HashMap<RequestId, Arc<AtomicBool>>>>,
}

impl std::fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish()
    }
}

impl OpenAiBackend {
    /// An endpoint such as `http://127.0.0.1:8080/v1`, serving `model` (servers that host one
    /// model ignore the name).
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            // A long prompt can take minutes before the first byte; a stalled stream cannot.
            .timeout_per_read(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            model: model.into(),
            api_key: None,
            agent,
            next_id: Arc::new(AtomicU64::new(1)),
            cancels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Sends `Authorization: Bearer KEY`.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The request body and path for a request.
    fn body(&self, request: &GenerateRequest) -> (&'static str, Value) {
        let s = &request.sampling;
        let mut body = json!({
            "model": self.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": if s.is_greedy() { 0.0 } else { s.temperature },
            "top_p": s.top_p,
            "top_k": if s.is_greedy() { 1 } else { s.top_k },
            "min_p": s.min_p,
            "repeat_penalty": s.repeat_penalty,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "seed": s.seed,
            "cache_prompt": true,
        });
        if let Some(m) = request.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if !request.stop.is_empty() {
            body["stop"] = json!(request.stop);
        }
        if request.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        match &request.constraint {
            Some(Constraint::Gbnf(g)) => body["grammar"] = json!(g),
            Some(Constraint::JsonSchema(schema)) => {
                let schema: Value = serde_json::from_str(schema).unwrap_or(Value::Null);
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": schema},
                });
            }
            None => {}
        }
        match &request.prompt {
            Prompt::Messages(messages) => {
                body["messages"] = json!(messages);
                ("/chat/completions", body)
            }
            Prompt::Text(text) => {
                body["prompt"] = json!(text);
                ("/completions", body)
            }
            Prompt::Tokens(tokens) => {
                body["prompt"] = json!(tokens);
                ("/completions", body)
            }
        }
    }
}

impl Backend for OpenAiBackend {
    fn generate(&self, request: GenerateRequest) -> GenerationStream {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut map) = self.cancels.lock() {
            map.insert(id, Arc::clone(&flag));
        }
        let on_drop = Arc::clone(&flag);
        let (tx, stream) =
            GenerationStream::channel(id, Box::new(move || on_drop.store(true, Ordering::Relaxed)));
        let (path, body) = self.body(&request);
        let url = format!("{}{}", self.base_url, path);
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("troupe-http".into())
            .spawn(move || {
                let chat = matches!(request.prompt, Prompt::Messages(_));
                let outcome = this.run(&url, &body, chat, &tx, &flag);
                if let Err(e) = outcome {
                    let _ = tx.send(Err(e));
                }
                if let Ok(mut map) = this.cancels.lock() {
                    map.remove(&id);
                }
            });
        match spawned {
            Ok(_) => stream,
            Err(e) => GenerationStream::failed(
                id,
                Error::Http {
                    url: self.base_url.clone(),
                    reason: format!("could not start a request thread: {e}"),
                },
            ),
        }
    }

    fn cancel(&self, id: RequestId) {
        if let Ok(map) = self.cancels.lock()
            && let Some(flag) = map.get(&id)
        {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn describe(&self) -> String {
        format!(
            "OpenAI-compatible endpoint {} ({})",
            self.base_url, self.model
        )
    }
}

impl OpenAiBackend {
    /// Performs one streamed request; sends deltas and the final `Done` on `tx`.
    fn run(
        &self,
        url: &str,
        body: &Value,
        chat: bool,
        tx: &EventSender,
        cancelled: &AtomicBool,
    ) -> Result<()> {
        let http_err = |reason: String| Error::Http {
            url: url.to_string(),
            reason,
        };
        let start = Instant::now();
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let response = req
            .send(body.to_string())
            .map_err(|e| http_err(format!("{e}; is the server running?")))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.into_body().read_to_string().unwrap_or_default();
            return Err(http_err(format!(
                "status {status}: {}",
                text.chars().take(500).collect::<String>()
            )));
        }
        let reader = BufReader::new(response.into_body().into_reader());

        let mut stats = RequestStats::default();
        let mut finish = None;
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        let mut chunks = 0usize;
        for line in reader.lines() {
            if cancelled.load(Ordering::Relaxed) {
                finish = Some(FinishReason::Cancelled);
                break;
            }
            let line = line.map_err(|e| http_err(format!("reading the stream: {e}")))?;
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| http_err(format!("bad event {data:.200}: {e}")))?;
            if let Some(err) = v.get("error") {
                return Err(http_err(format!("server error: {err}")));
            }
            read_usage(&v, &mut stats);
            let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
                continue;
            };
            let text = if chat {
                choice.pointer("/delta/content").and_then(Value::as_str)
            } else {
                choice.get("text").and_then(Value::as_str)
            };
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                chunks += 1;
                let delta = GenerateEvent::Delta {
                    text: text.to_string(),
                    tokens: Vec::new(),
                };
                if tx.send(Ok(delta)).is_err() {
                    finish = Some(FinishReason::Cancelled);
                    break;
                }
            }
            match choice.get("finish_reason").and_then(Value::as_str) {
                Some("length") => finish = Some(FinishReason::Length),
                Some(_) => finish = finish.or(Some(FinishReason::Stop)),
                None => {}
            }
        }
        if cancelled.load(Ordering::Relaxed) {
            finish = Some(FinishReason::Cancelled);
        }
        stats.ttft_ms = first.map_or(0.0, |t| t.duration_since(start).as_secs_f64() * 1000.0);
        stats.total_ms = start.elapsed().as_secs_f64() * 1000.0;
        if stats.generated_tokens == 0 {
            stats.generated_tokens = chunks;
        }
        if stats.decode_tok_s == 0.0
            && let (Some(f), Some(l)) = (first, last)
            && l > f
        {
            stats.decode_tok_s = (stats.generated_tokens.saturating_sub(1)) as f64
                / l.duration_since(f).as_secs_f64();
        }
        let _ = tx.send(Ok(GenerateEvent::Done {
            stats,
            finish_reason: finish.unwrap_or(FinishReason::Stop),
        }));
        Ok(())
    }
}

/// Reads `usage` (OpenAI) and `timings` (llama.cpp) from an event into the stats.
fn read_usage(v: &Value, stats: &mut RequestStats) {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as usize);
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        if let Some(p) = n(usage.get("prompt_tokens")) {
            stats.prompt_tokens = p;
        }
        if let Some(c) = n(usage.get("completion_tokens")) {
            stats.generated_tokens = c;
        }
        if let Some(c) = n(usage.pointer("/prompt_tokens_details/cached_tokens")) {
            stats.cached_tokens = c;
        }
    }
    if let Some(t) = v.get("timings").filter(|t| t.is_object()) {
        if let Some(c) = n(t.get("cache_n")) {
            stats.cached_tokens = c;
        }
        if let (Some(p), Some(c)) = (n(t.get("prompt_n")), n(t.get("cache_n"))) {
            stats.prompt_tokens = p + c;
        }
        if let Some(tps) = t.get("predicted_per_second").and_then(Value::as_f64) {
            stats.decode_tok_s = tps;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;
    use crate::engine::ChatMessage;
    use crate::engine::testutil::test_model;

    /// llama.cpp's server from the xllamacpp wheel, killed on drop.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn venv_python() -> PathBuf {
        crate::paths::cache_dir().join("venv/bin/python")
    }

    /// Starts the server on a free loopback port, or `None` when the venv lacks xllamacpp.
    fn start_server(n_parallel: usize) -> Option<(Server, u16)> {
        let python = venv_python();
        let has = Command::new(&python)
            .args(["-c", "import xllamacpp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            eprintln!(
                "SKIPPED: {} cannot import xllamacpp; install it with `{} -m pip install xllamacpp` to run this test",
                python.display(),
                python.display()
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let script = format!(
            "import time, xllamacpp as x\n\
             p = x.CommonParams()\n\
             p.model.path = {model:?}\n\
             p.port = {port}\n\
             p.hostnames = ['127.0.0.1']\n\
             p.n_ctx = 2048\n\
             p.n_parallel = {n_parallel}\n\
             p.cpuparams.n_threads = 2\n\
             p.cpuparams_batch.n_threads = 2\n\
             s = x.Server(p)\n\
             while True: time.sleep(1)\n",
            model = test_model().display().to_string(),
        );
        let child = Command::new(&python)
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python");
        let server = Server(child);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ok = agent
                .get(&format!("http://127.0.0.1:{port}/health"))
                .call()
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Some((server, port));
            }
            assert!(
                Instant::now() < deadline,
                "llama.cpp server did not come up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openai_backend_streams_from_llama_cpp_server() {
        let Some((_server, port)) = tokio::task::spawn_blocking(|| start_server(2))
            .await
            .expect("join")
        else {
            return;
        };
        let backend: Arc<dyn Backend> = Arc::new(OpenAiBackend::new(
            format!("http://127.0.0.1:{port}/v1"),
            "smollm2",
        ));
        let t = Duration::from_secs(60);

        let chat = GenerateRequest::chat(vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user("Name three colors."),
        ])
        .with_max_tokens(16);
        let c = timeout(t, backend.generate(chat.clone()).collect())
            .await
            .expect("in time")
            .expect("chat completion");
        assert!(!c.text.is_empty());
        assert!(c.stats.prompt_tokens > 10, "{:?}", c.stats);
        assert!(c.stats.generated_tokens > 0 && c.stats.generated_tokens <= 16);
        assert!(c.stats.ttft_ms > 0.0);
        // Greedy through HTTP is deterministic too.
        let again = timeout(t, backend.generate(chat).collect())
            .await
            .expect("in time")
            .expect("chat completion");
        assert_eq!(c.text, again.text);

        // Raw text through /v1/completions, with a length limit.
        let mut text = GenerateRequest::text("The capital of France is").with_max_tokens(8);
        text.ignore_eos = true;
        let c = timeout(t, backend.generate(text).collect())
            .await
            .expect("in time")
            .expect("completion");
        assert_eq!(c.finish_reason, FinishReason::Length);

        // A grammar is honoured by the server.
        let yes_no = GenerateRequest::text("Is the sky blue? Answer:")
            .with_max_tokens(4)
            .with_constraint(Constraint::Gbnf(r#"root ::= " yes" | " no""#.into()));
        let c = timeout(t, backend.generate(yes_no).collect())
            .await
            .expect("in time")
            .expect("grammar completion");
        assert!(c.text == " yes" || c.text == " no", "{:?}", c.text);

        // Cancel mid-stream: exactly one terminal event, Cancelled.
        let mut long =
            backend.generate(GenerateRequest::text("Once upon a time").with_max_tokens(500));
        let first = timeout(t, long.next()).await.expect("in time");
        assert!(
            matches!(first, Some(Ok(GenerateEvent::Delta { .. }))),
            "{first:?}"
        );
        backend.cancel(long.id());
        let mut terminal = None;
        while let Some(ev) = timeout(t, long.next()).await.expect("in time") {
            if let Ok(GenerateEvent::Done { finish_reason, .. }) = ev {
                terminal = Some(finish_reason);
            }
        }
        assert_eq!(terminal, Some(FinishReason::Cancelled));
    }

    #[test]
    fn unreachable_endpoint_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let backend = OpenAiBackend::new("http://127.0.0.1:9/v1", "m");
        let r = rt.block_on(backend.generate(GenerateRequest::text("hi")).collect());
        let err = r.expect_err("nothing listens on port 9");
        assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
    }
}
