#!/usr/bin/env bash
# burn-ipa next to PyTorch + peft on this machine, one sitting: training steps, the fit pass
# and generation on the same model, batch and targets. Prints one Markdown table.
#
#   benches/compare.sh [MODEL]      MODEL: .gguf, HF folder or random:<size>
#                                   [default: SmolLM2-135M-Instruct from scripts/fetch-models.sh]
#
# Environment: IPA (release binary), PYTHON (venv with torch, transformers, peft, gguf),
# BACKENDS (flex ndarray), BATCH (4), SEQ (128), RANK (32), STEPS (3), GEN_TOKENS (64), PROMPT,
# OUT (bench-results/). Run it with the machine otherwise idle: PyTorch's OpenMP threads spin
# while they wait and lose several-fold to any other load.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="${BURN_IPA_MODELS:-$HOME/.cache/burn-ipa/models}"
model="${1:-$models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf}"
ipa="${IPA:-$root/target/release/ipa}"
python="${PYTHON:-$HOME/.cache/burn-ipa/venv/bin/python}"
backends="${BACKENDS:-flex ndarray}"
batch="${BATCH:-4}" seq="${SEQ:-128}" rank="${RANK:-32}" steps="${STEPS:-3}"
gen_tokens="${GEN_TOKENS:-64}"
out="${OUT:-$root/bench-results}"
mkdir -p "$out"
shape=(--model "$model" --batch "$batch" --seq "$seq")

for b in $backends; do
    "$ipa" bench train --backend "$b" "${shape[@]}" --method lora --rank "$rank" \
        --warmup 1 --steps "$steps" --json "$out/train-$b.json" >/dev/null
    "$ipa" bench fit-pass --backend "$b" "${shape[@]}" --rank "$rank" --batches "$steps" \
        --algorithms ipca,rsvd --json "$out/fit-pass-$b.json" >/dev/null
done
# Generation: greedy, GEN_TOKENS new tokens after the chat template of one prompt.
prompt="${PROMPT:-Write a short story about a lighthouse keeper.}"
for b in $backends; do
    "$ipa" generate --backend "$b" --model "$model" --chat --prompt "$prompt" \
        --max-new-tokens "$gen_tokens" 2>"$out/generate-$b.log" >/dev/null
done
"$python" "$root/benches/torch_reference.py" generate --model "$model" --chat --prompt "$prompt" \
    --max-new-tokens "$gen_tokens" --json "$out/generate-torch.json" >/dev/null 2>&1
"$python" "$root/benches/torch_reference.py" train "${shape[@]}" --method lora --rank "$rank" \
    --warmup 1 --steps "$steps" --json "$out/train-torch.json" >/dev/null 2>&1
"$python" "$root/benches/torch_reference.py" fit-pass "${shape[@]}" --rank "$rank" \
    --batches "$steps" --json "$out/fit-pass-torch.json" >/dev/null 2>&1

"$python" - "$out" $backends torch <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
def load(what, name):
    path = os.path.join(out, f"{what}-{name}.json")
    return json.load(open(path)) if os.path.exists(path) else []
torch_train = load("train", "torch")
t_train = torch_train[0]["tokens_per_second"] if torch_train else float("nan")
def generated(name):
    # `ipa generate` ends with "N tokens in S s: R tokens/s" on stderr.
    path = os.path.join(out, f"generate-{name}.log")
    if name == "torch":
        rows = load("generate", "torch")
        return rows[0]["tokens_per_second"] if rows else float("nan")
    if not os.path.exists(path):
        return float("nan")
    lines = [l for l in open(path) if l.strip().endswith("tokens/s")]
    return float(lines[-1].split(":")[-1].split()[0]) if lines else float("nan")
t_gen = generated("torch")
print("| backend | train tokens/s | vs PyTorch | peak RSS MiB | forward tokens/s | fit pass (fastest) tokens/s | fit pass vs PyTorch's | generate tokens/s | vs PyTorch |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
torch_fit = load("fit-pass", "torch")
t_fit = max((r["tokens_per_second"] for r in torch_fit if r["algorithm"] != "forward"), default=float("nan"))
for n in names:
    train, fit = load("train", n), load("fit-pass", n)
    tr = train[0]["tokens_per_second"] if train else float("nan")
    mem = train[0].get("peak_rss_mib") or float("nan") if train else float("nan")
    fwd = next((r["tokens_per_second"] for r in fit if r["algorithm"] == "forward"), float("nan"))
    best = max(((r["tokens_per_second"], r["algorithm"]) for r in fit if r["algorithm"] != "forward"), default=(float("nan"), "-"))
    gen = generated(n)
    print(f"| {n} | {tr:.1f} | {tr / t_train:.2f}x | {mem:.0f} | {fwd:.1f} | {best[0]:.1f} ({best[1]}) | {best[0] / t_fit:.2f}x | {gen:.1f} | {gen / t_gen:.2f}x |")
PY
