#!/usr/bin/env bash
# A GPU check in two halves: build here (no GPU needed), run on the GPU machine in one call.
#
#   scripts/gpu-check.sh build [DIR]   build the `ipa` release binary and the CUDA test binaries
#                                      (stripped), with this script and
#                                      benches/torch_reference.py, into DIR/bundle.tar.xz
#                                      (default DIR: gpu-check/; ~30 MiB: the binaries are
#                                      ~200 MiB unpacked); refuses an archive over 64 MiB
#   scripts/gpu-check.sh run [DIR]     on the GPU machine, in a copy of the checkout (for the
#                                      test fixtures) with DIR: unpacks the bundle (Python's
#                                      tarfile, no xz needed), then the tests, then each
#                                      benchmark next to its PyTorch reference (same settings,
#                                      same GPU, same call); writes DIR/report.md (and to $OUT
#                                      when set)
#   scripts/gpu-check.sh dry-run       the run half here on the CPU (flex backend, small shapes)
#                                      from this checkout's release binary
#
# Environment: BACKEND (cuda), FEATURES (cuda; `wgpu` for a wgpu bundle), TESTS (the test
# binaries to bundle), BUDGET_S (480: the benchmarks stop starting new runs after this), PYTHON
# (python3 with torch, transformers and peft on the GPU machine).
set -euo pipefail

mode="${1:-}"
root="$(cd "$(dirname "$0")/.." && pwd)"
backend="${BACKEND:-cuda}"
features="${FEATURES:-cuda}"
# The suites whose bodies are generic over the backend: model parity with HF transformers,
# the adapter and projector suites, and the training loop.
tests="${TESTS:-models adapter projector train}"
python="${PYTHON:-python3}"
budget="${BUDGET_S:-480}"
limit_mib=64

case "$mode" in
build)
    out_dir="${2:-$root/gpu-check}"
    # Staged in a scratch folder: only the archive goes into DIR (what is carried to the GPU).
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' EXIT
    mkdir -p "$dir/bin" "$dir/tests" "$out_dir"
    cd "$root"
    cargo build --release --locked --no-default-features --features "$features" --bin ipa
    target="${CARGO_TARGET_DIR:-$root/target}"
    cp "$target/release/ipa" "$dir/bin/ipa"
    # The test binaries: cargo prints each one's path as JSON; keep the ones named in TESTS.
    # (compile errors are printed from the JSON stream; pipefail stops the script there.)
    cargo test --locked --no-run --no-default-features --features "test-$features" \
        $(for t in $tests; do printf -- '--test %s ' "$t"; done) \
        --message-format=json |
        "$python" -c '
import json, sys, shutil, os
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-message" and msg["message"]["level"] == "error":
        sys.stderr.write(msg["message"]["rendered"])
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        shutil.copy(msg["executable"], os.path.join(sys.argv[1], msg["target"]["name"]))
' "$dir/tests"
    for t in $tests; do
        if [ ! -x "$dir/tests/$t" ]; then
            echo "error: the test binary '$t' was not built (TESTS=\"$tests\")" >&2
            exit 1
        fi
    done
    strip "$dir/bin/ipa" "$dir"/tests/*
    # The fixtures stay in the checkout: `run` points the tests at it with BURN_IPA_SOURCE.
    cp "$root/scripts/gpu-check.sh" "$root/benches/torch_reference.py" "$dir/"
    archive="$out_dir/bundle.tar.xz"
    tar -C "$dir" -cJf "$archive.tmp" bin tests gpu-check.sh torch_reference.py
    mv "$archive.tmp" "$archive"
    size=$(du -m "$archive" | cut -f1)
    echo "bundle: $archive, ${size} MiB ($(du -sm "$dir" | cut -f1) MiB unpacked)"
    if [ "$size" -gt "$limit_mib" ]; then
        echo "error: the bundle is ${size} MiB, over the ${limit_mib} MiB the GPU machine receives;" \
            "bundle fewer test binaries (TESTS=...)" >&2
        exit 1
    fi
    ;;
run | dry-run)
    if [ "$mode" = dry-run ]; then
        dir="$root"
        ipa="${IPA:-${CARGO_TARGET_DIR:-$root/target}/release/ipa}"
        backend="${BACKEND_DRY:-flex}"
        torch_device=cpu
        # Small shapes: the point is that every step runs, not the figures.
        fit_widths=576,1536
        train_model=random:tiny
        train_shape="--batch 2 --seq 32"
        dtype=f32
        run_tests=0
    else
        dir="${2:-$(cd "$(dirname "$0")" && pwd)}"
        if [ -f "$dir/bundle.tar.xz" ] && [ ! -x "$dir/bin/ipa" ]; then
            "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
                "$dir/bundle.tar.xz" "$dir"
        fi
        ipa="$dir/bin/ipa"
        torch_device=cuda
        fit_widths=4096,14336
        train_model=random:tinyllama-1.1b
        train_shape="--batch 16 --seq 256"
        dtype=bf16
        run_tests=1
    fi
    reference="$dir/torch_reference.py"
    [ -f "$reference" ] || reference="$root/benches/torch_reference.py"
    out="${OUT:-$dir}"
    report="$out/report.md"
    start=$(date +%s)
    left() { echo $((budget - ($(date +%s) - start))); }
    log() { echo "$*" | tee -a "$report"; }
    : >"$report"
    log "# GPU check ($(date -u +%FT%TZ), backend $backend)"
    log ""
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$report"

    if [ "$run_tests" = 1 ]; then
        log ""
        log "## Tests (test-$features)"
        for t in "$dir"/tests/*; do
            [ -x "$t" ] || continue
            name=$(basename "$t")
            # The fixtures are read from this checkout (SOURCE, default: the working directory).
            if BURN_IPA_SOURCE="${SOURCE:-$PWD}" timeout 240 "$t" --test-threads 1 >"$out/test-$name.log" 2>&1; then
                log "- $name: ok ($(grep -E '^test result' "$out/test-$name.log" | tail -1))"
            else
                log "- $name: FAILED (see test-$name.log)"
                tail -20 "$out/test-$name.log" | sed 's/^/    /' >>"$report"
            fi
        done
    fi

    bf16_flag=""
    [ "$dtype" = bf16 ] && bf16_flag="--bf16"
    log ""
    log "## Fit: IPCA/rSVD/GHA on rows of width $fit_widths, rank 32, 4096 tokens per batch"
    if [ "$(left)" -gt 60 ]; then
        "$ipa" bench fit --backend "$backend" --widths "$fit_widths" --rank 32 --batch-tokens 4096 \
            --batches 5 --max-seconds 20 --algorithms rsvd,gha,covariance \
            --json "$out/fit-burn.json" | tee -a "$report"
        "$python" "$reference" fit --device "$torch_device" --widths "$fit_widths" --rank 32 \
            --batch-tokens 4096 --batches 5 --json "$out/fit-torch.json" | tee -a "$report"
    else
        log "(skipped: out of time)"
    fi

    log ""
    log "## Train: LoRA r=32 (q,k,v,up,down) on $train_model ($dtype), $train_shape"
    if [ "$(left)" -gt 90 ]; then
        "$ipa" bench train --backend "$backend" $bf16_flag --model "$train_model" $train_shape \
            --method lora --rank 32 --warmup 2 --steps 5 --json "$out/train-burn.json" | tee -a "$report"
        "$python" "$reference" train --device "$torch_device" --dtype "$dtype" --model "$train_model" \
            $train_shape --method lora --rank 32 --warmup 2 --steps 5 --json "$out/train-torch.json" |
            tee -a "$report"
    else
        log "(skipped: out of time)"
    fi

    log ""
    log "## Fit pass on $train_model ($dtype), $train_shape"
    if [ "$(left)" -gt 60 ]; then
        "$ipa" bench fit-pass --backend "$backend" $bf16_flag --model "$train_model" $train_shape \
            --rank 32 --batches 3 --algorithms rsvd,ipca --json "$out/fit-pass-burn.json" | tee -a "$report"
        "$python" "$reference" fit-pass --device "$torch_device" --dtype "$dtype" --model "$train_model" \
            $train_shape --rank 32 --batches 3 --json "$out/fit-pass-torch.json" | tee -a "$report"
    else
        log "(skipped: out of time)"
    fi

    log ""
    log "## Ratios (burn / PyTorch, tokens/s)"
    "$python" - "$out" <<'EOF' | tee -a "$report"
import json, os, sys
out = sys.argv[1]
def rows(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else []
for what in ("train", "fit-pass"):
    burn, torch = rows(f"{what}-burn.json"), rows(f"{what}-torch.json")
    if burn and torch:
        b = max(r["tokens_per_second"] for r in burn if r.get("algorithm", "") != "forward")
        t = max(r["tokens_per_second"] for r in torch if r.get("algorithm", "") != "forward")
        print(f"- {what}: {b:.1f} vs {t:.1f} tokens/s = {b / t:.2f}x")
burn, torch = rows("fit-burn.json"), rows("fit-torch.json")
for t in torch:
    for b in burn:
        if b["d"] == t["d"]:
            print(f"- fit d={t['d']} {b['algorithm']}: {b['tokens_per_second'] / t['tokens_per_second']:.2f}x the authors' IPCA")
EOF
    log ""
    log "total: $(( $(date +%s) - start )) s"
    ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
