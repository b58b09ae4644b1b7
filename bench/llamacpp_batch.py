"""llamacpp backend benchmark: decoding throughput of several sequences together against one alone.

    PYTHONPATH=src python bench/llamacpp_batch.py [--model models/Qwen2.5-Coder-1.5B-Instruct-GGUF]
        [--sizes 1 2 4 8 16] [--prompt-tokens 300] [--steps 30] [--threads 2]

The model's llama.cpp context (:class:`evolforge.llm.backends.llamacpp.context.LlamaCppContext`, the one the backend decodes
in) evaluates a prompt of ``--prompt-tokens`` tokens once (printed: prompt tokens/s), shares it with each
sequence, then appends one token to every sequence per step for ``--steps`` steps, reading each sequence's
logits as the backend does. Prints, per number of sequences, ms per step, tokens/s and the ratio to one
sequence measured in the same run, in wall and in process CPU time. Run it on an idle machine (under
``flock /tmp/evolforge-heavy.lock`` on a shared one): the figures are throughputs.
"""

from __future__ import annotations

import argparse
import time

from evolforge.llm.backends.llamacpp.backend import gguf_file
from evolforge.llm.backends.llamacpp.context import LlamaCppContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/Qwen2.5-Coder-1.5B-Instruct-GGUF")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    cache = LlamaCppContext(gguf_file(args.model), tokens=(args.prompt_tokens + args.steps) * max(args.sizes) + 512,
                     threads=args.threads)
    prompt = [1000 + i % 5000 for i in range(args.prompt_tokens)]  # any tokens: the cost does not depend on them
    wall, cpu = time.perf_counter(), time.process_time()
    cache.prefill(0, prompt, reuse=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"prompt: {args.prompt_tokens} tokens in {wall:.2f} s ({args.prompt_tokens / wall:.0f} tokens/s, "
          f"cpu {cpu:.2f} s)")
    base = None
    for n in args.sizes:
        cache.keep_only(0)
        for seq in range(1, n):
            cache.copy(0, seq)
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(args.steps):
            cache.step([(2000 + step, seq) for seq in range(n)])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rate, cpu_rate = n * args.steps / wall, n * args.steps / cpu
        base = base or (rate, cpu_rate)
        print(f"sequences {n:3d}: {1000 * wall / args.steps:6.0f} ms/step  {rate:6.1f} tokens/s  x{rate / base[0]:.2f} "
              f"(cpu: {cpu_rate:6.1f} tokens/s  x{cpu_rate / base[1]:.2f})")
        cache.keep_only(0)  # back to the prompt alone: its last token evaluated again
        cache.prefill(0, prompt, reuse=True)


if __name__ == "__main__":
    main()
