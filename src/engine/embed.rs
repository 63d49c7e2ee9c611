//! Sentence embeddings with llama.cpp: an [`Embedder`] over a GGUF embedding model (such as
//! all-MiniLM-L6-v2 converted by `models::convert`).
//!
//! Texts are tokenised by the model's own tokenizer, packed several to a `llama_decode` call (one
//! sequence id each, at most the model's training context of tokens per call), pooled by the
//! model's pooling type (mean for MiniLM) and L2-normalised, so a dot product is a cosine.
//! Inputs longer than the training context are truncated, keeping the final separator token,
//! with a warning: llama.cpp refuses longer inputs (see `MODELS.md`, pitfall 3).
//!
//! Threading: an `Embedder` is used from one thread; each `embed` call creates a short-lived
//! llama.cpp context for the call (cheap for an encoder: there is no KV cache), so the context
//! never outlives or leaves the call. The model uses the process-wide [`super::backend`].

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use super::{Error, Result};

/// The most sequences (texts) packed into one decode call.
const MAX_SEQS_PER_DECODE: usize = 64;

/// `LLAMA_FLASH_ATTN_TYPE_DISABLED` (llama.h); `llama_cpp_sys_2` is not a direct dependency.
const FLASH_ATTN_DISABLED: i32 = 0;

/// A loaded GGUF embedding model.
pub struct Embedder {
    model: LlamaModel,
    path: PathBuf,
    threads: i32,
    dim: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("path", &self.path)
            .field("dim", &self.dim)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the GGUF embedding model at `path`, to run on `threads` CPU threads.
    ///
    /// Fails if the file is missing or not a GGUF model, or if the model does not pool its
    /// output into one vector per text (a chat model, for instance).
    pub fn load(path: &Path, threads: i32) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::ModelMissing {
                path: path.to_path_buf(),
            });
        }
        let backend = super::backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| Error::ModelLoad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let not_embedding = |reason: String| Error::NotEmbeddingModel {
            path: path.to_path_buf(),
            reason,
        };
        // llama.cpp pools only when the model says how; without it there is no one vector per text.
        let arch = model
            .meta_val_str("general.architecture")
            .map_err(|e| not_embedding(format!("no general.architecture ({e})")))?;
        match model
            .meta_val_str(&format!("{arch}.pooling_type"))
            .as_deref()
        {
            Ok("1" | "2" | "3") => {}
            Ok(other) => {
                return Err(not_embedding(format!(
                    "{arch}.pooling_type is {other}, not mean, cls or last"
                )));
            }
            Err(_) => {
                return Err(not_embedding(format!(
                    "its metadata sets no {arch}.pooling_type"
                )));
            }
        }
        let dim = usize::try_from(model.n_embd_out())
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| not_embedding(format!("embedding width {}", model.n_embd_out())))?;
        let max_tokens = model.n_ctx_train() as usize;
        if max_tokens < 2 {
            return Err(not_embedding(format!("training context of {max_tokens}")));
        }
        Ok(Self {
            model,
            path: path.to_path_buf(),
            threads: threads.max(1),
            dim,
            max_tokens,
        })
    }

    /// The length of each embedding vector (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The most tokens of one text the model sees (its training context, 512 for MiniLM,
    /// counting the special tokens); longer texts are truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Counts the tokens `text` becomes (with the special tokens), before any truncation.
    /// Lets a caller chunk its input to fit [`Self::max_tokens`].
    pub fn count_tokens(&self, text: &str) -> usize {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), true, false)
            .len()
    }

    /// Embeds `texts`: one L2-normalised vector of [`Self::dim`] floats per text, in order.
    ///
    /// Several texts go into each llama.cpp decode call. Texts longer than
    /// [`Self::max_tokens`] tokens are truncated (with a warning), not rejected.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<Vec<LlamaToken>> = texts.iter().map(|t| self.tokenize(t)).collect();
        // A power of two, so it divides the micro-batch (see `new_context`).
        let n_seq_max = texts.len().min(MAX_SEQS_PER_DECODE).next_power_of_two();
        let mut ctx = self.new_context(n_seq_max)?;
        let mut batch = LlamaBatch::new(self.max_tokens, 1);
        let mut out = Vec::with_capacity(texts.len());

        let mut next = 0;
        while next < seqs.len() {
            // Pack whole texts while they fit the token budget; every text fits alone because
            // `tokenize` truncated it to `max_tokens`.
            batch.clear();
            let first = next;
            let mut used = 0;
            while next < seqs.len()
                && next - first < n_seq_max
                && used + seqs[next].len() <= self.max_tokens
            {
                let seq_id = (next - first) as i32;
                for (pos, &token) in seqs[next].iter().enumerate() {
                    batch
                        .add(token, pos as i32, &[seq_id], true)
                        .map_err(|e| Error::Llama(format!("embedding batch: {e}")))?;
                }
                used += seqs[next].len();
                next += 1;
            }
            ctx.decode(&mut batch).map_err(|e| {
                Error::Decode(format!(
                    "embedding {} texts with {}: {e}",
                    next - first,
                    self.path.display()
                ))
            })?;
            for seq_id in 0..(next - first) {
                let v = ctx.embeddings_seq_ith(seq_id as i32).map_err(|e| {
                    Error::NotEmbeddingModel {
                        path: self.path.clone(),
                        reason: format!("llama.cpp returned no pooled embedding: {e}"),
                    }
                })?;
                out.push(l2_normalised(v));
            }
        }
        Ok(out)
    }

    /// The model's tokens for `text` (with [CLS]/[SEP] or the model's equivalents), truncated
    /// to `max_tokens` keeping the final separator.
    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), true, false);
        if tokens.is_empty() {
            // A model that adds no special tokens, given empty text: embed one special token.
            if let Some(t) = [vocab.sep(), vocab.eos(), vocab.bos()]
                .into_iter()
                .find(|t| t.0 >= 0)
            {
                tokens.push(t);
            }
        }
        if tokens.len() > self.max_tokens {
            tracing::warn!(
                model = %self.path.display(),
                tokens = tokens.len(),
                max_tokens = self.max_tokens,
                "embedding input is longer than the model's context; truncated (chunk it to keep the rest)"
            );
            let last = tokens[tokens.len() - 1];
            let keep_last = last == vocab.sep() || last == vocab.eos();
            tokens.truncate(self.max_tokens);
            if keep_last {
                tokens[self.max_tokens - 1] = last;
            }
        }
        tokens
    }

    /// A context for one `embed` call: room for `max_tokens` tokens across `n_seq_max`
    /// sequences in a single micro-batch (an encoder must see each sequence whole).
    fn new_context(&self, n_seq_max: usize) -> Result<LlamaContext<'_>> {
        // llama.cpp reserves its compute graph for a full micro-batch split evenly across the
        // sequences, and aborts (a failed mul_mat shape assertion) when the micro-batch is not a
        // multiple of `n_seq_max`.
        let n = self.max_tokens.next_multiple_of(n_seq_max) as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n))
            .with_n_batch(n)
            .with_n_ubatch(n)
            .with_n_seq_max(n_seq_max as u32)
            // Every sequence may use the whole context; there is no KV cache to split anyway.
            .with_kv_unified(true)
            .with_embeddings(true)
            // Packing texts into one decode changes which kernels llama.cpp picks, so a text's
            // vector depends slightly on its batch mates. Flash attention widens that (cosine to
            // the text embedded alone down to ~0.9995, against ~0.9999 without) at the same
            // accuracy; a 512-token micro-batch fits comfortably without it.
            .with_flash_attention_policy(FLASH_ATTN_DISABLED)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let backend = super::backend()?;
        self.model
            .new_context(backend, params)
            .map_err(|e| Error::Context {
                path: self.path.clone(),
                cells: n,
                reason: e.to_string(),
            })
    }
}

/// `v` scaled to unit length (left as is if it is all zeros).
fn l2_normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::convert::{convert_bert_checkpoint, test_support::minilm_dir};
    use anyhow::{Context, bail, ensure};
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Prose, code, unicode and one text far beyond 512 tokens (to exercise truncation).
    fn sample_texts() -> Vec<String> {
        let long_code: String = (0..160)
            .map(|i| {
                format!("    let value_{i} = compute_checksum(&buffer[{i}..], {i}) ^ 0x{i:x};\n")
            })
            .collect();
        vec![
            "The quick brown fox jumps over the lazy dog.".to_string(),
            "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}".to_string(),
            "def read_config(path):\n    with open(path) as f:\n        return json.load(f)  # TODO: validate"
                .to_string(),
            "Retrieval-augmented generation pairs a naïve café-quality index with BM25 ranking."
                .to_string(),
            format!("fn checksums(buffer: &[u8]) {{\n{long_code}}}"),
        ]
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    /// The python for the reference script: the project venv if present, else `python3`.
    fn python() -> PathBuf {
        let venv = crate::paths::cache_dir()
            .join("venv")
            .join("bin")
            .join("python");
        if venv.is_file() {
            venv
        } else {
            PathBuf::from("python3")
        }
    }

    /// Runs `scripts/reference_embeddings.py` on `texts`, with a timeout.
    fn reference_embeddings(checkpoint: &Path, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_embeddings.py");
        let python = python();
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(checkpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "could not run {} (install Python 3 and `pip install -r scripts/requirements-dev.txt`)",
                    python.display()
                )
            })?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(serde_json::to_string(texts)?.as_bytes())?;
        drop(stdin);
        let mut stdout = child.stdout.take().context("no stdout")?;
        let mut stderr = child.stderr.take().context("no stderr")?;
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            stdout.read_to_string(&mut s).map(|_| s)
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            stderr.read_to_string(&mut s).map(|_| s)
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("{} timed out after 300 s", script.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = out_reader
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
        let stderr = err_reader
            .join()
            .map_err(|_| anyhow::anyhow!("stderr reader panicked"))??;
        if status.code() == Some(3) {
            bail!(
                "the reference script lacks python modules ({}): run `{} -m pip install -r scripts/requirements-dev.txt`",
                stderr.trim(),
                python.display()
            );
        }
        ensure!(
            status.success(),
            "{} failed ({status}): {stderr}",
            script.display()
        );
        serde_json::from_str(&stdout)
            .with_context(|| format!("reference script printed invalid JSON: {stdout:.200}"))
    }

    /// Converts the MiniLM checkpoint into `dir`.
    fn converted_minilm(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let src = minilm_dir()?;
        let gguf = dir.join("all-minilm-l6-v2.q8_0.gguf");
        convert_bert_checkpoint(&src, &gguf).context("converting all-MiniLM-L6-v2")?;
        Ok((src, gguf))
    }

    #[test]
    fn converted_minilm_matches_numpy_reference() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let (src, gguf) = converted_minilm(tmp.path())?;
        let mut embedder = Embedder::load(&gguf, 2)?;
        ensure!(embedder.dim() == 384, "dim {}", embedder.dim());
        ensure!(
            embedder.max_tokens() == 512,
            "max_tokens {}",
            embedder.max_tokens()
        );

        let texts = sample_texts();
        ensure!(
            embedder.count_tokens(&texts[4]) > 1000,
            "the long text must exceed the context to test truncation"
        );
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let got = embedder.embed(&refs)?;
        let want = reference_embeddings(&src, &texts)?;
        ensure!(got.len() == texts.len() && want.len() == texts.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            ensure!(g.len() == 384 && w.len() == 384);
            let norm = g.iter().map(|x| x * x).sum::<f32>().sqrt();
            ensure!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
            let cos = cosine(g, w);
            eprintln!("text {i}: cosine to numpy reference {cos:.6}");
            ensure!(
                cos > 0.999,
                "text {i} ({:?}...): cosine {cos}",
                texts[i].chars().take(40).collect::<String>()
            );
        }
        Ok(())
    }

    #[test]
    fn converted_embeddinggemma_matches_numpy_reference() -> anyhow::Result<()> {
        let Some((gguf, checkpoint)) = crate::models::convert::test_support::embeddinggemma()
        else {
            return Ok(());
        };
        let mut embedder = Embedder::load(&gguf, 2)?;
        ensure!(embedder.dim() == 768, "dim {}", embedder.dim());
        // Short texts with the model's prompts: the reference leaves out the sliding window.
        let texts: Vec<String> = vec![
            "task: code retrieval | query: read the settings from a JSON file".into(),
            "title: none | text: def read_config(path):\n    with open(path) as f:\n        return json.load(f)  # TODO: validate".into(),
            "title: none | text: fn add(a: i32, b: i32) -> i32 {\n    a + b\n}".into(),
            "title: none | text: Retrieval-augmented generation pairs a naïve café-quality index with BM25 ranking.".into(),
        ];
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let got = embedder.embed(&refs)?;
        let want = reference_embeddings(&checkpoint, &texts)?;
        ensure!(got.len() == texts.len() && want.len() == texts.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            ensure!(g.len() == 768 && w.len() == 768);
            let cos = cosine(g, w);
            eprintln!("text {i}: cosine to numpy reference {cos:.6}");
            // q8_0 weights over 24 layers; a wrong norm shift, rope base, Dense layer or
            // tokenizer gives cosines far below this.
            ensure!(
                cos > 0.999,
                "text {i} ({:?}...): cosine {cos}",
                texts[i].chars().take(40).collect::<String>()
            );
        }
        Ok(())
    }

    #[test]
    fn batched_embedding_matches_one_at_a_time() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let (_, gguf) = converted_minilm(tmp.path())?;
        let mut embedder = Embedder::load(&gguf, 2)?;
        // The samples, an empty text, and more short texts than fit one decode call.
        let mut texts = sample_texts();
        texts.push(String::new());
        texts.extend((0..70).map(|i| format!("item {i}: parse line {} of the config", i * 7)));
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batched = embedder.embed(&refs)?;
        ensure!(batched.len() == texts.len());
        for (i, text) in refs.iter().enumerate() {
            let single = embedder.embed(&[text])?;
            // Not bit for bit: llama.cpp picks its matrix kernels by batch size, and they differ
            // at the level of q8_0 quantisation noise (worst seen: cosine 0.99989). Mixing up
            // sequences or positions would give cosines far below this bound.
            let cos = cosine(&single[0], &batched[i]);
            ensure!(cos > 0.9995, "text {i}: batched vs single cosine {cos}");
        }
        ensure!(embedder.embed(&[])?.is_empty());
        Ok(())
    }

    #[test]
    fn chat_model_is_rejected_as_embedding_model() {
        let path = crate::engine::testutil::test_model();
        match Embedder::load(&path, 1) {
            Err(Error::NotEmbeddingModel { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected NotEmbeddingModel, got {other:?}"),
        }
    }

    #[test]
    fn missing_model_file_is_reported() {
        let path = Path::new("/nonexistent/troupe/embed.gguf");
        match Embedder::load(path, 1) {
            Err(Error::ModelMissing { path: p }) => assert_eq!(p, path),
            other => panic!("expected ModelMissing, got {other:?}"),
        }
    }
}
