//! `troupe lsp`: a language server over stdio (JSON-RPC 2.0 with `Content-Length` framing).
//!
//! It keeps the editor's open buffers (`textDocument/didOpen`, `didChange`, `didClose`), offers
//! code actions on a selection, "troupe: explain", "troupe: edit selection" and "troupe: review
//! file", and runs them as `workspace/executeCommand`:
//!
//! - `troupe.explain` `[{"uri", "range"?, "show"?}]` returns `{"explanation", "citations"}`
//!   (with `show`, also a `window/showMessage`);
//! - `troupe.edit` `[{"uri", "range"?, "instruction"?, "apply"?}]` returns `{"diff", "edit"
//!   (a WorkspaceEdit of the selected lines only), "lines_added", "lines_removed"}` (with
//!   `apply`, the server also sends `workspace/applyEdit`);
//! - `troupe.review` `[{"uri"}]` reviews the file's uncommitted change (the worktree, as saved,
//!   against `HEAD`), publishes the findings as `textDocument/publishDiagnostics` for the URI
//!   (an empty list when there are none) and returns `{"findings", "diagnostics"}`. A finding's
//!   suggestion comes back as a quick fix on its diagnostic: an edit of its lines with the
//!   suggestion as the instruction. With `initializationOptions.reviewOnSave`, every
//!   `textDocument/didSave` reviews the file too.
//!
//! Long work reports `$/progress` (begin, report, end) when the client gives a `workDoneToken`
//! or advertised `window.workDoneProgress`: then the server asks the client to create a token
//! (`window/workDoneProgress/create`) and begins only once the client has answered (a token
//! left unanswered for 5 s, or refused, shows no progress). `$/cancelRequest` of a running
//! command stops its model requests (`Op::Cancel`) and answers it with RequestCancelled
//! (-32800). Commands run on the session while the server keeps reading, so other requests are
//! answered meanwhile. `troupe/status` answers with the server's state: the model (`idle`,
//! `loading`, `ready`), the commands and socket requests running, the socket requests cancelled
//! because their client went away, and the engine's figures (`active_sequences`, ...).
//!
//! `range` is an LSP range; the whole lines it touches are used. The model loads in the
//! background once `initialize` is answered (or with the first request over the socket), with
//! its own progress and a `window/logMessage` when it is loaded; meanwhile every message is
//! answered, commands wait in order for the model, a cancelled one is answered at once, and
//! `shutdown`/`exit` do not wait for the load. A failed load (a missing model, ...) is shown
//! with `window/showMessage` naming the model and the fix, fails the waiting commands, and the
//! next command tries again. Every command and every one-shot command over the socket shares
//! the one model. Bad input (malformed JSON, an unknown method, bad parameters, a file outside
//! the repository) gets a JSON-RPC error; the server keeps running.
//!
//! Threading: one thread reads stdin and hands whole messages to the async loop, which alone
//! writes stdout. The model loads on a task of its own, which `exit` abandons. Framing is done here (a few lines) rather than with `lsp-server`, whose reader
//! stops at the first malformed message; `lsp-types` gives the message types.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use lsp_types as lsp;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agents::target::Target;
use crate::agents::{Session, SessionOptions};
use crate::commands::{Context, exit};
use crate::protocol::{
    EditProposal, Event, EventMsg, Finding, Op, ReviewHead, ReviewSpec, Severity, Submission,
};

/// The commands the server executes.
pub const EXPLAIN_COMMAND: &str = "troupe.explain";
pub const EDIT_COMMAND: &str = "troupe.edit";
pub const REVIEW_COMMAND: &str = "troupe.review";
/// A request for the server's state (model, running work, the engine's figures).
pub const STATUS_METHOD: &str = "troupe/status";

/// The instruction of the "edit selection" code action when the client configures none
/// (`initializationOptions.editInstruction`).
const DEFAULT_INSTRUCTION: &str =
    "Fix any bugs and make this code clearer, keeping its behaviour and interface.";

// JSON-RPC and LSP error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const SERVER_NOT_INITIALIZED: i64 = -32002;
const REQUEST_FAILED: i64 = -32803;
const REQUEST_CANCELLED: i64 = -32800;

/// `troupe lsp`: serves stdin/stdout until `exit` (0 after `shutdown`, else 1) or end of input.
pub fn run(ctx: &Context) -> anyhow::Result<u8> {
    let repo = match &ctx.repo {
        Some(r) => r.clone(),
        None => anyhow::bail!(
            "{}; start the language server inside a git repository or pass --repo",
            ctx.repo_error
                .clone()
                .unwrap_or_else(|| "not inside a git repository".into())
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (tx, rx) = mpsc::unbounded_channel();
    // The reader thread ends with stdin; it is not joined (it may block in a read).
    std::thread::Builder::new()
        .name("lsp-stdin".into())
        .spawn(move || read_loop(std::io::stdin().lock(), tx))
        .context("starting the stdin reader")?;
    let options = SessionOptions::new(&repo, ctx.config.config.clone());
    let server = Server::new(repo, options, Box::new(std::io::stdout()));
    let code = runtime.block_on(server.serve(rx));
    // A model load abandoned by `exit` runs on a blocking thread: do not wait for it.
    runtime.shutdown_background();
    code
}

/// One message read from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed JSON body.
    Message(Value),
    /// A body or header that is not valid; the reason.
    Malformed(String),
}

/// Reads framed messages until end of input or until the receiver is gone.
pub fn read_loop<R: BufRead>(mut input: R, tx: mpsc::UnboundedSender<Incoming>) {
    loop {
        let item = match read_frame(&mut input) {
            Ok(None) => return,
            Ok(Some(Ok(body))) => match serde_json::from_slice::<Value>(&body) {
                Ok(v) => Incoming::Message(v),
                Err(e) => Incoming::Malformed(format!("the message is not valid JSON: {e}")),
            },
            Ok(Some(Err(reason))) => Incoming::Malformed(reason),
            Err(_) => return,
        };
        if tx.send(item).is_err() {
            return;
        }
    }
}

/// One frame: `Ok(None)` at end of input, `Some(Err)` for a bad header (the frame is skipped).
fn read_frame<R: BufRead>(input: &mut R) -> std::io::Result<Option<Result<Vec<u8>, String>>> {
    let mut length: Option<Result<usize, String>> = None;
    let mut saw_header = false;
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if !saw_header {
                continue;
            }
            break;
        }
        saw_header = true;
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad Content-Length header `{}`", value.trim())),
            );
        }
    }
    let length = match length {
        Some(Ok(n)) if n <= 64 << 20 => n,
        Some(Ok(n)) => return Ok(Some(Err(format!("a message of {n} bytes is too large")))),
        Some(Err(e)) => return Ok(Some(Err(e))),
        None => {
            return Ok(Some(
                Err("a message without a Content-Length header".into()),
            ));
        }
    };
    let mut body = vec![0; length];
    input.read_exact(&mut body)?;
    Ok(Some(Ok(body)))
}

/// Writes one framed message.
fn write_frame(out: &mut dyn Write, message: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(message)?;
    write!(out, "Content-Length: {}\r\n\r\n", body.len())?;
    out.write_all(&body)?;
    out.flush()
}

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Explain,
    Edit,
    Review,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Explain => "troupe: explain",
            Kind::Edit => "troupe: edit",
            Kind::Review => "troupe: review",
        }
    }
}

/// What a running command waits for.
#[derive(Debug)]
struct Pending {
    kind: Kind,
    /// The client's request id (`None`: a review started by a save).
    request: Option<Value>,
    uri: String,
    /// The file, relative to the repository root.
    file: String,
    /// The text the command ran on (for the edit's and the diagnostics' positions).
    base: String,
    /// Also show (explain) or apply (edit) in the client.
    act: bool,
    /// Its work-done progress.
    progress: Progress,
    /// Whether output has started streaming (reported once).
    streaming: bool,
}

/// Arguments of the two commands.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandArgs {
    uri: String,
    #[serde(default)]
    range: Option<lsp::Range>,
    #[serde(default)]
    instruction: Option<String>,
    /// `show` for explain, `apply` for edit.
    #[serde(default, alias = "show")]
    apply: bool,
}

/// How long `begin` of a progress waits for the client's answer to
/// `window/workDoneProgress/create`; without an answer by then, that progress is not shown.
const PROGRESS_CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the session and loads the model (tests put in their own).
type Starter = Box<dyn FnMut(SessionOptions) -> BoxFuture<'static, Result<Session, String>> + Send>;

/// The session, as the server sees it.
enum Model {
    /// Not started: before `initialize` (or a request over the socket), or after a failed
    /// load (the next command tries again).
    Idle,
    /// Loading in the background; what is submitted meanwhile waits in `queue`, in order.
    Loading {
        load: tokio::task::JoinHandle<Result<Session, String>>,
        queue: Vec<Submission>,
        since: Instant,
    },
    Ready(Session),
}

/// What the model's side brought.
enum ModelInput {
    /// The load ended.
    Loaded(Result<Session, String>),
    /// An event of the session; `None` when it stopped.
    Event(Option<Event>),
}

/// A work-done progress the server shows.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    /// None.
    Off,
    /// `window/workDoneProgress/create` was sent as request `request`; `begin` is sent once the
    /// client answers it (before `deadline`).
    Creating {
        token: Value,
        request: String,
        deadline: Instant,
        begin: Value,
    },
    /// `begin` was sent for this token.
    On(Value),
}

impl Progress {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Progress::Creating { deadline, .. } => Some(*deadline),
            Progress::Off | Progress::On(_) => None,
        }
    }
}

struct Server {
    repo: PathBuf,
    options: SessionOptions,
    model: Model,
    starter: Starter,
    /// The model load's own progress.
    load_progress: Progress,
    out: Box<dyn Write + Send>,
    initialized: bool,
    shutdown: bool,
    buffers: HashMap<String, String>,
    pending: HashMap<String, Pending>,
    next_id: u64,
    edit_instruction: String,
    /// The client shows `$/progress` it is asked to create (`window.workDoneProgress`).
    work_done_progress: bool,
    create_timeout: Duration,
    /// Review a file when it is saved (`initializationOptions.reviewOnSave`).
    review_on_save: bool,
    /// Requests of one-shot commands over the socket: session id -> (their id, their events).
    remote: HashMap<String, (String, mpsc::UnboundedSender<Event>)>,
    /// Requests over the socket cancelled because their client disconnected.
    remote_cancelled: u64,
    /// `troupe/status` requests waiting for the engine's figures: session id -> request id.
    statuses: HashMap<String, Value>,
}

enum Input {
    Client(Option<Incoming>),
    Model(ModelInput),
    #[cfg(unix)]
    Remote(super::instance::Request),
    /// The client of a request over the socket disconnected.
    #[cfg(unix)]
    Gone(String),
    /// A progress token's creation is overdue.
    CreateTimeout,
    /// SIGTERM or Ctrl-C: stop as when the client goes away, removing the socket.
    Stop,
}

impl Server {
    fn new(repo: PathBuf, options: SessionOptions, out: Box<dyn Write + Send>) -> Self {
        Self {
            repo,
            options,
            model: Model::Idle,
            starter: Box::new(|options| Box::pin(load(options))),
            load_progress: Progress::Off,
            out,
            initialized: false,
            shutdown: false,
            buffers: HashMap::new(),
            pending: HashMap::new(),
            next_id: 0,
            edit_instruction: DEFAULT_INSTRUCTION.into(),
            work_done_progress: false,
            create_timeout: PROGRESS_CREATE_TIMEOUT,
            review_on_save: false,
            remote: HashMap::new(),
            remote_cancelled: 0,
            statuses: HashMap::new(),
        }
    }

    async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Incoming>) -> anyhow::Result<u8> {
        // One-shot commands of this repository reuse this process's model through the socket.
        #[cfg(unix)]
        let (_listener, mut requests) = {
            let (tx, requests) = mpsc::unbounded_channel();
            (super::instance::listen(&self.repo, tx).await, requests)
        };
        #[cfg(unix)]
        let (gone_tx, mut gone) = mpsc::unbounded_channel::<String>();
        // Registered once, so a signal between two turns of the loop is not missed.
        let stop = crate::serve::stop_signal();
        tokio::pin!(stop);
        loop {
            let overdue = self.next_create_deadline();
            let overdue = async move {
                match overdue {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(unix)]
            let input = tokio::select! {
                m = rx.recv() => Input::Client(m),
                m = next_model_input(&mut self.model) => Input::Model(m),
                Some(r) = requests.recv() => Input::Remote(r),
                Some(id) = gone.recv() => Input::Gone(id),
                () = overdue => Input::CreateTimeout,
                () = &mut stop => Input::Stop,
            };
            #[cfg(not(unix))]
            let input = tokio::select! {
                m = rx.recv() => Input::Client(m),
                m = next_model_input(&mut self.model) => Input::Model(m),
                () = overdue => Input::CreateTimeout,
                () = &mut stop => Input::Stop,
            };
            match input {
                Input::Client(None) | Input::Stop => {
                    // End of input without `exit` (the client is gone), or told to stop.
                    self.stop_session().await;
                    return Ok(if self.shutdown {
                        exit::OK
                    } else {
                        exit::NEGATIVE
                    });
                }
                Input::Client(Some(Incoming::Malformed(reason))) => {
                    self.send(&error_response(Value::Null, PARSE_ERROR, &reason))?;
                }
                Input::Client(Some(Incoming::Message(msg))) => {
                    if let Some(code) = self.on_message(msg).await? {
                        self.stop_session().await;
                        return Ok(code);
                    }
                }
                #[cfg(unix)]
                Input::Remote(r) => self.on_remote(r, &gone_tx)?,
                #[cfg(unix)]
                Input::Gone(sub_id) => self.on_gone(&sub_id),
                Input::CreateTimeout => self.expire_creations(),
                Input::Model(ModelInput::Loaded(result)) => self.on_loaded(result)?,
                Input::Model(ModelInput::Event(Some(event))) => self.on_event(event)?,
                Input::Model(ModelInput::Event(None)) => {
                    // The session stopped: fail whatever waits on it, start afresh next time.
                    self.model = Model::Idle;
                    let waiting: Vec<String> = (self.pending.keys())
                        .chain(self.remote.keys())
                        .chain(self.statuses.keys())
                        .cloned()
                        .collect();
                    for sub_id in waiting {
                        self.fail(&sub_id, "the session stopped")?;
                    }
                }
            }
        }
    }

    /// Handles one client message; `Some(code)` ends the server.
    async fn on_message(&mut self, msg: Value) -> anyhow::Result<Option<u8>> {
        let Some(obj) = msg.as_object() else {
            let e = error_response(Value::Null, INVALID_REQUEST, "a message must be an object");
            self.send(&e)?;
            return Ok(None);
        };
        let id = obj.get("id").cloned();
        let method = obj
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_string);
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        let Some(method) = method else {
            // A response to a request of ours (workspace/applyEdit, workDoneProgress/create),
            // or garbage.
            if let Some(id) = &id
                && (obj.contains_key("result") || obj.contains_key("error"))
            {
                self.on_response(id, obj.contains_key("error"))?;
                return Ok(None);
            }
            let e = error_response(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "a request needs a `method`",
            );
            self.send(&e)?;
            return Ok(None);
        };
        match id {
            Some(id) => self.on_request(id, &method, params).await?,
            None => return self.on_notification(&method, params).await,
        }
        Ok(None)
    }

    async fn on_request(&mut self, id: Value, method: &str, params: Value) -> anyhow::Result<()> {
        if !self.initialized && method != "initialize" {
            let e = error_response(id, SERVER_NOT_INITIALIZED, "send `initialize` first");
            return self.send(&e);
        }
        let reply = match method {
            "initialize" => Ok(self.initialize(params)),
            "shutdown" => {
                self.shutdown = true;
                Ok(Value::Null)
            }
            "textDocument/codeAction" => self.code_actions(params),
            "workspace/executeCommand" => match self.execute(id.clone(), params).await {
                // Answered when the session's result arrives.
                Ok(()) => return Ok(()),
                Err(e) => Err(e),
            },
            STATUS_METHOD => match &self.model {
                Model::Ready(session) => {
                    self.next_id += 1;
                    let sub_id = format!("status-{}", self.next_id);
                    let asked = session.submit(Submission {
                        id: sub_id.clone(),
                        op: Op::EngineStatus,
                    });
                    match asked {
                        // Answered when the engine's figures arrive.
                        Ok(()) => {
                            self.statuses.insert(sub_id, id);
                            return Ok(());
                        }
                        Err(_) => Ok(self.status(Value::Null)),
                    }
                }
                Model::Idle | Model::Loading { .. } => Ok(self.status(Value::Null)),
            },
            other => Err((
                METHOD_NOT_FOUND,
                format!("method `{other}` is not supported"),
            )),
        };
        let message = match reply {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => error_response(id, code, &message),
        };
        self.send(&message)?;
        if method == "initialize" {
            // The model loads while the server keeps answering; commands wait for it.
            self.start_load()?;
        }
        Ok(())
    }

    async fn on_notification(&mut self, method: &str, params: Value) -> anyhow::Result<Option<u8>> {
        match method {
            "exit" => {
                return Ok(Some(if self.shutdown {
                    exit::OK
                } else {
                    exit::NEGATIVE
                }));
            }
            "textDocument/didOpen" => {
                if let Ok(p) = serde_json::from_value::<lsp::DidOpenTextDocumentParams>(params) {
                    let doc = p.text_document;
                    self.buffers.insert(doc.uri.as_str().to_string(), doc.text);
                }
            }
            "textDocument/didChange" => {
                if let Ok(p) = serde_json::from_value::<lsp::DidChangeTextDocumentParams>(params) {
                    let uri = p.text_document.uri.as_str().to_string();
                    let text = self.buffers.entry(uri).or_default();
                    for change in p.content_changes {
                        match change.range {
                            None => *text = change.text,
                            Some(r) => apply_change(text, r, &change.text),
                        }
                    }
                }
            }
            "textDocument/didClose" => {
                if let Ok(p) = serde_json::from_value::<lsp::DidCloseTextDocumentParams>(params) {
                    self.buffers.remove(p.text_document.uri.as_str());
                }
            }
            "textDocument/didSave" if self.initialized && self.review_on_save => {
                if let Some(uri) = params.pointer("/textDocument/uri").and_then(Value::as_str) {
                    let uri = uri.to_string();
                    if let Err((_, message)) = self.start(Kind::Review, None, uri, None).await {
                        self.send(&show_message(
                            lsp::MessageType::ERROR,
                            &format!("troupe review: {message}"),
                        ))?;
                    }
                }
            }
            "$/cancelRequest" => {
                if let Some(id) = params.get("id") {
                    self.cancel(id).await?;
                }
            }
            // `initialized`, settings: nothing to do.
            _ => {}
        }
        Ok(None)
    }

    /// The client answered a request of ours: a progress token may now begin (or never will).
    fn on_response(&mut self, id: &Value, failed: bool) -> anyhow::Result<()> {
        let Some(id) = id.as_str() else {
            return Ok(());
        };
        let created =
            |p: &Progress| matches!(p, Progress::Creating { request, .. } if request == id);
        let progress = if created(&self.load_progress) {
            &mut self.load_progress
        } else {
            match self.pending.values_mut().find(|p| created(&p.progress)) {
                Some(p) => &mut p.progress,
                None => return Ok(()),
            }
        };
        let Progress::Creating { token, begin, .. } = std::mem::replace(progress, Progress::Off)
        else {
            return Ok(());
        };
        if failed {
            tracing::info!("the client refused the progress token {token}");
            return Ok(());
        }
        *progress = Progress::On(token.clone());
        self.send(&progress_message(&token, begin))
    }

    fn initialize(&mut self, params: Value) -> Value {
        self.initialized = true;
        if let Some(text) = params
            .pointer("/initializationOptions/editInstruction")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
        {
            self.edit_instruction = text.to_string();
        }
        self.review_on_save = params
            .pointer("/initializationOptions/reviewOnSave")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.work_done_progress = params
            .pointer("/capabilities/window/workDoneProgress")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let capabilities = lsp::ServerCapabilities {
            text_document_sync: Some(lsp::TextDocumentSyncCapability::Options(
                lsp::TextDocumentSyncOptions {
                    open_close: Some(true),
                    change: Some(lsp::TextDocumentSyncKind::FULL),
                    save: Some(lsp::TextDocumentSyncSaveOptions::Supported(true)),
                    ..Default::default()
                },
            )),
            code_action_provider: Some(lsp::CodeActionProviderCapability::Simple(true)),
            execute_command_provider: Some(lsp::ExecuteCommandOptions {
                commands: vec![
                    EXPLAIN_COMMAND.into(),
                    EDIT_COMMAND.into(),
                    REVIEW_COMMAND.into(),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let result = lsp::InitializeResult {
            capabilities,
            server_info: Some(lsp::ServerInfo {
                name: "troupe".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        };
        serde_json::to_value(result).unwrap_or(Value::Null)
    }

    fn code_actions(&self, params: Value) -> Result<Value, (i64, String)> {
        let p: lsp::CodeActionParams = serde_json::from_value(params)
            .map_err(|e| (INVALID_PARAMS, format!("bad codeAction parameters: {e}")))?;
        let uri = p.text_document.uri.as_str();
        let range = serde_json::to_value(p.range).unwrap_or(Value::Null);
        let action = |title: &str, command: &str, args: Value| lsp::CodeAction {
            title: title.into(),
            kind: Some(lsp::CodeActionKind::new("troupe")),
            command: Some(lsp::Command {
                title: title.into(),
                command: command.into(),
                arguments: Some(vec![args]),
            }),
            ..Default::default()
        };
        // A troupe diagnostic's suggestion becomes the instruction of an edit of its lines.
        let mut actions: Vec<lsp::CodeAction> = p
            .context
            .diagnostics
            .iter()
            .filter(|d| d.source.as_deref() == Some("troupe"))
            .filter_map(|d| {
                let suggestion = d.data.as_ref()?.get("suggestion")?.as_str()?;
                let range = serde_json::to_value(d.range).ok()?;
                let mut fix = action(
                    &format!(
                        "troupe: fix: {}",
                        d.message.split(": ").next().unwrap_or(""),
                    ),
                    EDIT_COMMAND,
                    json!({"uri": uri, "range": range, "instruction": suggestion, "apply": true}),
                );
                fix.kind = Some(lsp::CodeActionKind::QUICKFIX);
                fix.diagnostics = Some(vec![d.clone()]);
                Some(fix)
            })
            .collect();
        actions.extend([
            action(
                "troupe: explain",
                EXPLAIN_COMMAND,
                json!({"uri": uri, "range": range, "show": true}),
            ),
            action(
                "troupe: edit selection",
                EDIT_COMMAND,
                json!({"uri": uri, "range": range, "instruction": self.edit_instruction,
                       "apply": true}),
            ),
            action("troupe: review file", REVIEW_COMMAND, json!({"uri": uri})),
        ]);
        serde_json::to_value(actions).map_err(|e| (REQUEST_FAILED, e.to_string()))
    }

    /// Starts a command; its response is sent when the session's result arrives.
    async fn execute(&mut self, id: Value, params: Value) -> Result<(), (i64, String)> {
        let p: lsp::ExecuteCommandParams = serde_json::from_value(params).map_err(|e| {
            (
                INVALID_PARAMS,
                format!("bad executeCommand parameters: {e}"),
            )
        })?;
        let kind = match p.command.as_str() {
            EXPLAIN_COMMAND => Kind::Explain,
            EDIT_COMMAND => Kind::Edit,
            REVIEW_COMMAND => Kind::Review,
            other => {
                return Err((
                    INVALID_PARAMS,
                    format!(
                        "unknown command `{other}`; the commands are {EXPLAIN_COMMAND}, \
                         {EDIT_COMMAND} and {REVIEW_COMMAND}"
                    ),
                ));
            }
        };
        let usage = || {
            format!(
                "`{}` takes one argument {{\"uri\", \"range\"?, \"instruction\"?, \"apply\"?}}",
                p.command
            )
        };
        let [arg] = p.arguments.as_slice() else {
            return Err((INVALID_PARAMS, usage()));
        };
        let args: CommandArgs = serde_json::from_value(arg.clone())
            .map_err(|e| (INVALID_PARAMS, format!("{}: {e}", usage())))?;
        let token = p
            .work_done_progress_params
            .work_done_token
            .and_then(|t| serde_json::to_value(t).ok());
        let uri = args.uri.clone();
        self.start(kind, Some(id), uri, Some((args, token))).await
    }

    /// Submits a command to the session and remembers what waits for it. `args` is `None` for
    /// a review started by a save (no request, no arguments).
    async fn start(
        &mut self,
        kind: Kind,
        request: Option<Value>,
        uri: String,
        args: Option<(CommandArgs, Option<Value>)>,
    ) -> Result<(), (i64, String)> {
        let (args, token) = match args {
            Some((a, t)) => (Some(a), t),
            None => (None, None),
        };
        let path = uri_to_path(&uri)
            .ok_or_else(|| (INVALID_PARAMS, format!("`{uri}` is not a file:// URI")))?;
        let file = relative_to(&self.repo, &path).ok_or_else(|| {
            (
                INVALID_PARAMS,
                format!(
                    "{} is outside the repository {}; open a file of the repository",
                    path.display(),
                    self.repo.display()
                ),
            )
        })?;
        // A review reads the worktree (the saved file), so its positions are the disk's.
        let content = match kind {
            Kind::Review => None,
            Kind::Explain | Kind::Edit => self.buffers.get(&uri).cloned(),
        };
        let target =
            Target::load(&self.repo, &file, content).map_err(|e| (INVALID_PARAMS, e.with_fix()))?;
        let range = args
            .as_ref()
            .and_then(|a| a.range)
            .map(|r| lines_of(&r, target.line_count()));
        target
            .check_range(range)
            .map_err(|e| (INVALID_PARAMS, e.with_fix()))?;
        let op = match kind {
            Kind::Explain => Op::Explain {
                file: file.clone(),
                range,
                content: Some(target.text.clone()),
            },
            Kind::Edit => {
                let instruction = args
                    .as_ref()
                    .and_then(|a| a.instruction.clone())
                    .filter(|i| !i.trim().is_empty())
                    .unwrap_or_else(|| self.edit_instruction.clone());
                Op::Edit {
                    file: file.clone(),
                    range,
                    instruction,
                    content: Some(target.text.clone()),
                }
            }
            Kind::Review => Op::Review {
                spec: ReviewSpec {
                    base: None,
                    head: ReviewHead::Worktree,
                    paths: vec![file.clone()],
                },
            },
        };
        self.next_id += 1;
        let sub_id = format!("lsp-{}", self.next_id);
        let begin = json!({"kind": "begin", "title": kind.title(), "cancellable": true,
            "message": file});
        let progress = self
            .new_progress(token, begin)
            .map_err(|e| (REQUEST_FAILED, e.to_string()))?;
        self.pending.insert(
            sub_id.clone(),
            Pending {
                kind,
                request,
                uri,
                file,
                base: target.text,
                act: args.is_some_and(|a| a.apply),
                progress,
                streaming: false,
            },
        );
        if let Err(message) = self.submit(Submission {
            id: sub_id.clone(),
            op,
        }) {
            if let Some(p) = self.pending.remove(&sub_id) {
                let _ = self.end_progress(&p, "failed");
            }
            return Err((REQUEST_FAILED, message));
        }
        Ok(())
    }

    /// `$/cancelRequest`: stops the command that answers request `id` and answers it with
    /// RequestCancelled, at once, also while the model loads. A request already answered is
    /// left alone.
    async fn cancel(&mut self, id: &Value) -> anyhow::Result<()> {
        let Some(sub_id) = self
            .pending
            .iter()
            .find(|(_, p)| p.request.as_ref() == Some(id))
            .map(|(k, _)| k.clone())
        else {
            return Ok(());
        };
        let Some(p) = self.pending.remove(&sub_id) else {
            return Ok(());
        };
        self.withdraw(&sub_id);
        self.end_progress(&p, "cancelled")?;
        self.send(&error_response(
            id.clone(),
            REQUEST_CANCELLED,
            "the request was cancelled",
        ))
    }

    /// Takes back a submission: out of the queue while the model loads, else `Op::Cancel`
    /// (its model requests stop and free their sequences).
    fn withdraw(&mut self, sub_id: &str) {
        match &mut self.model {
            Model::Idle => {}
            Model::Loading { queue, .. } => queue.retain(|s| s.id != sub_id),
            Model::Ready(session) => {
                let _ = session.submit(Submission {
                    id: format!("cancel-{sub_id}"),
                    op: Op::Cancel {
                        id: sub_id.to_string(),
                    },
                });
            }
        }
    }

    /// A progress for a new piece of work: the client's own token (begun at once), a token
    /// the server asks the client to create (begun once it answers), or none.
    fn new_progress(&mut self, given: Option<Value>, begin: Value) -> anyhow::Result<Progress> {
        if let Some(token) = given {
            self.send(&progress_message(&token, begin))?;
            return Ok(Progress::On(token));
        }
        if !self.work_done_progress {
            return Ok(Progress::Off);
        }
        self.next_id += 1;
        let token = json!(format!("troupe-progress-{}", self.next_id));
        let request = format!("troupe-{}", self.next_id);
        self.send(&json!({"jsonrpc": "2.0", "id": request,
            "method": "window/workDoneProgress/create", "params": {"token": token}}))?;
        Ok(Progress::Creating {
            token,
            request,
            deadline: Instant::now() + self.create_timeout,
            begin,
        })
    }

    /// When the next unanswered progress creation is overdue.
    fn next_create_deadline(&self) -> Option<Instant> {
        std::iter::once(&self.load_progress)
            .chain(self.pending.values().map(|p| &p.progress))
            .filter_map(Progress::deadline)
            .min()
    }

    /// Gives up the progress of every creation the client left unanswered past its deadline.
    fn expire_creations(&mut self) {
        let now = Instant::now();
        let progresses = std::iter::once(&mut self.load_progress)
            .chain(self.pending.values_mut().map(|p| &mut p.progress));
        for progress in progresses {
            if progress.deadline().is_some_and(|d| d <= now) {
                tracing::info!(
                    "no answer to window/workDoneProgress/create within {:?}; no progress shown",
                    self.create_timeout
                );
                *progress = Progress::Off;
            }
        }
    }

    /// Ends a command's progress, if it shows one.
    fn end_progress(&mut self, p: &Pending, message: &str) -> anyhow::Result<()> {
        match &p.progress {
            Progress::On(token) => self.send(&progress_message(
                token,
                json!({"kind": "end", "message": message}),
            )),
            Progress::Off | Progress::Creating { .. } => Ok(()),
        }
    }

    /// Reports a running command's progress, if it shows one.
    fn report(&mut self, sub_id: &str, msg: &EventMsg) -> anyhow::Result<()> {
        let Some(p) = self.pending.get_mut(sub_id) else {
            return Ok(());
        };
        let Progress::On(token) = p.progress.clone() else {
            return Ok(());
        };
        let value = match msg {
            EventMsg::AgentMessageDelta { .. } if !p.streaming => {
                p.streaming = true;
                json!({"kind": "report", "message": "writing"})
            }
            EventMsg::ReviewStarted { requests, .. } => {
                json!({"kind": "report", "message": format!("{requests} model requests"),
                       "percentage": 0})
            }
            EventMsg::ReviewProgress { done, total } => {
                let percentage = (*done * 100).checked_div(*total).unwrap_or(100);
                json!({"kind": "report", "message": format!("{done}/{total} requests"),
                       "percentage": percentage})
            }
            _ => return Ok(()),
        };
        self.send(&progress_message(&token, value))
    }

    /// The model as configured (a catalog name or a path), for messages.
    fn model_name(&self) -> String {
        self.options.config.model.chat.clone()
    }

    /// Starts loading the model in the background, unless it is loading or loaded.
    fn start_load(&mut self) -> anyhow::Result<()> {
        if !matches!(self.model, Model::Idle) {
            return Ok(());
        }
        let model = self.model_name();
        tracing::info!("loading the model {model}");
        let load = tokio::spawn((self.starter)(self.options.clone()));
        self.model = Model::Loading {
            load,
            queue: Vec::new(),
            since: Instant::now(),
        };
        let begin = json!({"kind": "begin", "title": "troupe: loading the model",
            "cancellable": false, "message": model});
        self.load_progress = self.new_progress(None, begin)?;
        Ok(())
    }

    /// Sends a submission to the session: queued while the model loads (a load starts if
    /// none runs). `Err` with the reason when the session cannot take it.
    fn submit(&mut self, submission: Submission) -> Result<(), String> {
        if matches!(self.model, Model::Idle) {
            self.start_load().map_err(|e| e.to_string())?;
        }
        match &mut self.model {
            Model::Ready(session) => session.submit(submission).map_err(|e| e.to_string()),
            Model::Loading { queue, .. } => {
                queue.push(submission);
                Ok(())
            }
            Model::Idle => Err("the session did not start".into()),
        }
    }

    /// The load ended: the queued submissions go to the session, or fail with the reason
    /// (shown to the user too).
    fn on_loaded(&mut self, result: Result<Session, String>) -> anyhow::Result<()> {
        let Model::Loading { queue, since, .. } = std::mem::replace(&mut self.model, Model::Idle)
        else {
            return Ok(());
        };
        let model = self.model_name();
        let progress = std::mem::replace(&mut self.load_progress, Progress::Off);
        let end = |message: &str| match &progress {
            Progress::On(token) => Some(progress_message(
                token,
                json!({"kind": "end", "message": message}),
            )),
            Progress::Off | Progress::Creating { .. } => None,
        };
        match result {
            Ok(session) => {
                let secs = since.elapsed().as_secs_f64();
                tracing::info!("loaded the model {model} in {secs:.1} s");
                if let Some(end) = end("loaded") {
                    self.send(&end)?;
                }
                self.send(&log_message(
                    lsp::MessageType::INFO,
                    &format!("troupe: loaded the model {model} in {secs:.1} s"),
                ))?;
                let mut failed = Vec::new();
                for submission in queue {
                    let id = submission.id.clone();
                    if let Err(e) = session.submit(submission) {
                        failed.push((id, e.to_string()));
                    }
                }
                self.model = Model::Ready(session);
                for (id, message) in failed {
                    self.fail(&id, &message)?;
                }
            }
            Err(reason) => {
                tracing::error!("cannot load the model {model}: {reason}");
                if let Some(end) = end("failed") {
                    self.send(&end)?;
                }
                let message = format!("troupe cannot load the model {model}: {reason}");
                self.send(&show_message(lsp::MessageType::ERROR, &message))?;
                for submission in queue {
                    self.fail(&submission.id, &message)?;
                }
            }
        }
        Ok(())
    }

    /// Answers whatever waits for submission `sub_id` with an error.
    fn fail(&mut self, sub_id: &str, message: &str) -> anyhow::Result<()> {
        if let Some((id, reply)) = self.remote.remove(sub_id) {
            let msg = EventMsg::Error {
                message: message.to_string(),
                fix: None,
            };
            let _ = reply.send(Event {
                id,
                agent: None,
                msg,
            });
        }
        if let Some(request) = self.statuses.remove(sub_id) {
            let status = self.status(Value::Null);
            self.send(&json!({"jsonrpc": "2.0", "id": request, "result": status}))?;
        }
        if let Some(p) = self.pending.remove(sub_id) {
            self.end_progress(&p, "failed")?;
            match p.request {
                Some(request) => self.send(&error_response(request, REQUEST_FAILED, message))?,
                None => self.send(&show_message(
                    lsp::MessageType::ERROR,
                    &format!("{}: {message}", p.kind.title()),
                ))?,
            }
        }
        Ok(())
    }

    /// The answer to `troupe/status`, with the engine's figures when the model runs.
    fn status(&self, engine: Value) -> Value {
        let model = match self.model {
            Model::Idle => "idle",
            Model::Loading { .. } => "loading",
            Model::Ready(_) => "ready",
        };
        json!({
            "model": model,
            "commands": self.pending.len(),
            "remote_requests": self.remote.len(),
            "remote_cancelled": self.remote_cancelled,
            "engine": engine,
        })
    }

    /// A one-shot command's request over the socket: run on this session, events sent back.
    /// When its client disconnects, `gone` hears of it and the request is cancelled.
    #[cfg(unix)]
    fn on_remote(
        &mut self,
        r: super::instance::Request,
        gone: &mpsc::UnboundedSender<String>,
    ) -> anyhow::Result<()> {
        let super::instance::Request { submission, reply } = r;
        self.next_id += 1;
        let sub_id = format!("socket-{}", self.next_id);
        let (watch, gone, watched) = (reply.clone(), gone.clone(), sub_id.clone());
        tokio::spawn(async move {
            watch.closed().await;
            let _ = gone.send(watched);
        });
        self.remote
            .insert(sub_id.clone(), (submission.id.clone(), reply));
        if let Err(message) = self.submit(Submission {
            id: sub_id.clone(),
            op: submission.op,
        }) {
            self.fail(&sub_id, &message)?;
        }
        Ok(())
    }

    /// The client of request `sub_id` over the socket disconnected: stop generating for it.
    #[cfg(unix)]
    fn on_gone(&mut self, sub_id: &str) {
        if self.remote.remove(sub_id).is_none() {
            return;
        }
        tracing::info!("the client of {sub_id} disconnected; cancelling its request");
        self.remote_cancelled += 1;
        self.withdraw(sub_id);
    }

    fn on_event(&mut self, event: Event) -> anyhow::Result<()> {
        if let Some(request) = self.statuses.remove(&event.id) {
            let engine = match &event.msg {
                EventMsg::EngineMetrics {
                    active_sequences,
                    cached_prompt_tokens,
                    kv_used,
                    kv_total,
                    ..
                } => json!({
                    "active_sequences": active_sequences,
                    "cached_prompt_tokens": cached_prompt_tokens,
                    "kv_used": kv_used,
                    "kv_total": kv_total,
                }),
                _ => Value::Null,
            };
            let status = self.status(engine);
            return self.send(&json!({"jsonrpc": "2.0", "id": request, "result": status}));
        }
        if let Some((id, reply)) = self.remote.get(&event.id) {
            let last = super::instance::is_final(&event.msg);
            let _ = reply.send(Event {
                id: id.clone(),
                ..event.clone()
            });
            if last {
                self.remote.remove(&event.id);
            }
            return Ok(());
        }
        if !super::instance::is_final(&event.msg) {
            return self.report(&event.id, &event.msg);
        }
        let Some(p) = self.pending.remove(&event.id) else {
            return Ok(());
        };
        self.end_progress(&p, "done")?;
        let result = match event.msg {
            EventMsg::ExplainComplete {
                explanation,
                citations,
                ..
            } => {
                if p.act {
                    self.send(&json!({"jsonrpc": "2.0", "method": "window/showMessage",
                        "params": {"type": 3, "message": explanation}}))?;
                }
                json!({"explanation": explanation, "citations": citations})
            }
            EventMsg::EditComplete { proposal } => {
                let edit = workspace_edit(&p.uri, &p.base, &proposal);
                if p.act && !proposal.diff.is_empty() {
                    self.next_id += 1;
                    self.send(
                        &json!({"jsonrpc": "2.0", "id": format!("troupe-{}", self.next_id),
                        "method": "workspace/applyEdit",
                        "params": {"label": "troupe: edit", "edit": edit}}),
                    )?;
                }
                json!({
                    "diff": proposal.diff,
                    "edit": edit,
                    "lines_added": proposal.lines_added,
                    "lines_removed": proposal.lines_removed,
                })
            }
            EventMsg::ReviewComplete { report } => {
                let diagnostics = diagnostics(&p.base, &p.file, &report.findings);
                self.send(
                    &json!({"jsonrpc": "2.0", "method": "textDocument/publishDiagnostics",
                    "params": {"uri": p.uri, "diagnostics": diagnostics}}),
                )?;
                json!({"findings": diagnostics.len(), "diagnostics": diagnostics})
            }
            EventMsg::Error { message, fix } => {
                let message = match fix {
                    Some(fix) => format!("{message}; {fix}"),
                    None => message,
                };
                return match p.request {
                    Some(request) => self.send(&error_response(request, REQUEST_FAILED, &message)),
                    None => self.send(&json!({"jsonrpc": "2.0", "method": "window/showMessage",
                        "params": {"type": 1, "message": format!("{}: {message}", p.kind.title())}})),
                };
            }
            _ => return Ok(()),
        };
        match p.request {
            Some(request) => self.send(&json!({"jsonrpc": "2.0", "id": request, "result": result})),
            None => Ok(()),
        }
    }

    fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        write_frame(&mut self.out, message).context("writing to the client (stdout)")
    }

    /// Stops the session: a load is abandoned (nothing waits for it), a running session shuts
    /// down (bounded).
    async fn stop_session(&mut self) {
        let mut session = match std::mem::replace(&mut self.model, Model::Idle) {
            Model::Idle => return,
            Model::Loading { load, .. } => {
                load.abort();
                return;
            }
            Model::Ready(session) => session,
        };
        let _ = session.submit(Submission {
            id: "shutdown".into(),
            op: Op::Shutdown,
        });
        let drain = async {
            while let Some(e) = session.next_event().await {
                if matches!(e.msg, EventMsg::ShutdownComplete) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
}

/// Starts the session, loading the model; the error says what failed and the fix.
async fn load(options: SessionOptions) -> Result<Session, String> {
    Session::start(options)
        .await
        .map_err(|e| match crate::agents::session::error_event(&e) {
            EventMsg::Error { fix: Some(fix), .. } => format!("{e}; {fix}"),
            _ => e.to_string(),
        })
}

async fn next_model_input(model: &mut Model) -> ModelInput {
    match model {
        Model::Idle => std::future::pending().await,
        Model::Loading { load, .. } => ModelInput::Loaded(match load.await {
            Ok(result) => result,
            Err(e) => Err(format!("loading the model stopped: {e}")),
        }),
        Model::Ready(session) => ModelInput::Event(session.next_event().await),
    }
}

fn show_message(kind: lsp::MessageType, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "window/showMessage",
        "params": {"type": kind, "message": message}})
}

fn log_message(kind: lsp::MessageType, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "window/logMessage",
        "params": {"type": kind, "message": message}})
}

fn progress_message(token: &Value, value: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": "$/progress", "params": {"token": token, "value": value}})
}

/// The diagnostics of a review's findings on `file`, positioned in `text` (the reviewed side):
/// whole lines, clamped to the file.
fn diagnostics(text: &str, file: &str, findings: &[Finding]) -> Vec<Value> {
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.len().saturating_sub(1) as u32;
    findings
        .iter()
        .filter(|f| f.file == file)
        .map(|f| {
            let start = f.start_line.saturating_sub(1).min(last);
            let end = f.end_line.saturating_sub(1).clamp(start, last);
            let end_char = lines
                .get(end as usize)
                .map_or(0, |l| l.encode_utf16().count() as u32);
            let severity = match f.severity {
                Severity::High => lsp::DiagnosticSeverity::ERROR,
                Severity::Medium => lsp::DiagnosticSeverity::WARNING,
                Severity::Low => lsp::DiagnosticSeverity::INFORMATION,
                Severity::Info => lsp::DiagnosticSeverity::HINT,
            };
            let d = lsp::Diagnostic {
                range: lsp::Range::new(
                    lsp::Position::new(start, 0),
                    lsp::Position::new(end, end_char),
                ),
                severity: Some(severity),
                code: Some(lsp::NumberOrString::String(f.category.clone())),
                source: Some("troupe".into()),
                message: format!("{}: {}", f.title, f.explanation),
                data: f
                    .suggestion
                    .as_ref()
                    .map(|s| json!({"suggestion": s, "confidence": f.confidence})),
                ..Default::default()
            };
            serde_json::to_value(d).unwrap_or(Value::Null)
        })
        .collect()
}

fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The 1-based inclusive lines an LSP range touches (a range ending at the start of a line
/// does not take that line), within `total` lines.
fn lines_of(r: &lsp::Range, total: u32) -> (u32, u32) {
    let start = r.start.line + 1;
    let mut end = r.end.line + 1;
    if r.end.character == 0 && r.end.line > r.start.line {
        end -= 1;
    }
    // Editors put the end of a selection of the last line one past it.
    let end = end.max(start).min(total.max(start));
    (start, end)
}

/// A WorkspaceEdit replacing exactly the changed lines of `base` (the lines before and after
/// the selection are the same in both texts, so only the middle differs).
fn workspace_edit(uri: &str, base: &str, p: &EditProposal) -> Value {
    let before: usize = base
        .split_inclusive('\n')
        .take(p.start_line.saturating_sub(1) as usize)
        .map(str::len)
        .sum();
    let selected: usize = base
        .split_inclusive('\n')
        .skip(p.start_line.saturating_sub(1) as usize)
        .take((p.end_line + 1).saturating_sub(p.start_line) as usize)
        .map(str::len)
        .sum();
    let range = lsp::Range {
        start: position_of(base, before),
        end: position_of(base, before + selected),
    };
    json!({"changes": {uri: [{"range": range, "newText": p.replacement}]}})
}

/// The LSP position (line, UTF-16 column) of byte `offset` of `text`.
fn position_of(text: &str, offset: usize) -> lsp::Position {
    let offset = offset.min(text.len());
    let head = &text[..offset];
    let line = head.matches('\n').count() as u32;
    let line_start = head.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let character = head[line_start..].encode_utf16().count() as u32;
    lsp::Position { line, character }
}

/// The byte offset of an LSP position in `text` (clamped to the text).
fn offset_of(text: &str, pos: lsp::Position) -> usize {
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i as u32 == pos.line {
            let mut units = 0;
            for (b, ch) in line.char_indices() {
                if units >= pos.character || ch == '\n' {
                    return offset + b;
                }
                units += ch.len_utf16() as u32;
            }
            return offset + line.trim_end_matches('\n').len();
        }
        offset += line.len();
    }
    text.len()
}

/// Applies an incremental change to a buffer.
fn apply_change(text: &mut String, range: lsp::Range, new: &str) {
    let a = offset_of(text, range.start);
    let b = offset_of(text, range.end).max(a);
    text.replace_range(a..b, new);
}

/// The path of a `file://` URI (percent-decoded).
fn uri_to_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    // `file:///path` (empty host) or `file://localhost/path`.
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Some(PathBuf::from(String::from_utf8(out).ok()?))
}

/// `path` relative to `repo` (either may be reached through symlinks).
fn relative_to(repo: &Path, path: &Path) -> Option<String> {
    if let Ok(rel) = path.strip_prefix(repo) {
        return Some(rel.to_string_lossy().into_owned());
    }
    let repo = repo.canonicalize().ok()?;
    let path = path
        .canonicalize()
        .ok()
        .or_else(|| Some(path.parent()?.canonicalize().ok()?.join(path.file_name()?)))?;
    path.strip_prefix(&repo)
        .ok()
        .map(|rel| rel.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    fn pos(line: u32, character: u32) -> lsp::Position {
        lsp::Position { line, character }
    }

    /// What the server writes, kept for the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A server on a temporary repository whose model load is `starter`, fed by the test.
    struct Harness {
        tx: mpsc::UnboundedSender<Incoming>,
        out: Captured,
        server: tokio::task::JoinHandle<anyhow::Result<u8>>,
        uri: String,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        fn start(starter: Starter) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a.py"), "x = 1\ny = 2\n").unwrap();
            let uri = format!("file://{}/a.py", dir.path().display());
            let mut config = crate::config::Config::default();
            config.model.chat = "/models/m.gguf".into();
            let options = SessionOptions::new(dir.path(), config);
            let out = Captured::default();
            let mut server = Server::new(dir.path().to_path_buf(), options, Box::new(out.clone()));
            server.starter = starter;
            server.create_timeout = Duration::from_millis(200);
            let (tx, rx) = mpsc::unbounded_channel();
            let server = tokio::spawn(server.serve(rx));
            Harness {
                tx,
                out,
                server,
                uri,
                _dir: dir,
            }
        }

        fn send(&self, message: Value) {
            self.tx.send(Incoming::Message(message)).unwrap();
        }

        fn explain(&self, id: u64) {
            self.send(
                json!({"jsonrpc": "2.0", "id": id, "method": "workspace/executeCommand",
                "params": {"command": "troupe.explain", "arguments": [{"uri": self.uri}]}}),
            );
        }

        fn messages(&self) -> Vec<Value> {
            let bytes = self.out.0.lock().unwrap().clone();
            let mut r = &bytes[..];
            let mut all = Vec::new();
            while let Some(Ok(body)) = read_frame(&mut r).unwrap() {
                all.push(serde_json::from_slice(&body).unwrap());
            }
            all
        }

        /// Every message so far, once one `done` accepts has come (within 10 s).
        async fn until(&self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let all = self.messages();
                if all.iter().any(&done) {
                    return all;
                }
                assert!(Instant::now() < deadline, "not sent: {all:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn exit_code(self) -> u8 {
            self.send(json!({"jsonrpc": "2.0", "method": "exit"}));
            tokio::time::timeout(Duration::from_secs(10), self.server)
                .await
                .expect("the server exits at once")
                .unwrap()
                .unwrap()
        }
    }

    fn answers(m: &Value, id: u64) -> bool {
        m.get("method").is_none() && m["id"] == id
    }

    /// A load that never ends, counting its starts.
    fn endless(starts: Arc<AtomicUsize>) -> Starter {
        Box::new(move |_| {
            starts.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        })
    }

    fn initialize(progress: bool) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "capabilities": {"window": {"workDoneProgress": progress}}}})
    }

    #[tokio::test]
    async fn requests_are_answered_and_commands_cancelled_while_the_model_loads() {
        let starts = Arc::new(AtomicUsize::new(0));
        let h = Harness::start(endless(starts.clone()));
        h.send(initialize(false));
        h.explain(2);
        h.send(
            json!({"jsonrpc": "2.0", "id": 3, "method": "textDocument/codeAction",
            "params": {"textDocument": {"uri": h.uri}, "context": {"diagnostics": []},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}}}),
        );
        h.send(json!({"jsonrpc": "2.0", "id": 4, "method": STATUS_METHOD}));
        let seen = h.until(|m| answers(m, 4)).await;
        let actions = seen.iter().find(|m| answers(m, 3)).unwrap();
        assert_eq!(actions["result"].as_array().unwrap().len(), 3, "{seen:?}");
        let status = &seen.iter().find(|m| answers(m, 4)).unwrap()["result"];
        assert_eq!(status["model"], "loading");
        assert_eq!(status["commands"], 1);
        assert!(!seen.iter().any(|m| answers(m, 2)), "{seen:?}");

        h.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}}));
        h.send(json!({"jsonrpc": "2.0", "id": 5, "method": "shutdown"}));
        let seen = h.until(|m| answers(m, 5)).await;
        let cancelled = seen.iter().find(|m| answers(m, 2)).unwrap();
        assert_eq!(cancelled["error"]["code"], REQUEST_CANCELLED);
        assert_eq!(h.exit_code().await, exit::OK);
        assert_eq!(
            starts.load(Ordering::SeqCst),
            1,
            "one load, started by initialize"
        );
    }

    #[tokio::test]
    async fn a_failed_load_is_shown_and_fails_what_waits_for_it() {
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some(gate)));
        let h = Harness::start(Box::new(move |_| {
            let gate = gate.lock().unwrap().take();
            Box::pin(async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Err("model file /models/m.gguf does not exist; run `troupe models pull`".into())
            })
        }));
        h.send(initialize(false));
        h.explain(2);
        h.send(json!({"jsonrpc": "2.0", "id": 3, "method": STATUS_METHOD}));
        let seen = h.until(|m| answers(m, 3)).await;
        assert!(!seen.iter().any(|m| answers(m, 2)), "waits for the load");
        open.send(()).unwrap();
        let seen = h.until(|m| answers(m, 2)).await;
        let shown = seen
            .iter()
            .position(|m| m["method"] == "window/showMessage")
            .unwrap_or_else(|| panic!("{seen:?}"));
        assert_eq!(seen[shown]["params"]["type"], 1);
        let text = seen[shown]["params"]["message"].as_str().unwrap();
        assert!(
            text.starts_with("troupe cannot load the model /models/m.gguf: ")
                && text.contains("troupe models pull"),
            "{text}"
        );
        let failed = seen.iter().position(|m| answers(m, 2)).unwrap();
        assert!(shown < failed);
        assert_eq!(seen[failed]["error"]["code"], REQUEST_FAILED);
        assert_eq!(seen[failed]["error"]["message"], text);

        // The next command loads again (and fails again); the server keeps serving.
        h.explain(4);
        let seen = h.until(|m| answers(m, 4)).await;
        let again = seen.iter().find(|m| answers(m, 4)).unwrap();
        assert_eq!(again["error"]["code"], REQUEST_FAILED);
        h.send(json!({"jsonrpc": "2.0", "id": 5, "method": STATUS_METHOD}));
        let seen = h.until(|m| answers(m, 5)).await;
        assert_eq!(seen.last().unwrap()["result"]["model"], "idle");
        h.send(json!({"jsonrpc": "2.0", "id": 6, "method": "shutdown"}));
        h.until(|m| answers(m, 6)).await;
        assert_eq!(h.exit_code().await, exit::OK);
    }

    #[tokio::test]
    async fn progress_begins_only_once_the_client_created_its_token_in_time() {
        let h = Harness::start(endless(Arc::default()));
        h.send(initialize(true));
        let creating = |m: &Value| m["method"] == "window/workDoneProgress/create";
        let seen = h.until(creating).await;
        let load = seen.iter().find(|m| creating(m)).unwrap().clone();
        h.explain(2);
        let seen = h.until(|m| creating(m) && m["id"] != load["id"]).await;
        let command = seen.iter().rfind(|m| creating(m)).unwrap().clone();
        assert!(
            !seen.iter().any(|m| m["method"] == "$/progress"),
            "{seen:?}"
        );

        // The command's token is created in time: its progress begins.
        h.send(json!({"jsonrpc": "2.0", "id": command["id"], "result": null}));
        let token = command["params"]["token"].clone();
        let begun = |m: &Value| m["method"] == "$/progress" && m["params"]["token"] == token;
        let seen = h.until(begun).await;
        let begin = &seen.iter().find(|m| begun(m)).unwrap()["params"]["value"];
        assert_eq!(begin["kind"], "begin");
        assert_eq!(begin["title"], "troupe: explain");

        // The load's token is answered after the timeout: its progress never begins.
        tokio::time::sleep(Duration::from_millis(400)).await;
        h.send(json!({"jsonrpc": "2.0", "id": load["id"], "result": null}));
        h.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}}));
        let seen = h.until(|m| answers(m, 2)).await;
        let load_token = &load["params"]["token"];
        assert!(
            !seen
                .iter()
                .any(|m| m["params"]["token"] == *load_token && m["method"] == "$/progress"),
            "{seen:?}"
        );
        let ends: Vec<&Value> = seen.iter().filter(|m| begun(m)).collect();
        assert_eq!(ends.len(), 2, "begin and end: {seen:?}");
        assert_eq!(ends[1]["params"]["value"]["kind"], "end");
        assert_eq!(h.exit_code().await, exit::NEGATIVE, "exit without shutdown");
    }

    #[test]
    fn frames_are_read_and_bad_ones_reported_without_ending_the_stream() {
        let input =
            b"Content-Length: 2\r\n\r\n{}Content-Length: x\r\n\r\nContent-Length: 3\r\n\r\n[1]";
        let mut r = &input[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap().unwrap(), b"{}");
        assert!(read_frame(&mut r).unwrap().unwrap().is_err());
        assert_eq!(read_frame(&mut r).unwrap().unwrap().unwrap(), b"[1]");
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn positions_count_utf16_units_and_round_trip() {
        let text = "aé😀b\nxy\n";
        assert_eq!(position_of(text, text.find('b').unwrap()), pos(0, 4));
        assert_eq!(offset_of(text, pos(0, 4)), text.find('b').unwrap());
        assert_eq!(offset_of(text, pos(1, 1)), text.find('y').unwrap());
        assert_eq!(offset_of(text, pos(9, 0)), text.len());
        let mut buf = "hello\nworld\n".to_string();
        apply_change(&mut buf, lsp::Range::new(pos(1, 0), pos(1, 5)), "there");
        assert_eq!(buf, "hello\nthere\n");
    }

    #[test]
    fn selections_become_whole_line_ranges() {
        let r = |a: (u32, u32), b: (u32, u32)| lsp::Range::new(pos(a.0, a.1), pos(b.0, b.1));
        assert_eq!(lines_of(&r((2, 3), (4, 1)), 10), (3, 5));
        assert_eq!(lines_of(&r((2, 0), (4, 0)), 10), (3, 4));
        assert_eq!(lines_of(&r((9, 0), (10, 0)), 10), (10, 10));
        assert_eq!(lines_of(&r((3, 0), (3, 0)), 10), (4, 4));
    }

    #[test]
    fn file_uris_decode_to_paths() {
        assert_eq!(
            uri_to_path("file:///tmp/a%20b/c.rs").unwrap(),
            PathBuf::from("/tmp/a b/c.rs")
        );
        assert!(uri_to_path("untitled:1").is_none());
    }

    #[test]
    fn workspace_edits_replace_only_the_selected_lines() {
        let base = "a\nb\nc\n";
        let p = EditProposal {
            path: "x".into(),
            start_line: 2,
            end_line: 2,
            diff: String::new(),
            new_text: "a\nB\nc\n".into(),
            replacement: "B\n".into(),
            lines_added: 1,
            lines_removed: 1,
            stats: Default::default(),
        };
        let e = workspace_edit("file:///x", base, &p);
        let edit = &e["changes"]["file:///x"][0];
        assert_eq!(edit["range"]["start"], json!({"line": 1, "character": 0}));
        assert_eq!(edit["range"]["end"], json!({"line": 2, "character": 0}));
        assert_eq!(edit["newText"], "B\n");
    }

    #[test]
    fn findings_become_diagnostics_on_whole_lines_clamped_to_the_file() {
        let finding = |file: &str, start: u32, end: u32, severity| Finding {
            file: file.into(),
            start_line: start,
            end_line: end,
            severity,
            category: "bug".into(),
            title: "Wrong sign".into(),
            explanation: "It subtracts.".into(),
            suggestion: Some("Add instead.".into()),
            confidence: 0.9,
        };
        let text = "a\nbé\nc\n";
        let findings = [
            finding("x.py", 2, 2, Severity::High),
            finding("x.py", 3, 9, Severity::Info),
            finding("other.py", 1, 1, Severity::Low),
        ];
        let d = diagnostics(text, "x.py", &findings);
        assert_eq!(d.len(), 2, "only the file's findings: {d:?}");
        assert_eq!(
            d[0]["range"],
            json!({"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 2}})
        );
        assert_eq!(d[0]["severity"], 1);
        assert_eq!(d[0]["source"], "troupe");
        assert_eq!(d[0]["code"], "bug");
        assert_eq!(d[0]["data"]["suggestion"], "Add instead.");
        assert_eq!(d[1]["range"]["end"], json!({"line": 2, "character": 1}));
        assert_eq!(d[1]["severity"], 4);
    }
}
