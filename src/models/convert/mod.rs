//! Conversion of Hugging Face sentence-embedding checkpoints to GGUF files that llama.cpp loads
//! as embedding models: BERT (all-MiniLM-L6-v2 and its siblings, this module) and Gemma3
//! encoders (EmbeddingGemma, [`gemma`]). [`convert_checkpoint`] picks by `config.json`.
//!
//! No model hub is reachable from the machines troupe is built on, and no package ships an
//! embedding model as GGUF, so troupe converts the checkpoint itself (see `MODELS.md`). The input
//! is a sentence-transformers folder: `config.json`, `model.safetensors`, `vocab.txt`,
//! `tokenizer.json` and `1_Pooling/config.json`. The output is GGUF v3 for llama.cpp's `bert`
//! architecture:
//!
//! - the 2-D weight matrices of the blocks and the token embeddings as q8_0 (round to nearest,
//!   blocks of 32 with an f16 scale, the same rule as ggml's reference quantiser);
//! - everything else (norms, biases, `position_embd`, `token_types`) as F32: llama.cpp's CPU
//!   back end aborts on F16 position or token-type embeddings;
//! - the WordPiece vocabulary in llama.cpp's convention: a word-initial token `foo` becomes
//!   `▁foo`, a continuation `##bar` becomes `bar`, special tokens stay as they are.
//!
//! The conversion is deterministic (fixed key and tensor order, no timestamps): the same
//! checkpoint always gives byte-identical output, so a model file can be pinned by its sha256.
//! The file is written to a temporary file beside the target and renamed into place.
//!
//! Checkpoint tensors are read from the file as they are written out, a block of rows at a
//! time, so converting a checkpoint of several GB needs little memory.
//!
//! Pure file work: no llama.cpp, no threads, no dependency on other troupe modules.

pub mod gemma;

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use half::f16;
use serde::Deserialize;

/// Errors of the checkpoint conversion. Each names the file at fault and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the checkpoint folder is missing.
    #[error(
        "checkpoint file {path} is missing; the folder must hold the whole sentence-transformers checkpoint (extract it again, e.g. with `troupe models pull`)"
    )]
    MissingFile { path: PathBuf },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A JSON file of the checkpoint does not parse.
    #[error("{path} is not valid JSON ({source}); extract the checkpoint again")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `model.safetensors` is truncated, corrupt, or lacks a tensor the model needs.
    #[error(
        "{path} is not a usable safetensors file: {reason}; extract the checkpoint again and check its sha256"
    )]
    BadSafetensors { path: PathBuf, reason: String },
    /// The checkpoint is valid but not a model this converter handles.
    #[error(
        "unexpected checkpoint configuration in {path}: {reason}; only BERT (like all-MiniLM-L6-v2) and Gemma3 (EmbeddingGemma) sentence-embedding checkpoints can be converted"
    )]
    UnexpectedConfig { path: PathBuf, reason: String },
}

/// Result of the conversion functions.
pub type Result<T> = std::result::Result<T, Error>;

/// Converts the sentence-embedding checkpoint in `src_dir` to a q8_0 GGUF file at `out_path`,
/// choosing the converter by `config.json`'s `model_type` (`bert`, or `gemma3_text` for
/// EmbeddingGemma).
pub fn convert_checkpoint(src_dir: &Path, out_path: &Path) -> Result<()> {
    #[derive(Deserialize)]
    struct ModelType {
        #[serde(default)]
        model_type: Option<String>,
    }
    let config_path = src_dir.join("config.json");
    let t: ModelType = read_json(&config_path)?;
    match t.model_type.as_deref() {
        None | Some("bert") => convert_bert_checkpoint(src_dir, out_path),
        Some(gemma::MODEL_TYPE) => gemma::convert_gemma_embedding_checkpoint(src_dir, out_path),
        Some(other) => Err(Error::UnexpectedConfig {
            path: config_path,
            reason: format!("model_type is {other:?}"),
        }),
    }
}

/// Converts the BERT sentence-embedding checkpoint in `src_dir` to a q8_0 GGUF file at
/// `out_path`.
///
/// The file appears atomically: it is written to a temporary file in the same directory and
/// renamed over `out_path` only when complete. The same input always gives the same bytes.
pub fn convert_bert_checkpoint(src_dir: &Path, out_path: &Path) -> Result<()> {
    let config_path = src_dir.join("config.json");
    let config: BertConfig = read_json(&config_path)?;
    config.validate(&config_path)?;
    let pooling = read_pooling(&src_dir.join("1_Pooling").join("config.json"))?;
    let vocab = read_vocab(src_dir, &config)?;
    let weights = SafeTensors::open(&src_dir.join("model.safetensors"))?;

    let mut gguf = Gguf::default();
    add_metadata(&mut gguf, &config, pooling, vocab);
    add_tensors(&mut gguf, &config, &weights)?;
    drop(weights);

    write_atomically(out_path, |w| gguf.write_to(w))?;
    tracing::info!(
        src = %src_dir.display(),
        out = %out_path.display(),
        tensors = gguf.tensors.len(),
        "converted BERT checkpoint to GGUF"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checkpoint configuration

/// The fields of a Hugging Face BERT `config.json` the conversion needs.
#[derive(Debug, Deserialize)]
struct BertConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: u32,
    hidden_size: u32,
    intermediate_size: u32,
    num_hidden_layers: u32,
    num_attention_heads: u32,
    max_position_embeddings: u32,
    #[serde(default = "default_type_vocab_size")]
    type_vocab_size: u32,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn default_type_vocab_size() -> u32 {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

impl BertConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let fail = |reason: String| {
            Err(Error::UnexpectedConfig {
                path: path.to_path_buf(),
                reason,
            })
        };
        if let Some(t) = &self.model_type
            && t != "bert"
        {
            return fail(format!("model_type is {t:?}, expected \"bert\""));
        }
        if let Some(act) = &self.hidden_act
            && act != "gelu"
        {
            return fail(format!(
                "hidden_act is {act:?}; llama.cpp's bert architecture implements only \"gelu\""
            ));
        }
        if let Some(p) = &self.position_embedding_type
            && p != "absolute"
        {
            return fail(format!(
                "position_embedding_type is {p:?}, expected \"absolute\""
            ));
        }
        if self.num_hidden_layers == 0 || self.num_attention_heads == 0 {
            return fail("num_hidden_layers and num_attention_heads must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        // q8_0 quantises rows in blocks of 32 values.
        for (what, n) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
        ] {
            if n == 0 || !(n as usize).is_multiple_of(Q8_0_BLOCK) {
                return fail(format!(
                    "{what} {n} is not a positive multiple of {Q8_0_BLOCK} (needed for q8_0)"
                ));
            }
        }
        if self.max_position_embeddings == 0 || self.type_vocab_size == 0 {
            return fail("max_position_embeddings and type_vocab_size must be positive".into());
        }
        Ok(())
    }
}

/// llama.cpp's pooling types (`LLAMA_POOLING_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean = 1,
    Cls = 2,
}

/// Reads sentence-transformers' `1_Pooling/config.json`: mean or CLS pooling.
fn read_pooling(path: &Path) -> Result<Pooling> {
    let v: serde_json::Value = read_json(path)?;
    let flag = |key: &str| v.get(key).and_then(serde_json::Value::as_bool) == Some(true);
    let modes = [
        "pooling_mode_mean_tokens",
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ];
    let on: Vec<&str> = modes.iter().copied().filter(|m| flag(m)).collect();
    match on.as_slice() {
        ["pooling_mode_mean_tokens"] => Ok(Pooling::Mean),
        ["pooling_mode_cls_token"] => Ok(Pooling::Cls),
        _ => Err(Error::UnexpectedConfig {
            path: path.to_path_buf(),
            reason: format!(
                "pooling modes {on:?} are enabled; exactly one of mean or cls pooling is supported"
            ),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

/// GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp reads them.
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;

/// The vocabulary in llama.cpp's form, with the ids of the special tokens.
struct Vocab {
    tokens: Vec<String>,
    token_types: Vec<i32>,
    lowercase: bool,
    unk: u32,
    sep: u32,
    pad: u32,
    cls: u32,
    mask: u32,
}

/// Reads `vocab.txt` (one WordPiece token a line; the line number is the id) and
/// `tokenizer.json` (which tokens are special, the unknown token, lower-casing).
fn read_vocab(src_dir: &Path, config: &BertConfig) -> Result<Vocab> {
    let vocab_path = src_dir.join("vocab.txt");
    let text = read_text(&vocab_path)?;
    let mut raw: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // A trailing newline leaves one empty element; any other empty line is a real (odd) token.
    if raw.last() == Some(&"") {
        raw.pop();
    }
    if raw.len() != config.vocab_size as usize {
        return Err(Error::UnexpectedConfig {
            path: vocab_path,
            reason: format!(
                "it has {} tokens but config.json says vocab_size {}",
                raw.len(),
                config.vocab_size
            ),
        });
    }

    let tok_path = src_dir.join("tokenizer.json");
    let tok: serde_json::Value = read_json(&tok_path)?;
    let model = &tok["model"];
    if model["type"].as_str() != Some("WordPiece") {
        return Err(Error::UnexpectedConfig {
            path: tok_path,
            reason: format!("tokenizer model is {}, expected WordPiece", model["type"]),
        });
    }
    let normalizer = &tok["normalizer"];
    let lowercase = match normalizer["type"].as_str() {
        Some("BertNormalizer") => normalizer["lowercase"].as_bool().unwrap_or(true),
        other => {
            return Err(Error::UnexpectedConfig {
                path: tok_path,
                reason: format!("normalizer is {other:?}, expected BertNormalizer"),
            });
        }
    };
    let special: Vec<&str> = tok["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["special"].as_bool() == Some(true))
                .filter_map(|t| t["content"].as_str())
                .collect()
        })
        .unwrap_or_default();

    let id_of: HashMap<&str, u32> = raw
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, i as u32))
        .collect();
    let find = |name: &str| {
        id_of
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnexpectedConfig {
                path: src_dir.join("vocab.txt"),
                reason: format!("special token {name:?} is not in the vocabulary"),
            })
    };
    let unk_name = model["unk_token"].as_str().unwrap_or("[UNK]");
    let (unk, sep, pad, cls, mask) = (
        find(unk_name)?,
        find("[SEP]")?,
        find("[PAD]")?,
        find("[CLS]")?,
        find("[MASK]")?,
    );
    let control = |i: u32, t: &str| special.contains(&t) || [unk, sep, pad, cls, mask].contains(&i);

    let mut tokens = Vec::with_capacity(raw.len());
    let mut token_types = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        if control(i as u32, t) {
            tokens.push((*t).to_string());
            token_types.push(TOKEN_TYPE_CONTROL);
        } else {
            // llama.cpp's WordPiece tokenizer prefixes every word with the phantom space U+2581
            // and looks up continuations bare.
            tokens.push(match t.strip_prefix("##") {
                Some(rest) => rest.to_string(),
                None => format!("\u{2581}{t}"),
            });
            token_types.push(TOKEN_TYPE_NORMAL);
        }
    }
    Ok(Vocab {
        tokens,
        token_types,
        lowercase,
        unk,
        sep,
        pad,
        cls,
        mask,
    })
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata and tensors

/// `general.file_type` for a file whose big matrices are q8_0 (`LLAMA_FTYPE_MOSTLY_Q8_0`).
const FILE_TYPE_MOSTLY_Q8_0: u32 = 7;

fn add_metadata(gguf: &mut Gguf, c: &BertConfig, pooling: Pooling, vocab: Vocab) {
    use Value::*;
    let kv = &mut gguf.kv;
    let mut put = |k: &str, v: Value| kv.push((k.to_string(), v));
    put("general.architecture", Str("bert".into()));
    put(
        "general.name",
        Str("BERT sentence embeddings (converted by troupe)".into()),
    );
    put("general.file_type", U32(FILE_TYPE_MOSTLY_Q8_0));
    put("general.alignment", U32(GGUF_ALIGNMENT as u32));
    put("bert.context_length", U32(c.max_position_embeddings));
    put("bert.embedding_length", U32(c.hidden_size));
    put("bert.feed_forward_length", U32(c.intermediate_size));
    put("bert.block_count", U32(c.num_hidden_layers));
    put("bert.attention.head_count", U32(c.num_attention_heads));
    put(
        "bert.attention.layer_norm_epsilon",
        F32(c.layer_norm_eps as f32),
    );
    put("bert.attention.causal", Bool(false));
    put("bert.pooling_type", U32(pooling as u32));
    put("tokenizer.ggml.model", Str("bert".into()));
    // llama.cpp ignores the pre-tokenizer for WordPiece vocabularies; "default" says so.
    put("tokenizer.ggml.pre", Str("default".into()));
    put("tokenizer.ggml.token_type_count", U32(c.type_vocab_size));
    put("tokenizer.ggml.tokens", StrArray(vocab.tokens));
    put("tokenizer.ggml.token_type", I32Array(vocab.token_types));
    // BertNormalizer: strip_accents follows lowercase, which llama.cpp also defaults to.
    put("tokenizer.ggml.normalizer.lowercase", Bool(vocab.lowercase));
    put("tokenizer.ggml.bos_token_id", U32(vocab.cls));
    // No eos token: WordPiece ends a text with [SEP] (the separator below). Naming [SEP] as eos
    // made llama.cpp warn on every load that eos is not an end-of-generation token.
    put("tokenizer.ggml.unknown_token_id", U32(vocab.unk));
    // Sic: llama.cpp spells this key "seperator".
    put("tokenizer.ggml.seperator_token_id", U32(vocab.sep));
    put("tokenizer.ggml.padding_token_id", U32(vocab.pad));
    put("tokenizer.ggml.cls_token_id", U32(vocab.cls));
    put("tokenizer.ggml.mask_token_id", U32(vocab.mask));
    put("tokenizer.ggml.add_bos_token", Bool(true));
    // [CLS] text [SEP]: the separator ends the text, not an eos token.
    put("tokenizer.ggml.add_eos_token", Bool(false));
    put("tokenizer.ggml.add_sep_token", Bool(true));
}

/// How a tensor is stored in the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    F32,
    Q8_0,
}

fn add_tensors(gguf: &mut Gguf, c: &BertConfig, w: &SafeTensors) -> Result<()> {
    let (h, ff) = (c.hidden_size as usize, c.intermediate_size as usize);
    let mut plan: Vec<(String, String, Vec<usize>, Store)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            "token_embd.weight".into(),
            vec![c.vocab_size as usize, h],
            Store::Q8_0,
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            "position_embd.weight".into(),
            vec![c.max_position_embeddings as usize, h],
            Store::F32,
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            "token_types.weight".into(),
            vec![c.type_vocab_size as usize, h],
            Store::F32,
        ),
        (
            "embeddings.LayerNorm.weight".into(),
            "token_embd_norm.weight".into(),
            vec![h],
            Store::F32,
        ),
        (
            "embeddings.LayerNorm.bias".into(),
            "token_embd_norm.bias".into(),
            vec![h],
            Store::F32,
        ),
    ];
    for i in 0..c.num_hidden_layers {
        let layer: [(&str, &str, Vec<usize>, Vec<usize>); 8] = [
            ("attention.self.query", "attn_q", vec![h, h], vec![h]),
            ("attention.self.key", "attn_k", vec![h, h], vec![h]),
            ("attention.self.value", "attn_v", vec![h, h], vec![h]),
            ("attention.output.dense", "attn_output", vec![h, h], vec![h]),
            (
                "attention.output.LayerNorm",
                "attn_output_norm",
                vec![h],
                vec![h],
            ),
            ("intermediate.dense", "ffn_up", vec![ff, h], vec![ff]),
            ("output.dense", "ffn_down", vec![h, ff], vec![h]),
            ("output.LayerNorm", "layer_output_norm", vec![h], vec![h]),
        ];
        for (hf, gg, weight_shape, bias_shape) in layer {
            let weight_store = if weight_shape.len() == 2 {
                Store::Q8_0
            } else {
                Store::F32
            };
            plan.push((
                format!("encoder.layer.{i}.{hf}.weight"),
                format!("blk.{i}.{gg}.weight"),
                weight_shape,
                weight_store,
            ));
            plan.push((
                format!("encoder.layer.{i}.{hf}.bias"),
                format!("blk.{i}.{gg}.bias"),
                bias_shape,
                Store::F32,
            ));
        }
    }

    for (hf_name, gguf_name, shape, store) in plan {
        let values = w.tensor_f32(&hf_name, &shape)?;
        // GGUF lists dimensions innermost first; a row-major [rows, cols] matrix is ne = [cols, rows].
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let (ggml_type, data) = match store {
            Store::F32 => (GgmlType::F32, f32_bytes(&values)),
            Store::Q8_0 => (GgmlType::Q8_0, quantize_q8_0(&values)),
        };
        gguf.tensors.push(Tensor {
            name: gguf_name,
            dims,
            ggml_type,
            data: Data::Bytes(data),
        });
    }
    Ok(())
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Values per q8_0 block.
const Q8_0_BLOCK: usize = 32;

/// Quantises `values` (a multiple of 32 long) to q8_0: per block of 32, an f16 scale
/// `d = max|x| / 127` followed by 32 signed bytes `round(x / d)`, rounding half away from zero.
/// This is ggml's reference quantiser, so the output is deterministic across machines.
fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / Q8_0_BLOCK * (2 + Q8_0_BLOCK));
    for block in values.chunks(Q8_0_BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // `as i8` saturates; |x * id| <= 127 up to rounding anyway.
        out.extend(block.iter().map(|v| ((v * id).round() as i8) as u8));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// A safetensors file: an 8-byte little-endian header length, a JSON header mapping names to
/// dtype, shape and byte range, then the data. Only the header is held in memory; tensors are
/// read from the file when needed (a 1.2 GB checkpoint is never loaded whole).
struct SafeTensors {
    path: PathBuf,
    file: fs::File,
    data_start: u64,
    entries: HashMap<String, StEntry>,
}

#[derive(Debug, Deserialize)]
struct StEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

impl SafeTensors {
    fn open(path: &Path) -> Result<Self> {
        let io_err = |source: io::Error| read_error(path, source);
        let mut file = fs::File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let bad = |reason: String| Error::BadSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|_| bad("the file is shorter than its 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        let data_start = header_len
            .checked_add(8)
            .filter(|&end| end <= file_len)
            .ok_or_else(|| bad(format!("header length {header_len} exceeds the file size")))?;
        let mut header_bytes = vec![0u8; header_len as usize];
        file.read_exact(&mut header_bytes).map_err(io_err)?;
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header_bytes)
            .map_err(|e| bad(format!("the header is not a JSON object ({e})")))?;
        let data_len = file_len - data_start;
        let mut entries = HashMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let e: StEntry = serde_json::from_value(v)
                .map_err(|err| bad(format!("bad header entry for {name}: {err}")))?;
            let [begin, end] = e.data_offsets;
            if begin > end || end > data_len {
                return Err(bad(format!(
                    "tensor {name} has data offsets {begin}..{end} outside the {data_len}-byte data"
                )));
            }
            entries.insert(normalise_tensor_name(&name), e);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start,
            entries,
        })
    }

    /// Checks that tensor `name` exists with `shape` and a float dtype whose size matches its
    /// byte range; returns the width of one value in bytes.
    fn check(&self, name: &str, shape: &[usize]) -> Result<usize> {
        let bad = |reason: String| Error::BadSafetensors {
            path: self.path.clone(),
            reason,
        };
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
        if e.shape != shape {
            return Err(bad(format!(
                "tensor {name} has shape {:?}, the configuration implies {shape:?}",
                e.shape
            )));
        }
        let n: usize = shape.iter().product();
        let width = match e.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => return Err(bad(format!("tensor {name} has unsupported dtype {other}"))),
        };
        let [begin, end] = e.data_offsets;
        if end - begin != (n * width) as u64 {
            return Err(bad(format!(
                "tensor {name} has {} bytes, its shape and dtype need {}",
                end - begin,
                n * width
            )));
        }
        Ok(width)
    }

    /// The tensor `name` as f32 values, checked to have `shape`.
    fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check(name, shape)?;
        let n: usize = shape.iter().product();
        self.read_f32(name, 0, n).map_err(|source| Error::Io {
            action: "could not read",
            path: self.path.clone(),
            source,
        })
    }

    /// `count` values of tensor `name` (already [`Self::check`]ed) from value `first` on, as f32.
    fn read_f32(&self, name: &str, first: usize, count: usize) -> io::Result<Vec<f32>> {
        let e = self.entries.get(name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("tensor {name} is missing"))
        })?;
        let width = if e.dtype == "F32" { 4 } else { 2 };
        let offset = self.data_start + e.data_offsets[0] + (first * width) as u64;
        let mut raw = vec![0u8; count * width];
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut raw)?;
        Ok(match e.dtype.as_str() {
            "F32" => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "F16" => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}

/// Maps the spellings older BERT checkpoints use onto the current ones: a `bert.` prefix, and
/// LayerNorm `gamma`/`beta` for `weight`/`bias`.
fn normalise_tensor_name(name: &str) -> String {
    let name = name.strip_prefix("bert.").unwrap_or(name);
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF v3 writer

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const GGUF_VERSION: u32 = 3;
const GGUF_ALIGNMENT: usize = 32;

/// The ggml tensor types this converter writes (`GGML_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgmlType {
    F32 = 0,
    Q8_0 = 8,
}

/// GGUF metadata value types (`GGUF_TYPE_*`).
const GGUF_TYPE_UINT32: u32 = 4;
const GGUF_TYPE_INT32: u32 = 5;
const GGUF_TYPE_FLOAT32: u32 = 6;
const GGUF_TYPE_BOOL: u32 = 7;
const GGUF_TYPE_STRING: u32 = 8;
const GGUF_TYPE_ARRAY: u32 = 9;

/// A metadata value.
#[derive(Debug, Clone)]
enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    F32Array(Vec<f32>),
}

struct Tensor {
    name: String,
    /// Dimensions, innermost first (ggml's `ne`).
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Data,
}

/// A tensor's bytes: in memory, or converted from a checkpoint tensor while the file is written.
enum Data {
    Bytes(Vec<u8>),
    /// Rows of a 2-D (or 1-D: one row) safetensors tensor, `shift` added to every value (Gemma
    /// stores RMSNorm weights as `w` for a `1 + w` scale), stored as `ggml_type`. Converted a
    /// block of rows at a time, so a large tensor is never held whole in memory.
    Stream {
        source: Rc<SafeTensors>,
        name: String,
        rows: usize,
        cols: usize,
        shift: f32,
    },
}

/// Values read and converted per step when streaming a tensor (4 MB of f32).
const STREAM_VALUES: usize = 1 << 20;

impl Tensor {
    /// Bytes of the tensor's data in the file (before alignment padding).
    fn len(&self) -> usize {
        match &self.data {
            Data::Bytes(b) => b.len(),
            Data::Stream { rows, cols, .. } => {
                let n = rows * cols;
                match self.ggml_type {
                    GgmlType::F32 => n * 4,
                    GgmlType::Q8_0 => n / Q8_0_BLOCK * (2 + Q8_0_BLOCK),
                }
            }
        }
    }

    fn write_data(&self, w: &mut dyn Write) -> io::Result<()> {
        let (source, name, rows, cols, shift) = match &self.data {
            Data::Bytes(b) => return w.write_all(b),
            Data::Stream {
                source,
                name,
                rows,
                cols,
                shift,
            } => (source, name, *rows, *cols, *shift),
        };
        let step_rows = (STREAM_VALUES / cols).max(1);
        let mut row = 0;
        while row < rows {
            let n = step_rows.min(rows - row);
            let mut values = source.read_f32(name, row * cols, n * cols).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading {name} from {}: {e}", source.path.display()),
                )
            })?;
            if shift != 0.0 {
                values.iter_mut().for_each(|v| *v += shift);
            }
            match self.ggml_type {
                GgmlType::F32 => w.write_all(&f32_bytes(&values))?,
                GgmlType::Q8_0 => w.write_all(&quantize_q8_0(&values))?,
            }
            row += n;
        }
        Ok(())
    }
}

/// A GGUF file under construction: metadata and tensors in the order they will be written.
#[derive(Default)]
struct Gguf {
    kv: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

impl Gguf {
    /// Writes the file: header, metadata, tensor infos, padding to the alignment, tensor data
    /// (each tensor starting on an aligned offset).
    fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        w.write_all(GGUF_MAGIC)?;
        w.write_all(&GGUF_VERSION.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.kv.len() as u64).to_le_bytes())?;
        let mut pos = 4 + 4 + 8 + 8;
        for (key, value) in &self.kv {
            pos += write_str(w, key)?;
            pos += write_value(w, value)?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            pos += write_str(w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&(t.ggml_type as u32).to_le_bytes())?;
            w.write_all(&(offset as u64).to_le_bytes())?;
            pos += 4 + 8 * t.dims.len() + 4 + 8;
            offset += t.len().next_multiple_of(GGUF_ALIGNMENT);
        }
        write_padding(w, pos)?;
        for t in &self.tensors {
            t.write_data(w)?;
            write_padding(w, t.len())?;
        }
        Ok(())
    }
}

fn write_padding(w: &mut dyn Write, len: usize) -> io::Result<()> {
    let pad = len.next_multiple_of(GGUF_ALIGNMENT) - len;
    w.write_all(&[0u8; GGUF_ALIGNMENT][..pad])
}

/// Writes a GGUF string (u64 length, UTF-8 bytes, no terminator); returns the bytes written.
fn write_str(w: &mut dyn Write, s: &str) -> io::Result<usize> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(8 + s.len())
}

/// Writes a metadata value with its type tag; returns the bytes written.
fn write_value(w: &mut dyn Write, v: &Value) -> io::Result<usize> {
    let tag = |w: &mut dyn Write, t: u32| w.write_all(&t.to_le_bytes());
    Ok(match v {
        Value::U32(x) => {
            tag(w, GGUF_TYPE_UINT32)?;
            w.write_all(&x.to_le_bytes())?;
            8
        }
        Value::F32(x) => {
            tag(w, GGUF_TYPE_FLOAT32)?;
            w.write_all(&x.to_le_bytes())?;
            8
        }
        Value::Bool(x) => {
            tag(w, GGUF_TYPE_BOOL)?;
            w.write_all(&[u8::from(*x)])?;
            5
        }
        Value::Str(s) => {
            tag(w, GGUF_TYPE_STRING)?;
            4 + write_str(w, s)?
        }
        Value::StrArray(items) => {
            tag(w, GGUF_TYPE_ARRAY)?;
            tag(w, GGUF_TYPE_STRING)?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            let mut n = 16;
            for s in items {
                n += write_str(w, s)?;
            }
            n
        }
        Value::I32Array(items) => {
            tag(w, GGUF_TYPE_ARRAY)?;
            tag(w, GGUF_TYPE_INT32)?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for x in items {
                w.write_all(&x.to_le_bytes())?;
            }
            16 + 4 * items.len()
        }
        Value::F32Array(items) => {
            tag(w, GGUF_TYPE_ARRAY)?;
            tag(w, GGUF_TYPE_FLOAT32)?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for x in items {
                w.write_all(&x.to_le_bytes())?;
            }
            16 + 4 * items.len()
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Files

/// A failed read of a checkpoint file: missing, or unreadable.
pub(super) fn read_error(path: &Path, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound {
        Error::MissingFile {
            path: path.to_path_buf(),
        }
    } else {
        Error::Io {
            action: "could not read",
            path: path.to_path_buf(),
            source,
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| read_error(path, source))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `out_path` through a temporary file in the same directory, renamed into place once
/// complete and flushed, so readers never see a half-written model.
fn write_atomically(
    out_path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let dir = match out_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io_err("could not create directory", dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".troupe-convert-")
        .suffix(".gguf.tmp")
        .tempfile_in(dir)
        .map_err(io_err("could not create a temporary file in", dir))?;
    let mut buf = BufWriter::with_capacity(1 << 20, tmp.as_file());
    write(&mut buf)
        .and_then(|()| buf.flush())
        .map_err(io_err("could not write", tmp.path()))?;
    drop(buf);
    tmp.as_file()
        .sync_all()
        .map_err(io_err("could not flush", tmp.path()))?;
    tmp.persist(out_path)
        .map_err(|e| io_err("could not rename the converted model to", out_path)(e.error))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Test support shared with the embedding tests: where the MiniLM checkpoint lives.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    /// sha256 of all-MiniLM-L6-v2's `model.safetensors` (see MODELS.md).
    pub(crate) const MINILM_SAFETENSORS_SHA256: &str =
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

    /// The all-MiniLM-L6-v2 checkpoint folder: `$TROUPE_MINILM_DIR` if set (then it must hold
    /// the checkpoint), else `<cache>/sources/all-minilm-l6-v2` where the model puller extracts
    /// it. An error when it is missing: the test set-up always pulls it.
    pub(crate) fn minilm_dir() -> anyhow::Result<PathBuf> {
        let (dir, explicit) = match std::env::var_os("TROUPE_MINILM_DIR").filter(|v| !v.is_empty())
        {
            Some(d) => (PathBuf::from(d), true),
            None => (
                crate::paths::cache_dir()
                    .join("sources")
                    .join("all-minilm-l6-v2"),
                false,
            ),
        };
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            if explicit {
                anyhow::bail!(
                    "TROUPE_MINILM_DIR={} does not hold model.safetensors",
                    dir.display()
                );
            }
            // Not a skip: scripts/test.sh pulls the model, which extracts the checkpoint here, so
            // a missing checkpoint means the set-up did not run and the check would be silent.
            anyhow::bail!(
                "no all-MiniLM-L6-v2 checkpoint at {}: run scripts/test.sh (it runs `troupe models pull all-minilm-l6-v2`) or set TROUPE_MINILM_DIR",
                dir.display()
            );
        }
        let digest = sha256_file(&weights)?;
        anyhow::ensure!(
            digest == MINILM_SAFETENSORS_SHA256,
            "{} has sha256 {digest}, expected {MINILM_SAFETENSORS_SHA256}; extract it again",
            weights.display()
        );
        Ok(dir)
    }

    /// The EmbeddingGemma GGUF and checkpoint folder when `troupe models pull
    /// embeddinggemma-300m` has put them in the cache, else `None` after printing why the caller
    /// skips: the pull downloads 1.1 GB, which the test set-up does not do.
    pub(crate) fn embeddinggemma() -> Option<(PathBuf, PathBuf)> {
        let entry = crate::models::catalog::find("embeddinggemma-300m")?;
        let store = crate::models::Store::default();
        let checkpoint = crate::models::pull::sources_dir(entry);
        if store.status(entry) != crate::models::Status::Present
            || !checkpoint.join("model.safetensors").is_file()
        {
            eprintln!(
                "skipped: embeddinggemma-300m is not in {} (run `troupe models pull embeddinggemma-300m`, 1.1 GB)",
                store.dir().display()
            );
            return None;
        }
        Some((store.path(entry), checkpoint))
    }

    /// Hex sha256 of a file.
    pub(crate) fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
        use sha2::Digest;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{Context, ensure};

    #[test]
    fn q8_0_quantisation_rounds_to_nearest_with_f16_scale() {
        let mut block: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        block[5] = 127.0 * 0.5; // the block maximum: d = 0.5
        let q = quantize_q8_0(&block);
        assert_eq!(q.len(), 34);
        assert_eq!(f16::from_le_bytes([q[0], q[1]]).to_f32(), 0.5);
        // -16 / 0.5 = -32, -15.75 would round away from zero; check a few exactly.
        assert_eq!(q[2] as i8, -32);
        assert_eq!(q[2 + 5] as i8, 127);
        assert_eq!(q[2 + 31] as i8, 30);
        // An all-zero block has scale 0 and zero quants.
        assert_eq!(quantize_q8_0(&[0.0; 32]), vec![0u8; 34]);
    }

    #[test]
    fn gguf_header_layout_is_aligned() -> anyhow::Result<()> {
        let mut g = Gguf::default();
        g.kv.push(("general.architecture".into(), Value::Str("bert".into())));
        g.tensors.push(Tensor {
            name: "a".into(),
            dims: vec![3],
            ggml_type: GgmlType::F32,
            data: Data::Bytes(f32_bytes(&[1.0, 2.0, 3.0])),
        });
        g.tensors.push(Tensor {
            name: "b".into(),
            dims: vec![1],
            ggml_type: GgmlType::F32,
            data: Data::Bytes(f32_bytes(&[4.0])),
        });
        let mut out = Vec::new();
        g.write_to(&mut out)?;
        ensure!(&out[..4] == b"GGUF");
        ensure!(u32::from_le_bytes(out[4..8].try_into()?) == 3);
        ensure!(u64::from_le_bytes(out[8..16].try_into()?) == 2);
        ensure!(u64::from_le_bytes(out[16..24].try_into()?) == 1);
        // Data starts aligned; tensor b starts 32 bytes after tensor a.
        let data_len: usize = 32 + 4;
        ensure!(out.len() % GGUF_ALIGNMENT == 0);
        let data_start = out.len() - data_len.next_multiple_of(GGUF_ALIGNMENT);
        ensure!(data_start % GGUF_ALIGNMENT == 0);
        ensure!(out[data_start..data_start + 12] == f32_bytes(&[1.0, 2.0, 3.0])[..]);
        ensure!(out[data_start + 32..data_start + 36] == f32_bytes(&[4.0])[..]);
        Ok(())
    }

    #[test]
    fn bert_metadata_names_no_eos_token_so_llama_cpp_does_not_warn() -> anyhow::Result<()> {
        let src = test_support::minilm_dir()?;
        let config: BertConfig = read_json(&src.join("config.json"))?;
        let pooling = read_pooling(&src.join("1_Pooling").join("config.json"))?;
        let vocab = read_vocab(&src, &config)?;
        let mut gguf = Gguf::default();
        add_metadata(&mut gguf, &config, pooling, vocab);
        let key = |k: &str| gguf.kv.iter().find(|(name, _)| name == k).map(|(_, v)| v);
        // llama.cpp warns on every load when the eos token is not an end-of-generation token,
        // which [SEP] is not; the separator key carries it instead.
        ensure!(key("tokenizer.ggml.eos_token_id").is_none());
        ensure!(matches!(
            key("tokenizer.ggml.seperator_token_id"),
            Some(Value::U32(102))
        ));
        ensure!(matches!(
            key("tokenizer.ggml.add_eos_token"),
            Some(Value::Bool(false))
        ));
        Ok(())
    }

    #[test]
    fn embeddinggemma_conversion_reproduces_the_pinned_file() -> anyhow::Result<()> {
        let Some((_, checkpoint)) = test_support::embeddinggemma() else {
            return Ok(());
        };
        let entry = crate::models::catalog::find("embeddinggemma-300m").context("catalog")?;
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("gemma.gguf");
        convert_checkpoint(&checkpoint, &out)?;
        let sha = test_support::sha256_file(&out)?;
        ensure!(
            sha == entry.sha256 && fs::metadata(&out)?.len() == entry.size,
            "converted EmbeddingGemma has sha256 {sha}, the catalog pins {}",
            entry.sha256
        );
        Ok(())
    }

    #[test]
    fn unknown_model_type_is_refused_with_the_supported_ones() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("config.json"), r#"{"model_type": "t5"}"#)?;
        let err = convert_checkpoint(dir.path(), &dir.path().join("out.gguf"))
            .err()
            .context("a T5 checkpoint converted")?
            .to_string();
        ensure!(
            err.contains("\"t5\"") && err.contains("EmbeddingGemma"),
            "{err}"
        );
        ensure!(!dir.path().join("out.gguf").exists());
        Ok(())
    }

    #[test]
    fn missing_checkpoint_names_the_file() {
        let dir = std::env::temp_dir().join("troupe-convert-test-does-not-exist");
        let err = convert_bert_checkpoint(&dir, &dir.join("out.gguf"));
        match err {
            Err(Error::MissingFile { path }) => assert!(path.ends_with("config.json")),
            other => panic!("expected MissingFile, got {other:?}"),
        }
    }

    #[test]
    fn conversion_is_deterministic() -> anyhow::Result<()> {
        let src = test_support::minilm_dir()?;
        let tmp = tempfile::tempdir()?;
        let (a, b) = (tmp.path().join("a.gguf"), tmp.path().join("b.gguf"));
        convert_bert_checkpoint(&src, &a).context("first conversion")?;
        convert_bert_checkpoint(&src, &b).context("second conversion")?;
        let (ha, hb) = (
            test_support::sha256_file(&a)?,
            test_support::sha256_file(&b)?,
        );
        eprintln!(
            "converted all-MiniLM-L6-v2: {} bytes, sha256 {ha}",
            fs::metadata(&a)?.len()
        );
        ensure!(ha == hb, "two conversions differ: {ha} vs {hb}");
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        ensure!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        Ok(())
    }
}
