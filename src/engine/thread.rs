//! The engine thread and its async handle.
//!
//! [`Engine::start`] loads the model on the caller's thread (so load errors come back at once),
//! then spawns one `std::thread` that creates the `LlamaContext` and runs the continuous-batching
//! loop: drain commands, drop requests whose streams are gone, admit waiting requests
//! ([`Scheduler::admit`]), build ONE batch ([`Scheduler::plan`]), decode, sample per sequence,
//! stream text, finish requests. The context never leaves that thread. The handle prepares
//! requests (chat template, tokenization, sampler and grammar) on the caller's side, so a bad
//! request fails before it reaches the engine and the engine thread only does model work.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llama_cpp_2::DecodeError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use serde::{Deserialize, Serialize};

use super::chat::ChatFormatter;
use super::request::{
    Constraint, FinishReason, GenerateEvent, GenerateRequest, Prompt, RequestId, RequestStats,
    Sampling,
};
use super::scheduler::{Active, KvOps, Pending, Removed, Scheduler, SchedulerConfig};
use super::stream::{EventSender, GenerationStream};
use super::text::TextDecoder;
use super::{Error, Result};

/// Sequences llama.cpp supports in one context (`LLAMA_MAX_SEQ`).
const LLAMA_MAX_SEQUENCES: usize = 256;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The GGUF model file.
    pub model_path: PathBuf,
    /// Requests decoded at the same time (parallel sequences).
    pub n_parallel: usize,
    /// Maximum tokens (prompt plus output) of one sequence.
    pub ctx_per_seq: u32,
    /// A cap on the KV cells of all sequences together (memory): every sequence has its own
    /// `ctx_per_seq` cells, so this caps the number of sequences (and of parallel requests) at
    /// `kv_cells / ctx_per_seq`, at least one. Default: no cap.
    pub kv_cells: Option<u32>,
    /// Sequences kept only as prefix cache, beyond the `n_parallel` ones (each costs
    /// `ctx_per_seq` cells). Default none: a finished request's sequence keeps its tokens as a
    /// prefix cache until another request needs the sequence.
    pub cached_sequences: Option<usize>,
    /// Tokens per step: one per decoding sequence plus prefill chunks.
    pub step_tokens: u32,
    /// CPU threads for decoding; default: all available cores.
    pub n_threads: Option<i32>,
    /// Layers offloaded to a GPU (when built with a GPU feature); `None` = llama.cpp's default.
    pub n_gpu_layers: Option<u32>,
    /// Reuse cached token prefixes between requests.
    pub prefix_cache: bool,
    /// Hold a new request for a running prefill only if that saves at least this many tokens.
    pub prefix_wait_min_tokens: usize,
    /// Flash attention: `None` lets llama.cpp decide (on when the device supports it).
    pub flash_attention: Option<bool>,
    /// Element type of the KV cache.
    pub kv_type: KvType,
}

/// Element type of the KV cache: `q8_0` halves its memory (and the stream copies of prefix
/// reuse), `q4_0` quarters it, at some accuracy; both need flash attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    /// 16-bit floats (llama.cpp's default).
    #[default]
    F16,
    /// 8-bit blocks.
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit blocks.
    #[value(name = "q4_0")]
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl KvType {
    fn llama(self) -> KvCacheType {
        match self {
            KvType::F16 => KvCacheType::F16,
            KvType::Q8_0 => KvCacheType::Q8_0,
            KvType::Q4_0 => KvCacheType::Q4_0,
        }
    }
}

impl EngineOptions {
    /// Defaults for a model file: 4 parallel sequences of 4096 tokens.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            n_parallel: 4,
            ctx_per_seq: 4096,
            kv_cells: None,
            cached_sequences: None,
            step_tokens: 512,
            n_threads: None,
            n_gpu_layers: None,
            prefix_cache: true,
            prefix_wait_min_tokens: 32,
            flash_attention: None,
            kv_type: KvType::F16,
        }
    }
}

/// Facts about the loaded model and context.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The model file.
    pub path: PathBuf,
    /// `general.name` from the GGUF metadata, if any.
    pub name: Option<String>,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Vocabulary size.
    pub n_vocab: i32,
    /// Parameters.
    pub n_params: u64,
    /// Whether the GGUF carries a chat template.
    pub has_chat_template: bool,
    /// KV cells in the context.
    pub kv_cells: usize,
    /// Maximum tokens per sequence.
    pub ctx_per_seq: usize,
    /// Parallel sequences.
    pub n_parallel: usize,
    /// CPU threads.
    pub n_threads: i32,
}

/// A snapshot of the engine's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineMetrics {
    /// Requests being decoded or prefilled.
    pub active_sequences: usize,
    /// Requests waiting for a sequence or KV space.
    pub waiting_requests: usize,
    /// Waiting requests held back until a running prefill has computed a prefix they share.
    pub held_requests: usize,
    /// Finished sequences kept as prefix cache.
    pub cached_sequences: usize,
    /// KV cells in use (a prefix copied to several sequences counts once per sequence).
    pub kv_cells_used: usize,
    /// KV cells reserved for what running requests may still need.
    pub kv_cells_reserved: usize,
    /// KV cells in the context.
    pub kv_cells_total: usize,
    /// Batches decoded.
    pub steps: u64,
    /// Tokens in the last batch.
    pub last_batch_tokens: usize,
    /// Sequences in the last batch.
    pub last_batch_sequences: usize,
    /// Largest batch so far.
    pub max_batch_tokens: usize,
    /// Tokens decoded in all batches.
    pub batch_tokens_total: u64,
    /// Prompt tokens computed.
    pub prompt_tokens_computed: u64,
    /// Prompt tokens reused from the cache.
    pub prompt_tokens_cached: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Requests finished (any reason).
    pub requests_finished: u64,
    /// Running requests moved to another sequence to keep the running ones on consecutive ids.
    pub sequence_moves: u64,
    /// Cache entries moved aside instead of being overwritten by a request placed next to the
    /// running ones.
    pub cache_entries_kept: u64,
}

/// A cloneable, thread-safe handle to the engine thread. The engine stops when the last handle
/// is dropped (open streams then end with [`Error::EngineStopped`]).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.inner.info)
            .finish()
    }
}

struct Inner {
    tx: std_mpsc::Sender<Command>,
    model: Arc<LlamaModel>,
    chat: ChatFormatter,
    info: ModelInfo,
    metrics: Arc<Mutex<EngineMetrics>>,
    next_id: AtomicU64,
    eog_tokens: Vec<LlamaToken>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        let handle = self
            .thread
            .get_mut()
            .map(Option::take)
            .unwrap_or_else(|poisoned| poisoned.into_inner().take());
        if let Some(handle) = handle
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

enum Command {
    Generate(Box<Pending<Job>>),
    /// Requests queued together, in order, before the next step: the schedule (and so the
    /// output) does not depend on when each one reached the engine thread.
    GenerateGroup(Vec<Pending<Job>>),
    Cancel(RequestId),
    Shutdown,
}

/// Per-request state on the engine thread.
struct Job {
    tx: EventSender,
    /// The sampler chain, without the grammar.
    sampler: LlamaSampler,
    /// The grammar constraint, applied lazily (see [`sample_constrained`]).
    grammar: Option<LlamaSampler>,
    decoder: TextDecoder,
    ignore_eos: bool,
    submitted: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Engine {
    /// Loads the model and starts the engine thread. Blocking (model load, context creation):
    /// call it from `spawn_blocking` in async code. A missing, non-GGUF or corrupt file is an
    /// [`Error`] naming the path and the fix.
    pub fn start(options: EngineOptions) -> Result<Engine> {
        let path = options.model_path.clone();
        check_gguf_header(&path)?;
        let backend = super::backend()?;
        let mut params = LlamaModelParams::default();
        if let Some(n) = options.n_gpu_layers {
            params = params.with_n_gpu_layers(n);
        }
        let model =
            LlamaModel::load_from_file(backend, &path, &params).map_err(|e| Error::ModelLoad {
                path: path.clone(),
                reason: format!("llama.cpp: {e}"),
            })?;
        let model = Arc::new(model);

        let n_threads = options
            .n_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get() as i32));
        let n_parallel = options.n_parallel.clamp(1, 128);
        let ctx_per_seq = options.ctx_per_seq.clamp(64, model.n_ctx_train().max(64));
        let cached = options.cached_sequences.unwrap_or(0);
        let mut n_slots = (n_parallel + cached).min(LLAMA_MAX_SEQUENCES);
        if let Some(cap) = options.kv_cells {
            n_slots = n_slots.min((cap / ctx_per_seq).max(1) as usize);
        }
        let n_parallel = n_parallel.min(n_slots);
        let kv_cells = ctx_per_seq * n_slots as u32;
        let step_tokens = options.step_tokens.max(n_parallel as u32 + 1);

        let vocab = model.vocab();
        let eog_tokens: Vec<LlamaToken> = vocab.tokens().filter(|t| vocab.is_eog(*t)).collect();
        let chat = ChatFormatter::from_model(&model);

        let metrics = Arc::new(Mutex::new(EngineMetrics::default()));
        let (tx, rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let setup = ThreadSetup {
            model: Arc::clone(&model),
            path: path.clone(),
            kv_cells,
            n_slots,
            step_tokens,
            n_threads,
            flash_attention: options.flash_attention,
            kv_type: options.kv_type,
            cfg: SchedulerConfig {
                n_parallel,
                n_slots,
                ctx_per_seq: ctx_per_seq as usize,
                step_tokens: step_tokens as usize,
                prefix_cache: options.prefix_cache,
                prefix_wait_min: options.prefix_wait_min_tokens,
            },
            metrics: Arc::clone(&metrics),
        };
        let thread = std::thread::Builder::new()
            .name("troupe-engine".into())
            .spawn(move || engine_thread(setup, rx, ready_tx))
            .map_err(|e| Error::Llama(format!("could not start the engine thread: {e}")))?;
        let (kv_cells_actual, ctx_per_seq) = match ready_rx.recv() {
            Ok(Ok(sizes)) => sizes,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::EngineStopped);
            }
        };
        let info = ModelInfo {
            path,
            name: model.meta_val_str("general.name").ok(),
            n_ctx_train: model.n_ctx_train(),
            n_vocab: model.n_vocab(),
            n_params: model.n_params(),
            has_chat_template: chat.has_template(),
            kv_cells: kv_cells_actual,
            ctx_per_seq,
            n_parallel,
            n_threads,
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                model,
                chat,
                info,
                metrics,
                next_id: AtomicU64::new(1),
                eog_tokens,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Submits a request. Returns at once; the answer streams back on the returned stream,
    /// ending with exactly one terminal event. A request that cannot be prepared (bad grammar,
    /// prompt too long, no chat template) yields one error. Dropping the stream cancels.
    pub fn generate(&self, request: GenerateRequest) -> GenerationStream {
        match self.stream_for(request) {
            (stream, Some(pending)) => {
                if self
                    .inner
                    .tx
                    .send(Command::Generate(Box::new(pending)))
                    .is_err()
                {
                    let id = stream.id();
                    drop(stream);
                    return GenerationStream::failed(id, Error::EngineStopped);
                }
                stream
            }
            (stream, None) => stream,
        }
    }

    /// A new request's stream and, when it could be prepared, what to queue; otherwise the
    /// stream already carries the error (nothing is queued, so its cancel-on-drop is a no-op).
    fn stream_for(&self, request: GenerateRequest) -> (GenerationStream, Option<Pending<Job>>) {
        let id = RequestId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let cancel_tx = self.inner.tx.clone();
        let (tx, stream) = GenerationStream::channel(
            id,
            Box::new(move || {
                let _ = cancel_tx.send(Command::Cancel(id));
            }),
        );
        match self.prepare(id, request, tx) {
            Ok(pending) => (stream, Some(pending)),
            Err(e) => {
                drop(stream);
                (GenerationStream::failed(id, e), None)
            }
        }
    }

    /// Submits several requests at once: they reach the scheduler together and in order, so a
    /// run over the same requests schedules them the same way each time (reproducible batches).
    /// Requests that cannot be prepared get their error on their own stream.
    pub fn generate_group(&self, requests: Vec<GenerateRequest>) -> Vec<GenerationStream> {
        let mut streams = Vec::with_capacity(requests.len());
        let mut group = Vec::with_capacity(requests.len());
        for request in requests {
            let (stream, pending) = self.stream_for(request);
            group.extend(pending);
            streams.push(stream);
        }
        if !group.is_empty() && self.inner.tx.send(Command::GenerateGroup(group)).is_err() {
            return streams
                .into_iter()
                .map(|s| GenerationStream::failed(s.id(), Error::EngineStopped))
                .collect();
        }
        streams
    }

    /// Cancels a request (waiting or running). Its stream ends with
    /// [`FinishReason::Cancelled`]; its sequence is free at once. Unknown ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.inner.tx.send(Command::Cancel(id));
    }

    /// The engine's current counters.
    pub fn metrics(&self) -> EngineMetrics {
        lock(&self.inner.metrics).clone()
    }

    /// Facts about the model and context.
    pub fn model_info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// Tokenizes text as a prompt would be (special tokens parsed, BOS added if the model wants
    /// it).
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.tokenize_llama(text).into_iter().map(|t| t.0).collect()
    }

    /// Renders chat messages with the model's chat template.
    pub fn render_chat(&self, messages: &[super::ChatMessage]) -> Result<String> {
        self.inner.chat.render(&self.inner.model, messages)
    }

    /// Turns tokens back into text (special tokens omitted).
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let vocab = self.inner.model.vocab();
        let mut bytes = Vec::new();
        for &t in tokens {
            bytes.extend(vocab.token_to_piece(LlamaToken(t), false, None));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn tokenize_llama(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.inner.model.vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), true, true);
        // A template that writes the BOS text itself plus the tokenizer's own BOS: keep one.
        let bos = vocab.bos();
        if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
            tokens.remove(0);
        }
        tokens
    }

    fn prepare(
        &self,
        id: RequestId,
        request: GenerateRequest,
        tx: EventSender,
    ) -> Result<Pending<Job>> {
        let submitted = Instant::now();
        let info = &self.inner.info;
        let tokens = match &request.prompt {
            Prompt::Messages(messages) => {
                let text = self.render_chat(messages)?;
                self.tokenize_llama(&text)
            }
            Prompt::Text(text) => self.tokenize_llama(text),
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= info.n_vocab) {
                    return Err(Error::InvalidRequest(format!(
                        "token id {bad} is outside the model's vocabulary of {} tokens",
                        info.n_vocab
                    )));
                }
                ids.iter().map(|&t| LlamaToken(t)).collect()
            }
        };
        if tokens.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if tokens.len() >= info.ctx_per_seq {
            return Err(Error::PromptTooLong {
                prompt_tokens: tokens.len(),
                ctx_per_seq: info.ctx_per_seq,
            });
        }
        let room = info.ctx_per_seq - tokens.len();
        let max_new = request
            .max_tokens
            .map_or(room, |m| (m as usize).min(room))
            .max(1);
        let (sampler, grammar) = self.build_sampler(&request)?;
        Ok(Pending {
            id,
            priority: request.priority,
            tokens,
            max_new,
            payload: Job {
                tx,
                sampler,
                grammar,
                decoder: TextDecoder::new(&request.stop),
                ignore_eos: request.ignore_eos,
                submitted,
                admitted: None,
                first_token: None,
                last_token: None,
            },
        })
    }

    /// The sampler chain of a request and, apart from it, its grammar.
    fn build_sampler(
        &self,
        request: &GenerateRequest,
    ) -> Result<(LlamaSampler, Option<LlamaSampler>)> {
        let model = &self.inner.model;
        let n_vocab = model.n_vocab();
        let s: &Sampling = &request.sampling;
        let mut chain = Vec::new();
        if request.ignore_eos && !self.inner.eog_tokens.is_empty() {
            let biases: Vec<LlamaLogitBias> = self
                .inner
                .eog_tokens
                .iter()
                .map(|&t| LlamaLogitBias::new(t, f32::NEG_INFINITY))
                .collect();
            chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
        }
        if (s.repeat_penalty - 1.0).abs() > f32::EPSILON
            || s.frequency_penalty != 0.0
            || s.presence_penalty != 0.0
        {
            chain.push(LlamaSampler::penalties(
                n_vocab,
                s.repeat_last_n.max(0),
                s.repeat_penalty,
                s.frequency_penalty,
                s.presence_penalty,
            ));
        }
        let grammar = match &request.constraint {
            Some(constraint) => {
                let gbnf = match constraint {
                    Constraint::Gbnf(g) => g.clone(),
                    Constraint::JsonSchema(schema) => {
                        llama_cpp_2::json_schema_to_grammar(schema)
                            .map_err(|e| Error::Grammar(format!("json schema: {e}")))?
                    }
                };
                Some(
                    LlamaSampler::grammar(model, &gbnf, "root")
                        .map_err(|e| Error::Grammar(format!("llama.cpp rejected it ({e})")))?,
                )
            }
            None => None,
        };
        if s.is_greedy() {
            chain.push(LlamaSampler::greedy());
        } else {
            if s.top_k > 0 {
                chain.push(LlamaSampler::top_k(s.top_k));
            }
            if s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p, 1));
            }
            if s.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(s.min_p, 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(s.seed));
        }
        Ok((LlamaSampler::chain_simple(chain), grammar))
    }
}

/// Samples under a grammar the way llama.cpp's server does: draw from the unconstrained
/// distribution first and check only that token against the grammar; filter the whole
/// vocabulary through the grammar only when it rejects the token. Checking one token instead of
/// every token of the vocabulary is most of the cost of constrained decoding saved. Greedy
/// decoding picks the same token either way (the most likely token, if allowed, is also the most
/// likely allowed one).
fn sample_constrained(
    chain: &mut LlamaSampler,
    grammar: &mut LlamaSampler,
    ctx: &LlamaContext<'_>,
    idx: i32,
) -> LlamaToken {
    let mut all = ctx.token_data_array_ith(idx);
    chain.apply(&mut all);
    if let Some(token) = all.selected_token() {
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 0.0, 1.0)], false);
        grammar.apply(&mut one);
        if one.data.first().is_some_and(|d| d.logit().is_finite()) {
            grammar.accept(token);
            chain.accept(token);
            return token;
        }
    }
    let mut allowed = ctx.token_data_array_ith(idx);
    grammar.apply(&mut allowed);
    chain.apply(&mut allowed);
    // The grammar always allows something (at least the end of generation once complete).
    let token = allowed
        .selected_token()
        .or_else(|| {
            allowed
                .data
                .iter()
                .filter(|d| d.logit().is_finite())
                .max_by(|a, b| a.logit().total_cmp(&b.logit()))
                .map(LlamaTokenData::id)
        })
        .unwrap_or(LlamaToken(0));
    grammar.accept(token);
    chain.accept(token);
    token
}

/// Checks the file exists and starts with the GGUF magic, before llama.cpp sees it.
fn check_gguf_header(path: &Path) -> Result<()> {
    use std::io::Read;
    if !path.is_file() {
        return Err(Error::ModelMissing {
            path: path.to_path_buf(),
        });
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    match read {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        Ok(()) => Err(Error::ModelLoad {
            path: path.to_path_buf(),
            reason: "it does not start with the GGUF magic bytes".into(),
        }),
        Err(e) => Err(Error::ModelLoad {
            path: path.to_path_buf(),
            reason: format!("cannot read its header: {e}"),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct ThreadSetup {
    model: Arc<LlamaModel>,
    path: PathBuf,
    kv_cells: u32,
    n_slots: usize,
    step_tokens: u32,
    n_threads: i32,
    flash_attention: Option<bool>,
    kv_type: KvType,
    cfg: SchedulerConfig,
    metrics: Arc<Mutex<EngineMetrics>>,
}

/// The llama.cpp context as the scheduler's KV operations.
struct Kv<'a, 'm>(&'a mut LlamaContext<'m>);

impl KvOps for Kv<'_, '_> {
    fn seq_rm(&mut self, seq: i32, p0: usize) {
        let removed = self
            .0
            .clear_kv_cache_seq(Some(seq as u32), Some(p0 as u32), None);
        if !matches!(removed, Ok(true)) {
            tracing::warn!(seq, p0, "llama.cpp refused to remove a KV range");
        }
    }

    fn seq_copy(&mut self, src: i32, dst: i32) {
        // Across streams llama.cpp copies whole buffers only (a partial range aborts), so the
        // range is always the full one; the copy itself runs at the start of the next decode.
        if let Err(e) = self.0.copy_kv_cache_seq(src, dst, None, None) {
            tracing::warn!(src, dst, "KV copy failed: {e}");
        }
    }
}

fn engine_thread(
    setup: ThreadSetup,
    rx: std_mpsc::Receiver<Command>,
    ready: std_mpsc::SyncSender<Result<(usize, usize)>>,
) {
    let backend = match super::backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let n_batch = setup.step_tokens;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(setup.kv_cells))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch.min(512))
        .with_n_seq_max(setup.n_slots as u32)
        // One KV stream per sequence: attention only over the sequence's own cells.
        .with_kv_unified(false)
        .with_n_threads(setup.n_threads)
        .with_n_threads_batch(setup.n_threads)
        .with_type_k(setup.kv_type.llama())
        .with_type_v(setup.kv_type.llama())
        // llama.cpp's enum: -1 auto, 0 disabled, 1 enabled.
        .with_flash_attention_policy(match setup.flash_attention {
            None => -1,
            Some(false) => 0,
            Some(true) => 1,
        });
    let model = Arc::clone(&setup.model);
    let mut ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(Error::Context {
                path: setup.path.clone(),
                cells: setup.kv_cells,
                reason: e.to_string(),
            }));
            return;
        }
    };
    let kv_cells = ctx.n_ctx() as usize;
    let mut cfg = setup.cfg.clone();
    // llama.cpp gives each stream n_ctx / n_seq_max cells (it may round n_ctx).
    cfg.ctx_per_seq = cfg.ctx_per_seq.min(kv_cells / setup.n_slots.max(1));
    let _ = ready.send(Ok((kv_cells, cfg.ctx_per_seq)));

    let mut lp = Loop {
        model: &model,
        sched: Scheduler::new(cfg),
        batch: LlamaBatch::new(n_batch as usize, 1),
        metrics: Arc::clone(&setup.metrics),
        counters: EngineMetrics {
            kv_cells_total: kv_cells,
            ..EngineMetrics::default()
        },
    };
    lp.run(&mut ctx, &rx);
    // Shutdown: every open request ends with an error, so no stream is left hanging.
    let (waiting, active) = lp.sched.drain(&mut Kv(&mut ctx));
    for p in waiting {
        let _ = p.payload.tx.send(Err(Error::EngineStopped));
    }
    for a in active {
        let _ = a.payload.tx.send(Err(Error::EngineStopped));
    }
}

struct Loop<'m> {
    model: &'m LlamaModel,
    sched: Scheduler<Job>,
    batch: LlamaBatch<'static>,
    metrics: Arc<Mutex<EngineMetrics>>,
    counters: EngineMetrics,
}

enum Flow {
    Continue,
    Stop,
}

impl Loop<'_> {
    fn run(&mut self, ctx: &mut LlamaContext<'_>, rx: &std_mpsc::Receiver<Command>) {
        loop {
            // 1. Commands: block when there is nothing to do, otherwise just drain.
            if self.sched.is_empty() {
                match rx.recv() {
                    Ok(cmd) => {
                        if let Flow::Stop = self.handle(cmd, ctx) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if let Flow::Stop = self.handle(cmd, ctx) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }

            // 2. Streams dropped by their consumers cancel their requests.
            self.drop_abandoned(ctx);

            // 3. Admission.
            let now = Instant::now();
            for a in self.sched.admit(&mut Kv(ctx)) {
                if let Some(active) = self.sched.active_mut(a.slot) {
                    active.payload.admitted = Some(now);
                }
                self.counters.prompt_tokens_cached += a.cached as u64;
            }

            // 4. One batch across all sequences.
            let plan = self.sched.plan();
            if plan.is_empty() {
                self.publish();
                if !self.sched.is_empty() {
                    // Only held or blocked requests: wait briefly for a command.
                    match rx.recv_timeout(Duration::from_millis(5)) {
                        Ok(cmd) => {
                            if let Flow::Stop = self.handle(cmd, ctx) {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                continue;
            }
            self.batch.clear();
            let mut samples = Vec::new();
            let mut failed = None;
            for e in &plan {
                for (k, t) in e.tokens.iter().enumerate() {
                    let last = k + 1 == e.tokens.len();
                    let want = e.logits && last;
                    if let Err(err) = self.batch.add(*t, (e.pos + k) as i32, &[e.seq], want) {
                        failed = Some(err.to_string());
                    }
                    if want {
                        samples.push((e.slot, self.batch.n_tokens() - 1));
                    }
                }
            }
            if let Some(reason) = failed {
                // The plan never exceeds the batch size; if it does, it is a bug: fail loudly
                // for the requests involved and keep serving.
                self.fail_slots(ctx, plan.iter().map(|e| e.slot), &reason);
                continue;
            }
            match ctx.decode(&mut self.batch) {
                Ok(()) => {}
                Err(DecodeError::NoKvCacheSlot) => {
                    // The ledger keeps this from happening; if llama.cpp disagrees, give back
                    // the prefix cache and retry, else fail the largest prefill.
                    if self.sched.evict_all_idle(&mut Kv(ctx)) == 0 {
                        let victim = plan.iter().max_by_key(|e| e.tokens.len()).map(|e| e.slot);
                        self.fail_slots(ctx, victim, "the KV cache is full");
                    }
                    continue;
                }
                Err(e) => {
                    self.fail_slots(ctx, plan.iter().map(|e| e.slot), &e.to_string());
                    continue;
                }
            }
            self.sched.commit(&plan);
            let batch_tokens: usize = plan.iter().map(|e| e.tokens.len()).sum();
            let decode_tokens = plan
                .iter()
                .filter(|e| {
                    self.sched
                        .active_mut(e.slot)
                        .is_some_and(|a| e.pos >= a.prompt.len())
                })
                .count();
            self.counters.steps += 1;
            self.counters.last_batch_tokens = batch_tokens;
            self.counters.last_batch_sequences = plan.len();
            self.counters.max_batch_tokens = self.counters.max_batch_tokens.max(batch_tokens);
            self.counters.batch_tokens_total += batch_tokens as u64;
            self.counters.prompt_tokens_computed += (batch_tokens - decode_tokens) as u64;

            // 5. Sample per sequence and stream.
            for (slot, idx) in samples {
                self.sample(ctx, slot, idx);
            }
            self.publish();
        }
    }

    fn handle(&mut self, cmd: Command, ctx: &mut LlamaContext<'_>) -> Flow {
        match cmd {
            Command::Generate(pending) => {
                if pending.payload.tx.is_closed() {
                    // Dropped before it arrived: cancelled, nothing to send.
                    self.counters.requests_finished += 1;
                    return Flow::Continue;
                }
                self.sched.enqueue(*pending);
            }
            Command::GenerateGroup(group) => {
                for pending in group {
                    if pending.payload.tx.is_closed() {
                        self.counters.requests_finished += 1;
                    } else {
                        self.sched.enqueue(pending);
                    }
                }
            }
            Command::Cancel(id) => self.cancel(id, ctx),
            Command::Shutdown => return Flow::Stop,
        }
        Flow::Continue
    }

    fn cancel(&mut self, id: RequestId, ctx: &mut LlamaContext<'_>) {
        match self.sched.remove(id, &mut Kv(ctx)) {
            Some(Removed::Waiting(p)) => {
                let stats = RequestStats {
                    queue_ms: ms(p.payload.submitted.elapsed()),
                    total_ms: ms(p.payload.submitted.elapsed()),
                    prompt_tokens: p.tokens.len(),
                    ..RequestStats::default()
                };
                self.counters.requests_finished += 1;
                self.publish();
                let _ = p.payload.tx.send(Ok(GenerateEvent::Done {
                    stats,
                    finish_reason: FinishReason::Cancelled,
                }));
            }
            Some(Removed::Active(a)) => self.send_done(a, FinishReason::Cancelled),
            None => {}
        }
    }

    fn drop_abandoned(&mut self, ctx: &mut LlamaContext<'_>) {
        let mut gone: Vec<RequestId> = self
            .sched
            .waiting_iter()
            .filter(|p| p.payload.tx.is_closed())
            .map(|p| p.id)
            .collect();
        gone.extend(
            self.sched
                .active_iter_mut()
                .filter(|(_, a)| a.payload.tx.is_closed())
                .map(|(_, a)| a.id),
        );
        for id in gone {
            self.cancel(id, ctx);
        }
    }

    fn fail_slots(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        slots: impl IntoIterator<Item = usize>,
        reason: &str,
    ) {
        tracing::error!("decode failed: {reason}");
        for slot in slots {
            if let Some(a) = self.sched.abort(slot, &mut Kv(ctx)) {
                self.counters.requests_finished += 1;
                let _ = a.payload.tx.send(Err(Error::Decode(reason.to_string())));
            }
        }
    }

    fn sample(&mut self, ctx: &mut LlamaContext<'_>, slot: usize, idx: i32) {
        let vocab = self.model.vocab();
        let Some(a) = self.sched.active_mut(slot) else {
            return;
        };
        let token = match a.payload.grammar.as_mut() {
            Some(grammar) => sample_constrained(&mut a.payload.sampler, grammar, ctx, idx),
            None => a.payload.sampler.sample(ctx, idx),
        };
        let now = Instant::now();
        a.generated += 1;
        a.payload.first_token.get_or_insert(now);
        a.payload.last_token = Some(now);
        self.counters.generated_tokens += 1;

        let mut finish = None;
        let sent = if vocab.is_eog(token) && !a.payload.ignore_eos {
            finish = Some(FinishReason::Stop);
            let rest = a.payload.decoder.finish();
            rest.is_empty()
                || a.payload
                    .tx
                    .send(Ok(GenerateEvent::Delta {
                        text: rest,
                        tokens: Vec::new(),
                    }))
                    .is_ok()
        } else {
            let piece = vocab.token_to_piece(token, false, None);
            let pushed = a.payload.decoder.push(&piece);
            let mut text = pushed.text;
            if pushed.stopped {
                finish = Some(FinishReason::Stop);
            } else if a.generated >= a.max_new {
                finish = Some(FinishReason::Length);
                text.push_str(&a.payload.decoder.finish());
            } else {
                a.next_token = Some(token);
            }
            a.payload
                .tx
                .send(Ok(GenerateEvent::Delta {
                    text,
                    tokens: vec![token.0],
                }))
                .is_ok()
        };
        let finish = if sent {
            finish
        } else {
            Some(FinishReason::Cancelled)
        };
        if let Some(reason) = finish
            && let Some(active) = self.sched.finish(slot, &mut Kv(ctx))
        {
            self.send_done(active, reason);
        }
    }

    fn send_done(&mut self, a: Box<Active<Job>>, reason: FinishReason) {
        self.counters.requests_finished += 1;
        // Metrics first: whoever sees the final event also sees the freed sequence.
        self.publish();
        let stats = stats_of(&a);
        let _ = a.payload.tx.send(Ok(GenerateEvent::Done {
            stats,
            finish_reason: reason,
        }));
    }

    fn publish(&mut self) {
        self.counters.active_sequences = self.sched.active_count();
        self.counters.waiting_requests = self.sched.waiting_count();
        self.counters.held_requests = self.sched.held;
        self.counters.cached_sequences = self.sched.idle_count();
        self.counters.kv_cells_used = self.sched.cells_used();
        self.counters.sequence_moves = self.sched.moves;
        self.counters.cache_entries_kept = self.sched.kept;
        self.counters.kv_cells_reserved = self.sched.cells_reserved();
        *lock(&self.metrics) = self.counters.clone();
    }
}

fn stats_of(a: &Active<Job>) -> RequestStats {
    let j = &a.payload;
    let since = |t: Option<Instant>| t.map_or(0.0, |t| ms(t.duration_since(j.submitted)));
    let decode_tok_s = match (j.first_token, j.last_token) {
        (Some(first), Some(last)) if a.generated > 1 && last > first => {
            (a.generated - 1) as f64 / last.duration_since(first).as_secs_f64()
        }
        _ => 0.0,
    };
    RequestStats {
        queue_ms: since(j.admitted),
        ttft_ms: since(j.first_token),
        total_ms: ms(j.submitted.elapsed()),
        prompt_tokens: a.prompt.len(),
        cached_tokens: a.cached,
        generated_tokens: a.generated,
        decode_tok_s,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
