//! `troupe run` and `troupe tasks`, run as a user would, on the real tiny model
//! (SmolLM2-135M) with a small budget: a task ends cleanly, prints one event per line with
//! `--json`, leaves the user's tree alone, and a killed run resumes.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, fixture_repo, model_lock, run_with_timeout, stderr, stdout, test_model};

/// A config file (outside the repository) with a small, fast budget.
fn small_config(env: &Env, max_rounds: u32, max_steps: u32, max_tokens: u32) -> PathBuf {
    let path = env.root.path().join("small.toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\nparallel = 4\nctx_per_seq = 2048\nthreads = 2\n\n[agents]\nmax_rounds = {max_rounds}\nmax_steps = {max_steps}\nmax_tokens = {max_tokens}\ntest_command = \"python3 -m unittest -q\"\ncommand_timeout_secs = 30\n"
        ),
    )
    .unwrap();
    path
}

fn calc_repo() -> tempfile::TempDir {
    fixture_repo(&[
        ("calc.py", "def add(a, b):\n    return a - b\n"),
        (
            "test_calc.py",
            "import unittest\n\nfrom calc import add\n\n\nclass T(unittest.TestCase):\n    def test_zero(self):\n        self.assertEqual(add(0, 0), 0)\n",
        ),
    ])
}

/// Every file outside `.git` and `.troupe` with its bytes, plus HEAD and the index file.
/// Files with their bytes, HEAD, the index file's bytes.
type UserState = (Vec<(PathBuf, Vec<u8>)>, Vec<u8>, Vec<u8>);

fn user_state(root: &Path) -> UserState {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path == root.join(".git") || path == root.join(".troupe") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    let head = std::fs::read(root.join(".git/HEAD")).unwrap();
    let index = std::fs::read(root.join(".git/index")).unwrap_or_default();
    (files, head, index)
}

fn events(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON event: {l:?}: {e}"))
        })
        .collect()
}

fn of_type<'a>(events: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["msg"]["type"] == t).collect()
}

#[test]
fn run_ends_cleanly_with_one_json_event_per_line_and_leaves_the_user_tree_alone() {
    let _one_at_a_time = model_lock();
    let env = Env::new();
    let repo = calc_repo();
    let before = user_state(repo.path());
    let config = small_config(&env, 1, 2, 32);
    let model = test_model();
    let out = env.troupe(
        repo.path(),
        &[
            "run",
            "Fix add in calc.py so it returns the sum.",
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "exit {:?}\n{err}",
        out.status.code()
    );
    let evs = events(&stdout(&out));
    assert_eq!(evs[0]["msg"]["type"], "session_configured");
    assert_eq!(evs.last().unwrap()["msg"]["type"], "shutdown_complete");
    assert_eq!(of_type(&evs, "task_started").len(), 1);
    let complete = of_type(&evs, "task_complete");
    assert_eq!(complete.len(), 1);
    let outcome = complete[0]["msg"]["outcome"].as_str().unwrap();
    assert_eq!(
        out.status.code(),
        Some(if outcome == "converged" { 0 } else { 1 }),
        "{outcome}"
    );
    let begins = of_type(&evs, "tool_call_begin").len();
    assert_eq!(begins, of_type(&evs, "tool_call_end").len());
    assert!(begins > 0, "{err}");
    assert!(err.contains("task "), "human progress on stderr: {err}");
    // Engine figures may come between the events of the task: find it by type.
    let id = of_type(&evs, "task_started")[0]["msg"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        user_state(repo.path()),
        before,
        "the user's tree is untouched"
    );
    assert!(
        repo.path()
            .join(".troupe/worktrees")
            .join(&id)
            .join("calc.py")
            .is_file()
    );
    assert!(
        repo.path()
            .join(".git/refs/heads/troupe")
            .join(&id)
            .is_file(),
        "branch troupe/{id}"
    );

    // The task is listed, shown and discarded.
    let out = env.troupe(repo.path(), &["tasks", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let listed = events(&stdout(&out));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], outcome);
    let out = env.troupe(repo.path(), &["tasks", "show", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("troupe/{id}")));
    let out = env.troupe(repo.path(), &["tasks", "discard", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!repo.path().join(".troupe/worktrees").join(&id).exists());
    assert_eq!(user_state(repo.path()), before);
}

#[test]
fn a_killed_run_is_resumed_to_a_clean_end() {
    let _one_at_a_time = model_lock();
    let env = Env::new();
    let repo = calc_repo();
    let config = small_config(&env, 1, 2, 32);
    let model = test_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args([
            "run",
            "Fix add in calc.py so it returns the sum.",
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ])
        .current_dir(repo.path())
        .env("TROUPE_CACHE_DIR", env.cache())
        .env("TROUPE_CONFIG_DIR", env.config_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout_pipe = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout_pipe)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Kill it (SIGKILL: no chance to clean up) once the first model request has finished.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut id = None;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the run makes progress within 120 s");
        let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
        if ev["msg"]["type"] == "task_started" {
            id = ev["msg"]["task_id"].as_str().map(str::to_string);
        }
        assert_ne!(ev["msg"]["type"], "task_complete", "ended before the kill");
        if ev["msg"]["type"] == "model_request_end" {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let id = id.unwrap();
    let out = env.troupe(repo.path(), &["tasks", "list", "--json"]);
    let listed = events(&stdout(&out));
    assert_eq!(listed[0]["status"], "running", "{listed:?}");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_troupe"));
    cmd.args([
        "tasks",
        "resume",
        &id,
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ])
    .current_dir(repo.path())
    .env("TROUPE_CACHE_DIR", env.cache())
    .env("TROUPE_CONFIG_DIR", env.config_dir());
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let evs = events(&stdout(&out));
    assert_eq!(of_type(&evs, "task_started").len(), 1);
    assert_eq!(of_type(&evs, "task_complete").len(), 1);
    let log = std::fs::read_to_string(
        repo.path()
            .join(".troupe/tasks")
            .join(&id)
            .join("events.jsonl"),
    )
    .unwrap();
    let logged: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        of_type(&logged, "task_started").len(),
        2,
        "both runs logged"
    );
    assert_eq!(of_type(&logged, "task_complete").len(), 1);
}

#[test]
fn task_commands_name_the_fix_for_unknown_tasks_and_missing_models() {
    let env = Env::new();
    let repo = calc_repo();
    let out = env.troupe(repo.path(), &["tasks", "list"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("no tasks yet"), "{}", stdout(&out));
    for sub in ["show", "resume", "apply", "discard"] {
        let out = env.troupe(repo.path(), &["tasks", sub, "nope"]);
        assert_eq!(out.status.code(), Some(2), "{sub}");
        assert!(
            stderr(&out).contains("no task `nope`"),
            "{sub}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("troupe tasks list"),
            "{}",
            stderr(&out)
        );
    }
    let missing = env.root.path().join("missing.gguf");
    let out = env.troupe(
        repo.path(),
        &["run", "do it", "--model", missing.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.gguf"), "{}", stderr(&out));
    assert!(
        !repo.path().join(".troupe/tasks").exists()
            || std::fs::read_dir(repo.path().join(".troupe/tasks"))
                .unwrap()
                .next()
                .is_none()
    );
}
