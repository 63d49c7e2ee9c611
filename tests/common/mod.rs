//! Shared helpers of the integration tests: running the real `troupe` binary in an isolated
//! environment (its own cache and config directories), and fixture git repositories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// An isolated home for one test: cache, config and a working directory.
pub struct Env {
    pub root: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    pub fn config_dir(&self) -> PathBuf {
        self.root.path().join("config")
    }

    /// Runs `troupe args...` in `cwd` with a timeout, isolated from the user's real setup.
    pub fn troupe(&self, cwd: &Path, args: &[&str]) -> Output {
        run_with_timeout(self.command(cwd, args), Duration::from_secs(120))
    }

    /// Like [`Env::troupe`], with `input` on stdin.
    pub fn troupe_with_stdin(&self, cwd: &Path, args: &[&str], input: &str) -> Output {
        run_with_input(
            self.command(cwd, args),
            Some(input),
            Duration::from_secs(120),
        )
    }

    /// The isolated `troupe args...` command, not started.
    pub fn command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_troupe"));
        cmd.args(args)
            .current_dir(cwd)
            .env("TROUPE_CACHE_DIR", self.cache())
            .env("TROUPE_CONFIG_DIR", self.config_dir())
            .env_remove("TROUPE_LOG");
        cmd
    }
}

/// Runs a command, killing it if it outlives `limit`.
pub fn run_with_timeout(cmd: Command, limit: Duration) -> Output {
    run_with_input(cmd, None, limit)
}

/// Runs a command with `input` on stdin (none: stdin is empty), killing it if it outlives `limit`.
pub fn run_with_input(mut cmd: Command, input: Option<&str>, limit: Duration) -> Output {
    use std::io::{Read, Write};
    let stdin = match input {
        Some(_) => std::process::Stdio::piped(),
        None => std::process::Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let (Some(text), Some(mut pipe)) = (input, child.stdin.take()) {
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("command timed out after {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().expect("stdout thread"),
        stderr: err_thread.join().expect("stderr thread"),
    }
}

/// A fixture git repository with one commit, built with git2 (global config ignored).
pub fn fixture_repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fixture_repo_in(dir.path(), files);
    dir
}

/// The same, in a given directory (created if missing).
pub fn fixture_repo_in(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let repo = git2::Repository::init(dir).expect("git init");
    for (path, content) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write");
    }
    let mut index = repo.index().expect("index");
    index
        .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
        .expect("add");
    index.write().expect("write index");
    let tree_id = index.write_tree().expect("tree");
    let tree = repo.find_tree(tree_id).expect("find tree");
    let sig = git2::Signature::now("troupe test", "test@troupe.invalid").expect("sig");
    repo.commit(Some("HEAD"), &sig, &sig, "initial", &tree, &[])
        .expect("commit");
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file the test set-up (scripts/test.sh) puts in troupe's cache: `$var` if set, else
/// `~/.cache/troupe/<rel>`. Fails (never skips) with the fix when it is missing.
pub fn setup_file(var: &str, rel: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/troupe")
            .join(rel)
    });
    assert!(
        path.is_file(),
        "{} is missing; run scripts/test.sh (it fetches it) or set {var}",
        path.display()
    );
    path
}

/// The tiny chat model.
pub fn test_model() -> PathBuf {
    setup_file("TROUPE_TEST_MODEL", "models/smollm2-135m-instruct.gguf")
}

/// The default chat model (Qwen2.5-Coder-0.5B-Instruct), for tests where the agents must follow
/// their tool protocol: the tiny model cannot.
pub fn coder_model() -> PathBuf {
    setup_file(
        "TROUPE_CODER_MODEL",
        "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    )
}

/// The model tests run one at a time: each starts an engine on the same two cores.
pub static MODEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn model_lock() -> std::sync::MutexGuard<'static, ()> {
    MODEL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `troupe --json explain --file FILE --range RANGE` in `repo` with a chat model that does not
/// exist, so that only a running instance of the repository (whose model answers) can succeed.
/// Asserts that it did and that the explanation is not empty; returns the answer.
pub fn explain_through_instance(
    env: &Env,
    repo: &Path,
    file: &str,
    range: &str,
) -> serde_json::Value {
    let out = env.troupe(
        repo,
        &[
            "--model",
            "/nonexistent/model.gguf",
            "--json",
            "explain",
            "--file",
            file,
            "--range",
            range,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(!v["explanation"].as_str().unwrap().is_empty(), "{v}");
    v
}
