"""Two calls decoded one after the other against the same two calls in the same batches (evolforge.llm.together).

    flock /work/heavy.lock python bench/together.py [--model models/Qwen2.5-Coder-1.5B-Instruct-GGUF]
        [--pairs 1,6 5,2] [--max-tokens 384] [--batch-size 6] [--threads 2] [--repeats 2] [--json out.json]

Each pair ``a,b`` is two calls of two roles on one loaded llama.cpp backend, answering the demo seeds' instructions
with the response template, greedily, at most ``--max-tokens`` tokens each: ``a`` requests for the first role and the
next ``b`` for the second. ``1,6`` is round 1's check call (one surviving rewrite) and respond's six seeds, which the
round now asks in one call; ``5,2`` stands for optimize's answers to the development set and the optimizer's two
analyses. *apart* runs the first call and then the second (each LLM's own ``generate``); *together* runs
:func:`~evolforge.llm.together.generate_together` on both. No call cache: every request is decoded each time.
The two orders alternate ``--repeats`` times (apart first), so a host that drifts weighs on both.

Printed per pair and mode: the wall seconds (median of the repeats), the tokens generated and tokens/s, and
together / apart. Greedy answers decoded in other company may differ in their last bits, and with them their
length: the token counts say how much work each mode did. Run it on an idle machine (under the lock).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from evolforge.config.roles import Role
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
from evolforge.llm.cached import LLM
from evolforge.llm.together import generate_together
from evolforge.steps.common.responses import response_requests

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data/seeds/demo.jsonl"


def instructions(n: int) -> list[str]:
    """The first ``n`` demo seed instructions."""
    rows = [json.loads(line) for line in SEEDS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["instruction"] for row in rows[:n]]


def run_pair(first: LLM, second: LLM, a: int, b: int, max_tokens: int, together: bool) -> dict:
    prompts = PromptLibrary()
    questions = instructions(a + b)
    asked = [response_requests(llm, prompts, qs, [""] * len(qs), temperature=0.0, max_tokens=max_tokens)
             for llm, qs in ((first, questions[:a]), (second, questions[a:]))]
    start = time.perf_counter()
    if together:
        outs = generate_together([(first, asked[0]), (second, asked[1])], desc="together")
    else:
        outs = [first.generate(asked[0], desc="first"), second.generate(asked[1], desc="second")]
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": sum(c.completion_tokens or 0 for part in outs for c in part)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models/Qwen2.5-Coder-1.5B-Instruct-GGUF"))
    parser.add_argument("--pairs", nargs="+", default=["1,6", "5,2"])
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    backend = LlamaCppBackend(args.model, threads=args.threads, batch_size=args.batch_size)
    role = {"backend": "llamacpp", "model": args.model, "batch_size": args.batch_size}
    first = LLM(backend, None, role=Role.from_params("evolver", role))
    second = LLM(backend, None, role=Role.from_params("optimizer", role))
    first.generate(response_requests(first, PromptLibrary(), instructions(1), [""], temperature=0.0, max_tokens=4),
                   desc="warm-up")
    figures = {}
    print(f"{'pair':>6} {'mode':>9} {'wall s':>8} {'tokens':>7} {'tok/s':>7}")
    for pair in args.pairs:
        a, b = (int(x) for x in pair.split(","))
        runs: dict[str, list[dict]] = {"apart": [], "together": []}
        for _ in range(args.repeats):
            for mode in ("apart", "together"):
                runs[mode].append(run_pair(first, second, a, b, args.max_tokens, mode == "together"))
        row, walls = {}, {}
        for mode, found in runs.items():
            walls[mode] = wall = max(statistics.median(r["wall_s"] for r in found), 1e-9)
            tokens = statistics.median(r["tokens"] for r in found)
            row[mode] = {"wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1)}
            print(f"{pair:>6} {mode:>9} {wall:8.1f} {tokens:7.0f} {tokens / wall:7.1f}")
        row["together_over_apart"] = round(walls["together"] / walls["apart"], 3)
        print(f"{pair:>6} together / apart: {row['together_over_apart']:.2f} (wall)")
        figures[pair] = row
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads, "batch_size": args.batch_size,
                                         "max_tokens": args.max_tokens, "repeats": args.repeats, "pairs": figures},
                                        indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
