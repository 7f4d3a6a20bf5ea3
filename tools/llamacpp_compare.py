"""Compare llama.cpp (the Q4_1 GGUF itself) with the transformers reference logits.

Informational, not a gate: llama.cpp multiplies Q4_1 weights with Q8-quantized
activations, so its logits differ from the dequantized float32 model by far more than
float rounding. The numbers tell how far a quantized backend lands from the reference,
and whether greedy decoding still follows the same path.

Needs `pip install llama-cpp-python==0.3.36` (not part of the setup; builds llama.cpp).

  .venv/bin/python tools/llamacpp_compare.py [--reference test/fixtures/smollm2-reference.json]
"""

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_smollm2 import DEFAULT_OUT, ROOT, ConvertError, find_gguf  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=ROOT / "test" / "fixtures" / "smollm2-reference.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        from llama_cpp import Llama
        gguf = find_gguf()
    except (ImportError, ConvertError) as e:
        print(f"llamacpp_compare: {e}", file=sys.stderr)
        return 1
    ref = json.loads(args.reference.read_text())
    llm = Llama(model_path=str(gguf), n_ctx=1024, logits_all=True, verbose=False, n_threads=args.threads, seed=0)
    eos = json.loads((DEFAULT_OUT / "config.json").read_text())["eos_token_id"]
    report = {}
    for p in ref["prompts"]:
        n = p["prompt_len"]
        llm.reset()
        llm.eval(p["ids"][:n])
        scores = np.array(llm.scores[:n], dtype=np.float32)  # [n, V]
        last = np.frombuffer(base64.b64decode(p["last_prompt_logits_f32_b64"]), dtype="<f4")
        entry = dict(
            last_position_max_abs_diff=round(float(np.abs(scores[-1] - last).max()), 4),
            argmax_agreement=round(float((scores.argmax(-1) == np.array(p["argmax"][:n])).mean()), 4),
        )
        if "generated_ids" in p:
            out = []
            for _ in range(len(p["generated_ids"]) + 16):
                t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                if t == eos:
                    break
                out.append(t)
                llm.eval([t])
            entry["llamacpp_greedy_ids"] = out
            entry["llamacpp_greedy_text"] = llm.detokenize(out).decode("utf-8", "replace")
            entry["reference_greedy_ids"] = p["generated_ids"]
        report[p["name"]] = entry
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
