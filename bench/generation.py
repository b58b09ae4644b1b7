"""Benchmark: the hf backend's batched generation against one request at a time, same prompts, same model.

Both go through the LLM layer as the stages do: "batched" keeps ``--batch-size`` requests in flight
(the backend's continuous batching), "one at a time" keeps one. Prints generated tokens/s of both and
the ratio. Default model: the shipped models/SmolLM2-135M-Instruct (stage fetch_model) when it is there,
else the test suite's tiny trained model, built into a temporary folder; ``--model`` takes a hub id or a
local folder.

    python bench/generation.py [--model models/SmolLM2-135M-Instruct] [--n 64] [--batch-size 32] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from evolforge.llm.requests import ChatRequest
from evolforge.llm.cached import LLM
from evolforge.llm.backends.hf.backend import HFBackend
from evolforge.core.prompts import PromptLibrary

REPO = Path(__file__).resolve().parents[1]


def prompts_for(n: int) -> list[ChatRequest]:
    """Real evolving and response prompts over the demo seeds, greedy, the same for both runs."""
    library = PromptLibrary(REPO / "prompts")
    seeds = pl.read_ndjson(REPO / "data/seeds/demo.jsonl").to_dicts()
    out = []
    for i in range(n):
        row = seeds[i % len(seeds)]
        text = (library.render("evolve/depth.j2", method="reasoning", instruction=row["instruction"]) if i % 2 == 0
                else library.render("respond/response.j2", instruction=row["instruction"], input=row["input"]))
        out.append(text)
    return out


def timed(backend: HFBackend, requests: list[ChatRequest], batch_size: int) -> tuple[float, int, list[str]]:
    """Generate through the LLM layer as the stages do (length-sorted, ``batch_size`` in flight), no cache."""
    start = time.perf_counter()
    texts = LLM(backend, cache=None, batch_size=batch_size).complete(requests)
    seconds = time.perf_counter() - start
    tokens = sum(len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return seconds, tokens, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best counts")
    args = ap.parse_args()

    model = args.model
    if model is None:
        model = str(REPO / "models/SmolLM2-135M-Instruct")
        if not Path(model).exists():
            sys.path.insert(0, str(REPO / "tests"))  # the test fixtures' model builders
            from tiny import TinyConfig, build_tiny_model

            model = str(Path(tempfile.mkdtemp()) / "tiny")
            build_tiny_model(model, REPO / "data/seeds/demo.jsonl", REPO / "prompts", TinyConfig(), log=lambda _: None)
    backend = HFBackend(model)
    requests = [ChatRequest.chat([{"role": "user", "content": p}], max_tokens=args.max_tokens) for p in prompts_for(args.n)]
    timed(backend, requests[:2], 2)  # warm-up

    # Alternate the two so both see the same machine; the best run of each counts.
    runs = [(timed(backend, requests, 1), timed(backend, requests, args.batch_size)) for _ in range(args.repeat)]
    one_s, one_tokens, one_texts = min((one for one, _ in runs), key=lambda run: run[0])
    batch_s, batch_tokens, batch_texts = min((batch for _, batch in runs), key=lambda run: run[0])
    same = sum(a == b for a, b in zip(one_texts, batch_texts))
    print(f"model: {model}; {args.n} greedy requests, max_tokens {args.max_tokens}; best of {args.repeat} runs")
    print(f"one at a time : {one_s:7.2f} s  {one_tokens / one_s:9.1f} tokens/s")
    print(f"batched ({args.batch_size:>3}) : {batch_s:7.2f} s  {batch_tokens / batch_s:9.1f} tokens/s")
    print(f"speed-up      : {(batch_tokens / batch_s) / (one_tokens / one_s):.1f}x  (identical outputs: {same}/{args.n})")


if __name__ == "__main__":
    main()
