//! `troupe serve`, run as a server and used as OpenAI clients use it, on the real tiny model:
//! the API's shapes, greedy streaming equal to the whole answer, constraints, errors, concurrent
//! requests on the one engine, disconnects and stops freeing their sequences, troupe's own
//! OpenAI back end against it, and one-shot commands reusing it over the repository's socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    Env, explain_through_instance, fixture_repo, model_lock, stderr, stdout, test_model,
};

const LOAD: Duration = Duration::from_secs(120);
const CALL: Duration = Duration::from_secs(120);

/// A running `troupe serve --addr 127.0.0.1:0 --json`, killed on drop.
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    /// What it printed on stdout once ready.
    ready: Value,
    stderr: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    fn start(env: &Env, cwd: &Path, extra: &[&str]) -> Server {
        let model = test_model();
        let mut args = vec!["--model", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--json", "serve", "--addr", "127.0.0.1:0"]);
        let mut cmd = env.command(cwd, &args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn troupe serve");
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let line = match out_rx.recv_timeout(LOAD) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let said: Vec<String> = err_rx.try_iter().collect();
                panic!("troupe serve did not announce its address within {LOAD:?}: {said:?}");
            }
        };
        let ready: Value = serde_json::from_str(&line).expect("one JSON object");
        let addr = ready["addr"].as_str().expect("addr").to_string();
        Server {
            child,
            addr,
            ready,
            stderr: std::sync::Mutex::new(err_rx),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let r = agent().get(&self.url(path)).call().expect("GET");
        let status = r.status().as_u16();
        let text = r.into_body().read_to_string().expect("body");
        (status, serde_json::from_str(&text).expect("a JSON body"))
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = agent()
            .post(&self.url(path))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("POST");
        let status = r.status().as_u16();
        let text = r.into_body().read_to_string().expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, v)
    }

    /// Posts with `stream: true` and reads the server-sent events: each `data:` payload, in order.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = agent()
            .post(&self.url(path))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("POST");
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers().get("content-type").unwrap().to_str().unwrap();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let reader = BufReader::new(r.into_body().into_reader());
        reader
            .lines()
            .map(|l| l.expect("line"))
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    fn health(&self) -> Value {
        let (status, v) = self.get("/health");
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the child we started and still own.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "troupe serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_so_far(&self) -> String {
        self.stderr
            .lock()
            .unwrap()
            .try_iter()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(CALL))
        .http_status_as_error(false)
        .build()
        .into()
}

fn repo() -> tempfile::TempDir {
    fixture_repo(&[
        (
            "src/money.py",
            "def add_cents(a, b):\n    \"\"\"Adds two amounts given in cents.\"\"\"\n    return a + b\n",
        ),
        ("troupe.toml", "[agents]\nmax_tokens = 60\n"),
    ])
}

fn minilm() -> PathBuf {
    let entry = troupe::models::catalog::find("all-minilm-l6-v2").expect("catalog entry");
    let path = troupe::paths::models_dir().join(entry.file_name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh (it pulls all-minilm-l6-v2)",
        path.display()
    );
    path
}

fn question(max_tokens: u32) -> Value {
    json!({
        "model": "whatever",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name three colors."},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// Starts a streamed completion on a raw connection and returns it once the first chunk came.
fn open_stream(addr: &str, max_tokens: u32) -> TcpStream {
    let body = json!({"prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": true,
        "stream": true})
    .to_string();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(CALL)).unwrap();
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = conn.read(&mut buf).expect("the stream starts");
        assert!(
            n > 0,
            "the server closed the stream: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    conn
}

/// Polls `/health` until `done` accepts it.
fn wait_health(server: &Server, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let h = server.health();
        if done(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "/health never got there: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_answers_as_the_openai_api_whole_streamed_constrained_and_with_errors() {
    let _guard = model_lock();
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let embed = minilm();
    let server = Server::start(
        &env,
        dir.path(),
        &["--embed-model", embed.to_str().unwrap()],
    );
    assert_eq!(server.ready["model"], "smollm2-135m-instruct");
    assert!(server.ready["url"].as_str().unwrap().ends_with("/v1"));
    assert!(server.ready["socket"].is_null(), "no repository, no socket");
    assert!(server.stderr_so_far().contains("/v1"));

    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "smollm2-135m-instruct");
    assert_eq!(models["data"][0]["object"], "model");

    // A whole chat answer with its usage.
    let (status, whole) = server.post("/v1/chat/completions", &question(24));
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty(), "{whole}");
    let usage = &whole["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 10, "{usage}");
    assert!((1..=24).contains(&completion), "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    let finish = whole["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{finish}");

    // The same request streamed: chunks that add up to the same greedy text, then [DONE].
    let mut streamed = question(24);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = server.stream("/v1/chat/completions", &streamed);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text, "streamed greedy text equals the whole answer");
    assert!(chunks.len() > 3, "several chunks: {chunks:?}");
    let finishing = &chunks[chunks.len() - 2];
    assert_eq!(finishing["choices"][0]["finish_reason"], finish);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["completion_tokens"].as_u64(),
        Some(completion)
    );

    // A text completion, whole and streamed.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "ignore_eos": true});
    let (status, done) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["object"], "text_completion");
    assert_eq!(done["choices"][0]["finish_reason"], "length");
    assert_eq!(done["usage"]["completion_tokens"], 8);
    let mut body = body;
    body["stream"] = json!(true);
    let events = server.stream("/v1/completions", &body);
    let joined: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(joined, done["choices"][0]["text"].as_str().unwrap());

    // A JSON-schema constrained answer parses and follows the schema.
    let schema = json!({"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}}, "required": ["color"]});
    let mut constrained = question(40);
    constrained["messages"][1]["content"] = json!("What color is the sky? Answer in JSON.");
    constrained["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}});
    let (status, v) = server.post("/v1/chat/completions", &constrained);
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content)
        .unwrap_or_else(|e| panic!("the constrained answer is JSON ({e}): {content}"));
    assert!(
        ["red", "green", "blue"].contains(&parsed["color"].as_str().unwrap()),
        "{parsed}"
    );

    // A llama.cpp grammar on a text completion.
    let (status, v) = server.post(
        "/v1/completions",
        &json!({"prompt": "Is the sky blue? Answer:", "grammar": "root ::= \" yes\" | \" no\"", "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{v}");
    let answer = v["choices"][0]["text"].as_str().unwrap();
    assert!(answer == " yes" || answer == " no", "{answer:?}");

    // Bad requests: 400 with an OpenAI error object naming the field.
    let mut bad = question(8);
    bad["temperature"] = json!("hot");
    let (status, e) = server.post("/v1/chat/completions", &bad);
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "temperature");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`temperature`"),
        "{e}"
    );
    // ... also when only the engine can tell (a grammar llama.cpp rejects), streamed or not.
    let mut bad = question(8);
    bad["grammar"] = json!("root ::= undefined_rule");
    let (status, e) = server.post("/v1/chat/completions", &bad);
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "grammar");
    bad["stream"] = json!(true);
    let (status, e) = server.post("/v1/chat/completions", &bad);
    assert_eq!(status, 400, "{e}");
    let (status, e) = server.post("/v1/chat/completions", &json!({"messages": []}));
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("messages"))
    );
    let r = agent()
        .post(&server.url("/v1/chat/completions"))
        .send("{not json")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (status, e) = server.get("/v1/nothing");
    assert_eq!(status, 404);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/chat/completions")
    );

    // Embeddings through the embedding model.
    let (status, v) = server.post(
        "/v1/embeddings",
        &json!({"input": ["red apples", "green pears"]}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let first = v["data"][0]["embedding"].as_array().unwrap();
    assert_eq!(first.len(), 384);
    let norm: f64 = first.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-3, "unit length: {norm}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 2);

    let health = server.health();
    assert_eq!(health["requests"]["running"], 0, "{health}");
    assert!(
        health["engine"]["kv_total"].as_u64().unwrap() > 0,
        "{health}"
    );
}

#[test]
fn concurrent_requests_share_the_engine_and_a_gone_client_frees_its_sequence() {
    let _guard = model_lock();
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&env, dir.path(), &[]);

    // Four requests at once, sharing a long system prompt: all answered, batched together.
    let system = format!(
        "You are a careful assistant. {}",
        "Answer briefly and precisely, in plain words. ".repeat(20)
    );
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let max_active = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let system = system.clone();
                let server = &server;
                s.spawn(move || {
                    let body = json!({
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": format!("Count to {}.", i + 3)},
                        ],
                        "max_tokens": 48, "ignore_eos": true, "temperature": 0,
                    });
                    server.post("/v1/chat/completions", &body)
                })
            })
            .collect();
        let watcher = {
            let watching = watching.clone();
            let server = &server;
            s.spawn(move || {
                let mut most = 0;
                while watching.load(std::sync::atomic::Ordering::Relaxed) {
                    let h = server.health();
                    most = most.max(h["engine"]["active_sequences"].as_u64().unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(20));
                }
                most
            })
        };
        let answers: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        let cached: u64 = answers
            .iter()
            .map(|(status, v)| {
                assert_eq!(*status, 200, "{v}");
                assert_eq!(v["usage"]["completion_tokens"], 48, "{v}");
                v["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert!(
            cached > 0,
            "the shared system prompt was computed once: {answers:?}"
        );
        watcher.join().unwrap()
    });
    assert!(
        max_active >= 2,
        "the requests ran in one batch (most active: {max_active})"
    );
    let health = server.health();
    assert!(
        health["requests"]["max_running"].as_u64().unwrap() >= 4,
        "{health}"
    );
    assert_eq!(health["requests"]["finished"].as_u64(), Some(4), "{health}");

    // A client that goes away mid-stream: its request is cancelled and its sequence freed.
    let conn = open_stream(&server.addr, 3000);
    let h = server.health();
    assert_eq!(h["requests"]["running"], 1, "{h}");
    drop(conn);
    wait_health(&server, Duration::from_secs(15), |h| {
        h["requests"]["cancelled"] == 1
            && h["requests"]["running"] == 0
            && h["engine"]["active_sequences"] == 0
    });
    // So does one that stops waiting for a whole answer.
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": true}).to_string();
    let mut conn = TcpStream::connect(&server.addr).unwrap();
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    wait_health(&server, Duration::from_secs(15), |h| {
        h["engine"]["active_sequences"] == 1
    });
    drop(conn);
    wait_health(&server, Duration::from_secs(15), |h| {
        h["requests"]["cancelled"] == 2
            && h["requests"]["running"] == 0
            && h["engine"]["active_sequences"] == 0
    });
    // ... and the server goes on serving at once.
    let started = Instant::now();
    let (status, v) = server.post(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // SIGTERM with a request in flight: the stream ends with an error, the server exits 0.
    let mut server = server;
    let mut conn = open_stream(&server.addr, 3000);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.stderr_so_far());
    let mut rest = String::new();
    let _ = conn.read_to_string(&mut rest);
    assert!(
        rest.contains("stopping"),
        "the stream says why it ended: {rest}"
    );
}

#[cfg(unix)]
#[test]
fn troupe_itself_uses_serve_over_http_and_over_the_repository_socket() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let mut server = Server::start(&env, repo.path(), &[]);
    let socket = repo.path().join(".troupe/editor.sock");
    assert_eq!(
        server.ready["socket"].as_str().map(PathBuf::from),
        Some(
            repo.path()
                .canonicalize()
                .unwrap()
                .join(".troupe/editor.sock")
        )
    );
    assert!(socket.exists());

    // troupe's OpenAI back end, pointed at the server, answers `troupe ask` in another repository.
    let other = fixture_repo(&[
        ("src/money.py", "def add_cents(a, b):\n    return a + b\n"),
        (
            "troupe.toml",
            &format!(
                "[engine]\nbackend = \"openai\"\nendpoint = \"http://{}/v1\"\n\n[agents]\nmax_tokens = 40\n",
                server.addr
            ),
        ),
    ]);
    let out = env.troupe(
        other.path(),
        &[
            "--model",
            "smollm2-135m-instruct",
            "--json",
            "ask",
            "What does add_cents do?",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(!v["answer"].as_str().unwrap().is_empty(), "{v}");
    assert!(
        v["stats"]["prompt_tokens"].as_u64().unwrap() > 10,
        "usage came back: {v}"
    );

    // A one-shot command in the served repository runs on the server's model over the socket
    // (its own --model does not exist: in-process it would fail).
    let v = explain_through_instance(&env, repo.path(), "src/money.py", "1:3");
    assert_eq!(v["citations"][0]["end_line"], 3);
    let health = server.health();
    assert!(
        health["requests"]["finished"].as_u64().unwrap() >= 2,
        "{health}"
    );

    assert_eq!(server.terminate().code(), Some(0));
    assert!(!socket.exists(), "the socket is removed on stop");
}

#[test]
fn serve_refuses_a_bad_address_and_warns_off_loopback() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let out = env.troupe(dir.path(), &["serve", "--addr", "8080"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--addr `8080`"), "{}", stderr(&out));
    // A missing model fails after binding, with the fix; a non-loopback address is warned about.
    let out = env.troupe(
        dir.path(),
        &[
            "--model",
            "/nonexistent/m.gguf",
            "serve",
            "--addr",
            "0.0.0.0:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("no authentication"), "{err}");
    assert!(err.contains("/nonexistent/m.gguf"), "{err}");
}
