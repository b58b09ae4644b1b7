"""respond stage: answer the surviving instructions of the chosen rounds with the responder role.

Reads:  data/evolved/<round>/ for each round in params.yaml `respond.rounds` (data/seed when include_seed),
        params.yaml `respond`, roles `responder`
Writes: data/responses/items.parquet (lineage + instruction, input, output), meta.json; metrics/respond.json
"""

import argparse

from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.llm import open_role
from evolforge.core.params import load_params, section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import LINEAGE, write_json, write_output
from evolforge.build.respond import RESPONSE_TEMPLATE, answer, gather


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--evolved", default="data/evolved", help="folder holding round_<k>/ outputs")
    ap.add_argument("--seed", default="data/seed")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", default="data/responses")
    ap.add_argument("--metrics", default="metrics/respond.json")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, "respond")
    rounds = {int(r["index"]): name for name, r in section(params, "evolve")["rounds"].items()}
    missing = [k for k in cfg.get("rounds", []) if k not in rounds]
    if missing:
        raise SystemExit(f"params.yaml respond.rounds: {missing} are not in evolve.rounds (indices {sorted(rounds)})")
    items = gather([f"{args.evolved}/{rounds[k]}" for k in cfg.get("rounds", [])],
                   args.seed if cfg.get("include_seed") else None)

    prompts = PromptLibrary(args.prompts)
    llm = open_role(params, "responder", open_cache(params))
    table = answer(items, llm, prompts, temperature=cfg.get("temperature"), max_tokens=cfg.get("max_tokens"))
    validation.check(table, validation.required_columns(LINEAGE + ["instruction", "input", "output"]) + validation.unique("id"), args.out)

    empty = int((table["output"].str.strip_chars() == "").sum())
    metrics = {"items": table.height, "empty_responses": empty, "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "failed_responses": int(table["response_failure_reason"].is_not_null().sum()), "llm": {"responder": llm.stats},
               "per_round": {str(k): v for k, v in zip(*table["round"].value_counts(sort=True).to_dict(as_series=False).values())}}
    write_output(args.out, table, meta={"model": llm.label, "model_identity": llm.identity,
                                        "template_hash": prompts.hash(RESPONSE_TEMPLATE), "params": cfg})
    write_json(args.metrics, metrics)
    print(f"respond: {table.height} responses ({empty} empty); {llm.stats['calls']} calls, {llm.stats['cache_hits']} cache hits")


if __name__ == "__main__":
    main()
