"""Benchmark: how many of the evolver's rewrites pass the instruction rules, with and without the small-model
aids (generation controls, few-shot examples; docs/explanation/controls.md), and how many per minute a given evolver
model writes.

One evolving call per seed (the five methods in turn, evolve's sampling: temperature 0.7, top_p
0.95), on the shipped models/SmolLM2-135M-Instruct or ``--model``; each answer is checked by the
unchanged instruction rules (``elimination.instruction_failure``: empty, truncated, unchanged, template
words, chatter, repetitive, not an instruction). The response rules are left out (they need an answer
per rewrite; the real stages apply them: ``stages/evolve.py``). Prints each config's survivors, its
failure reasons, seconds, generated tokens and survivors per minute.

    python bench/controls_survival.py [--seeds 8] [--max-tokens 128] [--configs none,fs_all] [--model DIR]
    python bench/controls_survival.py --seeds-from data/seed --configs shipped --threads 2 --json out.json

Configs: ``none`` (the papers' zero-shot, no control), ``ban_stop`` (banned template words, stop at a blank
line), ``all`` (ban_stop + no_repeat_ngram_size 4 + repetition_penalty 1.15), and each with ``fs_`` in
front: the same with evolve.few_shot's worked examples; ``shipped``: params.yaml's ``evolve.controls`` and
``evolve.few_shot`` as they are.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import polars as pl
import torch

from evolforge.config.loader import read_params, load_section
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.core.prompts import PromptLibrary
from evolforge.config.roles import Controls
from evolforge.llm.requests import ChatRequest
from evolforge.llm.backends.hf.backend import HFBackend
from evolforge.steps.common import elimination
from evolforge.steps.common.evolving import BREADTH, IN_DEPTH, evolving_messages

REPO = Path(__file__).resolve().parents[1]
BANNED = ("#The Given Prompt#", "#Rewritten Prompt#", "#Given Prompt#", "#Created Prompt#", "Given Prompt",
          "Given prompt", "given prompt", "Rewritten Prompt", "Rewritten prompt", "rewritten prompt",
          "Created Prompt", "Created prompt", "created prompt")  # as params.yaml evolve.controls
CONTROLS = {
    "none": Controls(),
    "ban_stop": Controls(banned_strings=BANNED, stop=("\n\n",)),
    "all": Controls(banned_strings=BANNED, stop=("\n\n",), no_repeat_ngram_size=4, repetition_penalty=1.15),
}


def shipped_aids() -> tuple[bool, Controls]:
    """``evolve.few_shot`` and ``evolve.controls`` as params.yaml ships them."""
    settings = load_section(read_params(REPO / "params.yaml"), "evolve", EvolveSection)
    return settings.few_shot, Controls().merged(settings.controls)


def requests_for(prompts: PromptLibrary, seeds: list[dict], config: str, max_tokens: int) -> list[ChatRequest]:
    if config == "shipped":
        few_shot, controls = shipped_aids()
    else:
        few_shot, controls = config.startswith("fs_"), CONTROLS[config.removeprefix("fs_")]
    methods = [(IN_DEPTH + [BREADTH])[k % 5] for k in range(len(seeds))]  # every method in turn
    return [ChatRequest.chat(evolving_messages(prompts, m, s["instruction"], few_shot=few_shot), temperature=0.7,
                             top_p=0.95, max_tokens=max_tokens, seed=0, sample_index=1,
                             controls=controls if controls.used() else None)
            for m, s in zip(methods, seeds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models/SmolLM2-135M-Instruct"))
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--configs", default="none,all,fs_all")
    ap.add_argument("--seeds-from", help="a seed stage output folder (e.g. data/seed): all its items, in id order")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write one record per config (model, survivors, seconds, tokens, outputs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.seeds_from:
        seeds = pl.read_parquet(Path(args.seeds_from) / "items.parquet").sort("id").to_dicts()
    else:
        seeds = [json.loads(line) for line in (REPO / "data/seeds/demo.jsonl").read_text().splitlines() if line.strip()]
        seeds = seeds[:: max(1, len(seeds) // args.seeds)][: args.seeds]
    prompts = PromptLibrary(REPO / "prompts")
    backend = HFBackend(args.model, threads=args.threads)
    records = []
    for config in args.configs.split(","):
        start, cpu = time.perf_counter(), time.process_time()
        outs = backend.generate(requests_for(prompts, seeds, config, args.max_tokens))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        reasons, rows = Counter(), []
        for seed, out in zip(seeds, outs):
            reason = elimination.instruction_failure(seed["instruction"], out.text, finish_reason=out.finish_reason)
            reasons[reason or "survived"] += 1
            rows.append({"parent": seed["instruction"], "rewrite": out.text, "failure": reason})
            print(f"  [{reason or 'survived'}] {seed['instruction'][:60]!r} -> {out.text[:160]!r}")
        tokens = sum(out.completion_tokens or 0 for out in outs)
        print(f"{config}: {reasons['survived']}/{len(outs)} survive the instruction rules; {dict(reasons)}; "
              f"{seconds:.0f} s wall, {cpu:.0f} s CPU, {tokens} tokens, "
              f"{60 * reasons['survived'] / seconds:.2f} survivors per minute", flush=True)
        records.append({"model": args.model, "config": config, "threads": args.threads, "attempts": len(outs),
                        "survived": reasons["survived"], "reasons": dict(reasons), "wall_s": round(seconds, 1),
                        "cpu_s": round(cpu, 1), "completion_tokens": tokens, "outputs": rows})
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
