#!/usr/bin/env python3
"""The engine's SpeContext decode step beside the benchmark path's, as JSON and a table.

Reads what tools/gpu_engine_sparse_bench.sh leaves in its OUT directory:
engine-runs.jsonl (one engine_bench run per line: dense, or --budget with a
self-derived head) and bench-path-*.json (specontext_bench: bench_model.cuh's
forward with the engine's kernels, every layer on the device, one CUDA graph
per step). Rows: path engine|bench, mode dense|sparse, context, batch, ms per
decode step, tokens/s, and the counters each path reports; pairs: engine over
bench per mode, sparse over dense per path.

  python3 bench/engine/sparse_report.py --dir OUT --commit SHA --device "NVIDIA H200" \\
      --json bench/results/cuda-engine-sparse-h200.json [--md table.md]
"""
import argparse
import glob
import json
import os


HOST_ARGMAX = "host argmax"  # SPX_DEVICE_ARGMAX=0: logits downloaded, host samplers


def engine_rows(path):
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        e = json.loads(line)
        r = e.get("run")
        if r is None:
            rows.append(dict(path="engine", label=e["label"], failed=True, env=e.get("env", "")))
            continue
        sparse = r.get("budget", 0) > 0
        variant = []
        if "SPX_SPARSE_GRAPHS=0" in e.get("env", ""):
            variant.append("sparse graphs off")
        if "SPX_DEVICE_ARGMAX=0" in e.get("env", ""):
            variant.append(HOST_ARGMAX)
        if sparse and r.get("dlm_layers", 0) == 0 and not r.get("dlm_dir"):
            variant.append("recommended head")
        ms = r["steady_ms_per_step"] or r["decode_ms_per_step"]
        rows.append(
            dict(
                path="engine",
                label=e["label"],
                mode="sparse" if sparse else "dense",
                variant=", ".join(variant),
                context=r["context"],
                batch=r["requests"],
                new_tokens=r["new_tokens"],
                ms_per_step=round(ms, 3),
                median_ms_per_step=round(r["steady_median_ms_per_step"], 3),
                tokens_per_s=round(r["requests"] * 1e3 / ms, 1) if ms else 0,
                steady_steps=r["steady_steps"],
                window_ms_per_step=r["decode_ms_per_step"],
                prefill_tokens_per_s=r["prefill_tokens_per_s"],
                load_s=r["load_s"],
                wall_s=r["wall_s"],
                host_argmax_ms_per_step=r["host_argmax_ms_per_step"],
                counters={
                    k: r[k]
                    for k in (
                        "budget",
                        "dlm_layers",
                        "decode_tokens",
                        "sparse_steps",
                        "full_steps",
                        "fallback_steps",
                        "host_layers",
                        "layer_moves",
                        "elastic_loads",
                        "elastic_bytes",
                        "reload_fraction",
                        "transfer_ms",
                        "exposed_transfer_ms",
                        "planner_memory_bytes",
                        "planner_fixed_bytes",
                        "graph_captures",
                        "graph_replays",
                        "graph_failures",
                        "graph_capture_ms",
                    )
                    if k in r
                },
                commit=e.get("commit"),
            )
        )
    return rows


def bench_rows(out_dir):
    """The common-batch rows, averaged over the sampled positions (prompt end and 64 on)."""
    groups = {}
    prefill = {}
    for f in sorted(glob.glob(os.path.join(out_dir, "bench-path-*.json"))):
        try:
            d = json.load(open(f))
        except (OSError, ValueError):
            continue  # a run cut short leaves a partial file
        for p in d.get("prefill", []):
            prefill[p["tokens"]] = p
        for x in d.get("decode", []):
            if x["batch_kind"] != "common" or x["system"] not in ("ours-dense", "specontext"):
                continue
            key = ("sparse" if x["system"] == "specontext" else "dense", x["in"], x["batch"])
            groups.setdefault(key, []).append(x)
    rows = []
    for (mode, context, batch), xs in sorted(groups.items()):
        ms = sum(x["ms"] for x in xs) / len(xs)
        row = dict(
            path="bench",
            label=f"{mode}-{context // 1024}k-{batch}",
            mode=mode,
            variant="",
            context=context,
            batch=batch,
            ms_per_step=round(ms, 3),
            tokens_per_s=round(batch * 1e3 / ms, 1),
            positions={str(x["position"]): round(x["ms"], 3) for x in xs},
            counters={"host_layers": max(x["host_layers"] for x in xs)},
        )
        if mode == "sparse":
            row["head_ms"] = round(sum(x["head_ms"] for x in xs) / len(xs), 3)
            row["counters"]["selection"] = xs[0]["selection"]
        if context in prefill:
            row["prefill_tokens_per_s_one_request"] = round(context / prefill[context]["ms"] * 1e3, 1)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--device", default="NVIDIA H200")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", help="also write the table here")
    a = ap.parse_args()

    rows = engine_rows(os.path.join(a.dir, "engine-runs.jsonl")) + bench_rows(a.dir)
    ok = [r for r in rows if not r.get("failed")]
    by = {(r["path"], r["mode"], r["context"], r["batch"]): r for r in ok if not r.get("variant")}
    host = {(r["mode"], r["context"], r["batch"]): r for r in ok if r.get("variant") == HOST_ARGMAX}

    pairs = []
    for (path, mode, context, batch), r in sorted(by.items()):
        if path != "engine":
            continue
        b = by.get(("bench", mode, context, batch))
        d = by.get(("engine", "dense", context, batch)) if mode == "sparse" else None
        bd = by.get(("bench", "dense", context, batch)) if mode == "sparse" else None
        p = dict(mode=mode, context=context, batch=batch, engine_ms=r["ms_per_step"])
        if b:
            p["bench_ms"] = b["ms_per_step"]
            p["engine_over_bench"] = round(r["ms_per_step"] / b["ms_per_step"], 3)
        if d:
            p["engine_dense_over_sparse"] = round(d["ms_per_step"] / r["ms_per_step"], 3)
        if b and bd:
            p["bench_dense_over_sparse"] = round(bd["ms_per_step"] / b["ms_per_step"], 3)
        if b:
            # The gap to the bench path; the host argmax alone (timed apart on
            # the same host) is what the host-sampler runs spend on top.
            gap = r["ms_per_step"] - b["ms_per_step"]
            p["gap_ms"] = round(gap, 3)
            p["host_argmax_ms"] = r["host_argmax_ms_per_step"]
        h = host.get((mode, context, batch))
        if h:
            # The same setting with SPX_DEVICE_ARGMAX=0 (the path before the
            # device argmax): what the device argmax saves per step.
            p["host_argmax_engine_ms"] = h["ms_per_step"]
            p["device_argmax_saves_ms"] = round(h["ms_per_step"] - r["ms_per_step"], 3)
            p["device_argmax_speedup"] = round(h["ms_per_step"] / r["ms_per_step"], 3)
            if b:
                p["host_argmax_engine_over_bench"] = round(h["ms_per_step"] / b["ms_per_step"], 3)
        pairs.append(p)

    doc = dict(
        commit=a.commit,
        device=a.device,
        model="llama-3.1-8b (seeded random bf16 weights)",
        method=(
            "engine: native/tests/bench/engine_bench on cuda:0, the shipped engine (scheduler, "
            "Transformer, CUDA backend, SparseDecoder; greedy tokens by the device argmax, the "
            "default, and in the 'host argmax' rows by the host samplers over downloaded f32 logits, "
            "SPX_DEVICE_ARGMAX=0); a checkpoint from "
            "tools/make_random_weights.py --shape llama-3.1-8b; prompts of seeded random ids, one "
            "request's prompt per prefill chunk; sparse = GenerateRequest.budget 2048 with the "
            "self-derived head --dlm-layers 1 (the target's layer 0 Q/K scores the whole context, "
            "every layer attends to the selection), greedy; ms_per_step = mean interval between "
            "consecutive tokens of the last-admitted request while every request of the batch "
            "decodes (steady_*). bench: bench/cuda/specontext_bench (bench_model.cuh's forward "
            "with the engine's kernels, fused QKV / gate-up, GPU sampling, a seeded random "
            "EAGLE-like head, one CUDA graph per step), --common BATCH --skip-offload, every "
            "layer on the device, mean of the steps at the prompt's end and 64 tokens on (3 "
            "warm-up + 6 timed each). Same GPU, same call."
        ),
        rows=rows,
        pairs=pairs,
    )
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)

    lines = [
        "| path | mode | context | batch | ms/step | tok/s | engine / bench | dense / sparse | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pair = {(p["mode"], p["context"], p["batch"]): p for p in pairs}
    for r in sorted(ok, key=lambda r: (r["context"], r["batch"], r["mode"], r["path"], r.get("variant", ""))):
        p = pair.get((r["mode"], r["context"], r["batch"]), {}) if r["path"] == "engine" else {}
        ratio = p.get("engine_over_bench", "") if not r.get("variant") else ""
        ds = ""
        if r["mode"] == "sparse" and not r.get("variant"):
            ds = p.get("engine_dense_over_sparse", "") if r["path"] == "engine" else ""
            if r["path"] == "bench":
                bd = by.get(("bench", "dense", r["context"], r["batch"]))
                ds = round(bd["ms_per_step"] / r["ms_per_step"], 3) if bd else ""
        notes = []
        if r.get("variant"):
            notes.append(r["variant"])
        c = r.get("counters", {})
        if r["path"] == "engine":
            notes.append(f"{r['steady_steps']} steps, median {r['median_ms_per_step']}")
            if r.get("variant") == HOST_ARGMAX:
                notes.append(f"argmax alone {r['host_argmax_ms_per_step']:.2f} ms")
            elif not r.get("variant") and p.get("device_argmax_saves_ms") is not None:
                notes.append(f"device argmax saves {p['device_argmax_saves_ms']:.2f} ms")
            if r["mode"] == "sparse":
                notes.append(
                    f"sparse {c.get('sparse_steps')} full {c.get('full_steps')} fallback "
                    f"{c.get('fallback_steps')} host layers {c.get('host_layers')}"
                )
            notes.append(f"replays {c.get('graph_replays')}")
        elif r["mode"] == "sparse":
            notes.append(f"head {r.get('head_ms')} ms")
        lines.append(
            f"| {r['path']} | {r['mode']} | {r['context']} | {r['batch']} | {r['ms_per_step']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {ratio} | {ds} | {'; '.join(notes)} |"
        )
    for r in rows:
        if r.get("failed"):
            lines.append(f"| engine | FAILED | {r['label']} | | | | | | {r.get('env', '')} |")
    table = "\n".join(lines)
    print(table)
    if a.md:
        open(a.md, "w").write(table + "\n")


if __name__ == "__main__":
    main()
