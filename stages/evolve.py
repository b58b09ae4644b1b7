"""evolve stage (one DVC stage per round): evolve the pool of the previous round once.

Reads:  --src (data/seed, or data/evolved/round_{k-1}), data/method/method.txt (strategy auto),
        params.yaml `evolve`, `optimize.initial_method`, roles `evolver` (and `judge` for the info-gain check)
Writes: data/evolved/<round>/ items.parquet (one row per item in: evolved or failed, with reason),
        pool.parquet (what the next round evolves), meta.json; metrics/evolve/<round>.json
"""

import argparse
import dataclasses
from pathlib import Path

import polars as pl

from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.llm import open_role
from evolforge.core.params import load_params, section
from evolforge.build.evolve import EvolveSettings, evolve_round
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import LINEAGE, read_table, write_json, write_output

POOL = "pool.parquet"


def read_pool(src: Path) -> pl.DataFrame:
    """A round's pool is its predecessor's pool.parquet; the seed table is round 1's pool."""
    table = pl.read_parquet(src / POOL) if (src / POOL).exists() else read_table(src)
    validation.check(table, validation.required_columns(LINEAGE + ["instruction", "input"]) + validation.unique("id"), src)
    return table


def method_text(strategy: str, method_file: Path, prompts: PromptLibrary, initial: str) -> str | None:
    if strategy == "auto":
        return method_file.read_text(encoding="utf-8").strip()
    if strategy == "auto_initial":
        return prompts.render(f"optimize/{initial}_method.j2")
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True, help="round name in params.yaml evolve.rounds")
    ap.add_argument("--src", required=True)
    ap.add_argument("--method", default="data/method/method.txt", help="the optimized method (strategy auto)")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, "evolve")
    settings = EvolveSettings.from_params(cfg)
    index = int(cfg["rounds"][args.round]["index"])
    prompts = PromptLibrary(args.prompts)
    pool = read_pool(Path(args.src))
    text = method_text(settings.strategy, Path(args.method), prompts, section(params, "optimize").get("initial_method", "initial"))

    cache = open_cache(params)
    evolver = open_role(params, "evolver", cache)
    judge = open_role(params, "judge", cache) if settings.rule("info_gain", False) else None
    table, next_pool, summary = evolve_round(
        pool, round_index=index, settings=settings, prompts=prompts, evolver=evolver,
        method_text=text, judge=judge)
    assert summary["in"] == summary["evolved"] + summary["failed"] == pool.height

    summary.update(round=args.round, index=index, strategy=settings.strategy,
                   calls=evolver.stats["calls"] + (judge.stats["calls"] if judge else 0),
                   cache_hits=evolver.stats["cache_hits"] + (judge.stats["cache_hits"] if judge else 0),
                   llm={"evolver": evolver.stats, **({"judge": judge.stats} if judge else {})})
    meta = {"round": args.round, "index": index, "model": evolver.label, "model_identity": evolver.identity,
            "template_hashes": {n: prompts.hash(n) for n in prompts.names if n.startswith(("evolve/", "respond/", "optimize/evolve"))},
            "method_text": text, "settings": dataclasses.asdict(settings)}
    write_output(args.out, table, meta=meta, tables={POOL: next_pool})
    write_json(args.metrics, summary)
    print(f"{args.round}: {summary['in']} in, {summary['evolved']} evolved, {summary['failed']} failed "
          f"{summary['failed_by_reason']}; {summary['calls']} calls, {summary['cache_hits']} cache hits")


if __name__ == "__main__":
    main()
