"""Speculative decoding (prompt lookup, evolforge.llm.backends.llamacpp.speculative) on the shipped kind of work, same run with
and without it.

    flock /tmp/evolforge.lock python bench/llamacpp_speculative.py \
        [--model /work/main/models/Qwen2.5-Coder-1.5B-Instruct-GGUF] [--n 12] [--answers 6] [--threads 2]
        [--gpu-layers N] [--cost A B] [--measure-cost] [--fixed 2 4] [--json out.json] [--extra-bufts probe|on|off]
    python bench/llamacpp_speculative.py --save-requests requests.json   # the workloads, then exit
    python bench/llamacpp_speculative.py --requests requests.json ...    # those workloads (no polars needed)

Workloads, built as the stages build them from params.yaml and the demo seeds:

- **rewrites**: round 1's evolving calls (Evol-Instruct templates quoting the parent instruction, the
  worked examples before it when ``evolve.few_shot``), at the evolver role's sampling (0.7 / 0.95), budget
  (``evolve.max_tokens``) and controls (the role's merged with ``evolve.controls``: banned strings, stop,
  no-repeat n-grams, repetition penalty), ``roles.evolver.batch_size`` sequences together;
- **rewrites 1 seq**: the first four of them, one sequence at a time;
- **code answers**: the response template on the demo's code seeds, greedy, ``--answer-tokens`` tokens.

``--save-requests`` writes those requests (and the sequences decoded together) to JSON; ``--requests``
reads them back instead of building them, so a machine without polars or the repo's data can run the
same workloads (``--n`` / ``--answers`` then keep the first ones, ``--max-tokens`` caps every budget).

Each workload runs twice on one backend -- speculation off, then on -- from an empty KV store, and prints
wall seconds, decode tokens/s (generated tokens / (wall - time in prompt evaluation)), the draft tokens
verified and accepted, and how many answers are identical. ``--gpu-layers`` puts layers on a GPU;
``--cost A B`` gives the draft rule another step cost for the run. ``--measure-cost`` first times decode
steps of n sequences x k fed tokens each after a prompt (the median of ``--cost-repeats``, the first call
of each shape not counted) and prints the least-squares fit ms = a + b x fed tokens: the constant for
``speculative.STEP_COST`` on this machine. Run it on an idle machine (under the lock).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np

from evolforge.llm.requests import ChatRequest, role_request
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend

REPO = Path(__file__).resolve().parents[1]
COST_SHAPES = [(n, k) for n in (1, 2, 4, 8) for k in (1, 2, 4, 8)]  # (sequences, tokens fed to each) timed


def built_workloads(n: int, answers: int, answer_tokens: int) -> dict:
    """The rewrites and code answers built from params.yaml, the prompts and the demo seeds, as the stages
    build them. Imported here, not at the top: ``--requests`` runs where polars is not installed."""
    import polars as pl
    import yaml

    from evolforge.config.loader import load_section
    from evolforge.config.roles import load_role
    from evolforge.core.prompts import PromptLibrary
    from evolforge.steps.common.evolving import assign_methods, evolving_messages
    from evolforge.steps.evolve.settings import EvolveSection

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    role, settings = load_role(params, "evolver"), load_section(params, "evolve", EvolveSection)
    prompts = PromptLibrary(REPO / "prompts")
    seeds = pl.read_ndjson(REPO / "data/seeds/demo.jsonl").to_dicts()
    chosen = seeds[:n]
    methods = assign_methods([f"seed-{i}" for i in range(len(chosen))], 1, settings.assignment, settings.breadth,
                             settings.seed)
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
                    seed=settings.seed, sample_index=1, controls=role.controls.merged(settings.controls))
    rewrites = [role_request(role, evolving_messages(prompts, m, s["instruction"], None, settings.few_shot), **sampling)
                for m, s in zip(methods, chosen)]
    code = [ChatRequest.chat([{"role": "user", "content": prompts.render(
        "respond/response.j2", instruction=s["instruction"], input=s["input"])}], max_tokens=answer_tokens)
        for s in [s for s in seeds if s["category"] == "code"][:answers]]
    return {"slots": role.settings.batch_size, "rewrites": rewrites, "code answers": code}


def save_requests(workloads: dict, path: Path) -> None:
    path.write_text(json.dumps({"slots": workloads["slots"], **{
        name: [r.as_json() for r in workloads[name]] for name in ("rewrites", "code answers")}}, indent=1) + "\n")


def load_requests(path: Path, n: int, answers: int, max_tokens: int | None) -> dict:
    """Saved workloads, the first ``n`` rewrites and ``answers`` code answers, budgets capped at ``max_tokens``."""
    saved = json.loads(path.read_text())

    def requests(name: str, keep: int) -> list[ChatRequest]:
        loaded = [ChatRequest.from_json(fields) for fields in saved[name][:keep]]
        if max_tokens is None:
            return loaded
        return [dataclasses.replace(r, max_tokens=min(r.max_tokens, max_tokens)) for r in loaded]

    return {"slots": saved["slots"], "rewrites": requests("rewrites", n), "code answers": requests("code answers", answers)}


def measure_cost(backend: LlamaCppBackend, prompt: list[int], repeats: int) -> dict:
    """Median ms of a decode step feeding each of n sequences k tokens (every sequence holding ``prompt``, one
    logits row read per sequence, as a step reads at least), per shape of :data:`COST_SHAPES`, and the
    least-squares fit ms = a + b x n k over them all and over each n's shapes."""
    cache = backend.cache
    cache.keep_only(-1)
    cache.prefill(0, prompt, True)
    for seq in range(1, max(n for n, _ in COST_SHAPES)):
        cache.copy(0, seq)
    points = []
    for n, k in COST_SHAPES:
        feed = [prompt[j % len(prompt)] for j in range(k)]  # which tokens does not matter to the cost
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for rows in cache.extend([(seq, feed) for seq in range(n)]):
                next(rows)
            times.append(1000 * (time.perf_counter() - start))
            for seq in range(n):
                cache.trim(seq, len(prompt))
        points.append({"sequences": n, "tokens_each": k, "fed": n * k, "ms": statistics.median(times[1:])})
    cache.keep_only(-1)
    by_sequences = {n: fit([p for p in points if p["sequences"] == n]) for n in sorted({n for n, _ in COST_SHAPES})}
    return {**fit(points), "prompt_tokens": len(prompt), "points": points, "by_sequences": by_sequences}


def fit(points: list[dict]) -> dict[str, float]:
    """Least squares ms = a + b x fed tokens over ``points``."""
    (a, b), *_ = np.linalg.lstsq(np.array([[1.0, p["fed"]] for p in points]), np.array([p["ms"] for p in points]),
                                 rcond=None)
    return {"a_ms": float(a), "b_ms_per_token": float(b)}


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


def report_workload(name: str, runs: dict, requests: int) -> dict:
    """Print one workload's rows (and any answer that differs from the run without speculation)."""
    off = runs["off"]
    for label, r in runs.items():
        rate = 100 * r["accepted"] / r["drafted"] if r["drafted"] else 0.0
        same = sum(a == b for a, b in zip(off["texts"], r["texts"]))
        print(f"{name:<14}{label:>12}{r['wall_s']:>8.1f}{r['decode_tps']:>14.1f}{r['drafted']:>9}"
              f"{r['accepted']:>9}{rate:>9.0f}{r['decode_tps'] / off['decode_tps']:>9.2f}{f'{same}/{requests}':>7}")
    on = runs["on"]
    print(f"  prompt tokens evaluated {on['prompt_evaluated']}, reused from the KV store {on['prompt_reused']}")
    for label, r in runs.items():
        for a, b in zip(off["texts"], r["texts"]):
            if a != b:
                print(f"  {label} differs:\n    off: {a[:120]!r}\n    {label}: {b[:120]!r}")
    return {label: {k: v for k, v in r.items() if k != "texts"} | {
        "identical": sum(a == b for a, b in zip(off["texts"], r["texts"])), "requests": requests,
        "decode_speedup": r["decode_tps"] / off["decode_tps"], "wall_speedup": off["wall_s"] / r["wall_s"]}
        for label, r in runs.items()}


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/main/models/Qwen2.5-Coder-1.5B-Instruct-GGUF")
    ap.add_argument("--n", type=int, default=12, help="rewrites")
    ap.add_argument("--answers", type=int, default=6, help="code answers")
    ap.add_argument("--answer-tokens", type=int, default=160)
    ap.add_argument("--max-tokens", type=int, default=None, help="cap every request's budget (a quick check)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU (role extra.gpu_layers; -1: all)")
    ap.add_argument("--cost", type=float, nargs=2, metavar=("A", "B"), default=None,
                    help="the draft rule's step cost for this run: A ms a step + B ms a fed token")
    ap.add_argument("--measure-cost", action="store_true", help="first time decode steps and fit ms = a + b x tokens")
    ap.add_argument("--cost-repeats", type=int, default=5, help="timed steps per shape (--measure-cost)")
    ap.add_argument("--fixed", type=int, nargs="*", default=[],
                    help="also run with drafts of this fixed length (the cost rule's alternative)")
    ap.add_argument("--workloads", nargs="*", default=["rewrites", "rewrites 1 seq", "code answers"])
    ap.add_argument("--save-requests", type=Path, default=None, help="write the workloads' requests here and exit")
    ap.add_argument("--requests", type=Path, default=None, help="read the workloads' requests from here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--extra-bufts", choices=("probe", "on", "off"), default="probe",
                    help="llama.cpp's extra buffer types (CPU-repack kernels): as the kernel probe finds, or forced")
    return ap.parse_args()


def main() -> None:
    args = arguments()
    if args.requests:
        workloads = load_requests(args.requests, args.n, args.answers, args.max_tokens)
    else:
        workloads = built_workloads(args.n, args.answers, args.answer_tokens)
    if args.save_requests:
        save_requests(workloads, args.save_requests)
        print(f"wrote {len(workloads['rewrites'])} rewrites and {len(workloads['code answers'])} code answers "
              f"({workloads['slots']} sequences together) to {args.save_requests}")
        return
    slots, evolving = workloads["slots"], workloads["rewrites"]
    work = {"rewrites": (evolving, slots), "rewrites 1 seq": (evolving[:4], 1),
            "code answers": (workloads["code answers"], slots)}
    backend = LlamaCppBackend(args.model, threads=args.threads, batch_size=slots, gpu_layers=args.gpu_layers,
                              extra_bufts={"probe": None, "on": True, "off": False}[args.extra_bufts])
    if args.cost:
        backend.step_cost = tuple(args.cost)
    backend.generate([ChatRequest.chat([{"role": "user", "content": "Hi"}], max_tokens=2)])  # warm-up
    report = {"gpu_layers": args.gpu_layers, "threads": args.threads, "sequences": slots,
              "step_cost": list(backend.step_cost), "extra_bufts": backend.extra_bufts}
    print(f"model {Path(args.model).name}, {args.threads} threads, {slots} sequences together, gpu layers "
          f"{args.gpu_layers}, draft rule's step cost {backend.step_cost[0]:g} ms + {backend.step_cost[1]:g} ms/token, "
          f"extra buffer types {'on' if backend.extra_bufts else 'off'}")
    if args.measure_cost:
        report["measured_cost"] = cost = measure_cost(backend, backend.render(evolving[0]), args.cost_repeats)
        for p in cost["points"]:
            print(f"  step of {p['sequences']} sequences x {p['tokens_each']} tokens: {p['ms']:.2f} ms")
        for n, c in cost["by_sequences"].items():
            print(f"  {n} sequences: {c['a_ms']:.2f} ms + {c['b_ms_per_token']:.3f} ms x fed tokens")
        print(f"measured step cost: {cost['a_ms']:.2f} ms + {cost['b_ms_per_token']:.3f} ms x fed tokens")
    print(f"{'workload':<14}{'speculation':>12}{'wall s':>8}{'decode tok/s':>14}{'drafted':>9}{'accepted':>9}"
          f"{'accept %':>9}{'speed-up':>9}{'same':>7}")
    for name, (requests, n_slots) in work.items():
        if name not in args.workloads or not requests:
            continue
        runs = {"off": run(backend, requests, n_slots, speculative=False),
                "on": run(backend, requests, n_slots, speculative=True)}
        for k in args.fixed:
            runs[f"fixed {k}"] = run(backend, requests, n_slots, speculative=True, fixed=k)
        report[name] = report_workload(name, runs, len(requests))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
