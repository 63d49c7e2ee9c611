#!/usr/bin/env python3
"""Reference sentence embeddings for a BERT checkpoint, computed independently of llama.cpp.

The embedding tests (src/engine/embed.rs) compare troupe's GGUF conversion running in llama.cpp
against this script. It shares no code with troupe: it reads the Hugging Face checkpoint itself
(model.safetensors through the `safetensors` numpy API, tokenizer.json through the `tokenizers`
package) and runs the BERT forward pass in numpy, in float64:

    embeddings (word + position + token type) -> LayerNorm
    N x [ self-attention -> add & LayerNorm -> GELU feed-forward -> add & LayerNorm ]
    mean pooling over the attention mask -> L2 normalisation

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="sentence-transformers checkpoint folder")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="truncate inputs to this many tokens (default: max_position_embeddings)")
    args = parser.parse_args()

    pooling = json.loads((args.checkpoint / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        sys.exit("only mean pooling is implemented in this reference")

    model = Bert(args.checkpoint)
    max_tokens = args.max_tokens or int(model.config["max_position_embeddings"])
    tokenizer = Tokenizer.from_file(str(args.checkpoint / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)

    texts = json.load(sys.stdin)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        sys.exit("stdin must be a JSON list of strings")

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
