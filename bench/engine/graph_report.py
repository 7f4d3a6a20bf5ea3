#!/usr/bin/env python3
"""The engine's decode step with and without CUDA graphs, as JSON and a table.

Reads the raw lines tools/gpu_graph_bench.sh writes (engine-runs.jsonl: one
engine_bench run per line, graphs off and on) and, when given, dense_bench's
JSON on the same shape (its decode is one CUDA graph per step, built from the
kernels directly: the floor for the engine path). Pairs the runs by model,
context, batch and prefill chunk.

  python3 bench/engine/graph_report.py --runs OUT/engine-runs.jsonl \
      --dense llama-3.1-8b=OUT/dense-llama-8b.json --commit ed490eb \
      --device "NVIDIA H200" --json bench/results/cuda-engine-h200.json
"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--dense", action="append", default=[], help="MODEL=dense_bench.json")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    dense = {}  # (model, context, batch) -> dense_bench decode row
    for spec in a.dense:
        model, path = spec.split("=", 1)
        for r in json.load(open(path))["rows"]:
            if r["phase"] == "decode":
                dense[(model, r["context"], r["batch"])] = r

    pairs = {}
    for line in open(a.runs):
        line = line.strip()
        if not line:
            continue
        e = json.loads(line)
        r = e["run"]
        if r is None:
            continue
        key = (e["model"], r["context"], r["requests"], e.get("chunk"))
        pairs.setdefault(key, {})["graph" if e["graphs"] else "eager"] = r

    rows = []
    for (model, context, batch, chunk), p in sorted(pairs.items()):
        if "eager" not in p or "graph" not in p:
            continue
        g, e = p["graph"], p["eager"]
        steady = chunk == context * batch
        row = dict(
            model=model,
            context=context,
            batch=batch,
            new_tokens=g["new_tokens"],
            prefill_chunk=chunk,
            batching="steady" if steady else "staggered",
            eager_ms_per_step=e["decode_ms_per_step"],
            graph_ms_per_step=g["decode_ms_per_step"],
            speedup=round(e["decode_ms_per_step"] / g["decode_ms_per_step"], 3),
            eager_tokens_per_s=e["decode_tokens_per_s"],
            graph_tokens_per_s=g["decode_tokens_per_s"],
            graph_captures=g["graph_captures"],
            graph_replays=g["graph_replays"],
            graph_capture_ms=g["graph_capture_ms"],
        )
        d = dense.get((model, context, batch)) if steady else None
        if d is not None:
            row["dense_bench_graph_ms"] = round(d["ms"], 3)
            row["dense_bench_eager_ms"] = round(d["eager_ms"], 3)
            row["engine_over_dense_bench"] = round(g["decode_ms_per_step"] / d["ms"], 3)
        rows.append(row)

    out = dict(
        system="specontext engine, cuda:0, dense decode step as one CUDA graph replay",
        device=a.device,
        commit=a.commit,
        method=(
            "engine_bench on seeded random bf16 checkpoints (tools/make_random_weights.py); "
            "decode ms/step = requests / decode tokens/s in the window after every request "
            "has its first token; graphs off = SPX_CUDA_GRAPHS=0 (every step eager). "
            "steady: one prefill chunk holds all prompts, so all requests decode together; "
            "staggered: 2048-token chunks, requests join one per step (mixed prefill+decode "
            "steps run eagerly). dense_bench: the same shape from the kernels directly, "
            "fused QKV / gate-up, sampling on the GPU, one graph per step."
        ),
        rows=rows,
    )
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("| model | context | batch | batching | eager ms/step | graph ms/step | speedup | dense_bench graph ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        db = r.get("dense_bench_graph_ms", "")
        print(f"| {r['model']} | {r['context']} | {r['batch']} | {r['batching']} | "
              f"{r['eager_ms_per_step']:.3f} | {r['graph_ms_per_step']:.3f} | {r['speedup']:.2f}x | {db} |")


if __name__ == "__main__":
    main()
