#!/usr/bin/env python3
"""A bf16 family of fine-tunes made with torch, not with `engram synth`, for `engram bench merge --family`.

Usage: make-family.py --shape 0.5b|1b|7b -n N -o DIR [--seed S] [--zero 0.5] [--scale 0.1]

DIR/base and DIR/ft-1 .. DIR/ft-N, each a Llama-style Hugging Face folder (config.json and
model.safetensors; shards of at most 5 GB for the 7B shape). The base is N(0, 0.02) (norms 1).
Each fine-tune adds a delta whose entries are zero with probability --zero (default one half,
as real fine-tunes leave many entries unchanged after bf16 rounding) and otherwise
N(0, (scale * 0.02)^2) with a per-tensor spread, then rounds to bf16. The generator is torch's
(Philox/MT on the CPU), seeded: same arguments, same bytes. Needs torch, safetensors and
(for config.json) nothing else. Runs tensor by tensor, so memory is one model's tensors.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

SHAPES = {
    # Qwen2.5-0.5B-like dimensions on the Llama layout (untied head): 0.63B parameters.
    "0.5b": dict(hidden=896, inter=4864, layers=24, heads=14, kv=2, vocab=151936, tied=False),
    # Llama-3.2-1B: 1.24B parameters (tied embeddings).
    "1b": dict(hidden=2048, inter=8192, layers=16, heads=32, kv=8, vocab=128256, tied=True),
    # Llama-2-7B: 6.74B parameters.
    "7b": dict(hidden=4096, inter=11008, layers=32, heads=32, kv=32, vocab=32000, tied=False),
}
SHARD_BYTES = 5 << 30


def tensors(s):
    h, i, hd = s["hidden"], s["inter"], s["hidden"] // s["heads"]
    kvd = s["kv"] * hd
    yield "model.embed_tokens.weight", (s["vocab"], h)
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.k_proj.weight", (kvd, h)
        yield p + "self_attn.v_proj.weight", (kvd, h)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    if not s["tied"]:
        yield "lm_head.weight", (s["vocab"], h)


def config(s):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s["hidden"],
        "intermediate_size": s["inter"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv"],
        "vocab_size": s["vocab"],
        "tie_word_embeddings": s["tied"],
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }


def base_tensor(name, shape, g):
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.float32)
    return torch.randn(shape, generator=g, dtype=torch.float32) * 0.02


def write_model(folder, s, make):
    """Writes one model folder, shard by shard, atomically (a temporary folder renamed)."""
    tmp = folder + ".tmp"
    if os.path.exists(tmp):
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
    os.makedirs(tmp, exist_ok=True)
    names = list(tensors(s))
    shards, cur, size = [], [], 0
    for name, shape in names:
        n = 2
        for d in shape:
            n *= d
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    shards.append(cur)
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        out = {name: make(name, shape).to(torch.bfloat16).contiguous() for name, shape in shard}
        save_file(out, os.path.join(tmp, fname), metadata={"format": "pt"})
        for name, _ in shard:
            weight_map[name] = fname
        del out
    if len(shards) > 1:
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config(s), f, indent=2)
    if os.path.exists(folder):
        old = folder + ".old"
        os.rename(folder, old)
        os.rename(tmp, folder)
        for f in os.listdir(old):
            os.remove(os.path.join(old, f))
        os.rmdir(old)
    else:
        os.rename(tmp, folder)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("-n", type=int, required=True, help="fine-tunes to make")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zero", type=float, default=0.5, help="share of each delta that is exactly zero")
    ap.add_argument("--scale", type=float, default=0.1, help="delta sd relative to the base's 0.02")
    a = ap.parse_args()
    if a.n < 1 or not 0.0 <= a.zero < 1.0 or not a.scale > 0.0:
        sys.exit("make-family: need -n >= 1, 0 <= --zero < 1, --scale > 0")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    s = SHAPES[a.shape]
    os.makedirs(a.out, exist_ok=True)
    key = lambda name: a.seed * 1_000_003 + sum(map(ord, name)) * 7919 + len(name)

    def base_of(name, shape):
        g = torch.Generator().manual_seed(key(name))
        return base_tensor(name, shape, g)

    done = os.path.join(a.out, "base", "config.json")
    if not os.path.exists(done):
        write_model(os.path.join(a.out, "base"), s, base_of)
    for t in range(1, a.n + 1):
        folder = os.path.join(a.out, f"ft-{t}")
        if os.path.exists(os.path.join(folder, "config.json")):
            continue

        def ft(name, shape, t=t):
            b = base_of(name, shape).to(torch.bfloat16).to(torch.float32)
            g = torch.Generator().manual_seed(key(name) + 7_777_777 * t)
            spread = 0.5 + torch.rand((), generator=g).item()
            d = torch.randn(shape, generator=g) * (a.scale * 0.02 * spread)
            keep = torch.rand(shape, generator=g) >= a.zero
            return b + d * keep

        write_model(folder, s, ft)
        print(f"make-family: {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
