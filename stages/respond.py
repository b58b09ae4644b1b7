"""respond stage: answer the surviving instructions of the chosen rounds with the responder role.

Reads:  data/evolved/<round>/ for each round in params.yaml `respond.rounds` (data/seed when include_seed),
        params.yaml `respond`, roles `responder`
Writes: data/responses/items.parquet (lineage + instruction, input, output, response_status,
        response_finish_reason, instruction_finish_reason), meta.json;
        metrics/respond.json (items, responses per response_status, calls, cache hits, items per round)
"""

import argparse
import dataclasses

from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.llm import open_role
from evolforge.core.params import load_params, load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import LINEAGE, write_json, write_output
from evolforge.core.stream import peak_rss_mib
from evolforge.steps.evolve import repetition_test
from evolforge.steps.respond import RESPONSE_TEMPLATE, answer, gather, response_sampling, status_counts
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--evolved", required=True, help="folder holding round_<k>/ outputs")
    ap.add_argument("--seed", required=True)
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "respond")  # load_params checked that its rounds are evolve.rounds indices
    rounds = {r["index"]: name for name, r in load_section(params, "evolve").rounds.items()}
    items = gather([f"{args.evolved}/{rounds[k]}" for k in cfg.rounds], args.seed if cfg.include_seed else None)

    prompts = PromptLibrary(args.prompts)
    llm = open_role(params, "responder", open_cache(params))
    table = answer(items, llm, prompts, repetition=repetition_test(cfg.repetition), **response_sampling(cfg))
    validation.check(table, validation.item_columns(LINEAGE + ["instruction", "input", "output", "response_status"])
                     + validation.unique("id"), args.out)

    statuses = status_counts(table)
    metrics = {"items": table.height, "response_status": statuses, "empty_responses": statuses["empty"],
               "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "failed_responses": int(table["response_failure_reason"].is_not_null().sum()), "llm": {"responder": llm.stats},
               "per_round": {str(k): v for k, v in zip(*table["round"].value_counts(sort=True).to_dict(as_series=False).values())}}
    write_output(args.out, table, meta={"model": llm.label, "model_identity": llm.identity,
                                        "template_hash": prompts.hash(RESPONSE_TEMPLATE), "params": dataclasses.asdict(cfg)})
    write_json(args.metrics, {**metrics, "peak_rss_mib": peak_rss_mib()})  # docs/scale.md
    print(f"respond: {table.height} responses {statuses}; {llm.stats['calls']} calls, {llm.stats['cache_hits']} cache hits")


if __name__ == "__main__":
    run_stage(main)
