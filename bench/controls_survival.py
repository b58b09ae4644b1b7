"""Benchmark: how many of the evolver's rewrites pass the instruction rules, with and without the small-model
aids (generation controls, few-shot examples; docs/controls.md).

One evolving call per seed (the five methods in turn, evolve's sampling: temperature 0.7, top_p
0.95), on the shipped models/SmolLM2-135M-Instruct, one torch thread; each answer is checked by the
unchanged instruction rules (``elimination.instruction_failure``: empty, truncated, unchanged, template
words, chatter, repetitive, not an instruction). The response rules are left out (they need an answer
per rewrite; the real stages apply them: ``stages/evolve.py``). Prints each config's survivors, its
failure reasons and seconds.

    python bench/controls_survival.py [--seeds 8] [--max-tokens 128] [--configs none,fs_all]

Configs: ``none`` (the papers' zero-shot, no control), ``ban_stop`` (banned template words, stop at a blank
line), ``all`` (ban_stop + no_repeat_ngram_size 4 + repetition_penalty 1.15), and each with ``fs_`` in
front: the same with evolve.few_shot's worked examples.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from evolforge.core.prompts import PromptLibrary
from evolforge.core.roles import Controls
from evolforge.core.roles import ChatRequest
from evolforge.llm.hf import HFBackend
from evolforge.steps import elimination
from evolforge.steps.evolve_prompts import BREADTH, IN_DEPTH, evolving_messages

REPO = Path(__file__).resolve().parents[1]
BANNED = ("#The Given Prompt#", "#Rewritten Prompt#", "#Given Prompt#", "#Created Prompt#", "Given Prompt",
          "Given prompt", "given prompt", "Rewritten Prompt", "Rewritten prompt", "rewritten prompt",
          "Created Prompt", "Created prompt", "created prompt")  # as params.yaml evolve.controls
CONTROLS = {
    "none": Controls(),
    "ban_stop": Controls(banned_strings=BANNED, stop=("\n\n",)),
    "all": Controls(banned_strings=BANNED, stop=("\n\n",), no_repeat_ngram_size=4, repetition_penalty=1.15),
}


def requests_for(prompts: PromptLibrary, seeds: list[dict], config: str, max_tokens: int) -> list[ChatRequest]:
    few_shot = config.startswith("fs_")
    controls = CONTROLS[config.removeprefix("fs_")]
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
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [json.loads(line) for line in (REPO / "data/seeds/demo.jsonl").read_text().splitlines() if line.strip()]
    seeds = seeds[:: max(1, len(seeds) // args.seeds)][: args.seeds]
    prompts = PromptLibrary(REPO / "prompts")
    backend = HFBackend(args.model, threads=1)
    for config in args.configs.split(","):
        start = time.perf_counter()
        outs = backend.generate(requests_for(prompts, seeds, config, args.max_tokens))
        reasons = Counter()
        for seed, out in zip(seeds, outs):
            reason = elimination.instruction_failure(seed["instruction"], out.text, finish_reason=out.finish_reason)
            reasons[reason or "survived"] += 1
            print(f"  [{reason or 'survived'}] {seed['instruction'][:60]!r} -> {out.text[:160]!r}")
        print(f"{config}: {reasons['survived']}/{len(outs)} survive the instruction rules; "
              f"{dict(reasons)}; {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
