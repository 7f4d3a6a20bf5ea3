"""Check the converted SmolLM2 checkpoint with Hugging Face transformers, and write the
reference logits the engine's tests compare against.

Three checks (any failure exits 1):
  1. GGUF cross-check: transformers' own GGUF loader (its own dequantizer and Q/K
     un-permutation, dense float32) must give the same weights and logits as our
     converted safetensors, and its GGUF tokenizer the same ids.
  2. Paris: the chat-templated "What is the capital of France?" greedy-generates "Paris".
  3. Reference: writes test/fixtures/smollm2-reference.json (see docs/model-check.md):
     per prompt the ids, argmax and top-20 logits per position, and the full f32 logits
     of the last prompt position.

Runs in the reference venv (torch + transformers + accelerate):
  .venv-ref/bin/python tools/hf_check.py [--model DIR] [--gguf FILE] [--out FILE]
"""

import argparse
import base64
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_smollm2 import DEFAULT_OUT, ROOT, ConvertError, find_gguf  # noqa: E402
from moby_dick import data_dir  # noqa: E402

QUESTION = "What is the capital of France?"
TOP_K = 20
SHORT, LONG = 64, 512
LONG_EVERY = 32  # top-k for the long prompt at every 32nd position (and the last)
NEW_TOKENS = 24


def load_dense(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def load_gguf(gguf: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        attn_implementation="eager",
        quantization_config=GgufConfig(dequantize=True),
    ).eval()


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()  # [T, V]


def f32_b64(x: torch.Tensor) -> str:
    return base64.b64encode(x.numpy().astype("<f4").tobytes()).decode()


def prompt_entry(name: str, ids: list[int], logits: torch.Tensor, positions: list[int], prompt_len: int) -> dict:
    top = torch.topk(logits, TOP_K, dim=-1)
    return dict(
        name=name,
        ids=ids,
        prompt_len=prompt_len,
        argmax=logits.argmax(-1).tolist(),
        top_positions=positions,
        top_ids=[top.indices[p].tolist() for p in positions],
        top_logits=[[round(v, 5) for v in top.values[p].tolist()] for p in positions],
        last_prompt_logits_f32_b64=f32_b64(logits[prompt_len - 1]),
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "test" / "fixtures" / "smollm2-reference.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    if not (args.model / "model.safetensors").is_file():
        print(f"hf_check: no converted model in {args.model}; run tools/convert_smollm2.py first", file=sys.stderr)
        return 1
    try:
        gguf = args.gguf or find_gguf()
    except ConvertError as e:
        print(f"hf_check: {e}", file=sys.stderr)
        return 1
    failures = []
    report = {}

    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_dense(args.model)
    report["load_s"] = round(time.monotonic() - t0, 1)

    # Prompts: 64 and 512 tokens of Moby-Dick, and the chat-templated Paris question.
    book = tok((data_dir() / "data.txt").read_text(encoding="utf-8")[:20000], add_special_tokens=False).input_ids
    short_ids, long_ids = book[:SHORT], book[:LONG]
    chat = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
    paris_ids = tok(chat, add_special_tokens=False).input_ids

    # 2. Paris, greedy, with transformers' cached generate.
    t0 = time.monotonic()
    with torch.no_grad():
        out = model.generate(torch.tensor([paris_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    gen = out[0, len(paris_ids) :].tolist()
    eos = model.config.eos_token_id
    answer = tok.decode(gen[: gen.index(eos)] if eos in gen else gen, skip_special_tokens=True)
    report["generate_s"] = round(time.monotonic() - t0, 1)
    report["paris_answer"] = answer
    if "Paris" not in answer:
        failures.append(f"Paris check: answer was {answer!r}")

    # 3. Reference logits (full forwards, no KV cache).
    t0 = time.monotonic()
    short_logits = logits_of(model, short_ids)
    long_logits = logits_of(model, long_ids)
    paris_seq = paris_ids + gen
    paris_logits = logits_of(model, paris_seq)
    report["forward_s"] = round(time.monotonic() - t0, 1)
    # Greedy decoding re-derived from the full forward must agree with generate().
    if paris_logits[len(paris_ids) - 1 : -1].argmax(-1).tolist() != gen:
        failures.append("generate() tokens differ from the full-forward argmax")
    # How close each greedy choice was (top-1 minus top-2 logit): a small margin means a
    # backend with different rounding (e.g. llama.cpp's quantized path) may answer differently.
    steps = torch.topk(paris_logits[len(paris_ids) - 1 : -1], 2, dim=-1).values
    margins = (steps[:, 0] - steps[:, 1]).tolist()
    report["paris_greedy_margins"] = [round(m, 4) for m in margins]
    long_positions = sorted(set(range(LONG_EVERY - 1, LONG, LONG_EVERY)) | {LONG - 1})
    prompts = [
        prompt_entry("moby-64", short_ids, short_logits, list(range(SHORT)), SHORT),
        prompt_entry("moby-512", long_ids, long_logits, long_positions, LONG),
        dict(
            prompt_entry("paris-chat", paris_seq, paris_logits, list(range(len(paris_seq))), len(paris_ids)),
            text=chat,
            generated_ids=gen,
            generated_text=answer,
        ),
    ]

    # 1. transformers' own GGUF path against ours.
    t0 = time.monotonic()
    ref = load_gguf(gguf)
    report["gguf_load_s"] = round(time.monotonic() - t0, 1)
    ours_sd, ref_sd = model.state_dict(), ref.state_dict()
    weight_diff = {}
    for k, v in ours_sd.items():
        if k not in ref_sd:
            failures.append(f"transformers' GGUF model lacks {k}")
            continue
        weight_diff[k] = (v - ref_sd[k].float()).abs().max().item()
    worst = max(weight_diff, key=weight_diff.get)
    report["weights_max_abs_diff"] = {"max": weight_diff[worst], "tensor": worst, "tensors": len(weight_diff)}
    logit_diff = {}
    for name, ids, mine in (("moby-64", short_ids, short_logits), ("moby-512", long_ids, long_logits), ("paris-chat", paris_seq, paris_logits)):
        theirs = logits_of(ref, ids)
        d = (mine - theirs).abs()
        logit_diff[name] = dict(
            max_abs=d.max().item(),
            max_rel=(d.max() / theirs.abs().max()).item(),
            argmax_agree=float((mine.argmax(-1) == theirs.argmax(-1)).float().mean()),
        )
        if d.max().item() > 1e-3:
            failures.append(f"{name}: converted vs transformers-GGUF logits differ by {d.max().item():.3g}")
    report["gguf_vs_converted_logits"] = logit_diff
    gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    sample = (data_dir() / "data.txt").read_text(encoding="utf-8")[:200000]
    same_tok = gguf_tok(sample, add_special_tokens=False).input_ids == tok(sample, add_special_tokens=False).input_ids
    same_chat = gguf_tok(chat, add_special_tokens=False).input_ids == paris_ids
    report["tokenizer_vs_transformers_gguf"] = {"moby_200k_chars_identical": same_tok, "chat_identical": same_chat}
    if not same_chat:
        failures.append("chat prompt tokenizes differently with transformers' GGUF tokenizer")
    # Config: ours against what transformers derives from the GGUF metadata.
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
            "bos_token_id", "eos_token_id")  # fmt: skip
    pairs = {k: (getattr(model.config, k), getattr(ref.config, k, None)) for k in keys}
    pairs["rope_theta"] = (model.config.rope_parameters["rope_theta"], ref.config.rope_parameters["rope_theta"])
    # Floats are compared loosely: GGUF holds them as f32 (1e-5 reads back as 9.9999997e-06).
    cfg_mismatch = {k: v for k, v in pairs.items()
                    if not (v[0] == v[1] or (isinstance(v[0], float) and math.isclose(v[0], v[1], rel_tol=1e-6)))}  # fmt: skip
    report["config_mismatches_vs_transformers_gguf"] = cfg_mismatch
    if cfg_mismatch:
        failures.append(f"config differs from transformers' GGUF config: {cfg_mismatch}")

    # Noise floor for the engine's tolerance: the same weights through SDPA instead of eager.
    sdpa = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa").eval()
    report["eager_vs_sdpa_max_abs_moby512"] = (logits_of(sdpa, long_ids) - long_logits).abs().max().item()

    made_with = dict(torch=torch.__version__, transformers=transformers.__version__, numpy=np.__version__,
                     attn_implementation="eager", dtype="float32", threads=torch.get_num_threads())  # fmt: skip
    reference = dict(
        model="smollm2-135m-instruct",
        model_sha256=sha256(args.model / "model.safetensors"),
        vocab_size=model.config.vocab_size,
        top_k=TOP_K,
        made_with=made_with,
        prompts=prompts,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    report["reference_file"] = str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else str(args.out)
    report["reference_bytes"] = args.out.stat().st_size
    report["failures"] = failures
    print(json.dumps(report, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
