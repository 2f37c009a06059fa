"""PyTorch + HF peft reference for `ipa bench`: the same measurements on the same settings, so
a ratio can be taken side by side, in one sitting, on one machine.

    python benches/torch_reference.py train    --model M --method lora --rank 32 --batch 4 --seq 128
    python benches/torch_reference.py fit-pass --model M --rank 32 --batch 4 --seq 128
    python benches/torch_reference.py fit      --widths 4096,14336 --rank 32 --batch-tokens 4096
    python benches/torch_reference.py generate --model M --chat --prompt "..." --max-new-tokens 64

M is an HF model folder, a .gguf file (read by transformers with `gguf_file=`, dequantized to
the chosen dtype) or `random:<size>` with the shapes of src/bench/model.rs.

* train: the step of `ipa train` — forward, next-token loss on every position, backward,
  global-norm clipping at 1.0, AdamW (lr 1e-4, eps 1e-8, no decay). `--method lora` is peft's
  LoRA (alpha 2r, dropout 0.05, as the official scripts); `--method ipa` is the same LoRA with
  lora_A frozen and dropout 0, which costs what IPA with a frozen projector costs; `weights`
  trains the targets' own weights, `full` every weight.
* fit-pass: the frozen forward with the authors' batched IPCA update (valeoai/peft-ipa,
  `LinearProj.batched_ipca_update`: torch.svd_lowrank on the stacked
  [singular values · components; centred batch; mean correction], niter 3) run on the input of
  every targeted linear, as their code does (one estimator per linear: q, k and v each fit on
  the same input), next to the plain forward.
* fit: that update alone on synthetic rows of width d (the `ipa bench fit` settings).
* generate: transformers' greedy `generate` with its KV cache on one prompt (the chat template
  with --chat), timed from the prompt's ids to the last token, as `ipa generate` times it,
  after a 2-token call that takes generate's first-call setup out of the figure.

Needs the fixture venv (torch, transformers, peft, gguf). Never needed by users or CI.
Prints one Markdown row per measurement and, with --json, writes the rows with the field
names of `ipa bench ... --json`.
"""

import argparse
import json
import os
import resource
import time

import torch

SIZES = {
    # hidden, layers, heads, kv heads, intermediate, vocab, tied
    "tiny": (64, 2, 4, 4, 128, 256, True),
    "100m": (768, 12, 12, 12, 2048, 32000, True),
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True),
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 32000, False),
}

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def load_model(spec, dtype, device):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if spec.startswith("random:"):
        hidden, layers, heads, kv, inter, vocab, tied = SIZES[spec.split(":", 1)[1]]
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=tied,
            attn_implementation="eager",
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype)
    elif spec.endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(spec))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec, torch_dtype=dtype)
    return model.to(device)


def token_ids(batch, seq, vocab, device):
    # The ids of src/bench/model.rs::bench_ids.
    ids = [(i * 7919 + 13) % vocab for i in range(batch * seq)]
    return torch.tensor(ids, dtype=torch.long, device=device).view(batch, seq)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mib(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_train(args):
    from peft import LoraConfig, get_peft_model

    dtype = DTYPES[args.dtype]
    model = load_model(args.model, dtype, args.device)
    targets = args.targets.split(",")
    method = args.method
    if method in ("lora", "ipa"):
        config = LoraConfig(
            r=args.rank,
            lora_alpha=2 * args.rank,
            lora_dropout=0.05 if method == "lora" or args.dora else 0.0,
            target_modules=targets,
            use_dora=args.dora,
        )
        model = get_peft_model(model, config)
        if method == "ipa" and not args.train_projector:
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.requires_grad_(False)
    elif method == "weights":
        for name, p in model.named_parameters():
            p.requires_grad_(".layers." in name and name.split(".")[-2] in targets)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-4, eps=1e-8, weight_decay=0.0)
    ids = token_ids(args.batch, args.seq, model.config.vocab_size, args.device)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync(args.device)
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - start
    label = method + ("+dora" if args.dora else "")
    return [
        {
            "backend": f"torch-{args.device}",
            "model": args.model,
            "dtype": args.dtype,
            "method": label,
            "rank": args.rank if method in ("lora", "ipa") else 0,
            "trainable_params": sum(p.numel() for p in params),
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "tokens_per_second": args.batch * args.seq * args.steps / elapsed,
            "seconds_per_step": elapsed / args.steps,
            "last_loss": loss,
            "peak_rss_mib": peak_mib(args.device),
        }
    ]


def svd_flip_v(u, v):
    # sklearn's svd_flip with u_based_decision=False, as the authors use it.
    rows = torch.argmax(torch.abs(v), dim=1)
    signs = torch.sign(v[range(v.shape[0]), rows])
    return u * signs[: u.shape[1]].view(1, -1), v * signs.view(-1, 1)


class Ipca:
    """The authors' batched IPCA state for one linear (f64 buffers, f32 SVD input)."""

    def __init__(self, d, rank, device):
        self.rank = rank
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.components = torch.zeros(rank, d, dtype=torch.float64, device=device)
        self.singular = torch.zeros(rank, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, x, niter=3):
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        m = x.shape[0]
        total = self.n + m
        new_mean = (self.mean * self.n + x.sum(0, dtype=torch.float64)) / total
        if self.n == 0:
            stacked = x - new_mean.to(torch.float32)
        else:
            batch_mean = x.mean(0)
            correction = ((self.n / total) * m) ** 0.5 * (self.mean - batch_mean)
            stacked = torch.vstack(
                (
                    (self.singular.view(-1, 1) * self.components).to(torch.float32),
                    x - batch_mean,
                    correction.to(torch.float32).view(1, -1),
                )
            )
        u, s, v = torch.svd_lowrank(stacked, q=self.rank, niter=niter)
        _, vt = svd_flip_v(u, v.mH)
        self.n = total
        self.singular = s[: self.rank].double()
        self.components = vt[: self.rank].double()
        self.mean = new_mean


def bench_fit_pass(args):
    dtype = DTYPES[args.dtype]
    model = load_model(args.model, dtype, args.device).eval()
    targets = set(args.targets.split(","))
    ids = token_ids(args.batch, args.seq, model.config.vocab_size, args.device)
    tokens = args.batch * args.seq * args.batches

    def timed(run):
        run()
        sync(args.device)
        start = time.perf_counter()
        for _ in range(args.batches):
            run()
            sync(args.device)
        return time.perf_counter() - start

    with torch.no_grad():
        forward = timed(lambda: model(input_ids=ids))
        states, hooks = [], []
        for name, module in model.named_modules():
            if name.split(".")[-1] in targets and isinstance(module, torch.nn.Linear):
                state = Ipca(module.in_features, args.rank, args.device)
                states.append(state)
                hooks.append(module.register_forward_pre_hook(lambda m, a, s=state: s.update(a[0])))
        fit = timed(lambda: model(input_ids=ids))
        for h in hooks:
            h.remove()
    row = lambda alg, secs: {
        "backend": f"torch-{args.device}",
        "model": args.model,
        "dtype": args.dtype,
        "algorithm": alg,
        "rank": args.rank,
        "targets": args.targets,
        "batch": args.batch,
        "seq": args.seq,
        "batches": args.batches,
        "tokens_per_second": tokens / secs,
        "relative_to_forward": secs / forward,
        "peak_rss_mib": peak_mib(args.device),
    }
    return [row("forward", forward), row("ipca (authors, per linear)", fit)]


def bench_fit(args):
    rows = []
    for d in [int(w) for w in args.widths.split(",")]:
        scales = 1.0 / torch.sqrt(1.0 + torch.arange(d, dtype=torch.float32, device=args.device))
        data = [torch.randn(args.batch_tokens, d, device=args.device) * scales for _ in range(2)]
        state = Ipca(d, args.rank, args.device)
        state.update(data[0])
        sync(args.device)
        start = time.perf_counter()
        for i in range(args.batches):
            state.update(data[(i + 1) % 2])
            sync(args.device)
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "backend": f"torch-{args.device}",
                "algorithm": "ipca (authors)",
                "d": d,
                "rank": args.rank,
                "batch_tokens": args.batch_tokens,
                "batches": args.batches,
                "tokens_per_second": args.batches * args.batch_tokens / elapsed,
                "seconds_per_batch": elapsed / args.batches,
                "finish_seconds": 0.0,
            }
        )
    return rows


def bench_generate(args):
    from transformers import AutoTokenizer

    device = args.device
    model = load_model(args.model, DTYPES[args.dtype], device).eval()
    if args.model.endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(args.model))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        if not torch.is_tensor(ids):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    ids = ids.to(device)
    with torch.no_grad():
        # A short call first: generate's own first-call setup is not decoding (ipa has none).
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
        sync(device)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                             do_sample=False, num_beams=1)
        sync(device)
        seconds = time.perf_counter() - start
    generated = out.shape[1] - ids.shape[1]
    return [{
        "backend": "torch",
        "model": os.path.basename(args.model),
        "prompt_tokens": ids.shape[1],
        "generated_tokens": generated,
        "seconds": seconds,
        "tokens_per_second": generated / seconds,
        "text": tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True),
    }]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu")
    common.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    common.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    common.add_argument("--json")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default="random:smollm2-135m")
    model.add_argument("--batch", type=int, default=4)
    model.add_argument("--seq", type=int, default=128)
    model.add_argument("--targets", default="q_proj,k_proj,v_proj,up_proj,down_proj")
    model.add_argument("--rank", type=int, default=32)
    train = sub.add_parser("train", parents=[common, model])
    train.add_argument("--method", choices=["lora", "ipa", "weights", "full"], default="lora")
    train.add_argument("--dora", action="store_true")
    train.add_argument("--train-projector", action="store_true")
    train.add_argument("--warmup", type=int, default=1)
    train.add_argument("--steps", type=int, default=3)
    fit_pass = sub.add_parser("fit-pass", parents=[common, model])
    fit_pass.add_argument("--batches", type=int, default=3)
    fit = sub.add_parser("fit", parents=[common])
    fit.add_argument("--widths", default="4096,14336")
    fit.add_argument("--rank", type=int, default=32)
    fit.add_argument("--batch-tokens", type=int, default=4096)
    fit.add_argument("--batches", type=int, default=5)
    generate = sub.add_parser("generate", parents=[common])
    generate.add_argument("--model", default="random:smollm2-135m")
    generate.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    generate.add_argument("--chat", action="store_true")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {"train": bench_train, "fit-pass": bench_fit_pass, "fit": bench_fit,
            "generate": bench_generate}[args.what](args)
    for r in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
