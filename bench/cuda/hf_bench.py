"""Hugging Face transformers (sdpa) baseline for the CUDA dense benchmark.

Same shapes as dense_bench (Llama-3.1-8B, Qwen3-8B), seeded random bf16
weights built on the GPU, same settings:
  prefill: one request of T tokens, model(input_ids, logits_to_keep=1), tokens/s;
  decode:  B requests whose DynamicCache already holds C tokens of random K/V,
           then greedy steps model(next_token, past_key_values=cache) with an
           argmax on the GPU, as generate() does; ms per step is the median of
           timed steps after warm-up. Settings whose KV would not fit are skipped.

Writes one JSON file: {"model", "system": "hf-transformers-sdpa", "rows": [...]}.
"""

import argparse
import json
import statistics
import time

import torch
import transformers

SHAPES = {
    "llama-3.1-8b": dict(
        cls="LlamaForCausalLM",
        cfg="LlamaConfig",
        kw=dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
            tie_word_embeddings=False,
        ),
    ),
    "qwen3-8b": dict(
        cls="Qwen3ForCausalLM",
        cfg="Qwen3Config",
        kw=dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        ),
    ),
    # A tiny shape to check this script on a CPU.
    "tiny-128": dict(
        cls="Qwen3ForCausalLM",
        cfg="Qwen3Config",
        kw=dict(
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=128,
            vocab_size=1000,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
}


def build(name, device, seed):
    spec = SHAPES[name]
    cfg = getattr(transformers, spec["cfg"])(**spec["kw"])
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = getattr(transformers, spec["cls"])._from_config(cfg, attn_implementation="sdpa")
    torch.set_default_dtype(prev)
    return model.eval(), cfg


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def bench_prefill(model, cfg, T, device):
    ids = torch.randint(0, cfg.vocab_size, (1, T), device=device)
    model(ids[:, : min(T, 256)], logits_to_keep=1)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    out = model(ids, logits_to_keep=1)
    sync(device)
    ms = (time.perf_counter() - t0) * 1e3
    del out
    return dict(phase="prefill", context=T, batch=1, requested_batch=1, ms=ms, tokens_per_s=T / (ms / 1e3))


@torch.inference_mode()
def bench_decode(model, cfg, ctx, batch, steps, device):
    kvh, hd = cfg.num_key_value_heads, cfg.head_dim
    cache = transformers.DynamicCache()
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, kvh, ctx, hd, device=device, dtype=torch.bfloat16)
        v = torch.randn(batch, kvh, ctx, hd, device=device, dtype=torch.bfloat16)
        cache.update(k, v, layer)
    tok = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)
    times = []
    warm = 3
    for i in range(warm + steps):
        pos = torch.full((batch, 1), ctx + i, device=device, dtype=torch.long)
        sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        if i >= warm:
            times.append((time.perf_counter() - t0) * 1e3)
    del cache, out
    ms = statistics.median(times)
    return dict(phase="decode", context=ctx, batch=batch, requested_batch=batch, ms=ms, tokens_per_s=batch / (ms / 1e3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--prefill", default="2048,16384,32768")
    ap.add_argument("--decode", default="2048,32768")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-kv-gb", type=float, default=90.0, help="skip decode settings whose KV exceeds this")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    model, cfg = build(a.model, a.device, seed=1234)
    rows = []
    for T in ints(a.prefill):
        r = bench_prefill(model, cfg, T, a.device)
        print(f"hf prefill {T:6d}: {r['ms']:9.1f} ms {r['tokens_per_s']:9.0f} tokens/s", flush=True)
        rows.append(r)
    kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    for ctx in ints(a.decode):
        for B in ints(a.batch):
            if B * (ctx + a.steps + 8) * kv_per_token / 1e9 > a.max_kv_gb:
                print(f"hf decode ctx {ctx} batch {B}: skipped (KV over {a.max_kv_gb} GB)", flush=True)
                continue
            try:
                r = bench_decode(model, cfg, ctx, B, a.steps, a.device)
            except torch.OutOfMemoryError:
                print(f"hf decode ctx {ctx} batch {B}: out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            print(f"hf decode ctx {ctx:6d} batch {B:3d}: {r['ms']:8.2f} ms/step {r['tokens_per_s']:8.1f} tokens/s", flush=True)
            rows.append(r)
            if a.device.startswith("cuda"):
                torch.cuda.empty_cache()
    info = dict(transformers=transformers.__version__, torch=torch.__version__)
    with open(a.json, "w") as f:
        json.dump(dict(model=a.model, system="hf-transformers-sdpa", versions=info, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
