"""Benchmark: sampled against greedy decoding in the hf backend, same prompts, same model, same token counts.

Builds a random-weight model in the shape of the GPU probe's small one (a Qwen2 of hidden size 64, 2 layers, tied
embeddings) with a ``--vocab``-token output layer (default 49,152, SmolLM2's: about 3.2 M parameters, nearly all
of them the embedding), and times :meth:`HFBackend.generate` on ``--n`` requests of ``--max-tokens`` tokens,
greedy (temperature 0) and sampled (``--temperature`` / ``--top-p``). Random weights never end a turn, so every
request runs to its budget and both modes decode the same number of tokens; the weights are scaled down so the
logits spread (a nucleus of top_p 0.95 then holds most of the vocabulary: the hardest case for top-p).

The tokenizer is a small byte-level BPE trained here (2,000 tokens); the model's other ids decode to nothing.
What sampling costs depends on the vocabulary its logits span, not on the text.

Prints, per mode, the best of ``--repeat`` alternating runs: wall seconds and tokens/s, and process CPU seconds
and tokens per CPU second (steadier than wall time on a shared machine); then sampled / greedy for both, and the
wall time sampling adds to each decoding step (in the loop, where the model's step has just filled the caches;
the per-step costs printed last are of the sampler alone, on warm caches).

    python bench/sampling.py [--n 16] [--max-tokens 64] [--vocab 49152] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from evolforge.llm.backends.hf.backend import HFBackend
from evolforge.llm.requests import ChatRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test fixtures' model builders
from tiny import pseudo_words, train_tokenizer  # noqa: E402


def build_model(path: Path, vocab: int) -> Path:
    """The probe's small Qwen2 shape with a ``vocab``-wide output layer, random weights halved, and a tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    rng = random.Random(0)
    words = pseudo_words(1000)
    tokenizer = train_tokenizer([" ".join(rng.choice(words) for _ in range(20)) for _ in range(500)], 2000)
    tokenizer.save_pretrained(path)
    config = Qwen2Config(vocab_size=max(vocab, len(tokenizer)), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():  # small weights: random logits stay finite and spread
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(0.5)
    model.save_pretrained(path)
    return path


def prompts(n: int) -> list[str]:
    rng = random.Random(2)
    words = pseudo_words(1000, seed=1)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(30, 200))) for _ in range(n)]


def timed(backend: HFBackend, requests: list[ChatRequest]) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, completion tokens) of one ``generate`` over ``requests``."""
    wall, cpu = time.perf_counter(), time.process_time()
    outs = backend.generate(requests)
    return time.perf_counter() - wall, time.process_time() - cpu, sum(o.completion_tokens for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="requests, decoded together")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=49152, help="the output layer's width")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each mode, alternating; the best counts")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        backend = HFBackend(str(build_model(Path(tmp) / "model", args.vocab)), dtype="float32", device="cpu",
                            threads=args.threads)
    texts = prompts(args.n)
    modes = {"greedy": {"temperature": 0.0},
             "sampled": {"temperature": args.temperature, "top_p": args.top_p}}
    requests = {mode: [ChatRequest.chat([{"role": "user", "content": t}], max_tokens=args.max_tokens, seed=i,
                                        **sampling) for i, t in enumerate(texts)]
                for mode, sampling in modes.items()}
    for mode in modes:  # warm-up
        backend.generate(requests[mode][:4])
    runs: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode in modes:
            runs[mode].append(timed(backend, requests[mode]))
    params = sum(p.numel() for p in backend.model.parameters())
    print(f"random Qwen2, {params / 1e6:.1f} M parameters, vocabulary {backend.model.config.vocab_size:,}, fp32, "
          f"cpu, {backend.threads} threads; {args.n} requests x {args.max_tokens} tokens; sampled at temperature "
          f"{args.temperature}, top_p {args.top_p}; best of {args.repeat} alternating runs")
    best = {}
    for mode in modes:
        wall = min(r[0] for r in runs[mode])
        cpu = min(r[1] for r in runs[mode])
        tokens = runs[mode][0][2]
        best[mode] = (tokens / wall, tokens / cpu)
        print(f"{mode:8}: {tokens} tokens; wall {wall:6.3f} s = {tokens / wall:8.1f} tokens/s; "
              f"CPU {cpu:6.3f} s = {tokens / cpu:8.1f} tokens per CPU second")
    print(f"sampled / greedy: {best['sampled'][0] / best['greedy'][0]:.2f}x wall, "
          f"{best['sampled'][1] / best['greedy'][1]:.2f}x CPU")
    # every request decodes max_tokens tokens in both modes, so the batch makes that many steps in each
    added = (1 / best["sampled"][0] - 1 / best["greedy"][0]) * args.n
    print(f"sampling adds {added * 1e3:.2f} ms of wall time to each decoding step of the batch")
    step_costs(args.n, backend.model.config.vocab_size, args.temperature, args.top_p)


def step_costs(rows: int, vocab: int, temperature: float, top_p: float, repeat: int = 20) -> None:
    """Milliseconds per step, on logits of ``rows`` x ``vocab`` spread as the bench model's: the greedy argmax,
    the batched sampler's draws, and the full sort of every row a sorting nucleus would need."""
    from evolforge.llm.sampling import BatchSampler, SamplingRows

    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 0.5
    sampling = SamplingRows.of([(temperature, top_p, i) for i in range(rows)], "cpu")
    counter = torch.arange(rows)

    def ms(work) -> float:
        work()
        start = time.perf_counter()
        for _ in range(repeat):
            work()
        return (time.perf_counter() - start) / repeat * 1e3

    def sample() -> None:
        sampler = BatchSampler(logits, sampling, counter, nucleus=top_p < 1)
        drawn = sampler.draws().tolist()
        unsettled = [row for row, token in enumerate(drawn) if token < 0]
        if unsettled:
            sampler.settle(unsettled)

    print(f"per step, {rows} x {vocab:,} logits: argmax {ms(lambda: logits.argmax(dim=-1)):.2f} ms; batched sampler "
          f"{ms(sample):.2f} ms; a full sort of the rows {ms(lambda: logits.sort(dim=-1, descending=True)):.2f} ms")


if __name__ == "__main__":
    main()
