"""Benchmark: batched IFD / IC-IFD scoring against the one-item-at-a-time reference.

Scores the same items with the same model twice, with :func:`evolforge.score.ifd.ifd_scores` (two
batched passes) and :func:`evolforge.score.ifd.reference_ifd_scores` (three passes per item, batch 1),
and prints items/s and tokens/s of each, the speed-up and the largest relative difference in IC-IFD.
It also counts each path's forward FLOPs (linear layers and causal attention) and measures this machine's
dense matmul rate in the model's dtype, so the figures show how close each path runs to the hardware (on
a GPU: tokens/s and utilisation of the bf16 matmul rate).

    python bench/score.py                          # random-weight Llama of ~4M parameters, built in a temp dir
    python bench/score.py --model Qwen/Qwen2.5-0.5B --items 128 --template chat

Items are synthesised deterministically from ``--seed`` (instructions and responses of 20-200 tokens).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test fixtures' model builders
from tiny import build_random_llama, pseudo_words  # noqa: E402


def synth_items(count: int, seed: int = 0) -> dict[str, list[str]]:
    """Instructions, inputs (a third non-empty) and responses of 10-130 words (about 20-200 tokens)."""
    rng = random.Random(seed)
    words = pseudo_words(1000, seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    items: dict[str, list[str]] = {"instructions": [], "inputs": [], "responses": []}
    for _ in range(count):
        items["instructions"].append(text(10, 90))
        items["inputs"].append(text(5, 30) if rng.random() < 1 / 3 else "")
        items["responses"].append(text(15, 130))
    return items


def matmul_flops(model, lengths: list[int]) -> float:
    """Forward-pass FLOPs of sequences of ``lengths`` tokens: 2 per weight of every linear layer (LM head
    included) per token, plus causal attention (QK^T and AV, 2 FLOPs per multiply-add, half the square)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model.config
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    attention = 2 * config.num_hidden_layers * width  # per (query, key) pair: 2 products of 2 FLOPs each, halved
    return float(sum(2 * linear * n + attention * n * n for n in lengths))


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 4096, repeat: int = 5) -> float:
    """This machine's measured dense matmul rate (FLOP/s) in ``dtype``: the ceiling for either path."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or local folder; default: a random Llama built in a temp dir")
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--template", choices=["raw", "chat"], default="raw")
    parser.add_argument("--dtype", default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from evolforge.score.ifd import ifd_scores, load_scorer, reference_ifd_scores

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or str(build_random_llama(Path(tmp) / "random-llama"))
        model, tokenizer = load_scorer(model_path, dtype=args.dtype)
    items = synth_items(args.items, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    n_threads = torch.get_num_threads()
    print(f"model {args.model or 'random Llama'}: {n_params / 1e6:.1f}M parameters, {model.dtype}, "
          f"{model.device}, {n_threads} torch threads; {args.items} items, template={args.template}")

    warm_up = {name: values[:8] for name, values in items.items()}
    ifd_scores(model, tokenizer, **warm_up, template=args.template, progress=False)
    fast, fast_s = timed(lambda: ifd_scores(
        model, tokenizer, **items, template=args.template, batch_size=args.batch_size, progress=False))
    ref, ref_s = timed(lambda: reference_ifd_scores(model, tokenizer, **items, template=args.template))

    # Tokens per item: the conditioned sequence Q + A, the same count for both implementations.
    conditioned = (fast["n_tokens_instruction"] + 1 + fast["n_tokens_response_given_instruction"]).to_list()
    direct = (fast["n_tokens_response"] + 1).to_list()  # BOS + A (raw); close enough for chat
    n_tokens = sum(conditioned)
    # Work each path does: conditioned + direct passes, and the reference's conditioned pass twice.
    fast_flops = matmul_flops(model, conditioned + direct)
    ref_flops = fast_flops + matmul_flops(model, conditioned)
    peak = matmul_peak(model.device, model.dtype)
    rel = ((fast["ic_ifd"] - ref["ic_ifd"]).abs() / ref["ic_ifd"].abs()).max()
    print(f"{'':>26}{'seconds':>10}{'items/s':>10}{'tokens/s':>11}{'GFLOP/s':>10}{'of peak':>9}")
    for name, seconds, flops in [("batched (2 passes)", fast_s, fast_flops),
                                 ("reference (3 passes, bs 1)", ref_s, ref_flops)]:
        rate = flops / seconds
        print(f"{name:>26}{seconds:>10.2f}{args.items / seconds:>10.1f}{n_tokens / seconds:>11.0f}"
              f"{rate / 1e9:>10.1f}{rate / peak:>9.0%}")
    print(f"speed-up {ref_s / fast_s:.1f}x; max relative difference in IC-IFD {rel:.2e}; "
          f"mean tokens per item {n_tokens / args.items:.0f}")
    print(f"this machine's {model.dtype} matmul peak (4096^3): {peak / 1e9:.1f} GFLOP/s; at that rate the "
          f"batched work would take {fast_flops / peak:.2f} s, a {ref_s / (fast_flops / peak):.1f}x ceiling "
          f"against this reference run")


if __name__ == "__main__":
    main()
