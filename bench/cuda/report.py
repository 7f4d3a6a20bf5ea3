"""Merges dense_bench (ours) and hf_bench (transformers sdpa) results of one
run into bench/results/cuda-dense-h200.json, a PNG plot and a markdown table.

  python3 bench/cuda/report.py --ours a.json b.json --hf c.json d.json \
      --json out.json --png out.png --md out.md

Summary figures (Llama-3.1-8B, the issue's headline model):
  decode_roofline_ratio_bs1 / _bs8: measured step time over the roofline
    (weights + KV bytes per step / 4.3 TB/s); the worse of contexts 2k and 32k;
  speedup_vs_hf_32k_bs8: our decode tokens/s over HF's at context 32k, batch 8.
"""

import argparse
import json

HEADLINE = "llama-3.1-8b"


def load(paths):
    out = {}
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        out[d["model"]] = d
    return out


def key(r):
    return (r["phase"], r["context"], r["requested_batch"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="+", required=True)
    ap.add_argument("--hf", nargs="*", default=[])
    ap.add_argument("--json", required=True)
    ap.add_argument("--png")
    ap.add_argument("--md")
    ap.add_argument("--device", default="NVIDIA H200")
    a = ap.parse_args()
    ours, hf = load(a.ours), load(a.hf)
    rows = []
    for model, d in ours.items():
        hf_rows = {key(r): r for r in hf.get(model, {}).get("rows", [])}
        for r in d["rows"]:
            kernel = r.get("kernel", "mma")
            h = hf_rows.get(key(r)) if kernel == "mma" else None
            # HF at the same batch only; where ours ran a smaller batch (memory), no ratio.
            same = h is not None and h["batch"] == r["batch"]
            row = dict(
                model=model,
                phase=r["phase"],
                kernel=kernel if r["phase"] == "decode" else "mma",
                context=r["context"],
                batch=r["batch"],
                requested_batch=r["requested_batch"],
                ours_ms=r["ms"],
                ours_tokens_per_s=r["tokens_per_s"],
                hf_ms=h["ms"] if same else None,
                hf_tokens_per_s=h["tokens_per_s"] if same else None,
                speedup_vs_hf=(r["tokens_per_s"] / h["tokens_per_s"]) if same else None,
                note=r.get("note", ""),
            )
            if r["phase"] == "decode":
                row.update(
                    eager_ms=r["eager_ms"],
                    bytes_per_step=r["bytes_per_step"],
                    roofline_ms=r["roofline_ms"],
                    roofline_ratio=r["ms"] / r["roofline_ms"],
                )
            rows.append(row)

    def pick(model, phase, ctx, batch):
        for r in rows:
            if r["kernel"] == "mma" and (r["model"], r["phase"], r["context"], r["requested_batch"]) == (model, phase, ctx, batch):
                return r
        return None

    def worst_ratio(batch):
        vals = [
            r["roofline_ratio"]
            for r in rows
            if r["model"] == HEADLINE and r["phase"] == "decode" and r["kernel"] == "mma" and r["batch"] == batch
        ]
        return max(vals) if vals else None

    s = pick(HEADLINE, "decode", 32768, 8)
    summary = dict(
        model=HEADLINE,
        decode_roofline_ratio_bs1=worst_ratio(1),
        decode_roofline_ratio_bs8=worst_ratio(8),
        speedup_vs_hf_32k_bs8=s["speedup_vs_hf"] if s else None,
        targets=dict(decode_roofline_ratio_max=1.4, speedup_vs_hf_32k_bs8_min=5.0),
        definitions=dict(
            roofline="(bytes of all weights except the embedding table + K and V of every cached token in every layer) / 4.3 TB/s",
            decode_roofline_ratio="measured ms per step / roofline ms; the worse of contexts 2k and 32k",
            speedup_vs_hf="our tokens/s over transformers sdpa tokens/s, same batch, same GPU, same run",
        ),
    )
    hf_versions = next((d.get("versions") for d in hf.values()), None)
    doc = dict(
        device=a.device,
        ours="bench/cuda/dense_bench.cu: native/src/cuda kernels + cuBLASLt, decode step as one CUDA graph; attention 'mma' = tensor-core flash-decoding (default), 'simt' = CUDA-core kernel",
        baseline=dict(system="Hugging Face transformers, attn_implementation=sdpa, bf16", versions=hf_versions),
        weights="seeded random bf16, generated on the GPU (speed does not depend on values)",
        summary=summary,
        rows=rows,
    )
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    lines = [
        "| model | phase | attention | context | batch | ours ms | ours tok/s | HF tok/s | speedup | roofline ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = str(r["batch"]) + ("" if r["batch"] == r["requested_batch"] else f" (asked {r['requested_batch']})")
        lines.append(
            f"| {r['model']} | {r['phase']} | {r['kernel']} | {r['context']} | {b} | {r['ours_ms']:.2f} | {r['ours_tokens_per_s']:.0f} | "
            f"{fmt(r['hf_tokens_per_s'], '.0f')} | {fmt(r['speedup_vs_hf'], '.2f')} | "
            f"{fmt(r.get('roofline_ms'), '.2f')} | {fmt(r.get('roofline_ratio'), '.2f')} |"
        )
    md = "\n".join(lines)
    md += (
        f"\n\nSummary ({HEADLINE}): decode roofline ratio bs1 {fmt(summary['decode_roofline_ratio_bs1'], '.2f')}, "
        f"bs8 {fmt(summary['decode_roofline_ratio_bs8'], '.2f')} (target <= 1.4); "
        f"speedup vs HF at 32k bs8 {fmt(summary['speedup_vs_hf_32k_bs8'], '.2f')}x (target >= 5)\n"
    )
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    print(md)

    if a.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        models = list(ours)
        fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 8), squeeze=False)
        for i, model in enumerate(models):
            dec = [r for r in rows if r["model"] == model and r["phase"] == "decode" and r["kernel"] == "mma"]
            labels = [f"{r['context'] // 1024}k\nbs{r['batch']}" for r in dec]
            x = range(len(dec))
            ax = axes[0][i]
            ax.bar([j - 0.2 for j in x], [r["ours_tokens_per_s"] for r in dec], 0.4, label="ours (CUDA graph)")
            ax.bar([j + 0.2 for j in x], [r["hf_tokens_per_s"] or 0 for r in dec], 0.4, label="HF sdpa")
            roof = [r["batch"] / (r["roofline_ms"] / 1e3) for r in dec]
            ax.plot(list(x), roof, "k_", markersize=22, mew=2, label="roofline (4.3 TB/s)")
            ax.set_xticks(list(x))
            ax.set_xticklabels(labels)
            ax.set_yscale("log")
            ax.set_ylabel("decode tokens/s")
            ax.set_title(f"{model}: decode")
            ax.legend(fontsize=8)
            pre = [r for r in rows if r["model"] == model and r["phase"] == "prefill"]
            ax = axes[1][i]
            x = range(len(pre))
            ax.bar([j - 0.2 for j in x], [r["ours_tokens_per_s"] for r in pre], 0.4, label="ours")
            ax.bar([j + 0.2 for j in x], [r["hf_tokens_per_s"] or 0 for r in pre], 0.4, label="HF sdpa")
            ax.set_xticks(list(x))
            ax.set_xticklabels([f"{r['context'] // 1024}k" for r in pre])
            ax.set_ylabel("prefill tokens/s (batch 1)")
            ax.set_title(f"{model}: prefill")
            ax.legend(fontsize=8)
        fig.suptitle(f"Dense bf16 inference on one {a.device}, seeded random weights")
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)


if __name__ == "__main__":
    main()
