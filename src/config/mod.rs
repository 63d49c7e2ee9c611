//! Layered configuration.
//!
//! Every setting has a default and a doc line ([`DOCS`]). Layers, later wins: the defaults, the
//! user's `~/.config/troupe/config.toml`, the repository's `troupe.toml`, a file named with
//! `--config`, then command-line flags (`--model`, `--embed-model`). Each value remembers where
//! it came from, which `troupe config show` prints. An unknown key or a bad value is an error
//! naming the key, the file and the line.
//!
//! Depends on nothing else in the crate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Value;

/// Configuration errors; each names the file, line and key, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: invalid TOML: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: unknown key `{key}`{hint}; `troupe config show` lists every key")]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        hint: String,
    },
    #[error("{path}:{line}: bad value for `{key}`: {message}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("bad value for {flag}: {message}")]
    BadFlag { flag: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Which engine serves the chat model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// llama.cpp inside the troupe process (the default; nothing leaves the machine).
    Embedded,
    /// An OpenAI-compatible HTTP server (llama-server, vLLM, Ollama) at `engine.endpoint`.
    Openai,
}

/// Whether llama.cpp uses flash attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FlashAttention {
    /// llama.cpp decides (on where the device supports it).
    Auto,
    On,
    Off,
}

impl FlashAttention {
    /// `None` for llama.cpp's choice, else forced on or off.
    pub fn forced(self) -> Option<bool> {
        match self {
            FlashAttention::Auto => None,
            FlashAttention::On => Some(true),
            FlashAttention::Off => Some(false),
        }
    }
}

/// Which rankings a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    Hybrid,
    Bm25,
    Vector,
}

/// The lowest review severity that makes `troupe review` exit with 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FailOn {
    None,
    Low,
    Medium,
    High,
}

/// Every setting troupe reads. Field docs live in [`DOCS`], which `config show` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub engine: EngineConfig,
    pub index: IndexConfig,
    pub retrieve: RetrieveConfig,
    pub agents: AgentsConfig,
    pub review: ReviewConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub chat: String,
    pub embed: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            chat: "qwen2.5-coder-0.5b-instruct".into(),
            embed: "all-minilm-l6-v2".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub backend: BackendKind,
    pub endpoint: String,
    pub api_key_env: String,
    pub threads: u32,
    pub parallel: u32,
    pub cached_sequences: u32,
    pub ctx_per_seq: u32,
    pub step_tokens: u32,
    pub prefix_cache: bool,
    pub kv_type: crate::engine::KvType,
    pub flash_attention: FlashAttention,
    pub seed: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Embedded,
            endpoint: "http://127.0.0.1:8080/v1".into(),
            api_key_env: String::new(),
            threads: 0,
            parallel: 4,
            cached_sequences: 8,
            ctx_per_seq: 4096,
            step_tokens: 512,
            prefix_cache: true,
            kv_type: crate::engine::KvType::F16,
            flash_attention: FlashAttention::Auto,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    pub max_file_bytes: u64,
    pub vectors: bool,
    pub exclude: Vec<String>,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 1024 * 1024,
            vectors: true,
            exclude: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrieveConfig {
    pub mode: SearchMode,
    pub limit: u32,
    pub rrf_k: f64,
    pub bm25_weight: f64,
    pub vector_weight: f64,
    pub signal_weight: f64,
    pub file_decay: f64,
    pub context_tokens: u32,
}

impl Default for RetrieveConfig {
    fn default() -> Self {
        Self {
            mode: SearchMode::Hybrid,
            limit: 10,
            // Tuned on benches/retrieval (click and gin, MiniLM): see BENCHMARKS.md.
            rrf_k: 20.0,
            bm25_weight: 1.0,
            vector_weight: 1.0,
            signal_weight: 0.0,
            file_decay: 0.2,
            context_tokens: 3000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    pub max_rounds: u32,
    pub test_command: String,
    pub allowed_commands: Vec<String>,
    pub command_timeout_secs: u64,
    pub output_limit_bytes: u64,
    pub approval: bool,
    pub max_steps: u32,
    pub max_tokens: u32,
    pub time_budget_secs: u64,
    pub roles: Vec<String>,
    pub parallel_tasks: u32,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            max_rounds: 6,
            test_command: String::new(),
            allowed_commands: Vec::new(),
            command_timeout_secs: 300,
            output_limit_bytes: 64 * 1024,
            approval: false,
            max_steps: 0,
            max_tokens: 0,
            time_budget_secs: 0,
            roles: Vec::new(),
            parallel_tasks: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    pub fail_on: FailOn,
    pub min_coverage: f64,
    pub max_diff_lines: u32,
    pub max_file_lines: u32,
    pub request_lines: u32,
    pub context_tokens: u32,
    pub max_tokens: u32,
    pub parallel: u32,
    pub exclude: Vec<String>,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            fail_on: FailOn::None,
            min_coverage: 0.0,
            max_diff_lines: 5000,
            max_file_lines: 2000,
            request_lines: 120,
            context_tokens: 600,
            max_tokens: 512,
            parallel: 0,
            exclude: [
                "*.lock",
                "package-lock.json",
                "pnpm-lock.yaml",
                "*.min.js",
                "*.min.css",
                "*.snap",
                "*.svg",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// One doc line per key, in the order `config show` prints them.
pub const DOCS: &[(&str, &str)] = &[
    (
        "model.chat",
        "chat model: a catalog name (`troupe models list`) or a path to a GGUF file",
    ),
    (
        "model.embed",
        "embedding model for the vector index: a catalog name or a path to a GGUF file",
    ),
    (
        "engine.backend",
        "`embedded` (llama.cpp in process) or `openai` (an OpenAI-compatible server at engine.endpoint)",
    ),
    (
        "engine.endpoint",
        "base URL of the OpenAI-compatible server when engine.backend = \"openai\"",
    ),
    (
        "engine.api_key_env",
        "name of the environment variable holding the server's API key (empty: none)",
    ),
    (
        "engine.threads",
        "CPU threads for llama.cpp; 0 picks the number of physical cores",
    ),
    (
        "engine.parallel",
        "sequences decoded together in one batch (agents, review requests)",
    ),
    (
        "engine.cached_sequences",
        "extra KV streams (ctx_per_seq tokens each) that only keep finished requests' tokens as prefix cache, so an agent's next call finds its conversation still cached while others run (with `parallel` 4, 12 streams: one per agent of four three-agent tasks)",
    ),
    (
        "engine.ctx_per_seq",
        "context length in tokens for each sequence",
    ),
    (
        "engine.step_tokens",
        "token budget of one batch step (decode tokens plus prefill chunks)",
    ),
    (
        "engine.prefix_cache",
        "reuse token prefixes already in the KV cache (shared prompts and repository context)",
    ),
    (
        "engine.kv_type",
        "KV cache element type: \"f16\", \"q8_0\" (half the memory) or \"q4_0\" (a quarter); quantized types need flash attention",
    ),
    (
        "engine.flash_attention",
        "flash attention: \"auto\" (llama.cpp decides), \"on\" or \"off\"",
    ),
    ("engine.seed", "sampling seed, for reproducible runs"),
    (
        "index.max_file_bytes",
        "files larger than this are skipped by the index",
    ),
    (
        "index.vectors",
        "compute embeddings for the vector index (BM25 works without them)",
    ),
    (
        "index.exclude",
        "extra gitignore-style patterns the index skips (besides .gitignore and .troupeignore)",
    ),
    (
        "retrieve.mode",
        "default search mode: `hybrid`, `bm25` or `vector`",
    ),
    ("retrieve.limit", "default number of search results"),
    (
        "retrieve.rrf_k",
        "reciprocal-rank-fusion constant: larger flattens the weight of top ranks",
    ),
    (
        "retrieve.bm25_weight",
        "weight of the BM25 ranking in fusion",
    ),
    (
        "retrieve.vector_weight",
        "weight of the vector ranking in fusion",
    ),
    (
        "retrieve.signal_weight",
        "weight of query words naming a result's file or symbol, in first-rank fusion units (0: off)",
    ),
    (
        "retrieve.file_decay",
        "with one result per file, a file's n-th best chunk counts DECAY^(n-1) of its score (0: the best chunk alone)",
    ),
    (
        "retrieve.context_tokens",
        "token budget for repository context packed into a prompt",
    ),
    (
        "agents.max_rounds",
        "writer/reviewer/tester rounds before a task stops unconverged",
    ),
    (
        "agents.test_command",
        "the command that runs the repository's tests (empty: detect from the repository)",
    ),
    (
        "agents.allowed_commands",
        "commands agents may run besides the test command (exact program names)",
    ),
    (
        "agents.command_timeout_secs",
        "a command run by an agent is killed after this many seconds",
    ),
    (
        "agents.output_limit_bytes",
        "captured output of a command is cut to this many bytes",
    ),
    (
        "agents.approval",
        "ask the user before running any command an agent proposes",
    ),
    (
        "agents.max_steps",
        "model calls (one tool call each) per agent turn; 0 uses each role's max_steps",
    ),
    (
        "agents.max_tokens",
        "tokens per model call of an agent, and of ask/explain answers; 0 uses each role's max_tokens (answers: 768)",
    ),
    (
        "agents.time_budget_secs",
        "wall-clock budget of one run of a task in seconds; 0 means rounds are the only budget",
    ),
    (
        "agents.roles",
        "names of the roles that take part (e.g. [\"writer\"] for the writer alone); empty: every role",
    ),
    (
        "agents.parallel_tasks",
        "tasks run at the same time in one session; more wait their turn (0: engine.parallel)",
    ),
    (
        "review.fail_on",
        "lowest finding severity that makes `troupe review` exit 1: none, low, medium, high",
    ),
    (
        "review.min_coverage",
        "fraction (0 to 1) of changed lines that must be reviewed, else the review fails",
    ),
    (
        "review.max_diff_lines",
        "changed lines reviewed at most; the rest is reported as clipped",
    ),
    (
        "review.max_file_lines",
        "a file with more changed lines than this is skipped as too large (and reported)",
    ),
    (
        "review.request_lines",
        "diff lines sent in one review request; longer hunks are split across requests",
    ),
    (
        "review.context_tokens",
        "token budget of repository context (definitions, callers, tests) per review request",
    ),
    (
        "review.max_tokens",
        "tokens of the model's answer per review request",
    ),
    (
        "review.parallel",
        "review requests in flight at once; 0 sends them all together (the engine batches them)",
    ),
    (
        "review.exclude",
        "glob patterns of changed files the review skips (reported as excluded)",
    ),
    (
        "log.level",
        "level of the log file under .troupe/logs: error, warn, info, debug or trace",
    ),
];

impl Config {
    /// Semantic checks beyond types: `(key, problem)` for each bad value.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.engine.parallel == 0 || self.engine.parallel > 256 {
            out.push(("engine.parallel", "must be between 1 and 256".to_string()));
        }
        if self.engine.cached_sequences > 256 {
            out.push(("engine.cached_sequences", "must be at most 256".to_string()));
        }
        if self.engine.ctx_per_seq < 256 {
            out.push(("engine.ctx_per_seq", "must be at least 256".to_string()));
        }
        if self.engine.step_tokens < 16 {
            out.push(("engine.step_tokens", "must be at least 16".to_string()));
        }
        if self.engine.kv_type != crate::engine::KvType::F16
            && self.engine.flash_attention == FlashAttention::Off
        {
            out.push((
                "engine.kv_type",
                "a quantized KV cache needs flash attention: set engine.flash_attention = \"auto\" or \"on\", or engine.kv_type = \"f16\"".to_string(),
            ));
        }
        if self.engine.threads > 1024 {
            out.push(("engine.threads", "must be at most 1024".to_string()));
        }
        if self.engine.backend == BackendKind::Openai
            && !(self.engine.endpoint.starts_with("http://")
                || self.engine.endpoint.starts_with("https://"))
        {
            out.push((
                "engine.endpoint",
                "must be an http:// or https:// URL".to_string(),
            ));
        }
        if self.model.chat.trim().is_empty() {
            out.push(("model.chat", "must not be empty".to_string()));
        }
        if self.model.embed.trim().is_empty() {
            out.push(("model.embed", "must not be empty".to_string()));
        }
        if !(0.0..=1.0).contains(&self.review.min_coverage) {
            out.push(("review.min_coverage", "must be between 0 and 1".to_string()));
        }
        if self.review.request_lines < 10 {
            out.push(("review.request_lines", "must be at least 10".to_string()));
        }
        if self.review.max_tokens < 32 {
            out.push(("review.max_tokens", "must be at least 32".to_string()));
        }
        for pattern in &self.review.exclude {
            if let Err(e) = globset::Glob::new(pattern) {
                out.push(("review.exclude", format!("bad pattern `{pattern}`: {e}")));
            }
        }
        if self.retrieve.rrf_k <= 0.0 {
            out.push(("retrieve.rrf_k", "must be positive".to_string()));
        }
        if self.retrieve.bm25_weight < 0.0 {
            out.push(("retrieve.bm25_weight", "must not be negative".to_string()));
        }
        if self.retrieve.signal_weight < 0.0 {
            out.push(("retrieve.signal_weight", "must not be negative".to_string()));
        }
        if self.retrieve.vector_weight < 0.0 {
            out.push(("retrieve.vector_weight", "must not be negative".to_string()));
        }
        if !(0.0..=1.0).contains(&self.retrieve.file_decay) {
            out.push(("retrieve.file_decay", "must be between 0 and 1".to_string()));
        }
        if self.retrieve.limit == 0 {
            out.push(("retrieve.limit", "must be at least 1".to_string()));
        }
        if self.agents.command_timeout_secs == 0 {
            out.push((
                "agents.command_timeout_secs",
                "must be at least 1".to_string(),
            ));
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            out.push((
                "log.level",
                "must be one of error, warn, info, debug, trace".to_string(),
            ));
        }
        out
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File {
        path: PathBuf,
        line: usize,
    },
    Flag(String),
    /// Tuned for the model named (e.g. fusion settings for an embedding model): it replaces
    /// a default, never a value set in a file or by a flag.
    Model(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag(flag) => write!(f, "command line {flag}"),
            Origin::Model(model) => write!(f, "tuned for the model {model}"),
        }
    }
}

/// A configuration together with the origin of every value.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    merged: toml::Table,
    origins: BTreeMap<String, Origin>,
}

/// Where to look for configuration files.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The user's config file (`~/.config/troupe/config.toml`); skipped when it does not exist.
    pub user_file: Option<PathBuf>,
    /// The repository root; its `troupe.toml` is read when it exists.
    pub repo: Option<PathBuf>,
    /// A file named with `--config`; it must exist.
    pub explicit: Option<PathBuf>,
}

impl Loaded {
    /// The defaults alone.
    pub fn defaults() -> Self {
        Self {
            config: Config::default(),
            merged: default_table(),
            origins: BTreeMap::new(),
        }
    }

    /// Reads every layer named in `sources`, in order.
    pub fn load(sources: &Sources) -> Result<Self> {
        let mut loaded = Self::defaults();
        if let Some(path) = &sources.user_file
            && path.is_file()
        {
            loaded.apply_file(path)?;
        }
        if let Some(repo) = &sources.repo {
            let path = repo.join("troupe.toml");
            if path.is_file() {
                loaded.apply_file(&path)?;
            }
        }
        if let Some(path) = &sources.explicit {
            loaded.apply_file(path)?;
        }
        Ok(loaded)
    }

    /// Applies one TOML file on top of the current values.
    pub fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.apply_str(&text, path)
    }

    /// Applies TOML text as if read from `path` (used for messages only).
    pub fn apply_str(&mut self, text: &str, path: &Path) -> Result<()> {
        let syntax = |e: toml::de::Error| Error::Syntax {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        };
        let spans = toml::de::DeTable::parse(text).map_err(syntax)?;
        let values: toml::Table = text.parse().map_err(syntax)?;
        let defaults = default_table();
        let mut ctx = LayerCtx {
            text,
            path,
            merged: &mut self.merged,
            origins: &mut self.origins,
        };
        ctx.walk(&defaults, &values, spans.get_ref(), "")?;
        self.config = to_config(&self.merged).map_err(|message| Error::BadValue {
            path: path.to_path_buf(),
            line: 1,
            key: "(file)".into(),
            message,
        })?;
        Ok(())
    }

    /// Sets one key from a command-line flag, e.g. `("model.chat", "--model", "path.gguf")`.
    pub fn apply_flag(&mut self, key: &str, flag: &str, value: Value) -> Result<()> {
        self.set_checked(key, value, flag.to_string(), Origin::Flag(flag.to_string()))
    }

    /// Sets `key` to a value tuned for `model`, unless a file or a flag set it: an explicit
    /// setting always wins. Returns whether the value was applied.
    pub fn apply_model_default(&mut self, key: &str, model: &str, value: Value) -> Result<bool> {
        if self.origin(key) != Origin::Default {
            return Ok(false);
        }
        self.set_checked(
            key,
            value,
            format!("(the settings tuned for {model})"),
            Origin::Model(model.to_string()),
        )?;
        Ok(true)
    }

    /// Sets `key` to `value` when the whole configuration still passes its checks, recording
    /// `origin`; else an error naming `source` (the flag, say) and the problem.
    fn set_checked(
        &mut self,
        key: &str,
        value: Value,
        source: String,
        origin: Origin,
    ) -> Result<()> {
        let bad = |message: String| Error::BadFlag {
            flag: source.clone(),
            message,
        };
        let mut candidate = self.merged.clone();
        set_path(&mut candidate, key, value).map_err(bad)?;
        let config = to_config(&candidate).map_err(bad)?;
        if let Some((_, problem)) = config.problems().into_iter().find(|(k, _)| *k == key) {
            return Err(bad(problem));
        }
        self.merged = candidate;
        self.config = config;
        self.origins.insert(key.to_string(), origin);
        Ok(())
    }

    /// Where `key` got its value.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Every key with its current value rendered as TOML, its origin and its doc line.
    pub fn entries(&self) -> Vec<Entry> {
        DOCS.iter()
            .map(|(key, doc)| Entry {
                key,
                doc,
                value: get_path(&self.merged, key)
                    .map(render_value)
                    .unwrap_or_default(),
                origin: self.origin(key),
            })
            .collect()
    }

    /// The `config show` text: valid TOML with each key's doc and origin as comments.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in self.entries() {
            out.push_str(&format!(
                "# {}\n# from: {}\n{} = {}\n\n",
                e.doc, e.origin, e.key, e.value
            ));
        }
        out
    }
}

/// One row of `config show`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: &'static str,
    pub doc: &'static str,
    pub value: String,
    pub origin: Origin,
}

struct LayerCtx<'a> {
    text: &'a str,
    path: &'a Path,
    merged: &'a mut toml::Table,
    origins: &'a mut BTreeMap<String, Origin>,
}

impl LayerCtx<'_> {
    fn walk(
        &mut self,
        defaults: &toml::Table,
        given: &toml::Table,
        spans: &toml::de::DeTable<'_>,
        prefix: &str,
    ) -> Result<()> {
        for (name, value) in given {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let span_entry = spans.iter().find(|(k, _)| k.get_ref().as_ref() == name);
            let line = span_entry.map_or(1, |(k, _)| line_of(self.text, k.span().start));
            match defaults.get(name) {
                None => {
                    return Err(Error::UnknownKey {
                        path: self.path.to_path_buf(),
                        line,
                        hint: unknown_hint(name, prefix, defaults),
                        key,
                    });
                }
                Some(Value::Table(sub_defaults)) => {
                    let Value::Table(sub_given) = value else {
                        return Err(self.bad(line, &key, "expected a table".into()));
                    };
                    let empty = toml::de::DeTable::new();
                    let sub_spans = match span_entry.map(|(_, v)| v.get_ref()) {
                        Some(toml::de::DeValue::Table(t)) => t,
                        _ => &empty,
                    };
                    self.walk(sub_defaults, sub_given, sub_spans, &key)?;
                }
                Some(default) => {
                    let value = coerce(default, value)
                        .ok_or_else(|| self.bad(line, &key, type_message(default, value)))?;
                    let mut candidate = self.merged.clone();
                    set_path(&mut candidate, &key, value).map_err(|m| self.bad(line, &key, m))?;
                    let config = to_config(&candidate).map_err(|m| self.bad(line, &key, m))?;
                    if let Some((_, problem)) =
                        config.problems().into_iter().find(|(k, _)| *k == key)
                    {
                        return Err(self.bad(line, &key, problem));
                    }
                    *self.merged = candidate;
                    self.origins.insert(
                        key,
                        Origin::File {
                            path: self.path.to_path_buf(),
                            line,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn bad(&self, line: usize, key: &str, message: String) -> Error {
        Error::BadValue {
            path: self.path.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        }
    }
}

fn default_table() -> toml::Table {
    // A struct of plain fields always serializes to a table.
    toml::Table::try_from(Config::default()).unwrap_or_default()
}

fn to_config(table: &toml::Table) -> std::result::Result<Config, String> {
    Config::deserialize(Value::Table(table.clone())).map_err(|e| e.message().trim().to_string())
}

/// Accepts `value` where `default`'s type is expected; integers widen to floats.
fn coerce(default: &Value, value: &Value) -> Option<Value> {
    match (default, value) {
        (Value::Float(_), Value::Integer(i)) => Some(Value::Float(*i as f64)),
        (Value::Array(_), Value::Array(items)) => {
            items.iter().all(Value::is_str).then(|| value.clone())
        }
        (d, v) if d.type_str() == v.type_str() => Some(v.clone()),
        _ => None,
    }
}

fn type_message(default: &Value, value: &Value) -> String {
    let expected = match default {
        Value::Array(_) => "an array of strings".to_string(),
        Value::Integer(_) => "an integer".to_string(),
        Value::Float(_) => "a number".to_string(),
        Value::Boolean(_) => "true or false".to_string(),
        Value::String(_) => "a string".to_string(),
        other => format!("a {}", other.type_str()),
    };
    format!(
        "expected {expected}, found {} {}",
        value.type_str(),
        render_value(value)
    )
}

fn unknown_hint(name: &str, prefix: &str, defaults: &toml::Table) -> String {
    let close = defaults
        .keys()
        .filter(|k| similar_name(name, k))
        .cloned()
        .collect::<Vec<_>>();
    if let Some(best) = close.first() {
        let full = if prefix.is_empty() {
            best.clone()
        } else {
            format!("{prefix}.{best}")
        };
        return format!(" (did you mean `{full}`?)");
    }
    let section = if prefix.is_empty() {
        "top-level sections".to_string()
    } else {
        format!("keys in [{prefix}]")
    };
    format!(
        " ({section}: {})",
        defaults.keys().cloned().collect::<Vec<_>>().join(", ")
    )
}

/// A cheap "did you mean": same name ignoring case and `_`/`-`, or one edit apart.
fn similar_name(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.to_lowercase().replace(['-', '_'], "");
    if norm(a) == norm(b) {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    edit_distance(&a, &b) <= 1 + usize::from(a.len().max(b.len()) > 8)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn set_path(table: &mut toml::Table, key: &str, value: Value) -> std::result::Result<(), String> {
    let mut parts = key.split('.').peekable();
    let mut cur = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return Ok(());
        }
        cur = match cur.get_mut(part) {
            Some(Value::Table(t)) => t,
            _ => return Err(format!("`{key}` is not a setting")),
        };
    }
    Err(format!("`{key}` is not a setting"))
}

fn get_path<'a>(table: &'a toml::Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut cur = table.get(first)?;
    for part in parts {
        cur = cur.as_table()?.get(part)?;
    }
    Some(cur)
}

fn render_value(value: &Value) -> String {
    match value {
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset.min(text.len()))
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> Result<Loaded> {
        let mut loaded = Loaded::defaults();
        loaded.apply_str(text, Path::new("/repo/troupe.toml"))?;
        Ok(loaded)
    }

    #[test]
    fn every_setting_has_exactly_one_doc_line() {
        fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Table(t) => leaves(t, &key, out),
                    _ => out.push(key),
                }
            }
        }
        let mut keys = Vec::new();
        leaves(&default_table(), "", &mut keys);
        keys.sort();
        let mut documented: Vec<String> = DOCS.iter().map(|(k, _)| k.to_string()).collect();
        documented.sort();
        assert_eq!(keys, documented);
        assert!(DOCS.iter().all(|(_, doc)| !doc.trim().is_empty()));
    }

    #[test]
    fn a_model_tuned_value_replaces_a_default_but_never_a_file_or_a_flag() {
        let mut loaded = apply("[retrieve]\nrrf_k = 30\n").unwrap();
        loaded
            .apply_flag("retrieve.file_decay", "--file-decay", Value::Float(0.0))
            .unwrap();
        let mut tuned = |key: &str, v: f64| {
            loaded
                .apply_model_default(key, "embeddinggemma-300m", Value::Float(v))
                .unwrap()
        };
        assert!(!tuned("retrieve.rrf_k", 60.0));
        assert!(!tuned("retrieve.file_decay", 0.5));
        assert!(tuned("retrieve.vector_weight", 3.0));
        let r = &loaded.config.retrieve;
        assert_eq!((r.rrf_k, r.file_decay, r.vector_weight), (30.0, 0.0, 3.0));
        assert_eq!(
            loaded.origin("retrieve.vector_weight").to_string(),
            "tuned for the model embeddinggemma-300m"
        );
        assert!(loaded.render().contains(
            "# from: tuned for the model embeddinggemma-300m\nretrieve.vector_weight = 3.0\n"
        ));
        // A tuned value is checked like any other.
        assert!(
            loaded
                .apply_model_default("retrieve.signal_weight", "m", Value::Float(-1.0))
                .is_err()
        );
    }

    #[test]
    fn defaults_pass_their_own_checks() {
        assert!(Config::default().problems().is_empty());
    }

    #[test]
    fn a_file_overrides_defaults_and_records_where() {
        let loaded =
            apply("[engine]\nthreads = 2\n\n[retrieve]\nmode = \"bm25\"\nrrf_k = 30\n").unwrap();
        assert_eq!(loaded.config.engine.threads, 2);
        assert_eq!(loaded.config.retrieve.mode, SearchMode::Bm25);
        assert_eq!(loaded.config.retrieve.rrf_k, 30.0);
        assert_eq!(
            loaded.origin("engine.threads"),
            Origin::File {
                path: "/repo/troupe.toml".into(),
                line: 2
            }
        );
        assert_eq!(loaded.origin("engine.parallel"), Origin::Default);
        let shown = loaded.render();
        assert!(shown.contains("# from: /repo/troupe.toml:2\nengine.threads = 2\n"));
        // What `config show` prints is itself valid TOML.
        shown.parse::<toml::Table>().unwrap();
    }

    #[test]
    fn dotted_and_inline_keys_work_too() {
        let loaded = apply("engine.parallel = 8\nmodel = { chat = \"x.gguf\" }\n").unwrap();
        assert_eq!(loaded.config.engine.parallel, 8);
        assert_eq!(loaded.config.model.chat, "x.gguf");
    }

    #[test]
    fn unknown_key_names_the_key_file_and_line() {
        let err = apply("[engine]\nthreads = 2\nthread_count = 4\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("/repo/troupe.toml:3: unknown key `engine.thread_count`"),
            "{msg}"
        );
        assert!(msg.contains("keys in [engine]"), "{msg}");
    }

    #[test]
    fn unknown_key_suggests_a_close_one() {
        let msg = apply("[engine]\nthread = 2\n").unwrap_err().to_string();
        assert!(msg.contains("did you mean `engine.threads`?"), "{msg}");
        let msg = apply("[enigne]\nthreads = 2\n").unwrap_err().to_string();
        assert!(msg.contains("unknown key `enigne`"), "{msg}");
        assert!(msg.contains("did you mean `engine`?"), "{msg}");
    }

    #[test]
    fn bad_type_names_the_key_file_line_and_expected_type() {
        let msg = apply("\n[engine]\nparallel = \"four\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "/repo/troupe.toml:3: bad value for `engine.parallel`: expected an integer, found string \"four\""
        );
    }

    #[test]
    fn bad_enum_and_range_values_are_rejected() {
        let msg = apply("[retrieve]\nmode = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("/repo/troupe.toml:2: bad value for `retrieve.mode`"),
            "{msg}"
        );
        assert!(msg.contains("hybrid"), "{msg}");
        let msg = apply("[engine]\nparallel = 0\n").unwrap_err().to_string();
        assert!(msg.contains("must be between 1 and 256"), "{msg}");
        let msg = apply("[engine]\nthreads = -1\n").unwrap_err().to_string();
        assert!(msg.contains("`engine.threads`"), "{msg}");
    }

    #[test]
    fn a_quantized_kv_cache_without_flash_attention_is_rejected_with_the_fix() {
        let ok = apply("[engine]\nkv_type = \"q8_0\"\n").expect("q8_0 with auto flash attention");
        assert_eq!(ok.config.engine.kv_type, crate::engine::KvType::Q8_0);
        let msg = apply("[engine]\nkv_type = \"q4_0\"\nflash_attention = \"off\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`engine.kv_type`"), "{msg}");
        assert!(msg.contains("engine.flash_attention = \"auto\""), "{msg}");
        let msg = apply("[engine]\nkv_type = \"q5\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("q8_0"), "the accepted values are named: {msg}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let msg = apply("[engine]\nthreads = \n").unwrap_err().to_string();
        assert!(
            msg.starts_with("/repo/troupe.toml:2: invalid TOML"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it() {
        let sources = Sources {
            explicit: Some("/nonexistent/troupe-x.toml".into()),
            ..Sources::default()
        };
        let msg = Loaded::load(&sources).unwrap_err().to_string();
        assert!(
            msg.contains("cannot read config file /nonexistent/troupe-x.toml"),
            "{msg}"
        );
    }

    #[test]
    fn layers_apply_in_order_user_then_repo_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        std::fs::write(&user, "[engine]\nthreads = 3\nparallel = 2\n").unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        std::fs::write(repo.join("troupe.toml"), "[engine]\nparallel = 6\n").unwrap();
        let mut loaded = Loaded::load(&Sources {
            user_file: Some(user.clone()),
            repo: Some(repo.clone()),
            explicit: None,
        })
        .unwrap();
        assert_eq!(loaded.config.engine.threads, 3);
        assert_eq!(loaded.config.engine.parallel, 6);
        assert_eq!(
            loaded.origin("engine.parallel"),
            Origin::File {
                path: repo.join("troupe.toml"),
                line: 2
            }
        );
        loaded
            .apply_flag("model.chat", "--model", Value::String("/m.gguf".into()))
            .unwrap();
        assert_eq!(loaded.config.model.chat, "/m.gguf");
        assert_eq!(
            loaded.origin("model.chat").to_string(),
            "command line --model"
        );
        let err = loaded
            .apply_flag("model.chat", "--model", Value::String(" ".into()))
            .unwrap_err();
        assert_eq!(err.to_string(), "bad value for --model: must not be empty");
    }
}
