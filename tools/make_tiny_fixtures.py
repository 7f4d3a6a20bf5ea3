"""Make the tiny seeded checkpoints and their transformers reference logits.

The engine's correctness tests compare its f32 logits against these files, so the
reference must come from Hugging Face transformers itself (eager attention, float32),
computed from the very files written to disk (we reload before computing).

Three architectures, each exercising a different code path:
  tiny-llama  LlamaForCausalLM  GQA 4q/2kv, rope_scaling llama3, untied lm_head
  tiny-qwen2  Qwen2ForCausalLM  MHA 4q/4kv, q/k/v bias, tied embeddings
  tiny-qwen3  Qwen3ForCausalLM  MQA 6q/1kv (heads*head_dim != hidden), q/k RMSNorm, untied

Norm weights and biases are randomised too (transformers initialises them to 1 and 0),
so a loader that skips or misindexes them fails the comparison.

config.json is rewritten in the classic on-disk layout (`rope_theta` + `rope_scaling`)
that published checkpoints use; transformers 5 would otherwise write `rope_parameters`.

Run in the reference venv (torch + transformers):
  .venv-ref/bin/python tools/make_tiny_fixtures.py [--out test/fixtures]
"""

import argparse
import copy
import json
import shutil
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SEED = 1234
BOS, EOS = "<|bos|>", "<|eos|>"
VOCAB = 258  # 256 byte tokens + bos + eos; deliberately not a power of two
PROMPT_TEXT = "Hello, world"  # 12 bytes -> 12 token ids under the byte tokenizer
NEW_TOKENS = 8
CHAT_TEMPLATE = (
    "{% for m in messages %}" + BOS + "{{ m['role'] }}\n{{ m['content'] }}" + EOS + "\n"
    "{% endfor %}{% if add_generation_prompt %}" + BOS + "assistant\n{% endif %}"
)

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    head_dim=16,
    max_position_embeddings=256,
    bos_token_id=256,
    eos_token_id=257,
    initializer_range=0.1,
)

SPECS = {
    "tiny-llama": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            # original_max_position_embeddings=64 puts the 8 rotary frequencies of
            # head_dim 16 into all three llama3 bands (kept, smoothed, divided by factor).
            rope_scaling_classic=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
            rope_theta=500000.0,
        ),
    ),
    "tiny-qwen2": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_scaling_classic=None,
            rope_theta=1000000.0,
        ),
    ),
    "tiny-qwen3": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(
            num_attention_heads=6,
            num_key_value_heads=1,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_scaling_classic=None,
            rope_theta=1000000.0,
        ),
    ),
}


# Lower-precision copies of the same weights, for the loader's bf16/f16 and sharded paths.
# Their references are computed from the rounded weights, upcast to float32.
VARIANTS = {
    "tiny-llama": [("tiny-llama-bf16-sharded", torch.bfloat16, "120KB")],
    "tiny-qwen2": [("tiny-qwen2-f16", torch.float16, None)],
}


def byte_tokenizer() -> Tokenizer:
    """Byte-level tokenizer: id i is byte i, no merges, so ids == the UTF-8 bytes of a text."""
    vocab = {_bytelevel_char(b): b for b in range(256)}
    assert set(vocab) == set(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    assert tok.token_to_id(BOS) == 256 and tok.token_to_id(EOS) == 257
    every_byte = bytes(range(256)).decode("latin-1")
    assert tok.encode(every_byte).ids == list(every_byte.encode()), "byte map mismatch"
    return tok


def _bytelevel_char(b: int) -> str:
    # GPT-2's printable-byte mapping, the one ByteLevel uses: printable latin bytes map to
    # themselves, the rest are shifted to 256+n in order.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    if b in printable:
        return chr(b)
    n = sum(1 for x in range(b) if x not in printable)
    return chr(256 + n)


def randomise_norms_and_biases(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def classic_config(path: Path, rope_theta: float, rope_scaling: dict | None, dtype: str) -> None:
    cfg = json.loads(path.read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = rope_theta
    cfg["rope_scaling"] = rope_scaling
    cfg["torch_dtype"] = dtype
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def reference(model: torch.nn.Module, prompt: list[int]) -> dict:
    """Full-sequence forwards only (no KV cache): the plainest possible reference."""
    ids = torch.tensor([prompt])
    prompt_logits = model(ids).logits[0].float()  # [T, V]
    generated, decode_logits = [], []
    seq = list(prompt)
    for _ in range(NEW_TOKENS):
        last = model(torch.tensor([seq])).logits[0, -1].float()  # [V]
        nxt = int(torch.argmax(last))
        decode_logits.append(last)
        generated.append(nxt)
        seq.append(nxt)
    # Cross-check against transformers' own cached greedy generate.
    out = model.generate(
        ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert out[0, len(prompt) :].tolist() == generated, "generate() disagrees with full forwards"
    return dict(
        prompt_logits=prompt_logits.tolist(),
        generated_ids=generated,
        decode_logits=torch.stack(decode_logits).tolist(),
    )


def write_tokenizer(out: Path, tok: Tokenizer) -> None:
    tok.save(str(out / "tokenizer.json"))
    cfg = dict(
        tokenizer_class="PreTrainedTokenizerFast",
        bos_token=BOS,
        eos_token=EOS,
        add_bos_token=False,
        model_max_length=COMMON["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
    )
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def save(model, name: str, out_root: Path, tok: Tokenizer, rope: tuple, dtype: torch.dtype, shard: str | None):
    """Write `model` in `dtype` with tokenizer and transformers' reference logits; return the
    float32 model transformers loads back from those files (the reference's source)."""
    out, tmp = out_root / name, out_root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cast = copy.deepcopy(model).to(dtype)
    cast.save_pretrained(tmp, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    classic_config(tmp / "config.json", *rope, str(dtype).removeprefix("torch."))
    write_tokenizer(tmp, tok)

    # Reference comes from the files on disk, loaded the way any user would load them:
    # transformers upcasts bf16/f16 weights to float32 exactly, and so should the engine.
    loaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
    for (k, a), (k2, b) in zip(cast.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a.float(), b), f"reload changed {k}"
    prompt = tok.encode(PROMPT_TEXT).ids
    assert prompt == list(PROMPT_TEXT.encode()), prompt
    if dtype == torch.float32:
        # The rewritten config must mean the same model (rope scaling included).
        with torch.no_grad():
            a, b = model(torch.tensor([prompt])).logits, loaded(torch.tensor([prompt])).logits
        assert torch.equal(a, b), f"{name}: reloaded config changes logits by {(a - b).abs().max()}"
    ref = dict(
        model=name,
        architecture=type(model).__name__,
        weights_dtype=str(dtype).removeprefix("torch."),
        prompt_text=PROMPT_TEXT,
        prompt_ids=prompt,
        **reference(loaded, prompt),
        made_with=dict(torch=torch.__version__, transformers=transformers.__version__, seed=SEED),
    )
    (tmp / "reference.json").write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.iterdir())
    files = sorted(f.name for f in out.glob("*.safetensors*"))
    print(f"{name}: {size / 1024:.0f} KiB, {files}, generated {ref['generated_ids']}")
    return loaded


def make(name: str, out_root: Path, tok: Tokenizer) -> None:
    cfg_cls, model_cls, extra = SPECS[name]
    extra = copy.deepcopy(extra)  # config constructors mutate the rope dict in place
    rope_scaling = extra.pop("rope_scaling_classic")
    rope = (extra["rope_theta"], rope_scaling)
    kwargs = dict(COMMON, **extra)
    if rope_scaling is not None:
        kwargs["rope_scaling"] = dict(rope_scaling)
    config = cfg_cls(**kwargs)
    torch.manual_seed(SEED)
    config._attn_implementation = "eager"  # same kernel as the reloaded model in save()
    model = model_cls(config).float().eval()
    randomise_norms_and_biases(model, torch.Generator().manual_seed(SEED + 1))
    save(model, name, out_root, tok, rope, torch.float32, None)
    for variant, dtype, shard in VARIANTS.get(name, ()):
        save(model, variant, out_root, tok, rope, dtype, shard)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "test" / "fixtures")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = byte_tokenizer()
    for name in SPECS:
        make(name, args.out, tok)


if __name__ == "__main__":
    main()
