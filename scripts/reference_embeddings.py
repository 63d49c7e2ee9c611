#!/usr/bin/env python3
"""Reference sentence embeddings for a BERT or EmbeddingGemma checkpoint, computed independently
of llama.cpp.

The embedding tests (src/engine/embed.rs) compare troupe's GGUF conversion running in llama.cpp
against this script. It shares no code with troupe: it reads the Hugging Face checkpoint itself
(model.safetensors through the `safetensors` numpy API, tokenizer.json through the `tokenizers`
package) and runs the BERT forward pass in numpy, in float64:

    embeddings (word + position + token type) -> LayerNorm
    N x [ self-attention -> add & LayerNorm -> GELU feed-forward -> add & LayerNorm ]
    mean pooling over the attention mask -> L2 normalisation

EmbeddingGemma (config.json model_type "gemma3_text") runs the Gemma3 encoder instead, in float64:

    token embeddings * sqrt(hidden)
    N x [ RMSNorm -> attention (q/k RMSNorm, RoPE with theta 10k on sliding-window layers and
          1M on global ones, bidirectional, grouped key-value heads) -> RMSNorm -> add,
          RMSNorm -> gated tanh-GELU feed-forward -> RMSNorm -> add ]
    RMSNorm -> mean pooling -> Dense 768x3072 -> Dense 3072x768 -> L2 normalisation

where Gemma's RMSNorm scales by (1 + weight). The sliding window (512 tokens) is not applied, so
texts must stay below half of it (the script refuses longer ones).

Padding is turned off (all-MiniLM-L6-v2's tokenizer.json pads to 128, which would average padding
into the mean); inputs longer than the model's context are truncated to it, keeping [CLS] and
[SEP], as troupe's embedder does.

Usage:
    reference_embeddings.py CHECKPOINT_DIR [--max-tokens N] < texts.json > vectors.json

stdin is a JSON list of strings; stdout is a JSON list of vectors (lists of floats), one per text.
Requirements: pip install -r scripts/requirements-dev.txt (numpy, safetensors, tokenizers).
"""

import argparse
import json
import math
import sys
from pathlib import Path

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
except ImportError as e:  # the test reports this message verbatim
    sys.stderr.write(
        f"missing python module: {e.name}; install the development requirements with "
        f"`pip install -r scripts/requirements-dev.txt`\n"
    )
    sys.exit(3)


def erf(x):
    """erf for numpy arrays (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7); numpy has none."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x):
    """The exact (erf) GELU that BERT's "gelu" activation means."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class Bert:
    def __init__(self, folder: Path):
        self.config = json.loads((folder / "config.json").read_text())
        raw = load_file(str(folder / "model.safetensors"))
        self.w = {}
        for name, value in raw.items():
            name = name[len("bert."):] if name.startswith("bert.") else name
            self.w[name] = value.astype(np.float64)
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self.heads = int(self.config["num_attention_heads"])
        self.layers = int(self.config["num_hidden_layers"])

    def linear(self, x, prefix):
        return x @ self.w[prefix + ".weight"].T + self.w[prefix + ".bias"]

    def norm(self, x, prefix):
        return layer_norm(x, self.w[prefix + ".weight"], self.w[prefix + ".bias"], self.eps)

    def forward(self, ids, type_ids, mask):
        """Hidden states [n_tokens, hidden] of one sequence."""
        w = self.w
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(n)]
            + w["embeddings.token_type_embeddings.weight"][type_ids]
        )
        x = self.norm(x, "embeddings.LayerNorm")
        hidden = x.shape[1]
        head_dim = hidden // self.heads
        # Additive attention mask over keys, as in Hugging Face's BERT.
        key_bias = (1.0 - mask)[None, None, :] * -1e9
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def split(t):
                return t.reshape(n, self.heads, head_dim).transpose(1, 0, 2)

            q = split(self.linear(x, p + "attention.self.query"))
            k = split(self.linear(x, p + "attention.self.key"))
            v = split(self.linear(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim) + key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
            x = self.norm(self.linear(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            ff = gelu(self.linear(x, p + "intermediate.dense"))
            x = self.norm(self.linear(ff, p + "output.dense") + x, p + "output.LayerNorm")
        return x


def gelu_tanh(x):
    """The tanh approximation of GELU (Gemma's "gelu_pytorch_tanh")."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


class Gemma:
    """The Gemma3 encoder of EmbeddingGemma with its sentence-transformers Dense layers."""

    def __init__(self, folder: Path):
        self.config = c = json.loads((folder / "config.json").read_text())
        self.hidden = int(c["hidden_size"])
        self.heads = int(c["num_attention_heads"])
        self.kv_heads = int(c["num_key_value_heads"])
        self.head_dim = int(c["head_dim"])
        self.layers = int(c["num_hidden_layers"])
        self.eps = float(c["rms_norm_eps"])
        self.scale = float(c.get("query_pre_attn_scalar", self.head_dim)) ** -0.5
        self.theta_global = float(c.get("rope_theta", 1e6))
        self.theta_local = float(c.get("rope_local_base_freq", 1e4))
        self.window = int(c["sliding_window"])
        types = c.get("layer_types") or [
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(self.layers)
        ]
        self.sliding = [t == "sliding_attention" for t in types]
        self.file = safe_open(str(folder / "model.safetensors"), framework="numpy")
        # The layer weights as float32 (~0.4 GB); token embeddings are read row by row.
        self.w = {k: self.file.get_tensor(k) for k in self.file.keys() if k != "embed_tokens.weight"}
        modules = json.loads((folder / "modules.json").read_text())
        self.dense = []
        for m in modules:
            if m["type"].endswith(".Dense"):
                self.dense.append(load_file(str(folder / m["path"] / "model.safetensors"))["linear.weight"])

    def weight(self, name):
        return self.w[name].astype(np.float64)

    def rms(self, x, name):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * (1.0 + self.weight(name))

    def rope(self, x, theta):
        """Rotary embedding, rotating the two halves of each head (x: [heads, n, head_dim])."""
        n, d = x.shape[1], x.shape[2]
        inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)
        sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)
        rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
        return x * cos + rotated * sin

    def forward(self, ids):
        """The pooled, projected, unit-length embedding of one token sequence."""
        n = len(ids)
        if n * 2 > self.window:
            sys.exit(f"input of {n} tokens: this reference handles fewer than {self.window // 2}")
        emb = self.file.get_slice("embed_tokens.weight")
        x = np.stack([emb[int(i) : int(i) + 1][0] for i in ids]).astype(np.float64)
        x *= np.float64(np.float32(self.hidden ** 0.5))
        group = self.heads // self.kv_heads
        for i in range(self.layers):
            p = f"layers.{i}."
            theta = self.theta_local if self.sliding[i] else self.theta_global
            h = self.rms(x, p + "input_layernorm.weight")

            def heads(t, count):
                return t.reshape(n, count, self.head_dim).transpose(1, 0, 2)

            q = heads(h @ self.weight(p + "self_attn.q_proj.weight").T, self.heads)
            k = heads(h @ self.weight(p + "self_attn.k_proj.weight").T, self.kv_heads)
            v = heads(h @ self.weight(p + "self_attn.v_proj.weight").T, self.kv_heads)
            q = self.rope(self.rms(q, p + "self_attn.q_norm.weight"), theta)
            k = self.rope(self.rms(k, p + "self_attn.k_norm.weight"), theta)
            k = np.repeat(k, group, axis=0)
            v = np.repeat(v, group, axis=0)
            scores = q @ k.transpose(0, 2, 1) * self.scale
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, self.heads * self.head_dim)
            attn = ctx @ self.weight(p + "self_attn.o_proj.weight").T
            x = x + self.rms(attn, p + "post_attention_layernorm.weight")
            h = self.rms(x, p + "pre_feedforward_layernorm.weight")
            gate = gelu_tanh(h @ self.weight(p + "mlp.gate_proj.weight").T)
            up = h @ self.weight(p + "mlp.up_proj.weight").T
            ff = (gate * up) @ self.weight(p + "mlp.down_proj.weight").T
            x = x + self.rms(ff, p + "post_feedforward_layernorm.weight")
        x = self.rms(x, "norm.weight")
        pooled = x.mean(axis=0)
        for d in self.dense:
            pooled = pooled @ d.astype(np.float64).T
        return pooled / np.linalg.norm(pooled)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="sentence-transformers checkpoint folder")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="truncate inputs to this many tokens (default: max_position_embeddings)")
    args = parser.parse_args()

    texts = json.load(sys.stdin)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        sys.exit("stdin must be a JSON list of strings")

    config = json.loads((args.checkpoint / "config.json").read_text())
    if config.get("model_type") == "gemma3_text":
        model = Gemma(args.checkpoint)
        tokenizer = Tokenizer.from_file(str(args.checkpoint / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        out = [[float(v) for v in model.forward(tokenizer.encode(t).ids)] for t in texts]
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        return

    pooling = json.loads((args.checkpoint / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        sys.exit("only mean pooling is implemented in this reference")

    model = Bert(args.checkpoint)
    max_tokens = args.max_tokens or int(model.config["max_position_embeddings"])
    tokenizer = Tokenizer.from_file(str(args.checkpoint / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)

    out = []
    for text in texts:
        enc = tokenizer.encode(text)
        ids = np.array(enc.ids, dtype=np.int64)
        type_ids = np.array(enc.type_ids, dtype=np.int64)
        mask = np.array(enc.attention_mask, dtype=np.float64)
        hidden = model.forward(ids, type_ids, mask)
        pooled = (hidden * mask[:, None]).sum(axis=0) / mask.sum()
        pooled /= np.linalg.norm(pooled)
        out.append([float(v) for v in pooled])
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
