"""optimize stage: Auto Evol-Instruct's evolving-method optimization on a development set.

Reads:  data/seed (id, instruction, input), params.yaml `optimize` (initial_method, steps, candidates,
        batch_size, dev_size, trajectory_rounds, patience, selection, evolver_temperature, seed),
        `evolve.strategy`, roles `evolver` and `optimizer`, `cache.path`, prompts/optimize/*.j2,
        prompts/respond/response.j2; `optimize.unusable_failure_rate`, `optimize.on_unusable`
Writes: data/method/ (method.txt: the method to evolve with; log.jsonl: one row per step; meta.json,
        whose `fallback` is "evol" when the evolver cannot follow the method's format and
        on_unusable is evol), metrics/optimize.json, metrics/plots/optimize.json
        (step, failure_rate, best_failure_rate)

With evolve.strategy other than `auto` the stage costs nothing: method.txt is the initial method, the
log is empty, and no model is loaded or called. With on_unusable `stop`, an unusable method stops the
stage with a message. Logic: src/evolforge/steps/optimize.py.
"""

import argparse
import dataclasses
import random
from pathlib import Path

from evolforge.core.cache import open_cache
from evolforge.llm import open_role
from evolforge.core.params import load_params, load_section
from evolforge.steps.evolve import METHOD_TEMPLATE
from evolforge.steps.optimize import (ANALYSIS_TEMPLATE, INITIAL_TEMPLATES, OPTIMIZATION_TEMPLATE,
                                initial_method_text, optimize_method, split_dev_pool, summary, usability)
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import VERSIONS, atomic_dir, read_table, write_json, write_jsonl
from evolforge.core.versions import output_versions
from evolforge.steps.respond import RESPONSE_TEMPLATE
from evolforge.core.errors import run_stage

def open_models(params: dict) -> dict:
    """Evolver and optimizer LLMs (one loaded model when both roles name the same one)."""
    cache = open_cache(params)
    return dict(evolver=open_role(params, "evolver", cache), optimizer=open_role(params, "optimizer", cache))


def write_method(out: str, method: str, log: list[dict], meta: dict) -> None:
    with atomic_dir(out) as tmp:
        (tmp / "method.txt").write_text(method, encoding="utf-8")  # exact text: no added newline
        write_jsonl(tmp / "log.jsonl", log)
        write_json(tmp / "meta.json", {VERSIONS: output_versions(), **meta})  # as write_output records them


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seed", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--prompts", default="prompts")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    settings = load_section(params, "optimize")
    evolve_settings = load_section(params, "evolve")
    strategy = evolve_settings.strategy
    prompts = PromptLibrary(args.prompts)
    initial = initial_method_text(prompts, settings.initial_method)
    templates = [INITIAL_TEMPLATES[settings.initial_method], METHOD_TEMPLATE, RESPONSE_TEMPLATE,
                 ANALYSIS_TEMPLATE, OPTIMIZATION_TEMPLATE]
    meta = {"templates": {t: prompts.hash(t) for t in templates}, "params": dataclasses.asdict(settings),
            "evolve_strategy": strategy}

    if strategy != "auto":
        write_method(args.out, initial, [], {**meta, "skipped": True, "models": {}})
        write_json(args.metrics, {"skipped": True, "reason": f"evolve.strategy is {strategy!r}, not 'auto'",
                                  "steps_run": 0, "calls": 0, "cache_hits": 0})
        write_json(args.plot, [])
        print(f"optimize: skipped (evolve.strategy {strategy}); initial method -> {args.out}/method.txt")
        return

    seed = read_table(args.seed)
    items = [{"id": r["id"], "instruction": r["instruction"], "input": r.get("input") or ""}
             for r in seed.select("id", "instruction", "input").to_dicts()]
    rng = random.Random(settings.seed)  # one local RNG: the dev split, then each step's mini-batch
    dev, pool = split_dev_pool(items, dev_size=settings.dev_size, batch_size=settings.batch_size, rng=rng)
    models = open_models(params)
    result = optimize_method(pool, dev, initial_method=initial, prompts=prompts, settings=settings, rng=rng,
                             evolve_controls=evolve_settings.controls, few_shot=evolve_settings.few_shot, **models)

    usable = usability(result, settings)
    if usable["message"]:
        print(f"optimize: {usable['message']}")
    if not usable["method_usable"] and settings.on_unusable == "stop":
        raise SystemExit(f"optimize: stopped (params.yaml optimize.on_unusable: stop): {usable['message']}")
    meta.update(skipped=False, dev_ids=[d["id"] for d in dev], fallback=usable["fallback"],
                fallback_reason=usable["message"] if usable["fallback"] else None,
                models={"evolver": models["evolver"].label, "optimizer": models["optimizer"].label})
    write_method(args.out, result.method, result.log, meta)
    metrics = summary(result, {"evolver": models["evolver"].stats, "optimizer": models["optimizer"].stats}, usable)
    write_json(args.metrics, metrics)
    write_json(args.plot, metrics["per_step"])
    print(f"optimize: failure rate {result.initial.failure_rate:.3f} -> {result.best.failure_rate:.3f} "
          f"in {result.steps_run} step(s) ({result.stop_reason}; {metrics['parseable_candidates']} of "
          f"{metrics['candidates_proposed']} candidates parsed) -> {Path(args.out) / 'method.txt'}")


if __name__ == "__main__":
    run_stage(main)
