//! The facade every front end (terminal UI, headless, editor) shares: [`Session::submit`] takes
//! a [`Submission`], [`Session::next_event`] yields [`Event`]s. Behind it a tokio task owns the
//! running tasks: each task runs as its own tokio task on the shared engine, so several tasks
//! (and, within a task, the reviewer and tester) are served concurrently in one batch.
//!
//! The event stream starts with `SessionConfigured` and ends with `ShutdownComplete` (after a
//! `Shutdown` op, or once the session handle is dropped); nothing follows it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::orchestrator::{Approvals, Cancel, Emitter, Limits, TaskEnv, TaskStart, run_task};
use super::review::{self, ModelIdentity};
use super::roles::Roles;
use super::search::{CodeSearch, IndexedSearch};
use super::searcher::{SearchRequest, SearchService};
use super::{Error, Result, store};
use super::{ask, complete, explain, rewrite};
use crate::config::{BackendKind, Config};
use crate::engine::{Backend, Engine, EngineOptions};
use crate::protocol::{Event, EventMsg, Op, SearchMode, Submission};

/// How to start a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The repository's root.
    pub repo: PathBuf,
    /// The effective configuration.
    pub config: Config,
    /// Where user overrides of roles, prompts and grammars live (`None`: built-ins only).
    pub config_dir: Option<PathBuf>,
}

impl SessionOptions {
    /// Options for `repo` with `config`, reading overrides from the user's config directory.
    pub fn new(repo: impl Into<PathBuf>, config: Config) -> Self {
        Self {
            repo: repo.into(),
            config,
            config_dir: Some(crate::paths::config_dir()),
        }
    }

    fn limits(&self) -> Limits {
        let a = &self.config.agents;
        Limits {
            max_tokens: a.max_tokens,
            max_steps: a.max_steps,
            time_budget: (a.time_budget_secs > 0).then(|| Duration::from_secs(a.time_budget_secs)),
            ctx_tokens: self.config.engine.ctx_per_seq,
        }
    }
}

/// Tokens of a one-shot answer at most.
const ASK_MAX_TOKENS: u32 = 768;
/// Tokens of a proposed edit at most (a rewrite may be as long as the selection).
const EDIT_MAX_TOKENS: u32 = 2048;

/// A running session: submit ops, read events.
pub struct Session {
    tx: mpsc::UnboundedSender<Submission>,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Loads the roles, resolves and loads the chat model (or connects to the configured
    /// OpenAI-compatible server) and starts the session. Must run inside a tokio runtime.
    pub async fn start(options: SessionOptions) -> Result<Session> {
        let roles = Roles::load(options.config_dir.as_deref())?;
        let engine_cfg = &options.config.engine;
        let (backend, model): (Arc<dyn Backend>, ModelIdentity) = match engine_cfg.backend {
            BackendKind::Embedded => {
                let resolved = crate::models::Store::default()
                    .resolve(&options.config.model.chat, crate::models::Role::Chat)?;
                let mut eo = EngineOptions::new(&resolved.path);
                eo.n_parallel = engine_cfg.parallel.max(1) as usize;
                eo.cached_sequences = Some(engine_cfg.cached_sequences as usize);
                eo.ctx_per_seq = engine_cfg.ctx_per_seq;
                eo.step_tokens = engine_cfg.step_tokens;
                eo.n_threads = (engine_cfg.threads > 0).then_some(engine_cfg.threads as i32);
                eo.prefix_cache = engine_cfg.prefix_cache;
                eo.kv_type = engine_cfg.kv_type;
                eo.flash_attention = engine_cfg.flash_attention.forced();
                let engine = tokio::task::spawn_blocking(move || Engine::start(eo))
                    .await
                    .map_err(|e| Error::Invariant(format!("engine start panicked: {e}")))??;
                let identity = ModelIdentity {
                    name: resolved
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    sha256: resolved.entry.map(|e| e.sha256.to_string()),
                    path: Some(resolved.path.clone()),
                };
                (Arc::new(engine), identity)
            }
            BackendKind::Openai => {
                let mut b = crate::engine::openai::OpenAiBackend::new(
                    engine_cfg.endpoint.clone(),
                    options.config.model.chat.clone(),
                );
                if !engine_cfg.api_key_env.is_empty()
                    && let Ok(key) = std::env::var(&engine_cfg.api_key_env)
                {
                    b = b.with_api_key(key);
                }
                let identity = ModelIdentity {
                    name: format!("{} at {}", options.config.model.chat, engine_cfg.endpoint),
                    sha256: None,
                    path: None,
                };
                (Arc::new(b), identity)
            }
        };
        Ok(Self::with_model(backend, model, roles, options))
    }

    /// A session over an existing back end (tests, benchmarks, a shared engine).
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        model: String,
        roles: Roles,
        options: SessionOptions,
    ) -> Session {
        let identity = ModelIdentity {
            name: model,
            ..ModelIdentity::default()
        };
        Self::with_model(backend, identity, roles, options)
    }

    /// A session over an existing back end whose model file is known (for review provenance).
    pub fn with_model(
        backend: Arc<dyn Backend>,
        model: ModelIdentity,
        roles: Roles,
        options: SessionOptions,
    ) -> Session {
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let env = TaskEnv {
            backend,
            roles: Arc::new(roles),
            repo_root: options.repo.clone(),
            config: options.config.agents.clone(),
            limits: options.limits(),
            search: Arc::new(IndexedSearch::new(
                &options.repo,
                crate::retrieve::Params::from_config(&options.config.retrieve),
            )) as Arc<dyn CodeSearch>,
        };
        // Excerpts for one-shot questions: the configured budget, within one sequence's context
        // after the answer and the prompt's own text.
        let ctx = options.config.engine.ctx_per_seq as usize;
        let ask_budget = (options.config.retrieve.context_tokens as usize)
            .min(ctx.saturating_sub(ASK_MAX_TOKENS as usize + 256))
            .max(256);
        // `agents.max_tokens`, when set, caps answers and explanations too (edits are bounded by
        // their grammar and the selection's size instead).
        let cap = match options.config.agents.max_tokens {
            0 => u32::MAX,
            n => n,
        };
        let one_shot = OneShot {
            budget: ask_budget,
            ask_tokens: ASK_MAX_TOKENS.min(cap),
            edit_tokens: EDIT_MAX_TOKENS,
        };
        let review_cfg = ReviewSetup {
            config: options.config.review.clone(),
            model: model.clone(),
            ctx_per_seq: options.config.engine.ctx_per_seq,
        };
        let model = match &model.path {
            Some(p) => p.display().to_string(),
            None => model.name.clone(),
        };
        let mut index_opts = crate::index::Options::default();
        index_opts.scan.max_file_bytes = options.config.index.max_file_bytes;
        index_opts.scan.exclude = options.config.index.exclude.clone();
        let searcher = match SearchService::start(
            &options.repo,
            options.config.clone(),
            crate::models::Store::default(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot start the search thread: {e}");
                None
            }
        };
        let index = IndexSetup {
            opts: index_opts,
            searcher,
        };
        let embeddings = Arc::new(complete::Embeddings::new(
            &options.config.model.embed,
            options.config.engine.threads,
        ));
        // Tasks beyond this many wait: more agents than the engine decodes at once would only
        // evict each other's conversations from the KV cache.
        let task_slots = match options.config.agents.parallel_tasks {
            0 => options.config.engine.parallel.max(1),
            n => n,
        };
        let task_slots = Arc::new(Semaphore::new(task_slots as usize));
        tokio::spawn(core(
            env, model, one_shot, review_cfg, index, embeddings, task_slots, sub_rx, ev_tx,
        ));
        Session {
            tx: sub_tx,
            rx: ev_rx,
        }
    }

    /// Queues a submission. Fails only once the session has shut down.
    pub fn submit(&self, submission: Submission) -> Result<()> {
        self.tx.send(submission).map_err(|_| Error::SessionClosed)
    }

    /// The next event; `None` after `ShutdownComplete`.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// What index updates and searches need.
struct IndexSetup {
    opts: crate::index::Options,
    /// `None`: the search thread did not start.
    searcher: Option<SearchService>,
}

/// What reviews need besides the task environment.
struct ReviewSetup {
    config: crate::config::ReviewConfig,
    model: ModelIdentity,
    ctx_per_seq: u32,
}

/// The session's own loop: dispatches ops, owns the running tasks.
#[allow(clippy::too_many_arguments)] // one per part of the environment; a struct adds nothing
async fn core(
    env: TaskEnv,
    model: String,
    one_shot: OneShot,
    review_setup: ReviewSetup,
    index: IndexSetup,
    embeddings: Arc<complete::Embeddings>,
    task_slots: Arc<Semaphore>,
    mut subs: mpsc::UnboundedReceiver<Submission>,
    events: mpsc::UnboundedSender<Event>,
) {
    let IndexSetup {
        opts: index_opts,
        searcher,
    } = index;
    let send = |id: &str, msg: EventMsg| {
        let _ = events.send(Event {
            id: id.to_string(),
            agent: None,
            msg,
        });
    };
    send(
        "",
        EventMsg::SessionConfigured {
            model,
            repo: env.repo_root.display().to_string(),
        },
    );
    let approvals: Approvals = Arc::new(Mutex::new(Default::default()));
    let mut cancels: Vec<Cancel> = Vec::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    // One-shot requests that may be cancelled by id.
    let mut one_shots: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut shutdown_id = String::new();
    let mut metrics = MetricsReporter::new(Arc::clone(&env.backend));
    let mut ticker = tokio::time::interval(METRICS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let sub = tokio::select! {
            s = subs.recv() => s,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = ticker.tick() => {
                if let Some(msg) = metrics.sample(!tasks.is_empty()) {
                    send("", msg);
                }
                continue;
            }
        };
        let Some(Submission { id, op }) = sub else {
            break;
        };
        match op {
            Op::UserTask { text, max_rounds } => {
                let cancel = Cancel::default();
                cancels.push(cancel.clone());
                let start = TaskStart::New { text, max_rounds };
                spawn_task(
                    &mut tasks,
                    &env,
                    &events,
                    &approvals,
                    cancel,
                    &task_slots,
                    &id,
                    start,
                );
            }
            Op::ResumeTask { task_id } => {
                let cancel = Cancel::default();
                cancels.push(cancel.clone());
                let start = TaskStart::Resume { task_id };
                spawn_task(
                    &mut tasks,
                    &env,
                    &events,
                    &approvals,
                    cancel,
                    &task_slots,
                    &id,
                    start,
                );
            }
            Op::Interrupt => {
                for c in cancels.drain(..) {
                    c.cancel();
                }
            }
            Op::CancelAgent { agent } => {
                for c in &cancels {
                    c.cancel_agent(&agent);
                }
            }
            Op::Approval { call_id, approved } => {
                let waiting = approvals.lock().ok().and_then(|mut m| m.remove(&call_id));
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(approved);
                    }
                    None => send(
                        &id,
                        EventMsg::Warning {
                            message: format!("no command is waiting for approval {call_id}"),
                        },
                    ),
                }
            }
            Op::Search {
                query,
                limit,
                mode: Some(mode),
                files,
            } => {
                let req = SearchRequest {
                    query,
                    mode: match mode {
                        SearchMode::Hybrid => crate::config::SearchMode::Hybrid,
                        SearchMode::Bm25 => crate::config::SearchMode::Bm25,
                        SearchMode::Vector => crate::config::SearchMode::Vector,
                    },
                    limit,
                    files,
                };
                let (searcher, events, sub_id) = (searcher.clone(), events.clone(), id.clone());
                let handle = tasks.spawn(async move {
                    for msg in index_search(searcher, req).await {
                        let _ = events.send(Event {
                            id: sub_id.clone(),
                            agent: None,
                            msg,
                        });
                    }
                });
                track(&mut one_shots, id, handle);
            }
            Op::Search {
                query,
                limit,
                mode: None,
                ..
            } => {
                let root = env.repo_root.clone();
                let search = Arc::clone(&env.search);
                let limit = limit.unwrap_or(10);
                let events = events.clone();
                tasks.spawn(async move {
                    let found =
                        tokio::task::spawn_blocking(move || search.search(&root, &query, limit))
                            .await;
                    let msg = match found {
                        Ok(Ok(hits)) => EventMsg::SearchResults {
                            results: hits
                                .iter()
                                .filter_map(|h| serde_json::to_value(h).ok())
                                .collect(),
                        },
                        Ok(Err(message)) => EventMsg::Error { message, fix: None },
                        Err(e) => EventMsg::Error {
                            message: format!("search failed: {e}"),
                            fix: None,
                        },
                    };
                    let _ = events.send(Event {
                        id,
                        agent: None,
                        msg,
                    });
                });
            }
            Op::ApplyTask { task_id } => match store::apply_task(&env.repo_root, &task_id) {
                Ok(_) => send(&id, EventMsg::TaskApplied { task_id }),
                Err(e) => send(&id, error_event(&e)),
            },
            Op::DiscardTask { task_id } => match store::discard_task(&env.repo_root, &task_id) {
                Ok(_) => send(&id, EventMsg::TaskDiscarded { task_id }),
                Err(e) => send(&id, error_event(&e)),
            },
            Op::Ask {
                question,
                file,
                range,
            } => {
                let ask_env = one_shot_env(&env, one_shot.budget, one_shot.ask_tokens);
                let emit = emitter(&events, id.clone(), ask::AGENT);
                let handle = tasks.spawn(async move {
                    let q = ask::Question {
                        text: question,
                        file,
                        range,
                    };
                    ask::answer(&ask_env, q, &emit).await;
                });
                track(&mut one_shots, id, handle);
            }
            Op::Review { spec } => {
                let review_env = review::ReviewEnv {
                    backend: Arc::clone(&env.backend),
                    search: Arc::clone(&env.search),
                    repo_root: env.repo_root.clone(),
                    config: review_setup.config.clone(),
                    model: review_setup.model.clone(),
                    ctx_per_seq: review_setup.ctx_per_seq,
                };
                let emit = emitter(&events, id.clone(), review::AGENT);
                let handle = tasks.spawn(async move {
                    review::review(&review_env, spec, &emit).await;
                });
                track(&mut one_shots, id, handle);
            }
            Op::Shutdown => {
                shutdown_id = id;
                break;
            }
            Op::ListTasks => match store::TaskStore::new(&env.repo_root).list() {
                Ok(records) => {
                    let mut tasks: Vec<_> = records.iter().map(summary).collect();
                    tasks.reverse();
                    send(&id, EventMsg::TaskList { tasks });
                }
                Err(e) => send(&id, error_event(&e)),
            },
            Op::OpenTask { task_id } => {
                let store = store::TaskStore::new(&env.repo_root);
                match store
                    .load(&task_id)
                    .and_then(|r| Ok((r, store.events(&task_id)?)))
                {
                    Ok((record, events)) => send(
                        &id,
                        EventMsg::TaskOpened {
                            task: summary(&record),
                            events,
                        },
                    ),
                    Err(e) => send(&id, error_event(&e)),
                }
            }
            Op::IndexStatus => {
                let (root, opts, events) =
                    (env.repo_root.clone(), index_opts.clone(), events.clone());
                tasks.spawn(async move {
                    let msg = tokio::task::spawn_blocking(move || index_state(&root, &opts))
                        .await
                        .unwrap_or_else(|e| EventMsg::Error {
                            message: format!("reading the index state failed: {e}"),
                            fix: None,
                        });
                    let _ = events.send(Event {
                        id,
                        agent: None,
                        msg,
                    });
                });
            }
            Op::UpdateIndex => {
                let (root, opts, events) =
                    (env.repo_root.clone(), index_opts.clone(), events.clone());
                tasks.spawn(update_index(root, opts, id, events));
            }
            Op::Explain {
                file,
                range,
                content,
            } => {
                let shot_env = one_shot_env(&env, one_shot.budget, one_shot.ask_tokens);
                let emit = emitter(&events, id.clone(), ask::AGENT);
                let handle = tasks.spawn(async move {
                    let sel = explain::Selection {
                        file,
                        range,
                        content,
                    };
                    explain::explain(&shot_env, sel, &emit).await;
                });
                track(&mut one_shots, id, handle);
            }
            Op::Edit {
                file,
                range,
                instruction,
                content,
            } => {
                let shot_env = one_shot_env(&env, one_shot.budget, one_shot.edit_tokens);
                let emit = emitter(&events, id.clone(), ask::AGENT);
                let handle = tasks.spawn(async move {
                    let req = rewrite::EditRequest {
                        file,
                        range,
                        instruction,
                        content,
                    };
                    rewrite::propose(&shot_env, req, &emit).await;
                });
                track(&mut one_shots, id, handle);
            }
            Op::EngineStatus => send(&id, metrics.snapshot()),
            Op::Complete { request } => {
                let backend = Arc::clone(&env.backend);
                let emit = raw_emitter(&events, id.clone());
                let handle = tasks.spawn(async move {
                    complete::complete(backend.as_ref(), request, &emit).await;
                });
                track(&mut one_shots, id, handle);
            }
            Op::Embed { input } => {
                let embeddings = Arc::clone(&embeddings);
                let emit = raw_emitter(&events, id.clone());
                let handle = tasks.spawn(async move {
                    emit(embeddings.embed(input).await);
                });
                track(&mut one_shots, id, handle);
            }
            Op::Cancel { id: target } => {
                // Aborting the request's task drops its model streams; the engine frees them.
                if let Some(handle) = one_shots.remove(&target)
                    && !handle.is_finished()
                {
                    handle.abort();
                    send(
                        &target,
                        EventMsg::Error {
                            message: format!("request {target} was cancelled"),
                            fix: None,
                        },
                    );
                }
            }
        }
    }
    // Shutting down: cancel what runs, give it a moment to record its end, then stop it.
    for c in &cancels {
        c.cancel();
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    send(&shutdown_id, EventMsg::ShutdownComplete);
}

/// The longest a search with a mode may take (the embedding model's first load included).
const SEARCH_TIMEOUT: Duration = Duration::from_secs(120);

/// The events answering a search with a mode: a `Warning` per note, then `SearchResults` (in
/// the JSON-line shape of `troupe search`), or an `Error`.
async fn index_search(searcher: Option<SearchService>, req: SearchRequest) -> Vec<EventMsg> {
    let error = |message: String| vec![EventMsg::Error { message, fix: None }];
    let Some(searcher) = searcher else {
        return error("the search thread did not start; see .troupe/logs/troupe.log".into());
    };
    match tokio::time::timeout(SEARCH_TIMEOUT, searcher.search(req)).await {
        Ok(Ok(found)) => {
            let mut msgs: Vec<EventMsg> = found
                .notes
                .into_iter()
                .map(|message| EventMsg::Warning { message })
                .collect();
            msgs.push(EventMsg::SearchResults {
                results: found.results.iter().map(|r| r.to_json()).collect(),
            });
            msgs
        }
        Ok(Err(e)) => error(e.to_string()),
        Err(_) => error(format!(
            "the search did not finish within {} s",
            SEARCH_TIMEOUT.as_secs()
        )),
    }
}

/// Budgets of one-shot requests (ask, explain, edit).
#[derive(Debug, Clone, Copy)]
struct OneShot {
    /// Tokens of repository excerpts.
    budget: usize,
    /// Tokens of an answer or explanation at most.
    ask_tokens: u32,
    /// Tokens of a proposed edit at most.
    edit_tokens: u32,
}

/// What a one-shot request (explain, edit) needs of the session.
/// Remembers a one-shot request's task for [`Op::Cancel`], forgetting finished ones.
fn track(
    one_shots: &mut HashMap<String, tokio::task::AbortHandle>,
    id: String,
    handle: tokio::task::AbortHandle,
) {
    one_shots.retain(|_, h| !h.is_finished());
    one_shots.insert(id, handle);
}

fn one_shot_env(env: &TaskEnv, budget: usize, max_tokens: u32) -> ask::AskEnv {
    ask::AskEnv {
        backend: Arc::clone(&env.backend),
        search: Arc::clone(&env.search),
        repo_root: env.repo_root.clone(),
        context_tokens: budget,
        max_tokens,
    }
}

/// Sends the events of one-shot request `id` as `agent`.
fn emitter(
    events: &mpsc::UnboundedSender<Event>,
    id: String,
    agent: &'static str,
) -> impl Fn(EventMsg) + Send + Sync + 'static {
    let events = events.clone();
    move |msg: EventMsg| {
        let _ = events.send(Event {
            id: id.clone(),
            agent: Some(agent.to_string()),
            msg,
        });
    }
}

/// Sends the events of raw model request `id` (no agent produced them).
fn raw_emitter(
    events: &mpsc::UnboundedSender<Event>,
    id: String,
) -> impl Fn(EventMsg) + Send + Sync + 'static {
    let events = events.clone();
    move |msg: EventMsg| {
        let _ = events.send(Event {
            id: id.clone(),
            agent: None,
            msg,
        });
    }
}

/// Runs a task once one of the session's task slots is free; a task cancelled while it waits
/// never starts (it has no record, worktree or branch yet).
#[allow(clippy::too_many_arguments)] // the session's parts a task needs
fn spawn_task(
    tasks: &mut JoinSet<()>,
    env: &TaskEnv,
    events: &mpsc::UnboundedSender<Event>,
    approvals: &Approvals,
    cancel: Cancel,
    slots: &Arc<Semaphore>,
    id: &str,
    start: TaskStart,
) {
    let emitter = Emitter::new(id, events.clone(), Arc::clone(approvals), cancel.clone());
    let env = env.clone();
    // Taken here, in submission order, so that tasks start in the order they came.
    let slots = Arc::clone(slots);
    let ready = Arc::clone(&slots).try_acquire_owned().ok();
    if ready.is_none() {
        emitter.emit(
            None,
            EventMsg::Warning {
                message: "queued: it starts when one of the running tasks ends \
                          (agents.parallel_tasks sets how many run at once)"
                    .into(),
            },
        );
    }
    tasks.spawn(async move {
        let _slot = match ready {
            Some(permit) => permit,
            // Cancellation first: a slot freed by the interrupted task must not start it.
            None => tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    emitter.emit(None, EventMsg::Error {
                        message: "interrupted before it started: the task was waiting for one \
                                  of the session's running tasks to end (agents.parallel_tasks)"
                            .into(),
                        fix: None,
                    });
                    return;
                }
                permit = slots.acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return, // never closed
                },
            },
        };
        if let Err(e) = run_task(env, emitter.clone(), start).await {
            // The task never started (bad id, not a repository, ...): no TaskStarted was sent.
            emitter.emit(None, error_event(&e));
        }
    });
}

/// An `Error` event for `e`, with a fix where one is known.
pub fn error_event(e: &Error) -> EventMsg {
    let fix = match e {
        Error::TaskNotFound { .. } => Some("run `troupe tasks list` to see the task ids".into()),
        Error::Model(_) => Some("run `troupe models pull` or pass --model PATH".into()),
        _ => None,
    };
    EventMsg::Error {
        message: e.to_string(),
        fix,
    }
}

/// How often the engine's figures are reported while work runs.
const METRICS_EVERY: Duration = Duration::from_millis(500);

/// Turns the back end's counters into `EngineMetrics` events: while work runs, and once more when
/// it stops (so a status bar shows the engine idle).
struct MetricsReporter {
    backend: Arc<dyn Backend>,
    last: Option<(std::time::Instant, u64)>,
    was_busy: bool,
}

impl MetricsReporter {
    fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            last: None,
            was_busy: false,
        }
    }

    /// The engine's figures now, without a rate.
    fn snapshot(&self) -> EventMsg {
        match self.backend.metrics() {
            Some(m) => EventMsg::EngineMetrics {
                active_sequences: m.active_sequences as u32,
                aggregate_tok_s: 0.0,
                cached_prompt_tokens: m.prompt_tokens_cached,
                kv_used: m.kv_cells_used as u32,
                kv_total: m.kv_cells_total as u32,
            },
            None => EventMsg::Error {
                message: "the model back end reports no engine figures".into(),
                fix: None,
            },
        }
    }

    fn sample(&mut self, busy: bool) -> Option<EventMsg> {
        if !busy && !self.was_busy {
            return None;
        }
        self.was_busy = busy;
        let m = self.backend.metrics()?;
        let now = std::time::Instant::now();
        let rate = match self.last {
            Some((at, generated)) if busy => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    m.generated_tokens.saturating_sub(generated) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last = busy.then_some((now, m.generated_tokens));
        Some(EventMsg::EngineMetrics {
            active_sequences: m.active_sequences as u32,
            aggregate_tok_s: rate,
            cached_prompt_tokens: m.prompt_tokens_cached,
            kv_used: m.kv_cells_used as u32,
            kv_total: m.kv_cells_total as u32,
        })
    }
}

/// A task record as listings show it.
fn summary(r: &store::TaskRecord) -> crate::protocol::TaskSummary {
    crate::protocol::TaskSummary {
        id: r.id.clone(),
        text: r.text.clone(),
        status: r.status.as_str().to_string(),
        rounds_done: r.rounds_done,
        max_rounds: r.max_rounds,
        updated_unix: r.updated_unix,
    }
}

/// The index's state against the working tree (blocking: it scans the repository).
fn index_state(root: &std::path::Path, opts: &crate::index::Options) -> EventMsg {
    match crate::index::status(root, opts) {
        Ok(st) => EventMsg::IndexState {
            exists: st.exists,
            stale: st.is_stale(),
            files: st.current + st.changed.len() as u64,
            chunks: st.chunks,
        },
        Err(e) => EventMsg::Error {
            message: format!("cannot read the index state: {e}"),
            fix: Some("run `troupe index`".into()),
        },
    }
}

/// Updates the full-text index, reporting progress, then its state.
async fn update_index(
    root: PathBuf,
    opts: crate::index::Options,
    id: String,
    events: mpsc::UnboundedSender<Event>,
) {
    let send = {
        let events = events.clone();
        let id = id.clone();
        move |msg: EventMsg| {
            let _ = events.send(Event {
                id: id.clone(),
                agent: None,
                msg,
            });
        }
    };
    let progress_send = send.clone();
    let done = tokio::task::spawn_blocking(move || {
        let (mut phase, mut done, mut total) = (String::new(), 0u64, 0u64);
        let mut last = std::time::Instant::now();
        let result = crate::index::update(&root, &opts, &mut |p| {
            match p {
                crate::index::Progress::Phase { name, total: t } => {
                    (phase, done, total) = (name.to_string(), 0, t);
                }
                crate::index::Progress::Advance(n) => done += n,
                crate::index::Progress::Waiting => phase = "waiting for another indexer".into(),
            }
            // At most ten updates a second, plus every phase change.
            if done == 0 || done >= total || last.elapsed() >= Duration::from_millis(100) {
                last = std::time::Instant::now();
                progress_send(EventMsg::IndexProgress {
                    phase: phase.clone(),
                    done,
                    total,
                });
            }
        });
        result.map(|_| index_state(&root, &opts))
    })
    .await;
    match done {
        Ok(Ok(state)) => send(state),
        Ok(Err(e)) => send(EventMsg::Error {
            message: format!("indexing failed: {e}"),
            fix: Some("run `troupe index` in a terminal to see the details".into()),
        }),
        Err(e) => send(EventMsg::Error {
            message: format!("indexing stopped: {e}"),
            fix: None,
        }),
    }
}
