//! Commands agents run: only from the allow-list (the configured test command and
//! `agents.allowed_commands`), never through a shell unless it is the user's own configured test
//! command, in the task's worktree, in their own process group (a timeout kills the whole group),
//! with output capped (the head and the tail are kept, where test summaries are).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

/// What commands may run and how.
#[derive(Debug, Clone)]
pub struct ExecPolicy {
    /// The test command (from the config, or detected); `None` when there is none.
    pub test_command: Option<String>,
    /// Program names allowed besides the test command.
    pub allowed: Vec<String>,
    /// A command is killed (with its whole process group) after this long.
    pub timeout: Duration,
    /// Captured output is cut to about this many bytes.
    pub output_limit: usize,
}

/// What a finished (or killed) command left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code; `None` when killed by a signal (including the timeout).
    pub exit_code: Option<i32>,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// stdout and stderr, in arrival order, capped.
    pub output: String,
    /// Wall time.
    pub duration_ms: u64,
}

impl ExecOutput {
    /// Exit code 0 and not killed.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

impl ExecPolicy {
    /// Checks a command an agent asked for. `Ok(argv)` when allowed; `Err(reason)` is a policy
    /// denial to hand back to the model.
    pub fn check(&self, command: &str) -> Result<Vec<String>, String> {
        let argv = split_command(command)?;
        let Some(program) = argv.first() else {
            return Err("the command is empty".into());
        };
        if let Some(test) = &self.test_command
            && split_command(test).ok().as_ref() == Some(&argv)
        {
            return Ok(argv);
        }
        if self.allowed.iter().any(|a| a == program) {
            return Ok(argv);
        }
        let mut allowed: Vec<String> = self.allowed.clone();
        if let Some(t) = &self.test_command {
            allowed.push(format!("`{t}` (run_tests)"));
        }
        Err(format!(
            "command `{program}` is not allowed; allowed: {} (agents.allowed_commands in troupe.toml)",
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        ))
    }

    /// The argv of the test command: the user's own command, run through `sh -c` when it uses
    /// shell syntax (it is configuration, not model output).
    pub fn test_argv(&self) -> Option<Vec<String>> {
        let test = self.test_command.as_ref()?;
        if test.contains(['&', '|', ';', '>', '<', '$', '`', '*', '(']) {
            return Some(vec!["sh".into(), "-c".into(), test.clone()]);
        }
        split_command(test).ok()
    }

    /// Runs `argv` in `cwd` with the timeout and the output cap. Dropping the future kills the
    /// process group too.
    pub async fn run(&self, argv: &[String], cwd: &Path) -> std::io::Result<ExecOutput> {
        let started = Instant::now();
        let Some((program, args)) = argv.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command",
            ));
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn()?;
        let guard = GroupGuard(child.id());
        let buffer = Arc::new(Mutex::new(Capped::new(self.output_limit)));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(out, Arc::clone(&buffer))));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(err, Arc::clone(&buffer))));
        }
        let (status, timed_out) = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => (Some(status?), false),
            Err(_) => {
                guard.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                (None, true)
            }
        };
        // Children that left the group could hold the pipes open: do not wait for them forever.
        for reader in readers {
            let abort = reader.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), reader)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        drop(guard);
        let mut output = match buffer.lock() {
            Ok(b) => b.text(),
            Err(poisoned) => poisoned.into_inner().text(),
        };
        if timed_out {
            output.push_str(&format!(
                "\n[killed after the timeout of {}s]\n",
                self.timeout.as_secs()
            ));
        }
        Ok(ExecOutput {
            exit_code: status.and_then(|s| s.code()),
            timed_out,
            output,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// The test command a repository most likely uses, from its files.
pub fn detect_test_command(root: &Path) -> Option<String> {
    let has = |name: &str| root.join(name).exists();
    if has("Cargo.toml") {
        return Some("cargo test".into());
    }
    if has("go.mod") {
        return Some("go test ./...".into());
    }
    if has("package.json") {
        return Some("npm test".into());
    }
    if has("pyproject.toml") || has("setup.py") || has("pytest.ini") || has("tests") || has("test")
    {
        return Some("python3 -m pytest -q".into());
    }
    if has("Makefile") {
        return Some("make test".into());
    }
    None
}

/// Splits a command line into words: whitespace separates, single and double quotes group,
/// a backslash escapes the next character. No expansion of any kind.
pub fn split_command(command: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    in_word = true;
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unbalanced quote in `{command}`"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Kills the whole process group on drop (or on [`GroupGuard::kill`]).
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&self) {
        #[cfg(unix)]
        if let Some(pid) = self.0
            && let Ok(pid) = i32::try_from(pid)
        {
            // SAFETY: kill(2) with a negative pid signals the process group we created with
            // process_group(0); it touches no memory of ours.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // After a normal exit, this also takes down children the command left behind.
        self.kill();
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut reader: R, into: Arc<Mutex<Capped>>) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => match into.lock() {
                Ok(mut b) => b.push(&buf[..n]),
                Err(poisoned) => poisoned.into_inner().push(&buf[..n]),
            },
        }
    }
}

/// Keeps the first and the last `limit / 2` bytes of a stream.
struct Capped {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    half: usize,
    total: usize,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Self {
            head: Vec::new(),
            tail: VecDeque::new(),
            half: (limit / 2).max(64),
            total: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        let room = self.half.saturating_sub(self.head.len());
        let (to_head, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(to_head);
        self.tail.extend(rest.iter().copied());
        while self.tail.len() > self.half {
            self.tail.pop_front();
        }
    }

    fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        let kept = self.head.len() + self.tail.len();
        if self.total > kept {
            out.push_str(&format!("\n[... {} bytes cut ...]\n", self.total - kept));
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(timeout_ms: u64) -> ExecPolicy {
        ExecPolicy {
            test_command: Some("sh -c 'echo ok'".into()),
            allowed: vec!["echo".into()],
            timeout: Duration::from_millis(timeout_ms),
            output_limit: 256,
        }
    }

    #[test]
    fn commands_split_like_a_shell_without_expansion() {
        assert_eq!(
            split_command(r#"python3 -m pytest -k "a b" 'c d' e\ f $HOME"#).unwrap(),
            [
                "python3", "-m", "pytest", "-k", "a b", "c d", "e f", "$HOME"
            ]
        );
        assert!(split_command("echo 'x").is_err());
    }

    #[test]
    fn only_allow_listed_commands_pass_the_policy() {
        let p = policy(1000);
        assert!(p.check("echo hi").is_ok());
        assert!(p.check("sh -c 'echo ok'").is_ok(), "the exact test command");
        let denied = p.check("rm -rf /").unwrap_err();
        assert!(denied.contains("`rm` is not allowed"), "{denied}");
        assert!(p.check("sh -c 'rm -rf /'").is_err());
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_with_its_children_at_the_timeout() {
        let p = policy(300);
        let dir = tempfile::tempdir().unwrap();
        let argv: Vec<String> = ["sh", "-c", "echo started; sleep 30 & sleep 30; echo never"]
            .map(String::from)
            .to_vec();
        let out = tokio::time::timeout(Duration::from_secs(10), p.run(&argv, dir.path()))
            .await
            .expect("returns soon after the timeout")
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        assert!(!out.success());
        assert!(out.output.contains("started"), "{}", out.output);
        assert!(!out.output.contains("never"));
        assert!(out.duration_ms < 8000, "{}", out.duration_ms);
    }

    #[tokio::test]
    async fn output_is_capped_keeping_head_and_tail() {
        let p = policy(5000);
        let dir = tempfile::tempdir().unwrap();
        let argv: Vec<String> = ["sh", "-c", "echo FIRST; seq 1 5000; echo LAST; exit 3"]
            .map(String::from)
            .to_vec();
        let out = p.run(&argv, dir.path()).await.unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert!(out.output.starts_with("FIRST"), "{}", out.output);
        assert!(out.output.trim_end().ends_with("LAST"), "{}", out.output);
        assert!(out.output.contains("bytes cut"));
        assert!(out.output.len() < 400, "{}", out.output.len());
    }

    #[test]
    fn the_test_command_is_detected_from_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect_test_command(dir.path()), None);
        std::fs::write(dir.path().join("pyproject.toml"), "").unwrap();
        assert_eq!(
            detect_test_command(dir.path()).as_deref(),
            Some("python3 -m pytest -q")
        );
    }
}
