"""Seeded random bf16 checkpoints in the Hugging Face layout, made on the GPU.

  python3 tools/make_random_weights.py --shape llama-mid --out /tmp/llama-mid --reference

writes config.json and model.safetensors (bf16) for one of the shapes below,
generated with torch on the GPU machine (nothing is downloaded; the values
are random, so they are good for speed and for comparing implementations,
not for accuracy claims). With --reference it also writes reference.json in
the format of test/fixtures (prompt_ids, prompt_logits, generated_ids,
decode_logits), computed by transformers (sdpa, bf16) on the same weights:
the CUDA backend's whole-model test (native/tests/cuda_model_test.cc, env
SPX_CUDA_MODEL_DIRS) compares against it.
"""

import argparse
import copy
import json
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "cuda"))
from hf_bench import SHAPES  # noqa: E402  (the 8B shapes live with the benchmark)


def _derive(base, **overrides):
    """A smaller model of the same family as one of the benchmark shapes."""
    spec = copy.deepcopy(SHAPES[base])
    spec["kw"].update(overrides)
    return spec


# Real head size, GQA and (for Llama) the llama3 rope scaling, small enough to test.
MID = {
    "llama-mid": _derive(
        "llama-3.1-8b",
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=32000,
        initializer_range=0.05,
    ),
    "qwen3-mid": _derive(
        "qwen3-8b",
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        initializer_range=0.05,
    ),
}


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True, choices=sorted({**SHAPES, **MID}))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--prompt-len", type=int, default=300)
    ap.add_argument("--new-tokens", type=int, default=8)
    a = ap.parse_args()
    spec = {**SHAPES, **MID}[a.shape]
    cfg = getattr(transformers, spec["cfg"])(**spec["kw"])
    cfg.torch_dtype = torch.bfloat16
    torch.manual_seed(a.seed)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(a.device):
        model = getattr(transformers, spec["cls"])._from_config(cfg, attn_implementation="sdpa")
    torch.set_default_dtype(torch.float32)
    model.eval()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True, max_shard_size="100GB")
    print(f"wrote {a.shape} to {a.out}", flush=True)
    if not a.reference:
        return
    g = torch.Generator(device="cpu").manual_seed(a.seed + 1)
    prompt = torch.randint(0, cfg.vocab_size, (a.prompt_len,), generator=g).tolist()
    ids = torch.tensor([prompt], device=a.device)
    out = model(ids, use_cache=True)
    prompt_logits = out.logits[0].float().cpu()
    cache = out.past_key_values
    gen, decode_logits = [], []
    row = prompt_logits[-1]
    for i in range(a.new_tokens):
        decode_logits.append(row.tolist())
        nxt = int(row.argmax())
        gen.append(nxt)
        if i + 1 < a.new_tokens:
            step = model(torch.tensor([[nxt]], device=a.device), past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            row = step.logits[0, -1].float().cpu()
    # A spread of prompt positions keeps the file small (vocab-sized rows).
    positions = sorted(set(range(0, a.prompt_len, 37)) | {a.prompt_len - 1})
    ref = dict(
        model=a.shape,
        architecture=spec["cls"],
        prompt_ids=prompt,
        prompt_logits_positions=positions,
        prompt_logits=prompt_logits[positions].tolist(),
        generated_ids=gen,
        decode_logits=decode_logits,
        made_with=f"transformers {transformers.__version__} sdpa bf16 on {a.device}",
    )
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"wrote reference.json ({a.prompt_len} prompt tokens, {a.new_tokens} greedy)", flush=True)


if __name__ == "__main__":
    main()
