//! Instance reuse for `troupe search` and from the terminal UI: a search sent to a running
//! `troupe lsp` prints what the same search prints in-process (text and JSON, notes, exit
//! codes), a stale socket, an instance that goes away mid-request or one that cannot load its
//! model leave the search to the command itself, one-shot commands of another terminal reach a
//! running terminal UI, and a language server stopped by SIGTERM removes its socket.
//! Real models: the tiny chat model for the instances, all-MiniLM-L6-v2 for vectors.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Env, explain_through_instance, fixture_repo, model_lock, stderr, stdout, test_model,
};
use crate::index::{FILES, minilm};
use crate::tui::{Tmux, has_tmux};

const SHORT: Duration = Duration::from_secs(20);

/// The index fixture, with answers capped at a few tokens so the tiny model is quick.
fn repo() -> tempfile::TempDir {
    let mut files = FILES.to_vec();
    files.push(("troupe.toml", "[agents]\nmax_tokens = 24\n"));
    fixture_repo(&files)
}

fn socket_of(repo: &Path) -> PathBuf {
    repo.join(".troupe/editor.sock")
}

/// Waits until `done` holds or `limit` passes.
fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

fn index(env: &Env, repo: &Path, args: &[&str]) {
    let mut all = vec!["--quiet", "index"];
    all.extend_from_slice(args);
    let out = env.troupe(repo, &all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// `troupe [global...] search args...`.
fn search(env: &Env, repo: &Path, global: &[&str], args: &[&str]) -> Output {
    let mut all: Vec<&str> = global.to_vec();
    all.push("search");
    all.extend_from_slice(args);
    env.troupe(repo, &all)
}

/// The `note: ...` lines of stderr (the model loader may log other lines).
fn notes(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("note: "))
        .map(str::to_string)
        .collect()
}

/// Asserts two runs of a search printed the same: exit code, stdout, notes.
fn assert_same(local: &Output, served: &Output, what: &str) {
    assert_eq!(
        local.status.code(),
        served.status.code(),
        "{what}: exit codes\nlocal: {}\nserved: {}",
        stderr(local),
        stderr(served)
    );
    assert_eq!(stdout(local), stdout(served), "{what}: stdout");
    assert_eq!(notes(local), notes(served), "{what}: notes");
}

/// A `troupe lsp` that no editor talks to: it listens on the socket all the same (the model
/// loads with the first request there). Killed when dropped.
struct Lsp {
    child: Child,
    socket: PathBuf,
}

impl Lsp {
    fn start(env: &Env, repo: &Path, args: &[&str]) -> Lsp {
        let mut all = args.to_vec();
        all.push("lsp");
        let mut cmd = env.command(repo, &all);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn troupe lsp");
        let socket = socket_of(repo);
        assert!(
            wait_until(SHORT, || socket.exists()),
            "troupe lsp listens on {socket:?}"
        );
        Lsp { child, socket }
    }

    /// Ends the server as an editor going away does (end of input); the socket goes with it.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        self.wait_exit();
        assert!(!self.socket.exists(), "the socket is removed on exit");
    }

    /// How the server exited, waiting for it at most `SHORT`.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + SHORT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "troupe lsp did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lsp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn search_through_a_running_language_server_prints_what_an_in_process_search_prints() {
    let embed: &'static str = minilm().to_str().unwrap().to_string().leak();
    let chat = test_model();
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    index(&env, repo.path(), &["--embed-model", embed]);
    let lsp = Lsp::start(
        &env,
        repo.path(),
        &["--model", chat.to_str().unwrap(), "--embed-model", embed],
    );

    // Run here, the search uses the real embedding model. Sent to the server, it names one
    // that does not exist: in-process that would be an error (vector mode) or BM25 alone
    // (hybrid mode), so equal output shows the server's model answered.
    let local = ["--no-instance", "--embed-model", embed];
    let served = ["--embed-model", "/nonexistent/embed.gguf"];
    let cases: &[&[&str]] = &[
        &["--mode", "hybrid", "refresh expired session token"],
        &["--mode", "bm25", "--limit", "2", "cache"],
        &[
            "--mode",
            "vector",
            "--files",
            "--limit",
            "3",
            "log in again when my credentials time out",
        ],
        &["--mode", "hybrid", "--files", "deploy the manifests"],
    ];
    for args in cases {
        for json in [true, false] {
            let with_json = |global: &[&'static str]| -> Vec<&'static str> {
                let mut g = global.to_vec();
                if json {
                    g.push("--json");
                }
                g
            };
            let a = search(&env, repo.path(), &with_json(&local), args);
            let b = search(&env, repo.path(), &with_json(&served), args);
            assert_eq!(a.status.code(), Some(0), "{args:?}: {}", stderr(&a));
            assert!(!stdout(&a).is_empty(), "{args:?}");
            assert_same(&a, &b, &format!("{args:?} json={json}"));
        }
    }
    // The limit is the client's: two lines of JSON.
    let two = search(
        &env,
        repo.path(),
        &["--json"],
        &["--mode", "bm25", "--limit", "2", "cache"],
    );
    assert!(stdout(&two).lines().count() <= 2, "{}", stdout(&two));

    // Nothing matches: exit 1 and no output, through the server as here.
    let none = ["--mode", "bm25", "zzqqxv"];
    let a = search(&env, repo.path(), &["--no-instance", "--json"], &none);
    let b = search(&env, repo.path(), &["--json"], &none);
    assert_eq!(b.status.code(), Some(1), "{}", stderr(&b));
    assert!(stdout(&b).is_empty());
    assert_same(&a, &b, "no match");
    lsp.stop();
}

#[test]
fn a_server_whose_index_has_no_vectors_notes_bm25_only_as_an_in_process_search_does() {
    let embed = minilm();
    let embed = embed.to_str().unwrap();
    let chat = test_model();
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    index(&env, repo.path(), &["--no-vectors"]);
    let lsp = Lsp::start(
        &env,
        repo.path(),
        &["--model", chat.to_str().unwrap(), "--embed-model", embed],
    );
    let args = ["--mode", "hybrid", "refresh expired session token"];
    let a = search(
        &env,
        repo.path(),
        &["--no-instance", "--embed-model", embed, "--json"],
        &args,
    );
    let b = search(&env, repo.path(), &["--json"], &args);
    assert_eq!(b.status.code(), Some(0), "{}", stderr(&b));
    assert!(
        notes(&b)
            .iter()
            .any(|n| n.starts_with("note: BM25 only: the index has no vectors")),
        "{}",
        stderr(&b)
    );
    assert_same(&a, &b, "no vectors");
    // Vector mode needs vectors: the same error either way, exit 2 (the command searches
    // again itself when the instance answers with an error, and fails the same way).
    let args = ["--mode", "vector", "session token"];
    let a = search(
        &env,
        repo.path(),
        &["--no-instance", "--embed-model", embed],
        &args,
    );
    let b = search(&env, repo.path(), &["--embed-model", embed], &args);
    assert_eq!(b.status.code(), Some(2));
    let error = |o: &Output| {
        stderr(o)
            .lines()
            .find(|l| l.starts_with("error: "))
            .map(str::to_string)
    };
    assert!(
        error(&b).is_some_and(|e| e.contains("troupe index")),
        "{}",
        stderr(&b)
    );
    assert_eq!(error(&a), error(&b));
    lsp.stop();
}

#[test]
fn a_language_server_stopped_by_sigterm_exits_cleanly_and_removes_its_socket() {
    let env = Env::new();
    let repo = repo();
    let mut lsp = Lsp::start(&env, repo.path(), &[]);
    let pid = lsp.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = lsp.wait_exit();
    // Handled, not killed by the signal: an exit code (1: no `shutdown` came before).
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(!lsp.socket.exists(), "the socket is removed");
}

#[test]
fn a_search_with_a_stale_socket_removes_it_and_runs_in_process() {
    let env = Env::new();
    let repo = repo();
    index(&env, repo.path(), &["--no-vectors"]);
    let socket = socket_of(repo.path());
    // A socket file whose server is gone.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let args = ["--mode", "bm25", "--files", "session token"];
    let out = search(&env, repo.path(), &["--json"], &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!socket.exists(), "the stale socket was removed");
    let local = search(&env, repo.path(), &["--json", "--no-instance"], &args);
    assert_same(&local, &out, "stale socket");
}

#[test]
fn a_search_whose_instance_goes_away_mid_request_runs_in_process() {
    let env = Env::new();
    let repo = repo();
    index(&env, repo.path(), &["--no-vectors"]);
    // An instance that reads the request, then dies without an answer.
    let listener = std::os::unix::net::UnixListener::bind(socket_of(repo.path())).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        line
    });
    let args = ["--mode", "bm25", "cache"];
    let out = search(&env, repo.path(), &["--json"], &args);
    let request = server.join().unwrap();
    assert!(request.contains(r#""type":"search""#), "{request}");
    assert!(request.contains(r#""mode":"bm25""#), "{request}");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let local = search(&env, repo.path(), &["--json", "--no-instance"], &args);
    assert_same(&local, &out, "instance gone");
}

#[test]
fn a_search_whose_instance_cannot_load_its_model_runs_in_process() {
    let env = Env::new();
    let repo = repo();
    index(&env, repo.path(), &["--no-vectors"]);
    // The server loads its chat model with the first request over the socket, and fails.
    let lsp = Lsp::start(&env, repo.path(), &["--model", "/nonexistent/model.gguf"]);
    let args = ["--mode", "bm25", "session token"];
    let out = search(&env, repo.path(), &["--json"], &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let local = search(&env, repo.path(), &["--json", "--no-instance"], &args);
    assert_same(&local, &out, "instance without a model");
    lsp.stop();
}

#[test]
fn one_shot_commands_of_another_terminal_reach_a_running_terminal_ui() {
    if !has_tmux() {
        eprintln!("skipped: tmux is not installed (scripts/setup.sh installs it)");
        return;
    }
    let embed = minilm();
    let chat = test_model();
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    index(
        &env,
        repo.path(),
        &["--embed-model", embed.to_str().unwrap()],
    );
    let command = format!(
        "env TROUPE_CACHE_DIR='{}' TROUPE_CONFIG_DIR='{}' TERM=xterm-256color '{}' --model '{}' --embed-model '{}'; echo TROUPE_EXIT=$?; sleep 120",
        env.cache().display(),
        env.config_dir().display(),
        env!("CARGO_BIN_EXE_troupe"),
        chat.display(),
        embed.display(),
    );
    let tmux = Tmux::start(repo.path(), &command);
    tmux.wait_for("the session to be ready", Duration::from_secs(60), |s| {
        s.contains("n: new task") && s.contains("smollm2")
    });
    let socket = socket_of(repo.path());
    assert!(
        wait_until(SHORT, || socket.exists()),
        "the terminal UI listens on {socket:?}"
    );

    // A model that does not exist: in-process this would fail; the UI's model answers.
    let v = explain_through_instance(&env, repo.path(), "src/auth/session.rs", "1:3");
    assert_eq!(v["citations"][0]["end_line"], 3);

    // The same for the embedding model of a vector search.
    let args = [
        "--mode",
        "vector",
        "--files",
        "--limit",
        "2",
        "credentials time out",
    ];
    let served = search(
        &env,
        repo.path(),
        &["--json", "--embed-model", "/nonexistent/embed.gguf"],
        &args,
    );
    let local = search(
        &env,
        repo.path(),
        &[
            "--json",
            "--no-instance",
            "--embed-model",
            embed.to_str().unwrap(),
        ],
        &args,
    );
    assert_eq!(served.status.code(), Some(0), "{}", stderr(&served));
    assert_same(&local, &served, "through the terminal UI");

    // The requests were not the user's: no task started, nothing searched on screen.
    let screen = tmux.capture();
    assert!(!screen.contains("round(s)"), "{screen}");
    assert!(!screen.contains("credentials"), "{screen}");

    tmux.keys(&["q"]);
    let after = tmux.wait_for("troupe to exit", Duration::from_secs(30), |s| {
        s.contains("TROUPE_EXIT=")
    });
    assert!(after.contains("TROUPE_EXIT=0"), "{after}");
    assert!(!socket.exists(), "the socket is removed when the UI quits");
}
