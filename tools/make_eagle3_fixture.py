"""Make test/fixtures/tiny-eagle3: seeded random EAGLE-3 drafts, their target, reference scores.

The layout is the one published EAGLE-3 drafts use (SafeAILab EAGLE / SpecForge, e.g.
yuhuili/EAGLE3-LLaMA3.1-Instruct-8B): config.json with architecture LlamaForCausalLMEagle3
and one decoder layer `midlayer.*` whose q/k/v_proj read 2*hidden inputs
([input_layernorm(embed), hidden_norm(fc(h_low|h_mid|h_high))]), `fc` [hidden, 3*hidden],
`norm`, `lm_head` over a draft vocabulary with its `d2t`/`t2d` maps, and optionally
`embed_tokens` (else the draft borrows the target's).

  target/           LlamaForCausalLM, 7 layers, hidden 64 (transformers, seeded)
  draft/            no embed_tokens (borrows the target's), default aux layers (2, 3, 4)
  draft-own-embed/  own embed_tokens, eagle_config.eagle_aux_hidden_state_layer_ids [1, 3, 5]
  draft-speculators/ vLLM's speculators layout (Eagle3Speculator): the layer's config nested in
                    transformer_layer_config as transformers' to_diff_dict() writes it (values
                    equal to LlamaConfig's defaults dropped), `layers.0.*`, own embed_tokens,
                    fc with a bias, top-level eagle_aux_hidden_state_layer_ids [2, 4, 5]
  reference.json    per draft: the target's aux hidden states and the scoring layer's
                    q.k/sqrt(d) scores at every position of a fixed prompt

The reference is computed here in plain torch from the files on disk: the target's hidden
states come from transformers (output_hidden_states: entry j is the input of layer j), and
the draft's q/k from the safetensors tensors with transformers' Llama RoPE. The engine's
head (native/src/retrieval/eagle3_head.*) is checked against it by
native/tests/retrieval_eagle3_test.cc. Conventions the head documents and this script
follows: the token at position p pairs with the target's states at p-1 (EAGLE's pairing),
position 0 gets a zero feature, RoPE at the target's positions.

Run in the reference venv:
  .venv-ref/bin/python tools/make_eagle3_fixture.py [--out test/fixtures/tiny-eagle3]
Convert a published draft shipped as pytorch_model.bin (the engine reads safetensors):
  .venv-ref/bin/python tools/make_eagle3_fixture.py --convert DIR
"""

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from make_tiny_fixtures import byte_tokenizer, classic_config, randomise_norms_and_biases, write_tokenizer

SEED = 4321
VOCAB, HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM = 258, 64, 128, 4, 2, 16
TARGET_LAYERS = 7
DRAFT_VOCAB = 32
EPS = 1e-5
ROPE_THETA = 500000.0
ROPE_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=64)
PROMPT_TEXT = "Call me Ishmael. Some years ago, never mind how long"


def make_target(out: Path, tok) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                         num_hidden_layers=TARGET_LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=256,
                         rms_norm_eps=EPS, rope_theta=ROPE_THETA, rope_scaling=dict(ROPE_SCALING),
                         tie_word_embeddings=False, bos_token_id=256, eos_token_id=257,
                         initializer_range=0.1)
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).float().eval()
    randomise_norms_and_biases(model, torch.Generator().manual_seed(SEED + 1))
    model.save_pretrained(out, safe_serialization=True)
    classic_config(out / "config.json", ROPE_THETA, dict(ROPE_SCALING), "float32")
    write_tokenizer(out, tok)
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()


def draft_config(aux_ids) -> dict:
    cfg = dict(architectures=["LlamaForCausalLMEagle3"], model_type="llama", hidden_act="silu",
               vocab_size=VOCAB, draft_vocab_size=DRAFT_VOCAB, hidden_size=HIDDEN,
               intermediate_size=INTER, num_hidden_layers=1, num_attention_heads=HEADS,
               num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=256,
               rms_norm_eps=EPS, rope_theta=ROPE_THETA, rope_scaling=dict(ROPE_SCALING),
               tie_word_embeddings=False, bos_token_id=256, eos_token_id=257, torch_dtype="float32")
    if aux_ids is not None:
        cfg["eagle_config"] = dict(eagle_aux_hidden_state_layer_ids=list(aux_ids), use_aux_hidden_state=True)
    return cfg


def speculators_config(aux_ids) -> dict:
    layer = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=1,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                        max_position_embeddings=256, rms_norm_eps=EPS, rope_theta=ROPE_THETA,
                        rope_scaling=dict(ROPE_SCALING), tie_word_embeddings=False)
    return dict(architectures=["Eagle3Speculator"], speculators_model_type="eagle3",
                transformer_layer_config=layer.to_diff_dict(), draft_vocab_size=DRAFT_VOCAB,
                norm_before_residual=False, target_hidden_size=None,
                eagle_aux_hidden_state_layer_ids=list(aux_ids),
                speculators_config=dict(algorithm="eagle3", default_proposal_method="greedy",
                                        proposal_methods=[dict(proposal_type="greedy", speculative_tokens=3)],
                                        verifier=dict(name_or_path="tiny-eagle3/target",
                                                      architectures=["LlamaForCausalLM"])),
                speculators_version="0.1.0", torch_dtype="float32")


def make_draft(out: Path, seed: int, own_embed: bool, aux_ids, speculators: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.1):
        return (std * torch.randn(shape, generator=g)).float().contiguous()

    def norm():
        return (1.0 + 0.2 * torch.randn((HIDDEN,), generator=g)).float()

    qd, kvd = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    t = {
        "midlayer.input_layernorm.weight": norm(),
        "midlayer.hidden_norm.weight": norm(),
        "midlayer.post_attention_layernorm.weight": norm(),
        "midlayer.self_attn.q_proj.weight": rnd(qd, 2 * HIDDEN),
        "midlayer.self_attn.k_proj.weight": rnd(kvd, 2 * HIDDEN),
        "midlayer.self_attn.v_proj.weight": rnd(kvd, 2 * HIDDEN),
        "midlayer.self_attn.o_proj.weight": rnd(HIDDEN, qd),
        "midlayer.mlp.gate_proj.weight": rnd(INTER, HIDDEN),
        "midlayer.mlp.up_proj.weight": rnd(INTER, HIDDEN),
        "midlayer.mlp.down_proj.weight": rnd(HIDDEN, INTER),
        "fc.weight": rnd(HIDDEN, 3 * HIDDEN),
        "norm.weight": norm(),
        "lm_head.weight": rnd(DRAFT_VOCAB, HIDDEN),
    }
    # The draft vocabulary: DRAFT_VOCAB target ids; d2t holds target_id - draft_id (EAGLE's maps).
    keep = torch.sort(torch.randperm(VOCAB, generator=g)[:DRAFT_VOCAB]).values
    t["d2t"] = (keep - torch.arange(DRAFT_VOCAB)).to(torch.int64)
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[keep] = True
    t["t2d"] = t2d
    if own_embed:
        t["embed_tokens.weight"] = rnd(VOCAB, HIDDEN, std=1.0)
    cfg = draft_config(aux_ids)
    if speculators:
        t = {k.replace("midlayer.", "layers.0."): v for k, v in t.items()}
        t["fc.bias"] = rnd(HIDDEN, std=0.5)
        cfg = speculators_config(aux_ids)
    out.mkdir(parents=True)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def short(t: torch.Tensor) -> list:
    """Nested lists of 7 significant digits (the test's tolerance is 1e-4 relative)."""
    return json.loads(json.dumps(t.tolist(), default=str), parse_float=lambda x: float(f"{float(x):.7g}"))


def rmsnorm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


@torch.no_grad()
def draft_reference(draft_dir: Path, target: LlamaForCausalLM, prompt: list[int]) -> dict:
    cfg = json.loads((draft_dir / "config.json").read_text())
    w = load_file(str(draft_dir / "model.safetensors"))
    p = "layers.0." if "layers.0.self_attn.q_proj.weight" in w else "midlayer."
    aux = (cfg.get("eagle_aux_hidden_state_layer_ids") or cfg.get("eagle_config", {}).get(
        "eagle_aux_hidden_state_layer_ids") or [2, TARGET_LAYERS // 2, TARGET_LAYERS - 3])
    assert max(aux) < TARGET_LAYERS  # hidden_states[L] is after the final norm
    ids = torch.tensor([prompt])
    hs = target(ids, output_hidden_states=True).hidden_states  # [L+1] x [1, T, H]; j = input of layer j
    feats = torch.cat([hs[j][0] for j in aux], dim=-1)  # [T, 3H]
    T = len(prompt)
    prev = torch.cat([torch.zeros(1, 3 * HIDDEN), feats[:-1]], dim=0)  # position p reads p-1
    embed = w.get("embed_tokens.weight", target.model.embed_tokens.weight)
    a = rmsnorm(embed[ids[0]], w[p + "input_layernorm.weight"])
    fc = prev @ w["fc.weight"].T + w.get("fc.bias", torch.zeros(HIDDEN))  # position 0: fc(0) = the bias
    b = rmsnorm(fc, w[p + "hidden_norm.weight"])
    u = torch.cat([a, b], dim=-1)  # [T, 2H]
    q = (u @ w[p + "self_attn.q_proj.weight"].T).view(1, T, HEADS, HEAD_DIM).transpose(1, 2)
    k = (u @ w[p + "self_attn.k_proj.weight"].T).view(1, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
    if "transformer_layer_config" in cfg:  # speculators: LlamaConfig fills what to_diff_dict dropped
        rope_cfg = LlamaConfig(**cfg["transformer_layer_config"])
    else:
        rope_cfg = LlamaConfig(**{key: cfg[key] for key in ("hidden_size", "num_attention_heads", "head_dim",
                                                            "max_position_embeddings", "rope_theta",
                                                            "rope_scaling")})
    cos, sin = LlamaRotaryEmbedding(config=rope_cfg)(u[None], torch.arange(T)[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    s = (q[0] @ k[0].transpose(-1, -2)) / math.sqrt(HEAD_DIM)  # [heads, T, T]
    scores = [short(s[:, p, : p + 1]) for p in range(T)]  # row p: [heads][p+1]

    floats = lambda name: name not in ("d2t", "t2d")
    all_params = sum(v.numel() for n, v in w.items() if floats(n))
    kept_names = ["fc.weight", "fc.bias", p + "input_layernorm.weight", p + "hidden_norm.weight",
                  p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight"]
    kept = sum(w[n].numel() for n in kept_names if n in w)
    borrowed = 0 if "embed_tokens.weight" in w else embed.numel()
    kept += w["embed_tokens.weight"].numel() if "embed_tokens.weight" in w else 0
    return dict(aux_layers=list(aux), own_embedding="embed_tokens.weight" in w,
                features=short(feats), scores=scores,
                head_params=kept + borrowed, model_params=all_params + borrowed)


def convert(src: Path) -> None:
    """pytorch_model.bin -> model.safetensors, tensors unchanged (weights_only: no code runs)."""
    state = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(src / "model.safetensors"),
              metadata={"format": "pt"})
    print(f"wrote {src / 'model.safetensors'}: {len(state)} tensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent.parent / "test" / "fixtures" / "tiny-eagle3")
    ap.add_argument("--convert", type=Path, help="a draft directory holding pytorch_model.bin")
    args = ap.parse_args()
    if args.convert:
        return convert(args.convert)
    torch.use_deterministic_algorithms(True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = byte_tokenizer()
    target = make_target(tmp / "target", tok)
    make_draft(tmp / "draft", SEED + 10, own_embed=False, aux_ids=None)
    make_draft(tmp / "draft-own-embed", SEED + 20, own_embed=True, aux_ids=[1, 3, 5])
    make_draft(tmp / "draft-speculators", SEED + 30, own_embed=True, aux_ids=[2, 4, 5], speculators=True)
    prompt = [256] + tok.encode(PROMPT_TEXT).ids
    ref = dict(prompt_text=PROMPT_TEXT, prompt_ids=prompt,
               drafts={name: draft_reference(tmp / name, target, prompt) for name in ("draft", "draft-own-embed", "draft-speculators")},
               made_with=dict(torch=torch.__version__, transformers=transformers.__version__, seed=SEED))
    (tmp / "reference.json").write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    if (args.out / "README.md").exists():  # hand-written, kept
        shutil.copy(args.out / "README.md", tmp / "README.md")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    for name, d in ref["drafts"].items():
        print(f"{name}: aux {d['aux_layers']}, head params {d['head_params']} of {d['model_params']}")
    print(f"{args.out}: {size / 1024:.0f} KiB, prompt {len(prompt)} tokens")


if __name__ == "__main__":
    main()
