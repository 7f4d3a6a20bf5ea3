"""An upper bound on SpeContext's throughput at one setting on the benchmarked
GPU, from the figures one run of the benchmark measured
(bench/results/specontext-h200.json), set against the 20x-HF-sdpa target.

  python3 bench/cuda/bound.py [--results bench/results/specontext-h200.json]
      [--setting 2048:32768] [--hbm-tbs 4.8] [--json out.json]

Every choice below is in the bound's favour, so a throughput it rules out is
out of reach for any implementation of the method on that machine:
- Each decode step reads every weight once and, per request and layer, the K/V
  of its B selected rows, at the GPU's nominal HBM bandwidth (4.8 TB/s on an
  H200, above the 4.3 TB/s its device copy measures). The retrieval head, the
  prefill, the sampling and every launch cost nothing.
- Requests are all at the end of the output range (the batch must fit there).
  The device holds at most (device-max + 1) requests' KV: the measured
  device-max batch is the largest with every layer on the device, so one more
  did not fit.
- A layer of a request moved to the host frees its full KV on the device and
  keeps B slots there. The host tier holds at most all of MemAvailable (no
  headroom).
- Host layers reload `reload` x B rows per step over PCIe at the measured
  pinned bandwidth, perfectly overlapped with the compute, so the step is the
  larger of the two. With reload 0 (a selection that never changes) the
  transfer vanishes and only memory limits the batch.
"""

import argparse
import json


def bound(run, setting, baseline_tok_s, hbm_tbs, reload):
    inp, out = setting
    layers = 32  # the benchmarked Llama-3.1-8B shape
    row = run["kv_row_bytes"]  # K and V of one token in one layer, all KV heads
    budget = run["budget"]
    weights = run["weights_gb"] * 1e9
    layer_request = (inp + out) * row  # one request's KV in one layer at the end
    request = layer_request * layers
    slots = budget * row  # the B slots a host layer keeps on the device
    device_kv = (run["device_max_batch"] + 1) * request
    host_kv = run["host_mem_available_gb"] * 1e9
    pcie = run["pinned_h2d_gbps"] * 1e9
    hbm = hbm_tbs * 1e12

    rows = []
    batch = 1
    while True:
        host_lr = max(0, -(-(batch * request - device_kv) // (layer_request - slots)))
        if host_lr * layer_request > host_kv or host_lr > batch * layers:
            break
        compute = (weights + batch * layers * budget * row) / hbm
        transfer = host_lr * reload * budget * row / pcie
        step = max(compute, transfer)
        rows.append(dict(batch=batch, host_layer_requests=host_lr, compute_ms=compute * 1e3,
                         transfer_ms=transfer * 1e3, tok_s=batch / step))
        batch += 1
    best = max(rows, key=lambda r: r["tok_s"])
    return dict(
        reload=reload,
        max_batch=rows[-1]["batch"],
        best=best,
        best_vs_hf=best["tok_s"] / baseline_tok_s,
        rows=rows,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="bench/results/specontext-h200.json")
    ap.add_argument("--setting", default="2048:32768", help="input:output")
    ap.add_argument("--hbm-tbs", type=float, default=4.8, help="HBM bandwidth, TB/s (H200 nominal)")
    ap.add_argument("--target", type=float, default=20.0, help="the speed-up over HF sdpa asked for")
    ap.add_argument("--json", help="write the bound here")
    args = ap.parse_args()

    res = json.load(open(args.results))
    inp, out = (int(v) for v in args.setting.split(":"))
    run = dict(res["ours"]["run"])
    run["budget"] = res["budget"]
    label = f"[{inp // 1024}k,{out // 1024}k]"
    specontext = [r for r in res["rows"] if r["system"] == "specontext" and r["setting"] == label]
    device_max = [r["batch"] for r in specontext if r["batch_kind"].startswith("device-max")]
    if not device_max:
        raise SystemExit(f"no device-max SpeContext row for {label} in {args.results}")
    run["device_max_batch"] = device_max[0]
    hf = res["summary"]["hf_sdpa_2k_32k"] if label == "[2k,32k]" else None
    if hf is None:
        hf_rows = [r for r in res["rows"] if r["system"] == "hf-sdpa" and r["setting"] == label]
        hf = max(hf_rows, key=lambda r: r["throughput_tok_s"])
    hf_tok_s = hf["throughput_tok_s"]
    measured = max((r["throughput_tok_s"] for r in specontext
                    if r["selection"] in ("random-head", "drift")), default=None)
    drift = res["ours"]["run"].get("drift_keep", 0.8)

    cases = {
        "no transfer (reload 0)": bound(run, (inp, out), hf_tok_s, args.hbm_tbs, 0.0),
        f"drift reload {1 - drift:.2f}": bound(run, (inp, out), hf_tok_s, args.hbm_tbs, 1 - drift),
    }
    needed = args.target * hf_tok_s
    print(f"{label} B={run['budget']} on {res['device']} ({res['commit']}): HF sdpa {hf_tok_s:.1f} tok/s,"
          f" {args.target:g}x needs {needed:.0f}; measured best SpeContext {measured:.1f}")
    print(f"device holds at most {run['device_max_batch'] + 1} requests' KV; host tier at most"
          f" {run['host_mem_available_gb']:.0f} GB; HBM {args.hbm_tbs} TB/s; PCIe {run['pinned_h2d_gbps']:.1f} GB/s")
    for name, c in cases.items():
        b = c["best"]
        print(f"  {name:24s} max batch {c['max_batch']:3d}; best {b['tok_s']:7.0f} tok/s at batch {b['batch']}"
              f" ({b['compute_ms']:.2f} ms compute, {b['transfer_ms']:.2f} ms transfer) ="
              f" {c['best_vs_hf']:.2f}x HF sdpa")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(source=args.results, commit=res["commit"], device=res["device"], setting=label,
                           budget=run["budget"], hbm_tbs=args.hbm_tbs, hf_sdpa_tok_s=hf_tok_s,
                           target=args.target, needed_tok_s=needed, measured_best_tok_s=measured,
                           method=__doc__, cases=cases), f, indent=1)


if __name__ == "__main__":
    main()
