//! What a caller sends to the engine and what comes back: requests, sampling settings, events
//! and per-request statistics. Plain data (serde), no llama.cpp types, shared by every back end.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one generation request for its whole life (queue, decode, cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// One chat message; rendered with the model's own chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// What the model continues from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Chat messages, rendered with the model's chat template and ending with the opening of an
    /// assistant turn.
    Messages(Vec<ChatMessage>),
    /// Raw text, tokenized as is (special tokens such as `<|im_start|>` are recognised; the model's
    /// BOS token is added if the model asks for it).
    Text(String),
    /// Raw token ids, used as is.
    Tokens(Vec<i32>),
}

/// Sampling settings. `temperature <= 0` means greedy (deterministic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    /// Softmax temperature; 0 or below selects greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling threshold (1.0 = off).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: i32,
    /// Drop tokens below `min_p` times the most likely token's probability (0 = off).
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1.0 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat, frequency and presence penalties look at.
    pub repeat_last_n: i32,
    /// Subtracted from a token's logit once per occurrence among the recent tokens (0 = off).
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit if it occurs among the recent tokens (0 = off).
    pub presence_penalty: f32,
    /// Random seed for non-greedy sampling.
    pub seed: u32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self::greedy()
    }
}

impl Sampling {
    /// Greedy decoding: always the most likely token. Same input, same output.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
        }
    }

    /// Whether these settings select greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Constrains the output to a formal language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// A GBNF grammar whose start rule is `root`.
    Gbnf(String),
    /// A JSON schema (as JSON text); converted to a GBNF grammar.
    JsonSchema(String),
}

/// Scheduling priority: higher runs first when requests wait for a sequence or KV space.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum Priority {
    /// Background work (e.g. CI batch reviews).
    Low,
    /// The default.
    #[default]
    Normal,
    /// Interactive work the user is waiting for.
    High,
}

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// What the model continues from.
    pub prompt: Prompt,
    /// How tokens are picked.
    pub sampling: Sampling,
    /// Generation ends (with [`FinishReason::Stop`]) at the first occurrence of any of these
    /// strings; the stop string itself is not emitted.
    pub stop: Vec<String>,
    /// At most this many generated tokens; `None` means up to the end of the sequence's context.
    pub max_tokens: Option<u32>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// An optional grammar or JSON schema the output must follow.
    pub constraint: Option<Constraint>,
    /// Scheduling priority.
    pub priority: Priority,
}

impl GenerateRequest {
    /// A greedy request for the given prompt with no limits beyond the context.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            sampling: Sampling::greedy(),
            stop: Vec::new(),
            max_tokens: None,
            ignore_eos: false,
            constraint: None,
            priority: Priority::Normal,
        }
    }

    /// A greedy chat request.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::new(Prompt::Messages(messages))
    }

    /// A greedy raw-text request.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Prompt::Text(text.into()))
    }

    /// Sets the token limit.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the sampling settings.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// Adds a stop string.
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }

    /// Sets a grammar or JSON schema constraint.
    pub fn with_constraint(mut self, constraint: Constraint) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token or a stop string matched.
    Stop,
    /// `max_tokens` was reached, or the sequence's context is full.
    Length,
    /// The caller cancelled the request (cancel or dropped stream). Not an error.
    Cancelled,
}

/// Per-request statistics, delivered with the final event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestStats {
    /// Time from submission until the request got a sequence.
    pub queue_ms: f64,
    /// Time from submission until the first generated token (0 if none).
    pub ttft_ms: f64,
    /// Time from submission until the final event.
    pub total_ms: f64,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the cache instead of computed.
    pub cached_tokens: usize,
    /// Tokens sampled (including a final end-of-generation token, if any).
    pub generated_tokens: usize,
    /// Generated tokens per second after the first one.
    pub decode_tok_s: f64,
}

/// One event on a request's stream. A stream carries any number of `Delta`s and then exactly one
/// terminal item: a `Done`, or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerateEvent {
    /// Newly generated text. `text` never splits a UTF-8 character and never contains any part of
    /// a stop string; it may be empty while text is held back (a possible stop string prefix or
    /// an incomplete character).
    Delta {
        /// The text.
        text: String,
        /// The token ids sampled for this delta.
        tokens: Vec<i32>,
    },
    /// The request is finished.
    Done {
        /// Statistics of the request.
        stats: RequestStats,
        /// Why it ended.
        finish_reason: FinishReason,
    },
}

/// A finished generation gathered from its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// All generated text.
    pub text: String,
    /// All sampled token ids.
    pub tokens: Vec<i32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Statistics.
    pub stats: RequestStats,
}
