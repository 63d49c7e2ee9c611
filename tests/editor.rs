//! `troupe explain`, `troupe edit` and `troupe lsp`, run as an editor would, on the real tiny
//! model. The model writes poor code: these check the machinery (shapes, diffs that apply, the
//! range respected, the buffer used, refusals), not the quality.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{
    Env, explain_through_instance, fixture_repo, model_lock, stderr, stdout, test_model,
};

const MONEY: &str = "def add_cents(a, b):\n    \"\"\"Adds two amounts given in cents.\"\"\"\n    return a + b\n\n\ndef format_cents(c):\n    return f\"{c // 100}.{c % 100:02d}\"\n\n\ndef parse_cents(text):\n    units, cents = text.split(\".\")\n    return int(units) * 100 + int(cents)\n";

/// A fixture repository; answers are capped at a few tokens so the tiny model is quick.
/// The `file://` URI of the fixture's `src/money.py`, as an editor sends it.
fn money_uri(repo: &Path) -> String {
    let root = repo.canonicalize().unwrap();
    format!("file://{}/src/money.py", root.display())
}

fn repo() -> tempfile::TempDir {
    fixture_repo(&[
        ("src/money.py", MONEY),
        ("README.md", "# shop\n\nA tiny shop.\n"),
        ("logo.png", "\u{89}PNG\r\n\u{1a}\n\0\0\0\rIHDR"),
        ("troupe.toml", "[agents]\nmax_tokens = 100\n"),
    ])
}

fn model_args(model: &Path) -> Vec<String> {
    vec!["--model".into(), model.to_str().unwrap().into()]
}

fn with(model: &Path, args: &[&str]) -> Vec<String> {
    let mut all = model_args(model);
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Checks that a change of lines `start..=end` (1-based) left every other line as it was.
fn assert_only_range_changed(old: &str, new: &str, start: usize, end: usize) {
    let old: Vec<&str> = old.split_inclusive('\n').collect();
    let new: Vec<&str> = new.split_inclusive('\n').collect();
    assert_eq!(new[..start - 1], old[..start - 1], "lines before the range");
    let after = old.len() - end;
    assert_eq!(
        new[new.len() - after..],
        old[end..],
        "lines after the range"
    );
}

/// Applies `diff` to the repository's working tree with libgit2 (as `git apply` would).
fn git_apply(repo: &Path, diff: &str) {
    let r = git2::Repository::open(repo).unwrap();
    let d = git2::Diff::from_buffer(diff.as_bytes()).expect("the diff parses");
    r.apply(&d, git2::ApplyLocation::WorkDir, None)
        .expect("the diff applies");
}

#[test]
fn explain_json_has_the_documented_shape() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let args = with(
        &model,
        &[
            "--json",
            "explain",
            "--file",
            "src/money.py",
            "--range",
            "6:7",
        ],
    );
    let out = env.troupe(repo.path(), &strs(&args));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one object: {text}");
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["explanation", "citations", "stats"]);
    assert!(!v["explanation"].as_str().unwrap().trim().is_empty());
    // The selection comes first, exactly.
    assert_eq!(
        v["citations"][0],
        json!({"path": "src/money.py", "start_line": 6, "end_line": 7})
    );
    assert!(v["stats"]["generated_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn edit_proposes_a_diff_that_applies_and_touches_only_the_range() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let args = with(
        &model,
        &[
            "--json",
            "edit",
            "--file",
            "src/money.py",
            "--range",
            "6:7",
            "--instruction",
            "write it in uppercase",
        ],
    );
    let out = env.troupe(repo.path(), &strs(&args));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one object: {text}");
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    for key in [
        "path",
        "start_line",
        "end_line",
        "diff",
        "new_text",
        "replacement",
        "lines_added",
        "lines_removed",
        "stats",
        "written",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert_eq!(
        (v["start_line"].as_u64(), v["end_line"].as_u64()),
        (Some(6), Some(7))
    );
    assert_eq!(v["written"], false);
    let new_text = v["new_text"].as_str().unwrap();
    assert_only_range_changed(MONEY, new_text, 6, 7);
    // Nothing was written, and the diff turns the file into new_text.
    let file = repo.path().join("src/money.py");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), MONEY);
    let diff = v["diff"].as_str().unwrap();
    assert!(!diff.is_empty(), "the tiny model changed something: {v}");
    git_apply(repo.path(), diff);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), new_text);
}

#[test]
fn edit_write_applies_the_change_but_refuses_a_file_that_changed() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let file = repo.path().join("src/money.py");
    let edit = |extra: &[&str]| {
        let mut args = with(
            &model,
            &[
                "edit",
                "--file",
                "src/money.py",
                "--range",
                "10:12",
                "--instruction",
                "rename text to value",
                "--write",
            ],
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // The buffer the edit is made from differs from the disk: nothing is written.
    let buffer = format!("{MONEY}# unsaved\n");
    let out = env.troupe_with_stdin(repo.path(), &strs(&edit(&["--stdin"])), &buffer);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("src/money.py changed since the edit was made from it"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("run the edit again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), MONEY);

    // From the disk: the file gets the change, and the diff printed is that change.
    let out = env.troupe(repo.path(), &strs(&edit(&[])));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    assert_ne!(written, MONEY, "the change was written: {}", stderr(&out));
    assert!(
        stderr(&out).contains("wrote src/money.py"),
        "{}",
        stderr(&out)
    );
    assert_only_range_changed(MONEY, &written, 10, 12);
    std::fs::write(&file, MONEY).unwrap();
    git_apply(repo.path(), &stdout(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}

#[test]
fn edit_with_stdin_works_on_the_unsaved_buffer() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    // The buffer has a line the disk does not, before the range.
    let buffer = format!("# unsaved note\n{MONEY}");
    let args = with(
        &model,
        &[
            "--json",
            "edit",
            "--file",
            "src/money.py",
            "--range",
            "7:8",
            "--instruction",
            "rename the parameter c to cents",
            "--stdin",
        ],
    );
    let out = env.troupe_with_stdin(repo.path(), &strs(&args), &buffer);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let new_text = v["new_text"].as_str().unwrap();
    assert!(new_text.starts_with("# unsaved note\n"), "{new_text}");
    assert_only_range_changed(&buffer, new_text, 7, 8);
    // The disk is untouched.
    let disk = std::fs::read_to_string(repo.path().join("src/money.py")).unwrap();
    assert_eq!(disk, MONEY);
}

#[test]
fn bad_locations_are_rejected_with_the_fix_before_the_model_loads() {
    let env = Env::new();
    let repo = repo();
    // No model is configured in this environment: these must fail on the location alone.
    let cases: [(&[&str], &str, &str); 6] = [
        (
            &["explain", "--file", "src/nope.py"],
            "src/nope.py does not exist",
            "relative to the repository root",
        ),
        (
            &["explain", "--file", "src/money.py", "--range", "10:99"],
            "past the end of src/money.py, which has 12 lines",
            "pass a range within 1:12",
        ),
        (
            &["explain", "--file", "logo.png"],
            "logo.png is not a UTF-8 text file",
            "text files only",
        ),
        (
            &["edit", "--file", "src/nope.py", "--instruction", "x"],
            "src/nope.py does not exist",
            "relative to the repository root",
        ),
        (
            &[
                "edit",
                "--file",
                "src/money.py",
                "--range",
                "13:14",
                "--instruction",
                "x",
            ],
            "past the end",
            "pass a range within 1:12",
        ),
        (
            &["edit", "--file", "src/money.py", "--instruction", "  "],
            "the edit instruction is empty",
            "--instruction TEXT",
        ),
    ];
    for (args, message, fix) in cases {
        let out = env.troupe(repo.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(message) && err.contains(fix),
            "{args:?}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
}

/// A language-server client over the child's stdio, every read bounded by a timeout. It answers
/// the server's `window/workDoneProgress/create` requests as a client that shows progress does.
struct Lsp {
    child: Child,
    stdin: ChildStdin,
    messages: mpsc::Receiver<Value>,
}

impl Lsp {
    fn start(env: &Env, repo: &Path, model: &Path) -> Lsp {
        let mut cmd = env.command(repo, &["--model", model.to_str().unwrap(), "lsp"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn troupe lsp");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(n) = line.strip_prefix("Content-Length: ") {
                        length = n.parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                    return;
                }
            }
        });
        Lsp {
            child,
            stdin,
            messages,
        }
    }

    fn send_raw(&mut self, body: &[u8]) {
        write!(self.stdin, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
        self.stdin.write_all(body).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, message: Value) {
        self.send_raw(&serde_json::to_vec(&message).unwrap());
    }

    /// The next message from the server before `deadline`, after answering it if it asks to
    /// create a progress token.
    fn next(&mut self, deadline: std::time::Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let m = self.messages.recv_timeout(left).ok()?;
        if m["method"] == "window/workDoneProgress/create" {
            self.send(json!({"jsonrpc": "2.0", "id": m["id"], "result": null}));
        }
        Some(m)
    }

    /// The next message that is not a notification or request from the server.
    fn response(&mut self, limit: Duration) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let m = self
                .next(deadline)
                .unwrap_or_else(|| panic!("no response from troupe lsp within {limit:?}"));
            if m.get("method").is_none() {
                return m;
            }
        }
    }

    /// Every message up to and including the first one `done` accepts.
    fn until(&mut self, limit: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let m = self.next(deadline).unwrap_or_else(|| {
                panic!("troupe lsp did not send the awaited message within {limit:?}: {seen:?}")
            });
            let last = done(&m);
            seen.push(m);
            if last {
                return seen;
            }
        }
    }

    fn request(&mut self, id: u64, method: &str, params: Value, limit: Duration) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let r = self.response(limit);
        assert_eq!(r["id"], id, "{r}");
        r
    }
}

impl Drop for Lsp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SHORT: Duration = Duration::from_secs(10);
const MODEL_CALL: Duration = Duration::from_secs(120);

#[test]
fn the_language_server_explains_and_edits_open_buffers_and_exits_cleanly() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    let uri = money_uri(repo.path());

    // Before initialize: refused, not crashed.
    let r = lsp.request(1, "textDocument/codeAction", json!({}), SHORT);
    assert_eq!(r["error"]["code"], -32002, "{r}");

    let r = lsp.request(
        2,
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
        SHORT,
    );
    let caps = &r["result"]["capabilities"];
    assert_eq!(caps["textDocumentSync"]["change"], 1, "{r}");
    assert_eq!(caps["textDocumentSync"]["save"], true, "{r}");
    assert_eq!(
        caps["executeCommandProvider"]["commands"],
        json!(["troupe.explain", "troupe.edit", "troupe.review"])
    );
    lsp.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));

    // The buffer differs from the disk: an unsaved line at the top.
    let buffer = format!("# unsaved note\n{MONEY}");
    lsp.send(
        json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
        "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": MONEY}}}),
    );
    lsp.send(
        json!({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
        "textDocument": {"uri": uri, "version": 2},
        "contentChanges": [{"text": buffer}]}}),
    );

    let selection =
        json!({"start": {"line": 6, "character": 0}, "end": {"line": 8, "character": 0}});
    let r = lsp.request(
        3,
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "range": selection, "context": {"diagnostics": []}}),
        SHORT,
    );
    let titles: Vec<&str> = r["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "troupe: explain",
            "troupe: edit selection",
            "troupe: review file"
        ]
    );
    assert_eq!(
        r["result"][2]["command"]["arguments"][0],
        json!({"uri": uri})
    );
    assert_eq!(r["result"][1]["command"]["command"], "troupe.edit");

    // Lines 7-8 of the buffer (0-based 6 and 7): `def format_cents(c):` and its body.
    let r = lsp.request(
        4,
        "workspace/executeCommand",
        json!({"command": "troupe.edit", "arguments": [{"uri": uri, "range": selection,
               "instruction": "rename the parameter c to cents"}]}),
        MODEL_CALL,
    );
    let result = &r["result"];
    assert!(result["diff"].as_str().unwrap().contains("@@"), "{r}");
    let edits = &result["edit"]["changes"][&uri];
    assert_eq!(edits.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(edits[0]["range"], selection, "only the selected lines: {r}");
    // Applying the edit to the buffer touches nothing else.
    let lines: Vec<&str> = buffer.split_inclusive('\n').collect();
    let new_buffer = format!(
        "{}{}{}",
        lines[..6].concat(),
        edits[0]["newText"].as_str().unwrap(),
        lines[8..].concat()
    );
    assert_only_range_changed(&buffer, &new_buffer, 7, 8);

    let r = lsp.request(
        5,
        "workspace/executeCommand",
        json!({"command": "troupe.explain", "arguments": [{"uri": uri, "range": selection}]}),
        MODEL_CALL,
    );
    assert!(
        !r["result"]["explanation"].as_str().unwrap().is_empty(),
        "{r}"
    );
    assert_eq!(
        r["result"]["citations"][0],
        json!({"path": "src/money.py", "start_line": 7, "end_line": 8})
    );

    // Bad requests get errors and the server keeps serving.
    lsp.send_raw(b"{not json");
    let r = lsp.response(SHORT);
    assert_eq!(r["error"]["code"], -32700, "{r}");
    assert_eq!(r["id"], Value::Null);
    let r = lsp.request(6, "textDocument/unknownThing", json!({}), SHORT);
    assert_eq!(r["error"]["code"], -32601, "{r}");
    let r = lsp.request(
        7,
        "workspace/executeCommand",
        json!({"command": "troupe.edit", "arguments": [{"uri": "file:///etc/passwd"}]}),
        SHORT,
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("outside the repository"),
        "{r}"
    );
    let r = lsp.request(
        8,
        "workspace/executeCommand",
        json!({"command": "troupe.explain", "arguments": [{"uri": uri,
               "range": {"start": {"line": 40, "character": 0}, "end": {"line": 41, "character": 0}}}]}),
        SHORT,
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pass a range within 1:13"),
        "{r}"
    );

    let r = lsp.request(9, "shutdown", Value::Null, SHORT);
    assert_eq!(r["result"], Value::Null, "{r}");
    lsp.send(json!({"jsonrpc": "2.0", "method": "exit"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = lsp.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "troupe lsp did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

/// Waits until `path` exists or `limit` passes.
fn wait_for(path: &Path, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[cfg(unix)]
#[test]
fn one_shot_commands_reuse_a_running_language_server() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let socket = repo.path().join(".troupe/editor.sock");
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    assert!(wait_for(&socket, SHORT), "troupe lsp listens on {socket:?}");

    // A model path that does not exist: run in-process, this would fail; the running server's
    // model answers instead.
    let v = explain_through_instance(&env, repo.path(), "src/money.py", "6:7");
    assert_eq!(v["citations"][0]["start_line"], 6);

    lsp.request(
        1,
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
        SHORT,
    );
    lsp.request(2, "shutdown", Value::Null, SHORT);
    lsp.send(json!({"jsonrpc": "2.0", "method": "exit"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lsp.child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "troupe lsp did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[cfg(unix)]
#[test]
fn a_stale_socket_is_removed_and_the_command_runs_in_process() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let socket = repo.path().join(".troupe/editor.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A socket file whose server is gone.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let args = with(
        &model,
        &[
            "--json",
            "explain",
            "--file",
            "src/money.py",
            "--range",
            "1:3",
        ],
    );
    let out = env.troupe(repo.path(), &strs(&args));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["citations"][0]["end_line"], 3);
    assert!(!socket.exists(), "the stale socket was removed");
}

/// Whether `m` is the response to request `id`.
fn answers(m: &Value, id: u64) -> bool {
    m.get("method").is_none() && m["id"] == id
}

/// The `$/progress` values sent for `token`.
fn progress_of<'a>(messages: &'a [Value], token: &Value) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["method"] == "$/progress" && &m["params"]["token"] == token)
        .map(|m| &m["params"]["value"])
        .collect()
}

#[test]
fn review_file_publishes_diagnostics_for_its_uri_with_progress_and_again_on_save() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    // An uncommitted change to the reviewed file, and one to another file.
    let changed = MONEY.replace("return a + b", "return a - b  # subtract");
    std::fs::write(repo.path().join("src/money.py"), &changed).unwrap();
    std::fs::write(repo.path().join("README.md"), "# shop\n\nChanged.\n").unwrap();
    let lines = changed.lines().count() as u64;
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    let uri = money_uri(repo.path());
    lsp.request(
        1,
        "initialize",
        json!({"processId": null, "rootUri": null,
               "capabilities": {"window": {"workDoneProgress": true}},
               "initializationOptions": {"reviewOnSave": true}}),
        SHORT,
    );
    lsp.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    // The model loads (with its own progress) first.
    lsp.until(MODEL_CALL, model_loaded);

    lsp.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
        "params": {"command": "troupe.review", "arguments": [{"uri": uri}]}}),
    );
    let seen = lsp.until(Duration::from_secs(300), |m| answers(m, 2));
    let create = seen
        .iter()
        .find(|m| m["method"] == "window/workDoneProgress/create")
        .unwrap_or_else(|| panic!("a progress token is created: {seen:?}"));
    let progress = progress_of(&seen, &create["params"]["token"]);
    assert_eq!(progress.first().unwrap()["kind"], "begin", "{seen:?}");
    assert_eq!(progress.first().unwrap()["title"], "troupe: review");
    assert_eq!(progress.last().unwrap()["kind"], "end", "{seen:?}");
    let published: Vec<&Value> = seen
        .iter()
        .filter(|m| m["method"] == "textDocument/publishDiagnostics")
        .collect();
    assert_eq!(
        published.len(),
        1,
        "one publish, for the reviewed file: {seen:?}"
    );
    assert_eq!(published[0]["params"]["uri"], uri.as_str());
    let diagnostics = published[0]["params"]["diagnostics"].as_array().unwrap();
    for d in diagnostics {
        let (start, end) = (&d["range"]["start"], &d["range"]["end"]);
        assert!(
            start["line"].as_u64().unwrap() <= end["line"].as_u64().unwrap(),
            "{d}"
        );
        assert!(end["line"].as_u64().unwrap() < lines, "{d}");
        assert_eq!(d["source"], "troupe", "{d}");
        assert!((1..=4).contains(&d["severity"].as_u64().unwrap()), "{d}");
        assert!(d["code"].is_string(), "{d}");
    }
    let response = seen.last().unwrap();
    assert_eq!(
        response["result"]["findings"].as_u64(),
        Some(diagnostics.len() as u64),
        "{response}"
    );

    // Saving the file reviews it again and publishes again.
    lsp.send(json!({"jsonrpc": "2.0", "method": "textDocument/didSave",
        "params": {"textDocument": {"uri": uri}}}));
    let seen = lsp.until(Duration::from_secs(300), |m| {
        m["method"] == "textDocument/publishDiagnostics"
    });
    assert_eq!(seen.last().unwrap()["params"]["uri"], uri.as_str());
}

#[test]
fn a_cancelled_command_is_answered_request_cancelled_and_the_server_keeps_serving() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    let uri = money_uri(repo.path());
    lsp.request(
        1,
        "initialize",
        json!({"processId": null, "rootUri": null,
               "capabilities": {"window": {"workDoneProgress": true}}}),
        SHORT,
    );
    lsp.until(MODEL_CALL, model_loaded);
    // The client gives its own progress token.
    lsp.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
        "params": {"command": "troupe.edit", "workDoneToken": "edit-1",
                   "arguments": [{"uri": uri, "instruction": "add type hints everywhere"}]}}),
    );
    let token = json!("edit-1");
    let seen = lsp.until(MODEL_CALL, |m| {
        m["method"] == "$/progress" && m["params"]["token"] == token
    });
    assert_eq!(progress_of(&seen, &token)[0]["kind"], "begin");
    assert!(
        !seen
            .iter()
            .any(|m| m["method"] == "window/workDoneProgress/create"),
        "no token is created when the client gave one: {seen:?}"
    );
    // While the edit runs, other requests are answered, and the edit can be cancelled.
    lsp.send(json!({"jsonrpc": "2.0", "id": 3, "method": "textDocument/codeAction",
        "params": {"textDocument": {"uri": uri}, "context": {"diagnostics": []},
                   "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}}}));
    lsp.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}}));
    let seen = lsp.until(SHORT, |m| answers(m, 2));
    let cancelled = seen.last().unwrap();
    assert_eq!(cancelled["error"]["code"], -32800, "{seen:?}");
    assert!(
        seen.iter().any(|m| answers(m, 3) && m["result"].is_array()),
        "{seen:?}"
    );
    let progress = progress_of(&seen, &token);
    assert_eq!(progress.last().unwrap()["kind"], "end", "{seen:?}");

    // The same session serves the next request, and request 2 gets no second answer.
    let r = lsp.request(
        4,
        "workspace/executeCommand",
        json!({"command": "troupe.explain", "arguments": [{"uri": uri,
               "range": {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}}}]}),
        MODEL_CALL,
    );
    assert!(
        !r["result"]["explanation"].as_str().unwrap().is_empty(),
        "{r}"
    );
    // Cancelling what already finished changes nothing.
    lsp.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 4}}));
    let r = lsp.request(5, "shutdown", Value::Null, SHORT);
    assert_eq!(r["result"], Value::Null, "{r}");
}

/// Waits for the server to exit, at most `limit`.
fn exit_status(lsp: &mut Lsp, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = lsp.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "troupe lsp did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `m` is the server's note that the model finished loading.
fn model_loaded(m: &Value) -> bool {
    m["method"] == "window/logMessage"
        && m["params"]["message"]
            .as_str()
            .is_some_and(|t| t.contains("loaded the model"))
}

/// The position of the first message `f` accepts.
fn position(seen: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    seen.iter()
        .position(f)
        .unwrap_or_else(|| panic!("an expected message is missing: {seen:?}"))
}

#[test]
fn the_language_server_answers_while_the_model_loads_and_runs_queued_commands_after() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    let uri = money_uri(repo.path());
    let range = json!({"start": {"line": 5, "character": 0}, "end": {"line": 7, "character": 0}});
    // Everything is sent at once: the load starts with `initialize` and is still running when
    // the server reads the rest.
    lsp.send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": null, "rootUri": null, "capabilities": {"window": {"workDoneProgress": true}}}}));
    lsp.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    lsp.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
        "params": {"command": "troupe.explain", "arguments": [{"uri": uri, "range": range}]}}),
    );
    lsp.send(
        json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
        "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": MONEY}}}),
    );
    lsp.send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "textDocument/codeAction",
        "params": {"textDocument": {"uri": uri}, "range": range, "context": {"diagnostics": []}}}),
    );
    lsp.send(json!({"jsonrpc": "2.0", "id": 4, "method": "troupe/status", "params": null}));
    let seen = lsp.until(MODEL_CALL, |m| answers(m, 2));

    let loaded = position(&seen, model_loaded);
    let actions = position(&seen, |m| answers(m, 3));
    let status = position(&seen, |m| answers(m, 4));
    assert!(
        actions < loaded && status < loaded,
        "answered during the load: {seen:?}"
    );
    assert_eq!(seen[actions]["result"].as_array().unwrap().len(), 3);
    assert_eq!(seen[status]["result"]["model"], "loading", "{seen:?}");
    assert_eq!(seen[status]["result"]["commands"], 1, "{seen:?}");
    // The queued command ran once the model was there.
    let explained = seen.last().unwrap();
    assert!(
        !explained["result"]["explanation"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{explained}"
    );
    assert_eq!(
        explained["result"]["citations"][0],
        json!({"path": "src/money.py", "start_line": 6, "end_line": 7})
    );
    // The load showed its own progress, begun only after the client created the token.
    let creates: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i]["method"] == "window/workDoneProgress/create")
        .collect();
    assert_eq!(creates.len(), 2, "the load's and the command's: {seen:?}");
    let load_token = &seen[creates[0]]["params"]["token"];
    let progress = progress_of(&seen, load_token);
    assert_eq!(progress.len(), 2, "{seen:?}");
    assert_eq!(progress[0]["kind"], "begin");
    assert_eq!(progress[0]["title"], "troupe: loading the model");
    assert_eq!(progress[1]["kind"], "end");
    assert_eq!(progress[1]["message"], "loaded");

    let r = lsp.request(5, "troupe/status", Value::Null, SHORT);
    assert_eq!(r["result"]["model"], "ready", "{r}");
    assert_eq!(r["result"]["commands"], 0, "{r}");
    assert_eq!(r["result"]["engine"]["active_sequences"], 0, "{r}");
    lsp.request(6, "shutdown", Value::Null, SHORT);
    lsp.send(json!({"jsonrpc": "2.0", "method": "exit"}));
    assert_eq!(
        exit_status(&mut lsp, Duration::from_secs(20)).code(),
        Some(0)
    );
}

#[test]
fn a_command_cancelled_during_the_load_is_answered_at_once_and_shutdown_does_not_wait() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    let uri = money_uri(repo.path());
    lsp.send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": null, "rootUri": null, "capabilities": {}}}),
    );
    lsp.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
        "params": {"command": "troupe.explain", "arguments": [{"uri": uri}]}}),
    );
    lsp.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}}));
    lsp.send(json!({"jsonrpc": "2.0", "id": 3, "method": "shutdown"}));
    let seen = lsp.until(SHORT, |m| answers(m, 3));
    let cancelled = position(&seen, |m| answers(m, 2));
    assert_eq!(seen[cancelled]["error"]["code"], -32800, "{seen:?}");
    assert!(
        !seen.iter().any(model_loaded),
        "answered before the model finished loading: {seen:?}"
    );
    lsp.send(json!({"jsonrpc": "2.0", "method": "exit"}));
    assert_eq!(
        exit_status(&mut lsp, Duration::from_secs(20)).code(),
        Some(0)
    );
    // Request 2 got exactly one answer.
    let rest: Vec<Value> = lsp.messages.try_iter().collect();
    assert!(!rest.iter().any(|m| answers(m, 2)), "{rest:?}");
}

#[test]
fn a_missing_model_is_shown_to_the_user_and_fails_the_commands_without_a_hang() {
    let env = Env::new();
    let repo = repo();
    let missing = Path::new("/nonexistent/model.gguf");
    let mut lsp = Lsp::start(&env, repo.path(), missing);
    let uri = money_uri(repo.path());
    lsp.request(
        1,
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
        SHORT,
    );
    lsp.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
        "params": {"command": "troupe.explain", "arguments": [{"uri": uri}]}}),
    );
    let seen = lsp.until(SHORT, |m| answers(m, 2));
    let shown = seen
        .iter()
        .find(|m| m["method"] == "window/showMessage")
        .unwrap_or_else(|| panic!("the failure is shown: {seen:?}"));
    assert_eq!(shown["params"]["type"], 1, "an error: {shown}");
    let text = shown["params"]["message"].as_str().unwrap();
    assert!(
        text.contains("/nonexistent/model.gguf") && text.contains("does not exist"),
        "{text}"
    );
    assert!(text.contains("troupe models pull"), "the fix: {text}");
    let failed = seen.last().unwrap();
    assert_eq!(failed["error"]["code"], -32803, "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/model.gguf"),
        "{failed}"
    );
    // The next command tries again and fails the same way; the server keeps serving.
    let r = lsp.request(
        3,
        "workspace/executeCommand",
        json!({"command": "troupe.explain", "arguments": [{"uri": uri}]}),
        SHORT,
    );
    assert_eq!(r["error"]["code"], -32803, "{r}");
    let r = lsp.request(4, "troupe/status", Value::Null, SHORT);
    assert_eq!(r["result"]["model"], "idle", "{r}");
    lsp.request(5, "shutdown", Value::Null, SHORT);
    lsp.send(json!({"jsonrpc": "2.0", "method": "exit"}));
    assert_eq!(exit_status(&mut lsp, SHORT).code(), Some(0));
}

#[test]
fn an_unanswered_progress_token_is_never_begun() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    lsp.send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": null, "rootUri": null, "capabilities": {"window": {"workDoneProgress": true}}}}));
    // Read without answering the server's requests.
    let deadline = std::time::Instant::now() + MODEL_CALL;
    let mut seen = Vec::new();
    while !seen.iter().any(model_loaded) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        seen.push(
            lsp.messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the model loads: {seen:?}")),
        );
    }
    assert!(
        seen.iter()
            .any(|m| m["method"] == "window/workDoneProgress/create"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|m| m["method"] == "$/progress"),
        "no progress on a token the client did not create: {seen:?}"
    );
}

#[cfg(unix)]
#[test]
fn review_through_a_running_server_prints_the_same_bytes_as_in_process() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let changed = MONEY.replace("return a + b", "return a - b");
    std::fs::write(repo.path().join("src/money.py"), changed).unwrap();
    let args = with(&model, &["review", "--format", "json"]);
    let alone = env.troupe(repo.path(), &strs(&args));
    assert_eq!(alone.status.code(), Some(0), "{}", stderr(&alone));
    assert!(!stderr(&alone).contains("running troupe lsp"));

    let socket = repo.path().join(".troupe/editor.sock");
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    assert!(wait_for(&socket, SHORT), "troupe lsp listens on {socket:?}");
    let served = env.troupe(repo.path(), &strs(&args));
    assert_eq!(served.status.code(), Some(0), "{}", stderr(&served));
    assert!(
        stderr(&served).contains("sent to the running troupe instance"),
        "{}",
        stderr(&served)
    );
    let v: Value = serde_json::from_slice(&alone.stdout).unwrap();
    assert_eq!(v["coverage"]["hunks_reviewed"], 1, "{v}");
    assert_eq!(stdout(&served), stdout(&alone));
    lsp.request(
        1,
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
        SHORT,
    );
    lsp.request(2, "shutdown", Value::Null, SHORT);
}

#[cfg(unix)]
#[test]
fn a_one_shot_client_that_disconnects_has_its_request_cancelled_on_the_server() {
    let _guard = model_lock();
    let env = Env::new();
    // No answer cap: the explanation would run for many seconds.
    let repo = fixture_repo(&[("src/money.py", MONEY)]);
    let model = test_model();
    let mut lsp = Lsp::start(&env, repo.path(), &model);
    lsp.send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": null, "rootUri": null, "capabilities": {}}}),
    );
    lsp.until(MODEL_CALL, model_loaded);

    let mut client = env
        .command(repo.path(), &["explain", "--file", "src/money.py"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn troupe explain");
    // The explanation streams: the request is generating on the server.
    let mut out = client.stdout.take().unwrap();
    let (tx, first) = mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = tx.send(out.read(&mut byte).map(|n| n > 0).unwrap_or(false));
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
    });
    assert_eq!(
        first.recv_timeout(MODEL_CALL),
        Ok(true),
        "the answer streams"
    );
    let r = lsp.request(2, "troupe/status", Value::Null, SHORT);
    assert_eq!(r["result"]["remote_requests"], 1, "{r}");
    assert_eq!(r["result"]["engine"]["active_sequences"], 1, "{r}");

    // Ctrl-C on the client.
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(client.id() as libc::pid_t, libc::SIGINT) };
    let deadline = std::time::Instant::now() + SHORT;
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the client stops");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());

    // The server stops generating for nobody: the sequence is freed within a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut id = 3;
    let status = loop {
        let r = lsp.request(id, "troupe/status", Value::Null, SHORT);
        id += 1;
        if r["result"]["engine"]["active_sequences"] == 0 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sequence was not freed: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["result"]["remote_requests"], 0, "{status}");
    assert_eq!(status["result"]["remote_cancelled"], 1, "{status}");
    lsp.request(id, "shutdown", Value::Null, SHORT);
}
