"""Hugging Face transformers (sdpa) baseline for the CUDA dense benchmark.

Same shapes as dense_bench (Llama-3.1-8B, Qwen3-8B), seeded random bf16
weights built on the GPU, same settings:
  prefill: one request of T tokens, model(input_ids, logits_to_keep=1), tokens/s;
  decode:  B requests whose DynamicCache already holds C tokens of random K/V,
           then greedy steps model(next_token, past_key_values=cache) with an
           argmax on the GPU, as generate() does; ms per step is the median of
           timed steps after warm-up. Settings whose KV would not fit are skipped.

Writes one JSON file: {"model", "system": "hf-transformers-sdpa", "rows": [...]}.

With --settings (the SpeContext comparison, issue 6), for each attention
implementation in --attn (sdpa, eager) and each [input, output] setting:
  prefill: one request of `input` tokens (out of memory is recorded, not fatal);
  decode:  the largest batch whose cache fits at the end of the output range
           (estimated from free memory, then halved back on out-of-memory),
           and the common batch, each timed at --positions context positions
           across the output range (median of timed steps after warm-up).
           sdpa, the 20x target's baseline, gets --sdpa-positions positions
           for long outputs, --sdpa-steps timed steps and, at its largest
           batch, --sdpa-passes passes over all positions; each entry keeps
           the median over every timed step, each pass's median, min, max
           and the spread, so a run-to-run wobble shows in the JSON.
Writes {"model", "system": "hf-transformers", "prefill": [...], "decode": [...]}.
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
def bench_decode(model, cfg, ctx, batch, steps, device, warm=3):
    kvh, hd = cfg.num_key_value_heads, cfg.head_dim
    cache = transformers.DynamicCache()
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, kvh, ctx, hd, device=device, dtype=torch.bfloat16)
        v = torch.randn(batch, kvh, ctx, hd, device=device, dtype=torch.bfloat16)
        cache.update(k, v, layer)
    tok = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)
    times = []
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
    return dict(phase="decode", context=ctx, batch=batch, requested_batch=batch, ms=ms, tokens_per_s=batch / (ms / 1e3), times=times)


def set_attn(model, impl):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def free_cuda():
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def free_bytes(device):
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    return 16e9  # CPU smoke runs of the tiny shape


def or_oom(fn, *args, **kw):
    """fn(*args) or None on out-of-memory; memory is released after the handler
    (inside it the traceback still holds the failed call's tensors)."""
    out, failed = None, False
    try:
        out = fn(*args, **kw)
    except torch.OutOfMemoryError:
        failed = True
    if failed:
        free_cuda()
    return out


def sampled_positions(inp, out, n):
    return [inp + round(k * out / max(n - 1, 1)) for k in range(n)]


def sampling(attn, out, a):
    """Positions, timed steps and passes for one implementation and output length.
    sdpa is the baseline of the 20x target and its step time moved ~20% between
    runs, so it gets more positions, more steps and repeated passes."""
    if attn == "sdpa":
        return (a.sdpa_positions if out >= 8192 else a.positions), a.sdpa_steps, a.sdpa_passes
    return a.positions, a.steps, 1


def pooled(runs):
    """One position's passes -> the decode entry: median over every timed step,
    and the spread between passes and over steps."""
    times = [t for r in runs for t in r["times"]]
    med = statistics.median(times)
    per_pass = [r["ms"] for r in runs]
    return dict(
        ms=med,
        ms_min=min(times),
        ms_max=max(times),
        ms_passes=per_pass,
        times=times,
        pass_spread=(max(per_pass) - min(per_pass)) / med if len(per_pass) > 1 else 0.0,
        step_spread=(max(times) - min(times)) / med,
    )


def run_settings(model, cfg, a):
    """The SpeContext comparison: prefill and decode at sampled positions per setting."""
    settings = [tuple(int(v) for v in x.split(":")) for x in a.settings.split(",") if x]
    L = cfg.num_hidden_layers
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    kv_per_token = L * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    prefill, decode, batches = [], [], []
    for attn in [x for x in a.attn.split(",") if x]:
        set_attn(model, attn)
        oom_inputs = set()
        for T in sorted({inp for inp, _ in settings}):
            r = or_oom(bench_prefill, model, cfg, T, a.device)
            if r is None:
                oom_inputs.add(T)
                prefill.append(dict(attn=attn, tokens=T, ms=None, oom=True))
                print(f"hf {attn} prefill {T:6d}: out of memory", flush=True)
            else:
                prefill.append(dict(attn=attn, tokens=T, ms=r["ms"], oom=False))
                print(f"hf {attn} prefill {T:6d}: {r['ms']:9.1f} ms", flush=True)
        for inp, out in settings:
            if inp in oom_inputs:
                batches.append(dict(attn=attn, input=inp, output=out, max=0, note=f"prefill of {inp} tokens runs out of memory"))
                continue
            cap = inp + out + a.steps + 8
            free_cuda()
            free = free_bytes(a.device)
            # cache + one layer's concatenation copy (+ eager's repeat_kv of K and V)
            factor = 1 + 1 / L + (2 * group / L if attn == "eager" else 0)
            R = max(1, int((free - a.spare_gb * 1e9) / (kv_per_token * cap * factor)))
            n_pos, steps, passes = sampling(attn, out, a)
            positions = sampled_positions(inp, out, n_pos)
            measured = {}
            for _ in range(6):
                r = or_oom(bench_decode, model, cfg, positions[-1], R, steps, a.device, warm=a.warm)
                if r is not None:
                    measured[positions[-1]] = r
                    break
                print(f"hf {attn} [{inp},{out}] batch {R}: out of memory, retrying smaller", flush=True)
                R = max(1, int(R * 0.85))
            else:
                R = 0
            batches.append(dict(attn=attn, input=inp, output=out, max=R))
            common = min(a.common, R)
            for kind, B in (("max", R), ("common", common)):
                if B < 1 or (kind == "common" and B == R):
                    continue
                # Passes run over all positions in turn, so a slow drift of the
                # GPU's speed touches every position alike.
                runs = {ctx: [] for ctx in positions}
                for p in range(passes if kind == "max" else 1):
                    for ctx in positions:
                        if kind == "max" and p == 0 and ctx in measured:
                            r = measured[ctx]
                        else:
                            r = or_oom(bench_decode, model, cfg, ctx, B, steps, a.device, warm=a.warm)
                            if r is None:
                                print(f"hf {attn} [{inp},{out}] batch {B} ctx {ctx}: out of memory", flush=True)
                                continue
                        runs[ctx].append(r)
                        print(f"hf {attn} [{inp},{out}] {kind} batch {B:3d} ctx {ctx:6d} pass {p + 1}: {r['ms']:8.2f} ms/step", flush=True)
                        free_cuda()
                for ctx in positions:
                    if runs[ctx]:
                        e = pooled(runs[ctx])
                        decode.append(dict(system=f"hf-{attn}", batch_kind=kind, input=inp, output=out, batch=B, position=ctx, passes=len(runs[ctx]), **e))
                        print(f"hf {attn} [{inp},{out}] {kind} batch {B:3d} ctx {ctx:6d}: {e['ms']:8.2f} ms/step (median of {len(e['times'])}; passes {', '.join(f'{x:.2f}' for x in e['ms_passes'])})", flush=True)
            with open(a.json, "w") as f:  # partial results survive a time-out
                json.dump(dict(model=a.model, system="hf-transformers", versions=versions(), prefill=prefill, decode=decode, batches=batches), f, indent=1)
    with open(a.json, "w") as f:
        json.dump(dict(model=a.model, system="hf-transformers", versions=versions(), prefill=prefill, decode=decode, batches=batches), f, indent=1)


def versions():
    return dict(transformers=transformers.__version__, torch=torch.__version__)


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
    ap.add_argument("--settings", help="input:output,... (SpeContext comparison mode)")
    ap.add_argument("--attn", default="sdpa,eager")
    ap.add_argument("--positions", type=int, default=3)
    ap.add_argument("--common", type=int, default=8)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--spare-gb", type=float, default=8.0)
    ap.add_argument("--sdpa-positions", type=int, default=5, help="sdpa positions for outputs >= 8192 (--settings)")
    ap.add_argument("--sdpa-steps", type=int, default=7, help="sdpa timed steps per position and pass (--settings)")
    ap.add_argument("--sdpa-passes", type=int, default=2, help="sdpa passes over the positions at its largest batch (--settings)")
    a = ap.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    model, cfg = build(a.model, a.device, seed=1234)
    if a.settings:
        run_settings(model, cfg, a)
        return
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
    info = versions()
    with open(a.json, "w") as f:
        json.dump(dict(model=a.model, system="hf-transformers-sdpa", versions=info, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
