"""Benchmark: batched IFD / IC-IFD scoring against the one-item-at-a-time reference.

Scores the same items with the same model twice, with :func:`evolforge.score.ifd.ifd_scores` (two
batched passes) and :func:`evolforge.score.ifd.reference_ifd_scores` (three passes per item, batch 1),
and prints items/s, tokens/s and peak memory above the loaded model of each (CPU: resident memory sampled
every 2 ms; GPU: ``torch.cuda.max_memory_allocated``), the speed-up and the largest relative difference in IC-IFD.
It also counts each path's forward FLOPs (linear layers and causal attention) and measures this machine's
dense matmul rate in the model's dtype, so the figures show how close each path runs to the hardware (on
a GPU: tokens/s and utilisation of the bf16 matmul rate).

    python bench/score.py                          # random-weight Llama of ~4M parameters, built in a temp dir
    python bench/score.py --model Qwen/Qwen2.5-0.5B --items 128 --template chat
    python bench/score.py --memory-check           # 16 x 4096-token items, 152k vocabulary: peak memory

``--memory-check`` measures the activation memory of scoring 16 items of 4096 tokens with a 152,064-token
vocabulary (Qwen2.5's) on a random-weight Llama with that vocabulary (hidden size 64, so the weights are
small and what is measured is the activations: hidden states, logit slices, attention), against the
4 GB bound, and prints what the full logits of the same batch would have taken (computed).

Items are synthesised deterministically from ``--seed`` (instructions and responses of 20-200 tokens).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from contextlib import contextmanager
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


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "bytes" holds, on exit, the peak memory above the level at entry: on CUDA the
    allocator's peak, on CPU the process's resident memory sampled every 2 ms (a measurement)."""
    result = {"bytes": 0}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize()
        result["bytes"] = torch.cuda.max_memory_allocated(device) - base
        return
    import psutil

    process, stop, peak = psutil.Process(), threading.Event(), [0]
    base = process.memory_info().rss

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["bytes"] = max(0, peak[0] - base)


def memory_check(device: str, max_batch_tokens: int, items: int = 16, length: int = 4096, vocab: int = 152064) -> None:
    """Peak activation memory of scoring ``items`` x ``length`` tokens with a ``vocab``-token vocabulary
    (measured, random-weight Llama of hidden size 64), against 4 GB; the full logits computed beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from evolforge.score.losses import split_head, token_nlls

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=length)
    torch.manual_seed(0)
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(dev, dtype).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, vocab, (length,), generator=generator).tolist() for _ in range(items)]
    head = split_head(model)
    with torch.inference_mode(), peak_memory(dev) as peak:
        nll, seconds = timed(lambda: token_nlls(model, sequences, pad_id=0, max_batch_tokens=max_batch_tokens, head=head))
    tokens = items * length
    full = tokens * vocab * torch.finfo(dtype).bits // 8
    print(f"memory check ({dev}, {dtype}): {items} x {length} tokens, vocabulary {vocab}, max_batch_tokens "
          f"{max_batch_tokens}, weights {weights / 2**20:.0f} MiB; sliced head: {head is not None}")
    print(f"  measured peak activation memory {peak['bytes'] / 2**30:.2f} GiB ({'under' if peak['bytes'] < 4 * 2**30 else 'OVER'}"
          f" the 4 GB bound) in {seconds:.1f} s; mean NLL {torch.cat(nll).mean():.2f} nats (ln V = {torch.log(torch.tensor(vocab)):.2f})")
    upcast = f" (+{tokens * vocab * 4 / 2**30:.1f} GiB upcast to fp32)" if dtype != torch.float32 else ""
    print(f"  computed: the batch's full logits would be {full / 2**30:.1f} GiB in {dtype}{upcast}; "
          f"one logit slice is {2**25 * 4 / 2**20:.0f} MiB in fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or local folder; default: a random Llama built in a temp dir")
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--template", choices=["raw", "chat", "cherry"], default="raw")
    parser.add_argument("--dtype", default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    parser.add_argument("--memory-check", action="store_true", help="only the 16 x 4096 / 152k-vocabulary check")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-size", type=int, default=4096,
                        help="side of the square matmul that measures the machine's peak (smaller: a smoke run)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_check:
        memory_check(args.device, args.max_batch_tokens)
        return

    from evolforge.core.models import load_scorer
    from evolforge.score.ifd import ifd_scores, reference_ifd_scores

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or str(build_random_llama(Path(tmp) / "random-llama"))
        model, tokenizer = load_scorer(model_path, dtype=args.dtype, device=args.device)
    items = synth_items(args.items, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    n_threads = torch.get_num_threads()
    print(f"model {args.model or 'random Llama'}: {n_params / 1e6:.1f}M parameters, {model.dtype}, "
          f"{model.device}, {n_threads} torch threads; {args.items} items, template={args.template}")

    warm_up = {name: values[:8] for name, values in items.items()}
    ifd_scores(model, tokenizer, **warm_up, template=args.template, progress=False)
    with peak_memory(model.device) as fast_peak:
        fast, fast_s = timed(lambda: ifd_scores(
            model, tokenizer, **items, template=args.template, batch_size=args.batch_size,
            max_batch_tokens=args.max_batch_tokens, progress=False))
    with peak_memory(model.device) as ref_peak:
        ref, ref_s = timed(lambda: reference_ifd_scores(model, tokenizer, **items, template=args.template))

    # Tokens per item: the conditioned sequence Q + A, the same count for both implementations.
    conditioned = (fast["n_tokens_instruction"] + 1 + fast["n_tokens_response_given_instruction"]).to_list()
    direct = (fast["n_tokens_response"] + 1).to_list()  # BOS + A (raw); close enough for chat
    n_tokens = sum(conditioned)
    # Work each path does: conditioned + direct passes, and the reference's conditioned pass twice.
    fast_flops = matmul_flops(model, conditioned + direct)
    ref_flops = fast_flops + matmul_flops(model, conditioned)
    peak = matmul_peak(model.device, model.dtype, size=args.peak_size)
    rel = ((fast["ic_ifd"] - ref["ic_ifd"]).abs() / ref["ic_ifd"].abs()).max()
    print(f"{'':>26}{'seconds':>10}{'items/s':>10}{'tokens/s':>11}{'GFLOP/s':>10}{'of peak':>9}{'peak MiB':>10}")
    for name, seconds, flops, memory in [("batched (2 passes)", fast_s, fast_flops, fast_peak),
                                         ("reference (3 passes, bs 1)", ref_s, ref_flops, ref_peak)]:
        rate = flops / seconds
        print(f"{name:>26}{seconds:>10.2f}{args.items / seconds:>10.1f}{n_tokens / seconds:>11.0f}"
              f"{rate / 1e9:>10.1f}{rate / peak:>9.0%}{memory['bytes'] / 2**20:>10.0f}")
    print(f"speed-up {ref_s / fast_s:.1f}x; max relative difference in IC-IFD {rel:.2e}; "
          f"mean tokens per item {n_tokens / args.items:.0f}")
    print(f"this machine's {model.dtype} matmul peak ({args.peak_size}^3): {peak / 1e9:.1f} GFLOP/s; at that rate the "
          f"batched work would take {fast_flops / peak:.2f} s, a {ref_s / (fast_flops / peak):.1f}x ceiling "
          f"against this reference run")


if __name__ == "__main__":
    main()
