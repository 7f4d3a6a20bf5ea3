"""How far Hugging Face transformers itself lands from the f32 reference when it runs
SmolLM2 in bf16 on the GPU: the yardstick for our CUDA backend's bf16 logits
(native/tests/cuda_model_test.cc, CudaSmolLM2). Same metric as that test: per prompt,
the worst over checked positions of max |logit - ref| over the reference's top-20 ids
divided by max |ref| there, and the last prompt position's full-row relative error.

  python3 tools/hf_bf16_smollm2.py MODEL_DIR OUT.json   (torch + transformers, a CUDA GPU)
"""

import base64
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    model_dir, out = sys.argv[1], sys.argv[2]
    ref = json.loads((ROOT / "test/fixtures/smollm2-reference.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to("cuda").eval()
    result = {"transformers_dtype": "bfloat16", "attn_implementation": "sdpa", "prompts": {}}
    for p in ref["prompts"]:
        ids = torch.tensor([p["ids"]], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[0].float().cpu().numpy()
        worst = 0.0
        for i, t in enumerate(p["top_positions"]):
            top = np.array(p["top_logits"][i], dtype=np.float64)
            got = logits[t][p["top_ids"][i]].astype(np.float64)
            worst = max(worst, float(np.abs(got - top).max() / np.abs(top).max()))
        full = np.frombuffer(base64.b64decode(p["last_prompt_logits_f32_b64"]), dtype="<f4")
        row = logits[p["prompt_len"] - 1].astype(np.float64)
        rel = float(np.abs(row - full).max() / np.abs(full).max())
        result["prompts"][p["name"]] = {"worst_top_error": worst, "last_prompt_error": rel}
        print(f"transformers bf16 {p['name']}: worst top-20 error {worst:.2e}, last prompt row {rel:.2e}")
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
