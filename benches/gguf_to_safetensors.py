"""Converts a GGUF checkpoint to an HF safetensors folder with transformers (it dequantizes to
float32), for comparing `ipa`'s two loading routes on the same weights:

    python benches/gguf_to_safetensors.py MODEL.gguf OUT_DIR

Needs the fixture venv (tests/fixtures/requirements.txt plus gguf). Then, for example,

    /usr/bin/time -v ipa generate --model MODEL.gguf --prompt Hi --max-new-tokens 1
    /usr/bin/time -v ipa generate --model OUT_DIR    --prompt Hi --max-new-tokens 1

print the load time (`loaded ... in`) and the peak memory (`Maximum resident set size`).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
# transformers marks a model loaded from GGUF as quantized and refuses save_pretrained: write
# its (dequantized, float32) state dict and config directly, the tied head left out.
out.mkdir(parents=True, exist_ok=True)
state = {k: v.contiguous() for k, v in model.state_dict().items()}
if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
save_file(state, out / "model.safetensors", metadata={"format": "pt"})
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.config.save_pretrained(out)
model.generation_config.save_pretrained(out)
tok.save_pretrained(out)
print(out)
