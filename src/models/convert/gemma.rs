//! Conversion of an EmbeddingGemma checkpoint (a Gemma3 encoder with bidirectional attention,
//! as a sentence-transformers folder) to GGUF for llama.cpp's `gemma-embedding` architecture.
//!
//! The folder holds `config.json` (`model_type` `gemma3_text`), `model.safetensors`,
//! `tokenizer.model` (SentencePiece), `tokenizer_config.json`, `modules.json`, the pooling
//! configuration and two Dense projections (`2_Dense`, `3_Dense`: 768 -> 3072 -> 768) that
//! sentence-transformers applies after pooling; llama.cpp applies them too when the GGUF carries
//! them as `dense_2` / `dense_3` with their `dense_*_feat_in/out` sizes.
//!
//! What differs from a plain tensor copy:
//!
//! - Gemma's RMSNorm scales by `1 + w` and the checkpoint stores `w`; llama.cpp's RMSNorm
//!   multiplies by the stored weight, so 1 is added to every norm weight here.
//! - The vocabulary comes from `tokenizer.model` (pieces, scores, types), then the added tokens
//!   of `added_tokens.json` and `tokenizer_config.json` override entries, the way llama.cpp's own
//!   converter does it: special (or special-looking) ones become control tokens, the others
//!   user-defined tokens.
//! - The sliding-window layout (`layer_types`) must follow Gemma3's period (every sixth layer
//!   attends globally), which llama.cpp assumes.
//!
//! Big matrices are q8_0; norm weights stay F32.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use serde::Deserialize;

use super::{
    Data, Error, FILE_TYPE_MOSTLY_Q8_0, GGUF_ALIGNMENT, GgmlType, Gguf, Pooling, Q8_0_BLOCK,
    Result, SafeTensors, Tensor, Value, read_error, read_json, read_pooling, write_atomically,
};

/// `config.json`'s `model_type` for the Gemma3 encoder of EmbeddingGemma.
pub const MODEL_TYPE: &str = "gemma3_text";

/// llama.cpp's architecture name.
const ARCH: &str = "gemma-embedding";

/// Converts the EmbeddingGemma checkpoint in `src_dir` to a q8_0 GGUF file at `out_path`,
/// atomically; the same input always gives the same bytes.
pub fn convert_gemma_embedding_checkpoint(src_dir: &Path, out_path: &Path) -> Result<()> {
    let config_path = src_dir.join("config.json");
    let config: GemmaConfig = read_json(&config_path)?;
    let swa_period = config.validate(&config_path)?;
    let modules = read_modules(src_dir, &config)?;
    let vocab = read_vocab(src_dir, config.vocab_size as usize)?;
    let weights = Rc::new(SafeTensors::open(&src_dir.join("model.safetensors"))?);

    let mut gguf = Gguf::default();
    add_metadata(&mut gguf, &config, swa_period, &modules, vocab);
    add_tensors(&mut gguf, &config, &weights, &modules)?;

    write_atomically(out_path, |w| gguf.write_to(w))?;
    tracing::info!(
        src = %src_dir.display(),
        out = %out_path.display(),
        tensors = gguf.tensors.len(),
        "converted EmbeddingGemma checkpoint to GGUF"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The fields of a Gemma3 `config.json` the conversion needs.
#[derive(Debug, Deserialize)]
struct GemmaConfig {
    vocab_size: u32,
    hidden_size: u32,
    intermediate_size: u32,
    num_hidden_layers: u32,
    num_attention_heads: u32,
    num_key_value_heads: u32,
    head_dim: u32,
    max_position_embeddings: u32,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_rope_local_base_freq")]
    rope_local_base_freq: f64,
    sliding_window: u32,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    hidden_activation: Option<String>,
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    attn_logit_softcapping: Option<f64>,
}

fn default_rope_theta() -> f64 {
    1_000_000.0
}

fn default_rope_local_base_freq() -> f64 {
    10_000.0
}

/// Gemma3's default sliding-window period: layers 5, 11, 17, ... attend globally.
const DEFAULT_SWA_PERIOD: u32 = 6;

impl GemmaConfig {
    /// Checks that llama.cpp's `gemma-embedding` graph computes this model; returns the
    /// sliding-window period.
    fn validate(&self, path: &Path) -> Result<u32> {
        let fail = |reason: String| {
            Err(Error::UnexpectedConfig {
                path: path.to_path_buf(),
                reason,
            })
        };
        if let Some(act) = &self.hidden_activation
            && act != "gelu_pytorch_tanh"
        {
            return fail(format!(
                "hidden_activation is {act:?}; llama.cpp's gemma-embedding implements only \"gelu_pytorch_tanh\""
            ));
        }
        if self.use_bidirectional_attention != Some(true) {
            return fail(
                "use_bidirectional_attention is not true: this is a causal Gemma3 language model, not an EmbeddingGemma encoder".into(),
            );
        }
        if let Some(s) = self.query_pre_attn_scalar
            && s != f64::from(self.head_dim)
        {
            return fail(format!(
                "query_pre_attn_scalar is {s}; llama.cpp scales attention by head_dim {}",
                self.head_dim
            ));
        }
        if self.attn_logit_softcapping.is_some() {
            return fail("attn_logit_softcapping is set; Gemma3 has none".into());
        }
        if self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return fail(format!(
                "num_hidden_layers {}, num_attention_heads {} and num_key_value_heads {} must be positive, with the heads a multiple of the key-value heads",
                self.num_hidden_layers, self.num_attention_heads, self.num_key_value_heads
            ));
        }
        for (what, n) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("head_dim", self.head_dim),
        ] {
            if n == 0 || !(n as usize).is_multiple_of(Q8_0_BLOCK) {
                return fail(format!(
                    "{what} {n} is not a positive multiple of {Q8_0_BLOCK} (needed for q8_0)"
                ));
            }
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 || self.sliding_window == 0 {
            return fail(
                "vocab_size, max_position_embeddings and sliding_window must be positive".into(),
            );
        }
        let period = DEFAULT_SWA_PERIOD;
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers as usize {
                return fail(format!(
                    "layer_types lists {} layers, num_hidden_layers is {}",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            for (i, t) in types.iter().enumerate() {
                let want = if (i as u32 + 1).is_multiple_of(period) {
                    "full_attention"
                } else {
                    "sliding_attention"
                };
                if t != want {
                    return fail(format!(
                        "layer {i} is {t:?}; llama.cpp expects {want:?} (every {period}th layer global)"
                    ));
                }
            }
        }
        Ok(period)
    }
}

/// One sentence-transformers Dense module: a bias-free linear map applied after pooling.
struct Dense {
    /// `dense_2` or `dense_3`: llama.cpp's names for the first and second projection.
    gguf_name: &'static str,
    in_features: usize,
    out_features: usize,
    weights: Rc<SafeTensors>,
}

/// The modules of the sentence-transformers pipeline after the encoder: mean pooling and
/// either no Dense projection or exactly two (hidden -> k -> hidden), as llama.cpp supports.
struct Modules {
    pooling: Pooling,
    dense: Vec<Dense>,
}

#[derive(Debug, Deserialize)]
struct ModuleEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default)]
    bias: bool,
    #[serde(default)]
    activation_function: Option<String>,
}

fn read_modules(src_dir: &Path, config: &GemmaConfig) -> Result<Modules> {
    let modules_path = src_dir.join("modules.json");
    let entries: Vec<ModuleEntry> = read_json(&modules_path)?;
    let fail = |path: &Path, reason: String| Error::UnexpectedConfig {
        path: path.to_path_buf(),
        reason,
    };
    let pooling_dir = entries
        .iter()
        .find(|m| m.kind.ends_with(".Pooling"))
        .map_or("1_Pooling", |m| m.path.as_str());
    let pooling = read_pooling(&src_dir.join(pooling_dir).join("config.json"))?;
    if pooling != Pooling::Mean {
        return Err(fail(
            &src_dir.join(pooling_dir).join("config.json"),
            "EmbeddingGemma pools by mean; another pooling mode means another model".into(),
        ));
    }
    let hidden = config.hidden_size as usize;
    let mut dense = Vec::new();
    for m in entries.iter().filter(|m| m.kind.ends_with(".Dense")) {
        let gguf_name = match dense.len() {
            0 => "dense_2",
            1 => "dense_3",
            _ => {
                return Err(fail(
                    &modules_path,
                    "more than two Dense modules; llama.cpp applies at most two".into(),
                ));
            }
        };
        let dir = src_dir.join(&m.path);
        let conf_path = dir.join("config.json");
        let c: DenseConfig = read_json(&conf_path)?;
        if c.bias {
            return Err(fail(&conf_path, "the Dense layer has a bias".into()));
        }
        if let Some(act) = &c.activation_function
            && !act.ends_with("Identity")
        {
            return Err(fail(
                &conf_path,
                format!("the Dense activation is {act}; only the identity is supported"),
            ));
        }
        if c.in_features == 0 || c.out_features == 0 || !c.in_features.is_multiple_of(Q8_0_BLOCK) {
            return Err(fail(
                &conf_path,
                format!(
                    "in_features {} and out_features {} must be positive, in_features a multiple of {Q8_0_BLOCK}",
                    c.in_features, c.out_features
                ),
            ));
        }
        dense.push(Dense {
            gguf_name,
            in_features: c.in_features,
            out_features: c.out_features,
            weights: Rc::new(SafeTensors::open(&dir.join("model.safetensors"))?),
        });
    }
    match dense.as_slice() {
        [] => {}
        [a, b]
            if a.in_features == hidden
                && a.out_features == b.in_features
                && b.out_features == hidden => {}
        _ => {
            return Err(fail(
                &modules_path,
                format!(
                    "the Dense modules must be none or two mapping {hidden} -> k -> {hidden}, found {:?}",
                    dense
                        .iter()
                        .map(|d| (d.in_features, d.out_features))
                        .collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok(Modules { pooling, dense })
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

/// GGUF token types (llama.cpp's `LLAMA_TOKEN_TYPE_*`, SentencePiece's numbering).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;
const TOKEN_BYTE: i32 = 6;

/// Score of added tokens, as llama.cpp's converter gives them.
const ADDED_TOKEN_SCORE: f32 = -1000.0;

/// The vocabulary in llama.cpp's SentencePiece form, with the special token ids.
struct Vocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    bos: u32,
    eos: u32,
    unk: u32,
    pad: u32,
    add_bos: bool,
    add_eos: bool,
}

/// The fields of `tokenizer_config.json` the vocabulary needs.
#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    add_bos_token: Option<bool>,
    #[serde(default)]
    add_eos_token: Option<bool>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
    #[serde(default)]
    unk_token: Option<serde_json::Value>,
    #[serde(default)]
    pad_token: Option<serde_json::Value>,
    #[serde(default)]
    added_tokens_decoder: HashMap<String, AddedToken>,
}

#[derive(Debug, Deserialize)]
struct AddedToken {
    content: String,
    #[serde(default)]
    special: bool,
}

fn read_vocab(src_dir: &Path, vocab_size: usize) -> Result<Vocab> {
    let model_path = src_dir.join("tokenizer.model");
    let bytes = std::fs::read(&model_path).map_err(|source| read_error(&model_path, source))?;
    let pieces = parse_sentencepiece(&bytes).map_err(|reason| Error::UnexpectedConfig {
        path: model_path.clone(),
        reason: format!("not a SentencePiece model ({reason})"),
    })?;
    if pieces.len() != vocab_size {
        return Err(Error::UnexpectedConfig {
            path: model_path,
            reason: format!(
                "it has {} pieces but config.json says vocab_size {vocab_size}",
                pieces.len()
            ),
        });
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut scores = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for p in pieces {
        tokens.push(p.piece);
        scores.push(p.score);
        types.push(match p.kind {
            2 => TOKEN_UNKNOWN,
            3 => TOKEN_CONTROL,
            5 => TOKEN_UNUSED,
            6 => TOKEN_BYTE,
            // Normal and user-defined pieces alike: user-defined ones are listed again among
            // the added tokens below when the tokenizer treats them specially.
            _ => TOKEN_NORMAL,
        });
    }

    // Added tokens override the model's pieces; ids beyond the vocabulary (such as Gemma's
    // image placeholder) have no embedding row and are left out.
    let added_path = src_dir.join("added_tokens.json");
    if added_path.is_file() {
        let added: HashMap<String, usize> = read_json(&added_path)?;
        let mut added: Vec<(usize, String)> = added.into_iter().map(|(k, v)| (v, k)).collect();
        added.sort();
        for (id, text) in added.into_iter().filter(|(id, _)| *id < vocab_size) {
            tokens[id] = text;
            scores[id] = ADDED_TOKEN_SCORE;
            types[id] = TOKEN_USER_DEFINED;
        }
    }
    let config_path = src_dir.join("tokenizer_config.json");
    let config: TokenizerConfig = read_json(&config_path)?;
    let mut decoder: Vec<(usize, &AddedToken)> = config
        .added_tokens_decoder
        .iter()
        .filter_map(|(id, t)| id.parse::<usize>().ok().map(|id| (id, t)))
        .filter(|(id, _)| *id < vocab_size)
        .collect();
    decoder.sort_by_key(|(id, _)| *id);
    for (id, t) in decoder {
        if t.special || looks_special(&t.content) {
            tokens[id] = t.content.clone();
            types[id] = TOKEN_CONTROL;
        } else {
            // User-defined tokens are matched on the raw text, where spaces are still spaces.
            tokens[id] = t.content.replace('\u{2581}', " ");
            types[id] = TOKEN_USER_DEFINED;
        }
        scores[id] = ADDED_TOKEN_SCORE;
    }

    // llama.cpp takes `</s>` (an added, non-special token here) for an end-of-generation
    // marker and makes it a control token at every load, with a warning; the file says so
    // itself. Either way llama.cpp does not match it in plain text.
    if let Some(i) = tokens.iter().position(|t| t == "</s>") {
        types[i] = TOKEN_CONTROL;
    }

    let find = |field: &Option<serde_json::Value>, default: &str| -> Result<u32> {
        let name = match field {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(v) => v["content"].as_str().unwrap_or(default),
            None => default,
        };
        tokens
            .iter()
            .position(|t| t == name)
            .map(|i| i as u32)
            .ok_or_else(|| Error::UnexpectedConfig {
                path: config_path.clone(),
                reason: format!("special token {name:?} is not in the vocabulary"),
            })
    };
    let (bos, eos, unk, pad) = (
        find(&config.bos_token, "<bos>")?,
        find(&config.eos_token, "<eos>")?,
        find(&config.unk_token, "<unk>")?,
        find(&config.pad_token, "<pad>")?,
    );
    Ok(Vocab {
        tokens,
        scores,
        types,
        bos,
        eos,
        unk,
        pad,
        add_bos: config.add_bos_token.unwrap_or(true),
        add_eos: config.add_eos_token.unwrap_or(false),
    })
}

/// Added tokens that tokenizer configs mark as not special although they are control tokens
/// (Gemma's `<unusedN>`, `<mask>`, and `<|...|>` markers).
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// One entry of a SentencePiece model.
#[derive(Debug, PartialEq)]
struct Piece {
    piece: String,
    score: f32,
    /// SentencePiece's type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    kind: i32,
}

/// Reads the pieces of a SentencePiece `ModelProto` (protobuf): field 1 repeats
/// `SentencePiece { piece = 1 (string); score = 2 (float); type = 3 (enum, default normal) }`;
/// the other fields (trainer and normaliser specs) are skipped.
fn parse_sentencepiece(bytes: &[u8]) -> std::result::Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut r = Proto { bytes, pos: 0 };
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == WIRE_LEN {
            let mut m = Proto {
                bytes: r.len_delimited()?,
                pos: 0,
            };
            let mut piece = Piece {
                piece: String::new(),
                score: 0.0,
                kind: 1,
            };
            while !m.done() {
                match m.key()? {
                    (1, WIRE_LEN) => {
                        piece.piece = String::from_utf8(m.len_delimited()?.to_vec())
                            .map_err(|_| format!("piece {} is not UTF-8", pieces.len()))?;
                    }
                    (2, WIRE_FIXED32) => piece.score = f32::from_le_bytes(m.fixed32()?),
                    (3, WIRE_VARINT) => piece.kind = m.varint()? as i32,
                    (_, wire) => m.skip(wire)?,
                }
            }
            pieces.push(piece);
        } else {
            r.skip(wire)?;
        }
    }
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    Ok(pieces)
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A minimal protobuf reader over a byte slice.
struct Proto<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Proto<'a> {
    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or("truncated varint at the end")?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at {}", self.pos))
    }

    fn key(&mut self) -> std::result::Result<(u64, u8), String> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("field of {n} bytes at {} runs past the end", self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn len_delimited(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| "field too long".to_string())?)
    }

    fn fixed32(&mut self) -> std::result::Result<[u8; 4], String> {
        let b = self.take(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    fn skip(&mut self, wire: u8) -> std::result::Result<(), String> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            other => Err(format!("unsupported wire type {other} at {}", self.pos)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata and tensors

fn add_metadata(gguf: &mut Gguf, c: &GemmaConfig, swa_period: u32, m: &Modules, vocab: Vocab) {
    use Value::*;
    let kv = &mut gguf.kv;
    let mut put = |k: &str, v: Value| kv.push((k.to_string(), v));
    let arch = |k: &str| format!("{ARCH}.{k}");
    put("general.architecture", Str(ARCH.into()));
    put(
        "general.name",
        Str("EmbeddingGemma (converted by troupe)".into()),
    );
    put("general.file_type", U32(FILE_TYPE_MOSTLY_Q8_0));
    put("general.alignment", U32(GGUF_ALIGNMENT as u32));
    put(&arch("context_length"), U32(c.max_position_embeddings));
    put(&arch("embedding_length"), U32(c.hidden_size));
    put(&arch("feed_forward_length"), U32(c.intermediate_size));
    put(&arch("block_count"), U32(c.num_hidden_layers));
    put(&arch("attention.head_count"), U32(c.num_attention_heads));
    put(&arch("attention.head_count_kv"), U32(c.num_key_value_heads));
    put(&arch("attention.key_length"), U32(c.head_dim));
    put(&arch("attention.value_length"), U32(c.head_dim));
    put(
        &arch("attention.layer_norm_rms_epsilon"),
        F32(c.rms_norm_eps as f32),
    );
    put(&arch("attention.sliding_window"), U32(c.sliding_window));
    put(&arch("attention.sliding_window_pattern"), U32(swa_period));
    put(&arch("rope.freq_base"), F32(c.rope_theta as f32));
    put(
        &arch("rope.freq_base_swa"),
        F32(c.rope_local_base_freq as f32),
    );
    put(&arch("pooling_type"), U32(m.pooling as u32));
    for d in &m.dense {
        put(
            &arch(&format!("{}_feat_in", d.gguf_name)),
            U32(d.in_features as u32),
        );
        put(
            &arch(&format!("{}_feat_out", d.gguf_name)),
            U32(d.out_features as u32),
        );
    }
    put("tokenizer.ggml.model", Str("llama".into()));
    put("tokenizer.ggml.pre", Str("default".into()));
    put("tokenizer.ggml.tokens", StrArray(vocab.tokens));
    put("tokenizer.ggml.scores", F32Array(vocab.scores));
    put("tokenizer.ggml.token_type", I32Array(vocab.types));
    put("tokenizer.ggml.bos_token_id", U32(vocab.bos));
    put("tokenizer.ggml.eos_token_id", U32(vocab.eos));
    put("tokenizer.ggml.unknown_token_id", U32(vocab.unk));
    put("tokenizer.ggml.padding_token_id", U32(vocab.pad));
    put("tokenizer.ggml.add_bos_token", Bool(vocab.add_bos));
    put("tokenizer.ggml.add_eos_token", Bool(vocab.add_eos));
    // Gemma's SentencePiece model adds no dummy prefix space.
    put("tokenizer.ggml.add_space_prefix", Bool(false));
}

fn add_tensors(gguf: &mut Gguf, c: &GemmaConfig, w: &Rc<SafeTensors>, m: &Modules) -> Result<()> {
    let h = c.hidden_size as usize;
    let ff = c.intermediate_size as usize;
    let q = (c.num_attention_heads * c.head_dim) as usize;
    let kv = (c.num_key_value_heads * c.head_dim) as usize;
    let hd = c.head_dim as usize;
    // (checkpoint name, GGUF name, shape [rows, cols] or [len], source)
    let mut plan: Vec<(String, String, Vec<usize>, &Rc<SafeTensors>)> = vec![(
        "embed_tokens.weight".into(),
        "token_embd.weight".into(),
        vec![c.vocab_size as usize, h],
        w,
    )];
    for i in 0..c.num_hidden_layers {
        let layer: [(&str, &str, Vec<usize>); 13] = [
            ("input_layernorm", "attn_norm", vec![h]),
            ("self_attn.q_proj", "attn_q", vec![q, h]),
            ("self_attn.k_proj", "attn_k", vec![kv, h]),
            ("self_attn.v_proj", "attn_v", vec![kv, h]),
            ("self_attn.q_norm", "attn_q_norm", vec![hd]),
            ("self_attn.k_norm", "attn_k_norm", vec![hd]),
            ("self_attn.o_proj", "attn_output", vec![h, q]),
            ("post_attention_layernorm", "post_attention_norm", vec![h]),
            ("pre_feedforward_layernorm", "ffn_norm", vec![h]),
            ("mlp.gate_proj", "ffn_gate", vec![ff, h]),
            ("mlp.up_proj", "ffn_up", vec![ff, h]),
            ("mlp.down_proj", "ffn_down", vec![h, ff]),
            ("post_feedforward_layernorm", "post_ffw_norm", vec![h]),
        ];
        for (hf, gg, shape) in layer {
            plan.push((
                format!("layers.{i}.{hf}.weight"),
                format!("blk.{i}.{gg}.weight"),
                shape,
                w,
            ));
        }
    }
    plan.push((
        "norm.weight".into(),
        "output_norm.weight".into(),
        vec![h],
        w,
    ));
    for d in &m.dense {
        plan.push((
            "linear.weight".into(),
            format!("{}.weight", d.gguf_name),
            vec![d.out_features, d.in_features],
            &d.weights,
        ));
    }

    for (hf_name, gguf_name, shape, source) in plan {
        source.check(&hf_name, &shape)?;
        // Norm weights are the only 1-D tensors; a 1-D tensor is one row.
        let is_norm = shape.len() == 1;
        let cols = shape[shape.len() - 1];
        let rows = if is_norm { 1 } else { shape[0] };
        gguf.tensors.push(Tensor {
            name: gguf_name,
            // GGUF lists dimensions innermost first.
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: if is_norm {
                GgmlType::F32
            } else {
                GgmlType::Q8_0
            },
            data: Data::Stream {
                source: Rc::clone(source),
                name: hf_name,
                rows,
                cols,
                // Gemma's RMSNorm scales by (1 + w); llama.cpp multiplies by the stored weight.
                shift: if is_norm { 1.0 } else { 0.0 },
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a varint, for building protobuf test input.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn piece(text: &str, score: f32, kind: Option<u64>) -> Vec<u8> {
        let mut m = Vec::new();
        varint(1 << 3 | 2, &mut m);
        varint(text.len() as u64, &mut m);
        m.extend_from_slice(text.as_bytes());
        varint(2 << 3 | 5, &mut m);
        m.extend_from_slice(&score.to_le_bytes());
        if let Some(k) = kind {
            varint(3 << 3, &mut m);
            varint(k, &mut m);
        }
        let mut out = Vec::new();
        varint(1 << 3 | 2, &mut out);
        varint(m.len() as u64, &mut out);
        out.extend(m);
        out
    }

    #[test]
    fn sentencepiece_pieces_are_read_with_scores_and_types() {
        let mut model = Vec::new();
        model.extend(piece("<pad>", 0.0, Some(3)));
        model.extend(piece("\u{2581}the", -3.5, None));
        // A trainer spec (field 2) between pieces is skipped.
        varint(2 << 3 | 2, &mut model);
        varint(3, &mut model);
        model.extend_from_slice(&[8, 150, 1]);
        model.extend(piece("<0x0A>", 0.0, Some(6)));
        let pieces = parse_sentencepiece(&model).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece {
                    piece: "<pad>".into(),
                    score: 0.0,
                    kind: 3
                },
                Piece {
                    piece: "\u{2581}the".into(),
                    score: -3.5,
                    kind: 1
                },
                Piece {
                    piece: "<0x0A>".into(),
                    score: 0.0,
                    kind: 6
                },
            ]
        );
    }

    #[test]
    fn truncated_sentencepiece_model_is_an_error_not_a_panic() {
        let model = piece("hello", 1.0, None);
        for cut in [1, 3, model.len() - 1] {
            assert!(parse_sentencepiece(&model[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_sentencepiece(&[]).is_err());
    }

    #[test]
    fn gemma_control_looking_added_tokens_are_recognised() {
        assert!(looks_special("<unused42>"));
        assert!(looks_special("<|endoftext|>"));
        assert!(looks_special("<mask>"));
        assert!(!looks_special("<table>"));
        assert!(!looks_special("[multimodal]"));
    }
}
