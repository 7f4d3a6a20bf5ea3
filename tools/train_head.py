"""Attention-distilled retrieval head for SmolLM2-135M (issue 4: "try a better head").

The head is an ordinary Hugging Face Llama checkpoint that `--dlm DIR` loads: the target's
first k layers (frozen copies) whose last layer's attention norm, q_proj and k_proj are
retrained so that, at a decoding position, softmax(q.K/sqrt(d)) averaged over a KV group's
query heads (the selection's `mean` reduce) matches the target's own attention averaged over
the target's layers and that group's query heads. The engine's pruned head keeps only those
parts of the scoring layer; its v/o/MLP here are the target's, unused.

Training text is Moby-Dick from the pinned npm package, held out from evaluation:
`specontext eval fidelity` feeds the book's first context + steps + 1 tokens, so training
windows start at token `--skip` (default 16384, past the 8192 + 256 an eval can read).

Three steps, one command each (train runs the other two when needed):
  features  target forward over the windows (torch, slow: ~1.5 CPU-min per 8192 tokens);
            caches the scoring layer's input and the pooled attention targets
  train     the distillation itself; writes the trained tensors (f16 safetensors, < 1 MB)
  assemble  trained tensors + the target checkpoint -> the head folder (numpy + safetensors
            only, so it runs in the project venv .venv/ too)

  nice .venv-ref/bin/python tools/train_head.py train      # features + train + assemble
  .venv/bin/python tools/train_head.py assemble            # from the committed tensors

The defaults reproduce the session-2 head (7 layers, pool all). The recommended head of
SmolLM2-135M is `train --layers 10 --pool sparse --tensors test/fixtures/smollm2-head-
distilled/qk-k10-sparse.safetensors --out models/smollm2-135m-instruct-head`; `make setup`
(`make head`) assembles it from the committed tensors next to the model, where the engine
looks for `<model dir>-head`. Its lower layers are the target's own, so the engine runs
them dense and adopts the target's KV (docs/specontext.md, "Distilled head").

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
OUT = ROOT / "models" / "smollm2-135m-head-distilled"
TENSORS = ROOT / "test" / "fixtures" / "smollm2-head-distilled" / "qk.safetensors"
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


def features(args) -> Path:
    """Runs the target over the training windows; caches per window the scoring layer's
    input [W, hidden] and, per pooling, the target's attention [kv_heads, P, W] at P query
    positions, averaged over the pooled layers and each group's query heads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = CACHE / f"k{args.layers}-w{args.window}-n{args.windows}-p{args.positions}-s{args.seed}"
    if (cache / "done").is_file():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(args.target)
    cfg = model.config
    H, KVH, D, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    G, W, P = H // KVH, args.window, args.positions
    ids = tok((data_dir() / "data.txt").read_text(encoding="utf-8"))["input_ids"]
    room = len(ids) - args.skip - W
    if room < 0:
        sys.exit(f"train_head: the text has {len(ids)} tokens, fewer than --skip + --window")
    # Windows spread evenly over the held-out part of the book.
    starts = [args.skip + (room * i) // max(args.windows - 1, 1) for i in range(args.windows)]
    gen = torch.Generator().manual_seed(args.seed)
    meta = {"starts": starts, "layers": L, "pools": {"all": [0, L], "sparse": [args.layers - 1, L]}}
    for wi, s in enumerate(starts):
        t0 = time.time()
        x = torch.tensor([ids[s : s + W]])
        with torch.no_grad():
            hs = model.model(input_ids=x, output_hidden_states=True).hidden_states  # L+1 x [1, W, hidden]
            pos = torch.sort(torch.randint(args.min_pos, W, (P,), generator=gen)).values
            cos, sin = model.model.rotary_emb(hs[0], torch.arange(W)[None])
            cos, sin = cos[0], sin[0]
            mask = torch.arange(W)[None, :] > pos[:, None]  # [P, W] future keys
            pooled = {k: torch.zeros(KVH, P, W) for k in meta["pools"]}
            for li in range(L):
                layer = model.model.layers[li]
                h = layer.input_layernorm(hs[li][0])
                q = layer.self_attn.q_proj(h[pos]).view(P, H, D).transpose(0, 1)
                k = layer.self_attn.k_proj(h).view(W, KVH, D).transpose(0, 1)
                q, k = rotate(q, cos[pos], sin[pos]), rotate(k, cos, sin)
                logits = torch.einsum("gkpd,gtd->gkpt", q.view(KVH, G, P, D), k) / math.sqrt(D)
                probs = logits.masked_fill(mask, float("-inf")).softmax(-1).mean(1)  # [KVH, P, W]
                for name, (lo, hi) in meta["pools"].items():
                    if lo <= li < hi:
                        pooled[name] += probs / (hi - lo)
        arrays = {"x": hs[args.layers - 1][0].numpy(), "pos": pos.numpy().astype(np.int64)}
        arrays.update({f"target_{k}": v.numpy() for k, v in pooled.items()})
        save_file(arrays, str(cache / f"window{wi}.safetensors"))
        print(f"features: window {wi + 1}/{len(starts)} (tokens {s}..{s + W}) {time.time() - t0:.0f} s", flush=True)
    (cache / "meta.json").write_text(json.dumps(meta))
    (cache / "done").write_text("")
    return cache


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


def recall(logm, target, free, budgets):
    """Mean target mass (all keys) on the selection: the forced keys plus the student's
    top-(B - forced) free keys, as the engine selects; per budget."""
    import torch

    out = {}
    forced_mass = (target * ~free).sum(-1)  # [KVH, P]
    for b in budgets:
        n = b - (N_SINK + N_RECENT)
        top = torch.topk(logm, k=n, dim=-1).indices
        got = torch.gather(target * free, -1, top).sum(-1)
        out[b] = float((forced_mass + got).mean())
    return out


def train(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    cache = features(args)
    cfg = json.loads((Path(args.target) / "config.json").read_text())
    weights = load_file(str(Path(args.target) / "model.safetensors"))
    layer = args.layers - 1
    names = trained_names(layer)
    scorer = Scorer(*(weights[n].astype(np.float32) for n in names), cfg, cfg["rms_norm_eps"])
    wins = []
    for wi in range(args.windows):
        a = load_file(str(cache / f"window{wi}.safetensors"))
        x, pos = torch.tensor(a["x"]), torch.tensor(a["pos"])
        free = free_keys(pos, x.shape[0])[None]
        wins.append((x, pos, free, torch.tensor(a[f"target_{args.pool}"])))
    train_w, val_w = wins[: -args.val_windows], wins[-args.val_windows :]

    def validate(tag):
        with torch.no_grad():
            res = []
            for x, pos, free, tgt in val_w:
                logm = scorer.log_student(x, pos, free)
                kl = float((renorm(tgt, free) * (renorm(tgt, free).clamp_min(1e-30).log() - logm.clamp_min(-1e4))).sum(-1).mean())
                res.append((kl, recall(logm, tgt, free, args.budgets)))
        kl = sum(r[0] for r in res) / len(res)
        rec = {b: sum(r[1][b] for r in res) / len(res) for b in args.budgets}
        print(f"{tag}: held-out KL {kl:.4f}, recall " + ", ".join(f"B={b} {v:.4f}" for b, v in rec.items()), flush=True)
        return kl, rec

    with torch.no_grad():  # the upper bound: selecting by the pooled target itself
        best = [recall(renorm(t, f).clamp_min(1e-30).log().masked_fill(~f, float("-inf")), t, f, args.budgets)
                for x, pos, f, t in val_w]
    print("oracle (pooled target): recall " + ", ".join(
        f"B={b} {sum(r[b] for r in best) / len(best):.4f}" for b in args.budgets), flush=True)
    before = validate("before (self-derived)")
    opt = torch.optim.Adam(scorer.params, lr=args.lr)
    init = [p.detach().clone() for p in scorer.params]
    t0 = time.time()
    for step in range(args.steps):
        x, pos, free, tgt = train_w[step % len(train_w)]
        sub = torch.randperm(pos.shape[0])[: args.batch]
        logm = scorer.log_student(x, pos[sub], free[:, sub])
        t = renorm(tgt[:, sub], free[:, sub])
        loss = -(t * logm.clamp_min(-1e4)).sum(-1).mean()  # cross-entropy = KL + const
        # A pull towards the target's own weights keeps the small data set from being overfit.
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
        "window": str(args.window), "windows": str(args.windows), "skip": str(args.skip),
        "heldout_recall_before": json.dumps(before[1]), "heldout_recall_after": json.dumps(after[1]),
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
    if args.untrained:
        # The self-derived head in the same checkpoint form: the control for the distilled one.
        k, trained = args.layers, {}
    elif not Path(args.tensors).is_file():
        sys.exit(f"train_head: trained tensors {args.tensors} not found (run train)")
    else:
        with safe_open(str(args.tensors), "np") as f:
            k = int(f.metadata()["layers"])
            trained = {n: f.get_tensor(n).astype(np.float32) for n in f.keys()}
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
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    print(f"assemble: wrote {out} ({k} layers, scoring layer {k - 1})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["features", "train", "assemble"])
    ap.add_argument("--target", default=str(TARGET), help="target checkpoint (HF Llama)")
    ap.add_argument("--out", default=str(OUT), help="head folder to write")
    ap.add_argument("--tensors", default=str(TENSORS), help="trained tensors (f16 safetensors)")
    ap.add_argument("--layers", type=int, default=7, help="head depth k; scoring layer k-1")
    ap.add_argument("--untrained", action="store_true",
                    help="assemble: the target's own scoring tensors (the self-derived head as a checkpoint)")
    ap.add_argument("--pool", choices=["all", "sparse"], default="all",
                    help="target attention averaged over all layers, or over the layers from k-1 up")
    ap.add_argument("--window", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=4, help="training windows (the last ones held out)")
    ap.add_argument("--val-windows", type=int, default=1)
    ap.add_argument("--positions", type=int, default=384, help="query positions per window")
    ap.add_argument("--min-pos", type=int, default=1024, help="earliest query position in a window")
    ap.add_argument("--skip", type=int, default=16384, help="first tokens of the book, left to evaluation")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64, help="query positions per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l2", type=float, default=0.0, help="pull towards the target's weights")
    ap.add_argument("--budgets", type=lambda s: [int(v) for v in s.split(",")], default=[256, 512, 1024, 2048])
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.command == "features":
        print(f"features: {features(args)}")
    elif args.command == "train":
        train(args)
    else:
        assemble(args)


if __name__ == "__main__":
    main()
