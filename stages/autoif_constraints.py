"""autoif_constraints stage: self-instruct new verifiable constraints from the seed constraints (AutoIF step 1).

Reads:  the seed constraints file (--seeds), prompts/autoif/self_instruct.j2,
        params.yaml `scenario`, `autoif` (self_instruct_calls, new_per_call, temperature, top_p, max_tokens, seed),
        roles `evolver`
Writes: data/autoif/constraints/items.parquet (one row per seed and per parsed line; dropped lines keep
        failure_reason: not_a_list_item, duplicate, too_short, too_long), meta.json; metrics/autoif/constraints.json
Runs only when `scenario: autoif`; otherwise writes an empty table and `skipped: true`.
"""

import argparse
import dataclasses

import polars as pl

from evolforge.steps.autoif import SELF_INSTRUCT_TEMPLATE, collect_constraints, read_seed_constraints, sampled_requests
from evolforge.steps.scenario import read_scenario
from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.core.params import load_params, load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import FAILED, write_json, write_output
from evolforge.core.errors import run_stage
from evolforge.llm import open_role


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "autoif")
    seeds = read_seed_constraints(args.seeds)
    if read_scenario(params) != "autoif":
        write_output(args.out, collect_constraints([], []), meta={"skipped": True})
        write_json(args.metrics, {"skipped": True})
        print("autoif_constraints: skipped (scenario is not autoif)")
        return

    prompts = PromptLibrary(args.prompts)
    llm = open_role(params, "evolver", open_cache(params))
    prompt = prompts.render(SELF_INSTRUCT_TEMPLATE, seeds=seeds, count=cfg.new_per_call)
    requests = sampled_requests(llm, prompt, cfg.self_instruct_calls, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_tokens, seed=cfg.seed)
    outputs = llm.complete(requests, desc="autoif self-instruct")
    table = collect_constraints(seeds, outputs)
    validation.check(table, validation.unique("id") + validation.non_empty_text(["constraint"]), args.out)

    failed = table.filter(pl.col("status") == FAILED)
    metrics = {"seed_constraints": len(seeds), "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "llm": {"evolver": llm.stats},  # tokens, failures and cost of the calls
               "lines": table.height - len(seeds), "constraints": table.height - failed.height,
               "new_constraints": int((table["status"] == "evolved").sum()),
               "dropped": {r: int(n) for r, n in failed.group_by("failure_reason").len().sort("failure_reason").iter_rows()}}
    write_output(args.out, table, meta={"model": llm.label, "model_identity": llm.identity, "settings": dataclasses.asdict(cfg),
                                        "template_hash": prompts.hash(SELF_INSTRUCT_TEMPLATE)},
                 extra={"raw_outputs.jsonl": [{"call_index": i, "text": t} for i, t in enumerate(outputs)]})
    write_json(args.metrics, metrics)
    print(f"autoif_constraints: {metrics['constraints']} constraints ({metrics['new_constraints']} new) from "
          f"{cfg.self_instruct_calls} calls; dropped {metrics['dropped']}")


if __name__ == "__main__":
    run_stage(main)
