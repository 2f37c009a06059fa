"""How close one pass of GHA gets to the exact principal subspace on a real model's layer inputs.

Captures the inputs of q_proj (attention input) and down_proj of three layers of
SmolLM2-135M-Instruct (the GGUF of scripts/fetch-models.sh, read by HF transformers) on WordNet
glosses (Debian's wordnet-base), then runs the GHA update of src/projector/gha.rs in float64
with both step scales and compares with the exact PCA of the same rows:

* captured: tr(P C Pᵀ) / (sum of the top-r eigenvalues of C), 1 = the exact subspace;
* the largest principal angle, shown next to the angle between the exact fits on half the
  rows and on all of them: where λr/λr+1 is close to 1 the r-th direction is not determined by
  the data, so the angle says little.

Needs the fixture venv (torch, transformers, gguf, numpy). Never needed by users or CI.

    python benches/gha_convergence.py [--rows-per-step 512] [--texts 600]
"""

import argparse
import os
import random

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODELS = os.environ.get("BURN_IPA_MODELS", os.path.expanduser("~/.cache/burn-ipa/models"))


def activations(n_texts):
    folder = os.path.join(MODELS, "SmolLM2-135M-Instruct")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, torch_dtype=torch.float32)
    model.eval()
    glosses = []
    with open("/usr/share/wordnet/data.noun", encoding="latin-1") as f:
        for line in f:
            if not line.startswith("  ") and "|" in line:
                glosses.append(line.split("|", 1)[1].strip())
    random.Random(0).shuffle(glosses)
    texts = glosses[:n_texts]
    caps, masks = {}, []

    def hook(name):
        def h(_module, inputs, _output):
            x = inputs[0]
            caps.setdefault(name, []).append(x.reshape(-1, x.shape[-1]).numpy())

        return h

    for layer in (2, 15, 28):
        block = model.model.layers[layer]
        block.self_attn.q_proj.register_forward_hook(hook(f"layer {layer} attention input"))
        block.mlp.down_proj.register_forward_hook(hook(f"layer {layer} down_proj input"))
    with torch.no_grad():
        for i in range(0, len(texts), 20):
            batch = tok(texts[i : i + 20], return_tensors="pt", padding=True)
            model(**batch)
            masks.append(batch["attention_mask"].reshape(-1).numpy().astype(bool))
    mask = np.concatenate(masks)
    return {k: np.concatenate(v)[mask].astype(np.float64) for k, v in caps.items()}


def exact(x, r):
    c = np.cov((x - x.mean(0)).T)
    w, v = np.linalg.eigh(c)
    order = np.argsort(w)[::-1]
    return v[:, order[:r]].T, c, w[order]


def largest_angle(p, q):
    qp, _ = np.linalg.qr(p.T)
    qq, _ = np.linalg.qr(q.T)
    s = np.linalg.svd(qp.T @ qq, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s.min(), -1, 1)))


def captured(p, c, w, r):
    q, _ = np.linalg.qr(p.T)
    return np.trace(q.T @ c @ q) / w[:r].sum()


def gha(x, r, rows, scale, lr, decay, passes=1, seed=0):
    """src/projector/gha.rs in float64: centered Sanger update, order-preserving re-orthonormalisation."""
    d = x.shape[1]
    p = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, r)))[0].T
    n, mu, lam, t = 0, np.zeros(d), 0.0, 0
    for _ in range(passes):
        for s in range(0, len(x), rows):
            b = x[s : s + rows]
            m = len(b)
            mu = (mu * n + b.sum(0)) / (n + m)
            n += m
            xc = b - mu
            y = xc @ p.T
            hebb = y.T @ xc / m
            yy = y.T @ y / m
            row_norms = np.sqrt((hebb**2).sum(1))
            if lam == 0:
                lam = np.linalg.norm(xc, 2) ** 2 / m
            lam = max(lam, row_norms.max())
            step = lr / (1 + decay * t)
            t += 1
            delta = hebb - np.tril(yy) @ p
            if scale == "largest":
                p = p + (step / lam) * delta
            else:
                p = p + (step / np.maximum(row_norms, lam * 1e-12))[:, None] * delta
            p = np.linalg.solve(np.linalg.cholesky(p @ p.T), p)
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows-per-step", type=int, default=512)
    ap.add_argument("--texts", type=int, default=600)
    args = ap.parse_args()
    acts = activations(args.texts)
    rng = np.random.default_rng(1)
    variants = [
        ("default: component, lr 1, decay 0.1, 1 pass", "component", 1.0, 0.1, 1),
        ("Sanger lr/λ1, 1 pass", "largest", 1.0, 0.0, 1),
        ("Sanger lr/λ1, 20 passes", "largest", 1.0, 0.0, 20),
    ]
    for name, x in acts.items():
        x = x[rng.permutation(len(x))]
        for r in (16, 32):
            e, c, w = exact(x, r)
            half, _, _ = exact(x[: len(x) // 2], r)
            print(f"{name}, r={r}, {len(x)} rows, λr/λr+1 = {w[r - 1] / w[r]:.3f}")
            print(f"  exact fit on half the rows: captured {captured(half, c, w, r):.4f}, "
                  f"largest angle {largest_angle(half, e):.0f}°")
            for label, scale, lr, decay, passes in variants:
                p = gha(x, r, args.rows_per_step, scale, lr, decay, passes)
                print(f"  {label}: captured {captured(p, c, w, r):.4f}, "
                      f"largest angle {largest_angle(p, e):.0f}°")


if __name__ == "__main__":
    main()
