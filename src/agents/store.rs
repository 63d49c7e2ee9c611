//! Persistence of tasks under `<repo>/.troupe/tasks/<id>/`, written as things happen so a crash
//! loses nothing: `task.json` (the record, replaced atomically on every change), `events.jsonl`
//! (every event, one per line) and `transcript.jsonl` (every message to and from the model).
//! Also the task operations that need no model: list, show, apply, discard.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::rounds::RoundResult;
use super::{Error, Result, io_err};
use crate::protocol::{Event, TaskOutcome};

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Running, or the process running it died (resume continues it).
    Running,
    /// Approved and tested.
    Converged,
    /// Ended at its round or time budget.
    BudgetExhausted,
    /// Cancelled by the user.
    Cancelled,
    /// Stopped on an error.
    Failed,
    /// Its change was applied to the user's tree.
    Applied,
    /// Its worktree and branch were deleted.
    Discarded,
}

impl From<TaskOutcome> for TaskStatus {
    fn from(o: TaskOutcome) -> Self {
        match o {
            TaskOutcome::Converged => TaskStatus::Converged,
            TaskOutcome::BudgetExhausted => TaskStatus::BudgetExhausted,
            TaskOutcome::Cancelled => TaskStatus::Cancelled,
            TaskOutcome::Failed => TaskStatus::Failed,
        }
    }
}

impl TaskStatus {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Running => "running",
            TaskStatus::Converged => "converged",
            TaskStatus::BudgetExhausted => "budget_exhausted",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Failed => "failed",
            TaskStatus::Applied => "applied",
            TaskStatus::Discarded => "discarded",
        }
    }
}

/// A task's saved state (`task.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id (also the worktree name and the branch suffix).
    pub id: String,
    /// What the user asked for.
    pub text: String,
    /// The commit the task started from.
    pub base: String,
    /// `troupe/<id>`.
    pub branch: String,
    /// The worktree directory.
    pub worktree: PathBuf,
    /// Where it stands.
    pub status: TaskStatus,
    /// Rounds completed (each committed on the branch).
    pub rounds_done: u32,
    /// The round budget of the current run.
    pub max_rounds: u32,
    /// Feedback for the writer's next round (findings and test results).
    #[serde(default)]
    pub feedback: String,
    /// Whether the last round's reviewers all approved.
    #[serde(default)]
    pub approved: bool,
    /// Whether the last round's tests passed (`None`: not run).
    #[serde(default)]
    pub tests_passed: Option<bool>,
    /// Every round's snapshot and test result, in order.
    #[serde(default)]
    pub rounds: Vec<RoundResult>,
    /// The round whose files the task branch holds at the end of the last run (`None`: still
    /// running, cancelled, failed, or no round changed anything).
    #[serde(default)]
    pub kept_round: Option<u32>,
    /// Why that round was kept.
    #[serde(default)]
    pub kept_reason: String,
    /// Every path a tester role has written so far (the repository's own tests are the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tester_paths: Vec<String>,
    /// Seconds since the epoch.
    pub created_unix: u64,
    /// Seconds since the epoch.
    pub updated_unix: u64,
    /// The process that ran it last.
    #[serde(default)]
    pub pid: u32,
}

/// The tasks of one repository.
#[derive(Debug, Clone)]
pub struct TaskStore {
    dir: PathBuf,
}

impl TaskStore {
    /// The store of the repository at `repo_root` (`.troupe/tasks`).
    pub fn new(repo_root: &Path) -> Self {
        Self {
            dir: crate::paths::state_dir(repo_root).join("tasks"),
        }
    }

    /// `.troupe/tasks/<id>`.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The event log of a task.
    pub fn events_path(&self, id: &str) -> PathBuf {
        self.task_dir(id).join("events.jsonl")
    }

    /// The transcript of a task.
    pub fn transcript_path(&self, id: &str) -> PathBuf {
        self.task_dir(id).join("transcript.jsonl")
    }

    /// Writes the record (atomically: a temporary file renamed over the old one).
    pub fn save(&self, record: &TaskRecord) -> Result<()> {
        let dir = self.task_dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let path = dir.join("task.json");
        let tmp = dir.join("task.json.tmp");
        let text = serde_json::to_string_pretty(record)
            .map_err(|e| Error::Invariant(format!("task record does not serialize: {e}")))?;
        std::fs::write(&tmp, text + "\n").map_err(io_err("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))
    }

    /// Reads a task's record.
    pub fn load(&self, id: &str) -> Result<TaskRecord> {
        let path = self.task_dir(id).join("task.json");
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') || !path.is_file() {
            return Err(Error::TaskNotFound {
                id: id.to_string(),
                dir: self.dir.clone(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
        serde_json::from_str(&text).map_err(|e| Error::CorruptState {
            path,
            message: e.to_string(),
        })
    }

    /// Every task, oldest first (unreadable records are skipped with a log line).
    pub fn list(&self) -> Result<Vec<TaskRecord>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("cannot read", &self.dir)(e)),
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.load(&id) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!("skipping task {id}: {e}"),
            }
        }
        out.sort_by(|a, b| a.created_unix.cmp(&b.created_unix).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A task's events, as logged.
    pub fn events(&self, id: &str) -> Result<Vec<Event>> {
        self.load(id)?;
        let path = self.events_path(id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        // A crash can leave a partial last line: skip lines that do not parse.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// An append-only JSON-lines file, flushed after every line.
#[derive(Debug)]
pub struct AppendLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AppendLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("cannot open", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends one value as a line.
    pub fn append<T: Serialize>(&self, value: &T) -> Result<()> {
        let mut line = serde_json::to_vec(value)
            .map_err(|e| Error::Invariant(format!("log line does not serialize: {e}")))?;
        line.push(b'\n');
        let mut file = match self.file.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        // One write call per line, so a concurrent reader never sees two lines interleaved.
        file.write_all(&line)
            .and_then(|()| file.flush())
            .map_err(io_err("cannot append to", &self.path))
    }
}

/// Applies a finished task's branch to the user's working tree, only if it applies cleanly.
pub fn apply_task(repo_root: &Path, id: &str) -> Result<TaskRecord> {
    let store = TaskStore::new(repo_root);
    let mut record = store.load(id)?;
    match record.status {
        TaskStatus::Running => {
            return Err(Error::TaskState {
                id: id.into(),
                message: "it is still running (or was interrupted: `troupe tasks resume` it first)"
                    .into(),
            });
        }
        TaskStatus::Discarded => {
            return Err(Error::TaskState {
                id: id.into(),
                message: "it was discarded; nothing to apply".into(),
            });
        }
        TaskStatus::Applied => {
            return Err(Error::TaskState {
                id: id.into(),
                message: "it was applied already".into(),
            });
        }
        TaskStatus::Converged
        | TaskStatus::BudgetExhausted
        | TaskStatus::Cancelled
        | TaskStatus::Failed => {}
    }
    let repo = crate::git::Repo::open(repo_root)?;
    let base = repo.resolve(&record.base)?;
    let head = repo.resolve(&record.branch)?;
    if base == head {
        return Err(Error::TaskState {
            id: id.into(),
            message: format!("its branch {} has no change to apply", record.branch),
        });
    }
    repo.apply_to_worktree(base, head, &record.branch)?;
    record.status = TaskStatus::Applied;
    record.updated_unix = now_unix();
    store.save(&record)?;
    Ok(record)
}

/// Deletes a task's worktree and branch; its record and logs stay for `tasks show`.
pub fn discard_task(repo_root: &Path, id: &str) -> Result<TaskRecord> {
    let store = TaskStore::new(repo_root);
    let mut record = store.load(id)?;
    let repo = crate::git::Repo::open(repo_root)?;
    repo.remove_worktree(&record.id)?;
    record.status = TaskStatus::Discarded;
    record.updated_unix = now_unix();
    store.save(&record)?;
    Ok(record)
}

/// The committed change of a task's branch against its base (empty once discarded).
pub fn task_diff(repo_root: &Path, record: &TaskRecord) -> Result<String> {
    let repo = crate::git::Repo::open(repo_root)?;
    let base = repo.resolve(&record.base)?;
    let Ok(head) = repo.resolve(&record.branch) else {
        return Ok(String::new());
    };
    let diff = repo.diff_commits(base, head)?;
    crate::git::patch_text(&diff).map_err(|e| Error::Invariant(format!("diff text: {e}")))
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new task id: `YYYYMMDD-HHMMSS-xxxx` (UTC time and four hex digits), valid as a branch name.
pub fn new_task_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    let salt = (now.subsec_nanos() ^ std::process::id().wrapping_mul(2_654_435_761)) & 0xffff;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{salt:04x}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_dated_and_valid_branch_names() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
        let id = new_task_id();
        assert_eq!(id.len(), 20, "{id}");
        assert!(git2::Reference::is_valid_name(&format!(
            "refs/heads/troupe/{id}"
        )));
    }

    #[test]
    fn records_round_trip_and_unknown_tasks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::new(dir.path());
        let record = TaskRecord {
            id: "t1".into(),
            text: "x".into(),
            base: "abc".into(),
            branch: "troupe/t1".into(),
            worktree: dir.path().join("wt"),
            status: TaskStatus::Running,
            rounds_done: 1,
            max_rounds: 3,
            feedback: String::new(),
            approved: false,
            tests_passed: None,
            rounds: Vec::new(),
            kept_round: None,
            kept_reason: String::new(),
            tester_paths: vec!["test_x.py".into()],
            created_unix: 1,
            updated_unix: 1,
            pid: 1,
        };
        store.save(&record).unwrap();
        assert_eq!(store.load("t1").unwrap(), record);
        assert_eq!(store.list().unwrap(), vec![record]);
        let err = store.load("nope").unwrap_err().to_string();
        assert!(
            err.contains("no task `nope`") && err.contains("tasks list"),
            "{err}"
        );
        assert!(store.load("../t1").is_err());
    }
}
