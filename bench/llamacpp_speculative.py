"""Speculative decoding (prompt lookup, evolforge.llm.backends.llamacpp.speculative) on the shipped kind of work, same run with
and without it.

    flock /tmp/evolforge.lock python bench/llamacpp_speculative.py \
        [--model /work/main/models/Qwen2.5-Coder-1.5B-Instruct-GGUF] [--n 12] [--answers 6] [--threads 2]

Workloads, built as the stages build them from params.yaml and the demo seeds:

- **rewrites**: round 1's evolving calls (Evol-Instruct templates quoting the parent instruction, the
  worked examples before it when ``evolve.few_shot``), at the evolver role's sampling (0.7 / 0.95), budget
  (``evolve.max_tokens``) and controls (the role's merged with ``evolve.controls``: banned strings, stop,
  no-repeat n-grams, repetition penalty), ``roles.evolver.batch_size`` sequences together;
- **rewrites 1 seq**: the first four of them, one sequence at a time;
- **code answers**: the response template on the demo's code seeds, greedy, ``--answer-tokens`` tokens.

Each workload runs twice on one backend -- speculation off, then on -- from an empty KV store, and prints
wall seconds, decode tokens/s (generated tokens / (wall - time in prompt evaluation)), the draft tokens
verified and accepted, and how many answers are identical. Run it on an idle machine (under the lock).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
import yaml

from evolforge.config.loader import load_section
from evolforge.config.roles import load_role
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.llm.requests import ChatRequest, role_request
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
from evolforge.steps.common.evolving import assign_methods, evolving_messages

REPO = Path(__file__).resolve().parents[1]


def rewrites(n: int) -> tuple[list[ChatRequest], int]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    role, settings = load_role(params, "evolver"), load_section(params, "evolve", EvolveSection)
    prompts = PromptLibrary(REPO / "prompts")
    seeds = pl.read_ndjson(REPO / "data/seeds/demo.jsonl").to_dicts()[:n]
    ids = [f"seed-{i}" for i in range(len(seeds))]
    methods = assign_methods(ids, 1, settings.assignment, settings.breadth, settings.seed)
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
                    seed=settings.seed, sample_index=1, controls=role.controls.merged(settings.controls))
    return [role_request(role, evolving_messages(prompts, m, s["instruction"], None, settings.few_shot), **sampling)
            for m, s in zip(methods, seeds)], role.batch_size


def code_answers(n: int, tokens: int) -> list[ChatRequest]:
    prompts = PromptLibrary(REPO / "prompts")
    seeds = [s for s in pl.read_ndjson(REPO / "data/seeds/demo.jsonl").to_dicts() if s["category"] == "code"][:n]
    return [ChatRequest.chat([{"role": "user", "content": prompts.render(
        "respond/response.j2", instruction=s["instruction"], input=s["input"])}], max_tokens=tokens) for s in seeds]


def run(backend: LlamaCppBackend, requests: list[ChatRequest], slots: int, speculative: bool,
        fixed: int | None = None) -> dict:
    """One workload; ``fixed``: every draft this long (where prompt lookup finds one), not the cost rule's."""
    import evolforge.llm.backends.llamacpp.backend as module

    backend.speculative = speculative
    rule = module.draft_length
    if fixed is not None:
        module.draft_length = lambda *_: fixed
    cache = backend.cache
    cache.keep_only(-1)  # an empty store: both runs evaluate the same prompt tokens
    spent, plain = [0.0], cache.prefill

    def timed(seq, prompt, reuse):
        start = time.perf_counter()
        out = plain(seq, prompt, reuse)
        spent[0] += time.perf_counter() - start
        return out

    cache.prefill = timed
    drafted, accepted = backend.drafted, backend.accepted
    evaluated, reused = cache.evaluated, cache.reused
    try:
        start = time.perf_counter()
        outs = [c for _, c in sorted(i_c for group in backend.stream(requests, slots) for i_c in group)]
        wall = time.perf_counter() - start
    finally:
        del cache.prefill
        module.draft_length = rule
    generated = sum(c.completion_tokens for c in outs)
    return {"wall_s": wall, "prefill_s": spent[0], "generated": generated,
            "decode_tps": generated / (wall - spent[0]), "drafted": backend.drafted - drafted,
            "accepted": backend.accepted - accepted, "prompt_evaluated": cache.evaluated - evaluated,
            "prompt_reused": cache.reused - reused, "texts": [c.text for c in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/main/models/Qwen2.5-Coder-1.5B-Instruct-GGUF")
    ap.add_argument("--n", type=int, default=12, help="rewrites")
    ap.add_argument("--answers", type=int, default=6, help="code answers")
    ap.add_argument("--answer-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fixed", type=int, nargs="*", default=[],
                    help="also run with drafts of this fixed length (the cost rule's alternative)")
    ap.add_argument("--workloads", nargs="*", default=["rewrites", "rewrites 1 seq", "code answers"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    evolving, slots = rewrites(args.n)
    work = {"rewrites": (evolving, slots), "rewrites 1 seq": (evolving[:4], 1),
            "code answers": (code_answers(args.answers, args.answer_tokens), slots)}
    backend = LlamaCppBackend(args.model, threads=args.threads, batch_size=slots)
    backend.generate([ChatRequest.chat([{"role": "user", "content": "Hi"}], max_tokens=2)])  # warm-up
    report = {}
    print(f"model {Path(args.model).name}, {args.threads} threads, {slots} sequences together")
    print(f"{'workload':<14}{'speculation':>12}{'wall s':>8}{'decode tok/s':>14}{'drafted':>9}{'accepted':>9}"
          f"{'accept %':>9}{'speed-up':>9}{'same':>7}")
    for name, (requests, n_slots) in work.items():
        if name not in args.workloads:
            continue
        runs = {"off": run(backend, requests, n_slots, speculative=False),
                "on": run(backend, requests, n_slots, speculative=True)}
        for k in args.fixed:
            runs[f"fixed {k}"] = run(backend, requests, n_slots, speculative=True, fixed=k)
        off = runs["off"]
        for label, r in runs.items():
            rate = 100 * r["accepted"] / r["drafted"] if r["drafted"] else 0.0
            speed = r["decode_tps"] / off["decode_tps"]
            same = sum(a == b for a, b in zip(off["texts"], r["texts"]))
            print(f"{name:<14}{label:>12}{r['wall_s']:>8.1f}{r['decode_tps']:>14.1f}{r['drafted']:>9}"
                  f"{r['accepted']:>9}{rate:>9.0f}{speed:>9.2f}{f'{same}/{len(requests)}':>7}")
        on = runs["on"]
        print(f"  prompt tokens evaluated {on['prompt_evaluated']}, reused from the KV store {on['prompt_reused']}")
        report[name] = {label: {k: v for k, v in r.items() if k != "texts"} | {
            "identical": sum(a == b for a, b in zip(off["texts"], r["texts"])), "requests": len(requests),
            "decode_speedup": r["decode_tps"] / off["decode_tps"], "wall_speedup": off["wall_s"] / r["wall_s"]}
            for label, r in runs.items()}
        for label, r in runs.items():
            for a, b in zip(off["texts"], r["texts"]):
                if a != b:
                    print(f"  {label} differs:\n    off: {a[:120]!r}\n    {label}: {b[:120]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
