"""evolve stage (one DVC stage per round): evolve the pool of the previous round once.

Reads:  --src (data/seed, or data/evolved/round_{k-1}), data/method/method.txt and meta.json beside it
        (strategies auto, auto_initial: the method; auto: the optimize stage's `fallback` when the evolver
        cannot follow it), params.yaml `evolve`, roles `evolver` (and `judge` for the judge checks)
Writes: data/evolved/<round>/ items.parquet (one row per item in: evolved or failed, with reason),
        pool.parquet (what the next round evolves), meta.json; metrics/evolve/<round>.json
"""

import argparse
import dataclasses
import json
from pathlib import Path

import polars as pl

from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.llm import loads_nothing_more, open_role
from evolforge.core.params import ParamsError, load_params, load_section
from evolforge.steps.evolve import (IS_INSTRUCTION_TEMPLATE, JUDGE_RULES, RESPONSE_RULES, evolve_round, method_text,
                                    resolve_check_role, resolve_strategy)
from evolforge.steps.respond import response_sampling
from evolforge.core.settings import EvolveSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import LINEAGE, read_table, write_json, write_output
from evolforge.core.errors import run_stage

POOL = "pool.parquet"
JUDGE_TEMPLATES = ("judge/equal.j2", IS_INSTRUCTION_TEMPLATE)  # the judge checks' prompts


def read_pool(src: Path) -> pl.DataFrame:
    """A round's pool is its predecessor's pool.parquet; the seed table is round 1's pool."""
    table = pl.read_parquet(src / POOL) if (src / POOL).exists() else read_table(src)
    validation.check(table, validation.item_columns(LINEAGE + ["instruction", "input"]) + validation.unique("id"), src)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True, help="round name in params.yaml evolve.rounds")
    ap.add_argument("--src", required=True)
    ap.add_argument("--method", required=True, help="the optimized method (strategy auto)")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    section = load_section(params, "evolve")
    rounds = section.rounds
    settings = EvolveSettings(**{f.name: getattr(section, f.name) for f in dataclasses.fields(EvolveSettings)})
    if args.round not in rounds:
        raise ParamsError([f"evolve.rounds: no round named {args.round!r} (rounds: {', '.join(rounds)})"], args.params)
    index = rounds[args.round]["index"]
    prompts = PromptLibrary(args.prompts)
    pool = read_pool(Path(args.src))
    requested = settings.strategy
    method_meta = Path(args.method).with_name("meta.json")
    settings, fallback = resolve_strategy(settings, json.loads(method_meta.read_text(encoding="utf-8"))
                                          if requested == "auto" and method_meta.exists() else {})
    if fallback:
        print(f"{args.round}: {fallback}")
    text = method_text(settings.strategy, Path(args.method))

    cache = open_cache(params)
    evolver = open_role(params, "evolver", cache)
    judge_checks = [k for k in JUDGE_RULES if settings.rule(k)]
    judge = open_role(params, "judge", cache) if judge_checks else None
    if judge is not None and not loads_nothing_more(judge.role, evolver.role):
        print(f"{args.round}: the judge checks ({', '.join(judge_checks)}) load roles.judge "
              f"({judge.role.model}) beside roles.evolver ({evolver.role.model}) in this process; if the two "
              f"do not fit in memory together, serve the judge (backend openai) or turn those checks off")
    responder = None
    if settings.check_role != "evolver" and any(settings.rule(k) for k in RESPONSE_RULES):
        responder = open_role(params, "responder", cache)  # nothing loads until a request misses the cache
        settings = dataclasses.replace(settings, check_role=resolve_check_role(settings.check_role, evolver.role, responder.role))
        if settings.check_role == "evolver":  # auto, and the responder is another local model
            responder = None
    table, next_pool, summary = evolve_round(
        pool, round_index=index, settings=settings, prompts=prompts, evolver=evolver,
        method_text=text, judge=judge, responder=responder,
        respond_sampling=response_sampling(load_section(params, "respond")))
    assert summary["in"] == summary["evolved"] + summary["failed"] == pool.height

    roles = {"evolver": evolver, "responder": responder, "judge": judge}
    roles = {name: llm for name, llm in roles.items() if llm is not None}
    summary.update(round=args.round, index=index, strategy=settings.strategy, requested_strategy=requested,
                   fallback=fallback, check_role=settings.check_role,
                   calls=sum(llm.stats["calls"] for llm in roles.values()),
                   cache_hits=sum(llm.stats["cache_hits"] for llm in roles.values()),
                   llm={name: llm.stats for name, llm in roles.items()})
    meta = {"round": args.round, "index": index, "model": evolver.label, "model_identity": evolver.identity,
            "template_hashes": {n: prompts.hash(n) for n in prompts.names
                                if n.startswith(("evolve/", "respond/", "optimize/evolve")) or n in JUDGE_TEMPLATES},
            "method_text": text, "settings": dataclasses.asdict(settings), "requested_strategy": requested,
            "fallback": fallback}
    write_output(args.out, table, meta=meta, tables={POOL: next_pool})
    write_json(args.metrics, summary)
    print(f"{args.round}: {summary['in']} in, {summary['evolved']} evolved, {summary['failed']} failed "
          f"{summary['failed_by_reason']}; {summary['calls']} calls, {summary['cache_hits']} cache hits")


if __name__ == "__main__":
    run_stage(main)
