"""Attention-distilled retrieval head for SmolLM2-135M (issue 4: "try a better head").

The head is an ordinary Hugging Face Llama checkpoint that `--dlm DIR` loads: the target's
first k layers (frozen copies) whose last layer's attention norm, q_proj and k_proj are
retrained so that, at a decoding position, softmax(q.K/sqrt(d)) averaged over a KV group's
query heads (the selection's `mean` reduce) matches the target's own attention averaged over
the target's layers and that group's query heads. The engine's pruned head keeps only those
parts of the scoring layer; its v/o/MLP here are the target's, unused.

Training text is Moby-Dick from the pinned npm package, held out from evaluation. By default
`--windows` windows of `--window` tokens are spread over the book (`window_starts`) so that
none touches an evaluation window [a, a + 8193 + 64) for a in EVAL_STARTS (0, 8100, 40000,
75000, 150000, 240000: the held-out windows of docs/specontext.md, "More held-out windows";
`eval fidelity --context 8128 --steps 64` reads 8193 tokens from a, the 64 are slack for the
CLI's re-tokenisation); the last `--val-windows` are held out from training for validation.
`--starts a,b,...` gives the windows explicitly; `--no-spread` the session 2-3 choice
(evenly from `--skip` on).

Three steps, one command each (train runs the other two when needed):
  features  target forward over the windows (torch, ~40 s per 8192 tokens on an idle CPU);
            caches per window the scoring layer's input and the pooled attention target (f16)
  train     the distillation itself; writes the trained tensors (f16 safetensors, < 1 MB)
  assemble  trained tensors + the target checkpoint -> the head folder (numpy + safetensors
            only, so it runs in the project venv .venv/ too); the head's config.json gets
            the fallback threshold recorded in the tensors' metadata (or --fallback)
  set-fallback --fallback m   records m, measured with `eval fidelity`, in the tensors' metadata

  nice .venv-ref/bin/python tools/train_head.py train      # features + train + assemble
  .venv/bin/python tools/train_head.py assemble            # from the committed tensors

Loss: cross-entropy of the student's group-mean attention to the pooled target (KL + a
constant), plus, with `--miss w`, w times a smooth count of the target mass that falls below
the student's top-(B - forced) cut (`missed_mass`): the mass that selection loses.

The defaults are the session-4 settings (10 layers, pool sparse, 24 spread windows, 1024
positions each); the recommended head's own settings are in its tensors' metadata. Earlier
heads (qk.safetensors: 7 layers, pool all; qk-k10-sparse.safetensors) came from this script
before the window spread and the per-start cache (git history). `make setup` (`make head`)
assembles the recommended head next to the model, where the engine looks for
`<model dir>-head`. Its lower layers are the target's own, so the engine runs them dense and
adopts the target's KV (docs/specontext.md, "Distilled head").

Reproducible: fixed seed, fixed windows, torch deterministic on CPU.
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from moby_dick import data_dir  # noqa: E402

TARGET = ROOT / "models" / "smollm2-135m-instruct"
OUT = ROOT / "models" / "smollm2-135m-head-distilled3"
TENSORS = ROOT / "test" / "fixtures" / "smollm2-head-distilled" / "qk-k10-spread24.safetensors"
CACHE = ROOT / "bench" / ".cache" / "train-head"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
N_SINK, N_RECENT = 4, 16  # the selection's defaults: always kept, so not learned


def trained_names(layer: int) -> list[str]:
    p = f"model.layers.{layer}."
    return [p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight"]


# ---- features ------------------------------------------------------------------------


def rotate(x, cos, sin):
    """HF Llama RoPE (rotate-half convention); x [..., T, D], cos/sin [T, D]."""
    import torch

    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


EVAL_STARTS = (0, 8100, 40000, 75000, 150000, 240000)  # the held-out fidelity windows (docs)
EVAL_SPAN = 8193 + 64  # context + steps + 1 tokens, plus slack for the CLI's re-tokenisation


def window_starts(n_tokens: int, window: int, count: int, avoid=EVAL_STARTS, span=EVAL_SPAN) -> list[int]:
    """`count` non-overlapping training windows spread evenly over the book, none touching an
    evaluation window [a, a + span) of `avoid`: each gap between evaluation windows holds as
    many whole windows as fit (their slack spread between them), and `count` of those slots
    are taken at even spacing."""
    taken = sorted((max(a, 0), min(a + span, n_tokens)) for a in avoid)
    gaps, lo = [], 0
    for a, b in taken:
        if a > lo:
            gaps.append((lo, a))
        lo = max(lo, b)
    if lo < n_tokens:
        gaps.append((lo, n_tokens))
    slots = []
    for a, b in gaps:
        m = (b - a) // window
        slack = (b - a) - m * window
        slots += [a + j * window + (slack * (j + 1)) // (m + 1) for j in range(m)]
    if count > len(slots):
        sys.exit(f"train_head: only {len(slots)} windows of {window} tokens fit outside the evaluation windows")
    return [slots[round(i * (len(slots) - 1) / max(count - 1, 1))] for i in range(count)]


def chosen_starts(args, n_tokens: int) -> list[int]:
    if args.starts:
        starts = args.starts
    elif args.spread:
        starts = window_starts(n_tokens, args.window, args.windows)
    else:  # session 2-3: evenly from --skip to the end of the book
        room = n_tokens - args.skip - args.window
        starts = [args.skip + (room * i) // max(args.windows - 1, 1) for i in range(args.windows)]
    for s in starts:
        if s < 0 or s + args.window > n_tokens:
            sys.exit(f"train_head: window start {s} does not fit the book ({n_tokens} tokens, window {args.window})")
    return starts


def features(args) -> tuple[Path, list[int]]:
    """Runs the target over the training windows; caches per window (one file per start, so
    runs with other window lists reuse it) the scoring layer's input [W, hidden] (f32) and the
    target's attention [kv_heads, P, W] (f16) at P query positions, averaged over the pooled
    layers and each group's query heads. Positions are drawn per window (seed + start)."""
    import torch

    tok = Path(args.target) / "tokenizer.json"
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tok)).encode((data_dir() / "data.txt").read_text(encoding="utf-8")).ids
    starts = chosen_starts(args, len(ids))
    cache = CACHE / f"k{args.layers}-{args.pool}-w{args.window}-p{args.positions}-m{args.min_pos}-s{args.seed}"
    missing = [s for s in starts if not (cache / f"start{s}.safetensors").is_file()]
    if not missing:
        return cache, starts
    cache.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32, attn_implementation="sdpa").eval()
    cfg = model.config
    H, KVH, D, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    G, W, P = H // KVH, args.window, args.positions
    lo, hi = {"all": (0, L), "sparse": (args.layers - 1, L)}[args.pool]
    for wi, s in enumerate(missing):
        t0 = time.time()
        x = torch.tensor([ids[s : s + W]])
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + s)
        with torch.no_grad():
            hs = model.model(input_ids=x, output_hidden_states=True).hidden_states  # L+1 x [1, W, hidden]
            pos = torch.sort(torch.randperm(W - args.min_pos, generator=gen)[:P] + args.min_pos).values
            cos, sin = model.model.rotary_emb(hs[0], torch.arange(W)[None])
            cos, sin = cos[0], sin[0]
            mask = torch.arange(W)[None, :] > pos[:, None]  # [P, W] future keys
            pooled = torch.zeros(KVH, P, W)
            for li in range(lo, hi):
                layer = model.model.layers[li]
                h = layer.input_layernorm(hs[li][0])
                q = layer.self_attn.q_proj(h[pos]).view(P, H, D).transpose(0, 1)
                k = layer.self_attn.k_proj(h).view(W, KVH, D).transpose(0, 1)
                q, k = rotate(q, cos[pos], sin[pos]), rotate(k, cos, sin)
                logits = torch.einsum("gkpd,gtd->gkpt", q.view(KVH, G, P, D), k) / math.sqrt(D)
                pooled += logits.masked_fill(mask, float("-inf")).softmax(-1).mean(1) / (hi - lo)
        arrays = {"x": hs[args.layers - 1][0].numpy(), "pos": pos.numpy().astype(np.int64),
                  "target": pooled.numpy().astype(np.float16)}
        save_file(arrays, str(cache / f"start{s}.safetensors"))
        print(f"features: window {wi + 1}/{len(missing)} (tokens {s}..{s + W}) {time.time() - t0:.0f} s", flush=True)
    return cache, starts


# ---- training ------------------------------------------------------------------------


class Scorer:
    """The scoring layer's trainable part: attention norm, q_proj, k_proj, then RoPE."""

    def __init__(self, norm, wq, wk, cfg, eps):
        import torch

        self.params = [torch.nn.Parameter(torch.tensor(a)) for a in (norm, wq, wk)]
        self.H, self.KVH, self.D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.eps = eps
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, self.D, 2, dtype=torch.float32) / self.D))
        self.inv_freq = inv

    def rope(self, n):
        import torch

        f = torch.outer(torch.arange(n, dtype=torch.float32), self.inv_freq)
        e = torch.cat((f, f), dim=-1)
        return e.cos(), e.sin()

    def log_student(self, x, pos, free):
        """log of the group's mean attention, renormalised over the free (not always
        selected) keys: [KVH, P, W]; -inf outside."""
        import torch

        norm, wq, wk = self.params
        W, P = x.shape[0], pos.shape[0]
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * norm
        cos, sin = self.rope(W)
        q = rotate((h[pos] @ wq.T).view(P, self.H, self.D).transpose(0, 1), cos[pos], sin[pos])
        k = rotate((h @ wk.T).view(W, self.KVH, self.D).transpose(0, 1), cos, sin)
        G = self.H // self.KVH
        logits = torch.einsum("gkpd,gtd->gkpt", q.view(self.KVH, G, P, self.D), k) / math.sqrt(self.D)
        causal = torch.arange(W)[None, :] > pos[:, None]
        # Finite, so that logsumexp over all-masked entries keeps a finite gradient.
        logp = logits.masked_fill(causal, -1e9).log_softmax(-1)
        logm = torch.logsumexp(logp, dim=1) - math.log(G)  # [KVH, P, W]
        logm = logm.masked_fill(~free, float("-inf"))
        return logm - torch.logsumexp(logm, dim=-1, keepdim=True)


def free_keys(pos, W):
    """[P, W]: keys the selection must choose (not a sink, not among the newest)."""
    import torch

    t = torch.arange(W)[None, :]
    return (t >= N_SINK) & (t <= pos[:, None] - N_RECENT)


def renorm(target, free):
    t = target * free
    return t / t.sum(-1, keepdim=True).clamp_min(1e-30)


def missed_mass(lc, t, n, temp):
    """A smooth stand-in for the target mass the selection misses: each free key's target
    share weighted by how far the student ranks it below its own n-th best key (a sigmoid
    of the log-score gap over `temp`; the cut itself is not differentiated). Cross-entropy
    spreads its effort over every key; what hurts the target model is mass on keys just
    below the cut, the rows where recall is low."""
    import torch

    thr = torch.topk(lc, k=min(n, lc.shape[-1]), dim=-1).values[..., -1:].detach()
    return (t * torch.sigmoid((thr - lc) / temp)).sum(-1).mean()


def recall(logm, target, free, budgets):
    """Target mass (all keys) on the selection per KV head and position, flattened: the
    forced keys plus the student's top-(B - forced) free keys, as the engine selects; per
    budget."""
    import torch

    out = {}
    forced_mass = (target * ~free).sum(-1)  # [KVH, P]
    for b in budgets:
        n = b - (N_SINK + N_RECENT)
        top = torch.topk(logm, k=n, dim=-1).indices
        got = torch.gather(target * free, -1, top).sum(-1)
        out[b] = (forced_mass + got).flatten()
    return out


def train(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    cache, starts = features(args)
    cfg = json.loads((Path(args.target) / "config.json").read_text())
    weights = load_file(str(Path(args.target) / "model.safetensors"))
    layer = args.layers - 1
    names = trained_names(layer)
    if args.init:  # start from trained tensors (e.g. an earlier head) instead of the target's
        weights = load_file(args.init)
    scorer = Scorer(*(weights[n].astype(np.float32) for n in names), cfg, cfg["rms_norm_eps"])
    wins = []
    for s in starts:
        a = load_file(str(cache / f"start{s}.safetensors"))
        x, pos = torch.tensor(a["x"]), torch.tensor(a["pos"])
        free = free_keys(pos, x.shape[0])[None]
        wins.append((x, pos, free, torch.tensor(a["target"])))  # target stays f16 until used
    train_w, val_w = wins[: -args.val_windows], wins[-args.val_windows :]

    def validate(tag):
        with torch.no_grad():
            res = []
            for x, pos, free, tgt in val_w:
                tgt = tgt.float()
                logm = scorer.log_student(x, pos, free)
                kl = float((renorm(tgt, free) * (renorm(tgt, free).clamp_min(1e-30).log() - logm.clamp_min(-1e4))).sum(-1).mean())
                late = (pos >= x.shape[0] * 3 // 4)[None].expand(tgt.shape[0], -1).flatten()
                res.append((kl, recall(logm, tgt, free, args.budgets), late))
        kl = sum(r[0] for r in res) / len(res)
        rec = {b: float(torch.cat([r[1][b] for r in res]).mean()) for b in args.budgets}
        p10 = {b: float(torch.cat([r[1][b] for r in res]).quantile(0.1)) for b in args.budgets}
        # Positions in the window's last quarter: closest to what eval fidelity asks at 8192.
        late = {b: float(torch.cat([r[1][b][r[2]] for r in res]).mean()) for b in args.budgets}
        print(f"{tag}: held-out KL {kl:.4f}, recall (mean, p10, last quarter) " + ", ".join(
            f"B={b} {rec[b]:.4f}, {p10[b]:.4f}, {late[b]:.4f}" for b in args.budgets), flush=True)
        return kl, rec, p10

    with torch.no_grad():  # the upper bound: selecting by the pooled target itself
        best = [recall(renorm(t.float(), f).clamp_min(1e-30).log().masked_fill(~f, float("-inf")), t.float(), f, args.budgets)
                for x, pos, f, t in val_w]
    print("oracle (pooled target): recall (mean, p10) " + ", ".join(
        f"B={b} {float(torch.cat([r[b] for r in best]).mean()):.4f}, "
        f"{float(torch.cat([r[b] for r in best]).quantile(0.1)):.4f}" for b in args.budgets), flush=True)
    before = validate(f"before ({args.init or 'self-derived'})")
    opt = torch.optim.Adam(scorer.params, lr=args.lr)
    init = [p.detach().clone() for p in scorer.params]
    t0 = time.time()
    for step in range(args.steps):
        x, pos, free, tgt = train_w[step % len(train_w)]
        sub = torch.randperm(pos.shape[0])[: args.batch]
        logm = scorer.log_student(x, pos[sub], free[:, sub])
        t = renorm(tgt[:, sub].float(), free[:, sub])
        lc = logm.clamp_min(-1e4)
        loss = -(t * lc).sum(-1).mean()  # cross-entropy = KL + const
        if args.miss > 0:
            loss = loss + args.miss * missed_mass(lc, t, args.miss_budget - N_SINK - N_RECENT, args.miss_temp)
        # A pull towards the starting weights (the target's, or --init) against overfitting.
        reg = sum(((p - p0) ** 2).sum() for p, p0 in zip(scorer.params, init))
        opt.zero_grad()
        (loss + args.l2 * reg).backward()
        opt.step()
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    after = validate("after (distilled)")
    tensors = {n: p.detach().numpy().astype(np.float16) for n, p in zip(names, scorer.params)}
    out = Path(args.tensors)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={
        "layers": str(args.layers), "pool": args.pool, "seed": str(args.seed), "steps": str(args.steps),
        "lr": str(args.lr), "batch": str(args.batch), "l2": str(args.l2),
        "window": str(args.window), "starts": json.dumps(starts), "val_windows": str(args.val_windows),
        "positions": str(args.positions), "min_pos": str(args.min_pos),
        "init": Path(args.init).name if args.init else "", "miss": str(args.miss), "miss_budget": str(args.miss_budget), "miss_temp": str(args.miss_temp),
        "heldout_recall_before": json.dumps(before[1]), "heldout_recall_after": json.dumps(after[1]),
        "heldout_p10_before": json.dumps(before[2]), "heldout_p10_after": json.dumps(after[2]),
    })
    print(f"train: wrote {out}", flush=True)
    assemble(args)


# ---- assembly ------------------------------------------------------------------------


def assemble(args) -> None:
    """The target's first k layers, the embedding and final norm, with the trained scoring
    tensors in place: an ordinary k-layer Llama checkpoint."""
    from safetensors import safe_open

    src, out = Path(args.target), Path(args.out)
    if not (src / "model.safetensors").is_file():
        sys.exit(f"train_head: {src}/model.safetensors not found (make model)")
    cfg = json.loads((src / "config.json").read_text())
    fallback = args.fallback
    if args.untrained:
        # The self-derived head in the same checkpoint form: the control for the distilled one.
        k, trained = args.layers, {}
    elif not Path(args.tensors).is_file():
        sys.exit(f"train_head: trained tensors {args.tensors} not found (run train)")
    else:
        with safe_open(str(args.tensors), "np") as f:
            meta = f.metadata()
            k = int(meta["layers"])
            trained = {n: f.get_tensor(n).astype(np.float32) for n in f.keys()}
        # The threshold measured for these tensors travels with them (set-fallback).
        if fallback is None and "fallback_mass" in meta:
            fallback = float(meta["fallback_mass"])
    if k > cfg["num_hidden_layers"]:
        sys.exit(f"train_head: the head has {k} layers, the target only {cfg['num_hidden_layers']}")
    keep = {}
    with safe_open(str(src / "model.safetensors"), "np") as f:
        for n in f.keys():
            parts = n.split(".")
            if n.startswith("model.layers.") and int(parts[2]) >= k:
                continue
            if n.startswith("lm_head.") and cfg.get("tie_word_embeddings"):
                continue
            keep[n] = f.get_tensor(n)
    for n, a in trained.items():
        if n not in keep or keep[n].shape != a.shape:
            sys.exit(f"train_head: trained tensor {n} does not fit the target")
        keep[n] = a.astype(keep[n].dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg["num_hidden_layers"] = k
    if fallback is not None:
        if not 0 <= fallback < 1:
            sys.exit(f"train_head: fallback {fallback} is not in [0, 1)")
        # The engine's default fallback threshold for this head (config.cc reads it).
        cfg["specontext_fallback_mass"] = fallback
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    print(f"assemble: wrote {out} ({k} layers, scoring layer {k - 1}"
          + (f", fallback under {fallback} of the head's mass" if fallback else "") + ")", flush=True)


def set_fallback(args) -> None:
    """Records the fallback threshold measured for trained tensors in their metadata, so
    that assemble (make head) writes it into the head's config.json."""
    from safetensors import safe_open

    if args.fallback is None or not 0 <= args.fallback < 1:
        sys.exit("train_head: set-fallback needs --fallback in [0, 1)")
    with safe_open(str(args.tensors), "np") as f:
        meta = dict(f.metadata())
        tensors = {n: f.get_tensor(n) for n in f.keys()}
    meta["fallback_mass"] = repr(args.fallback)
    save_file(tensors, str(args.tensors), metadata=meta)
    print(f"set-fallback: {args.tensors} recommends {args.fallback}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["features", "train", "assemble", "set-fallback"])
    ap.add_argument("--target", default=str(TARGET), help="target checkpoint (HF Llama)")
    ap.add_argument("--out", default=str(OUT), help="head folder to write")
    ap.add_argument("--tensors", default=str(TENSORS), help="trained tensors (f16 safetensors)")
    ap.add_argument("--layers", type=int, default=10, help="head depth k; scoring layer k-1")
    ap.add_argument("--untrained", action="store_true",
                    help="assemble: the target's own scoring tensors (the self-derived head as a checkpoint)")
    ap.add_argument("--pool", choices=["all", "sparse"], default="sparse",
                    help="target attention averaged over all layers, or over the layers from k-1 up")
    ap.add_argument("--window", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=24, help="training windows (the last --val-windows held out)")
    ap.add_argument("--starts", type=lambda s: [int(v) for v in s.split(",")], default=None,
                    help="explicit window starts (tokens), instead of the automatic spread")
    ap.add_argument("--no-spread", dest="spread", action="store_false",
                    help="the session 2-3 windows: evenly from --skip to the book's end (they can touch "
                         "the evaluation windows from 40000 on)")
    ap.add_argument("--skip", type=int, default=16384, help="with --no-spread: first tokens left to evaluation")
    ap.add_argument("--val-windows", type=int, default=2)
    ap.add_argument("--positions", type=int, default=1024, help="query positions per window")
    ap.add_argument("--min-pos", type=int, default=1024, help="earliest query position in a window")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64, help="query positions per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l2", type=float, default=0.0, help="pull towards the starting weights (the target's, or --init)")
    ap.add_argument("--miss", type=float, default=0.0, help="weight of the missed-mass term (0: cross-entropy only)")
    ap.add_argument("--miss-budget", type=int, default=1024, help="the budget B whose cut the missed-mass term sees")
    ap.add_argument("--miss-temp", type=float, default=0.5, help="its sigmoid's width in log-score units")
    ap.add_argument("--init", default=None, help="train: start from these trained tensors, not the target's")
    ap.add_argument("--fallback", type=float, default=None,
                    help="assemble: the head's recommended fallback threshold, written to its config.json")
    ap.add_argument("--budgets", type=lambda s: [int(v) for v in s.split(",")], default=[256, 512, 1024, 2048])
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.command == "features":
        cache, starts = features(args)
        print(f"features: {cache} ({len(starts)} windows: {starts})")
    elif args.command == "train":
        train(args)
    elif args.command == "set-fallback":
        set_fallback(args)
    else:
        assemble(args)


if __name__ == "__main__":
    main()
