#!/usr/bin/env python3
"""Writes a seeded random f32 checkpoint (model.safetensors) for a config.json.

Speed does not depend on weight values, so this stands in for a real model
where the real one cannot travel (the GPU machine has no network and a 64 MiB
carry limit). Not for accuracy claims.

    random_checkpoint.py CONFIG_JSON OUT_DIR [--seed 0]
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np


def tensors(cfg: dict) -> list[tuple[str, list[int]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kvh = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    d = cfg.get("head_dim") or h // heads
    out = [("model.embed_tokens.weight", [v, h]), ("model.norm.weight", [h])]
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [v, h]))
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [
            (p + "input_layernorm.weight", [h]),
            (p + "post_attention_layernorm.weight", [h]),
            (p + "self_attn.q_proj.weight", [heads * d, h]),
            (p + "self_attn.k_proj.weight", [kvh * d, h]),
            (p + "self_attn.v_proj.weight", [kvh * d, h]),
            (p + "self_attn.o_proj.weight", [h, heads * d]),
            (p + "mlp.gate_proj.weight", [i, h]),
            (p + "mlp.up_proj.weight", [i, h]),
            (p + "mlp.down_proj.weight", [h, i]),
        ]
    return out


def main() -> None:
    config, out = Path(sys.argv[1]), Path(sys.argv[2])
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    cfg = json.loads(config.read_text())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, out / "config.json")
    rng = np.random.default_rng(seed)
    header, offset, blobs = {}, 0, []
    for name, shape in tensors(cfg):
        if name.endswith("norm.weight"):
            a = np.ones(shape, dtype="<f4")
        else:
            a = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype("<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    main()
