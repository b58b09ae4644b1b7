"""autoif_respond stage: pair each verified constraint with queries and answer them (AutoIF step 4).

Reads:  data/autoif/verified/ (items + functions), the query source params.yaml `autoif.queries.source`
        (a local .jsonl/.json/.parquet/.csv or a hub dataset, read like `seed.source`), prompts/autoif/respond.j2,
        params.yaml `scenario`, `autoif` (queries, queries_per_constraint, paired_constraints, response_max_tokens,
        verify_responses, response_min_pass, case_timeout_s, memory_mb, workers, seed), roles `responder`
Writes: data/autoif/responses/items.parquet in the schema of data/responses (lineage + instruction = constraint,
        input = query, output), rejected.parquet (responses the constraint's functions refused), meta.json;
        metrics/autoif/respond.json (pairs, pass rates)
Runs only when `scenario: autoif`; otherwise writes an empty table and `skipped: true`.
"""

import argparse
from types import SimpleNamespace
import dataclasses
import json
from pathlib import Path

import polars as pl

from evolforge.core.settings import QUERY_DEFAULTS
from evolforge.steps.autoif import KEPT, RESPOND_TEMPLATE, SELF_INSTRUCT_TEMPLATE, hash_sample
from evolforge.steps.autoif_respond import PAIR_SCHEMA, pair_queries, response_records, select_queries, verify_responses
from evolforge.steps.scenario import read_scenario
from evolforge.steps.seed import build_seed
from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.core.params import load_params, load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import FAILED, LINEAGE, META, read_table, write_json, write_output
from evolforge.core.errors import run_stage
from evolforge.llm import open_role


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--verified", required=True)
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "autoif")
    active = read_scenario(params) == "autoif"
    prompts = PromptLibrary(args.prompts)
    constraints = read_table(args.verified)
    functions = pl.read_parquet(f"{args.verified}/functions.parquet")
    constraints = hash_sample(constraints.filter(pl.col("status") == KEPT), cfg.paired_constraints, cfg.seed)
    meta = {"skipped": not active, "settings": dataclasses.asdict(cfg), "template_hash": prompts.hash(RESPOND_TEMPLATE)}
    pairs, outputs, n_queries = pl.DataFrame(schema=PAIR_SCHEMA), [], 0
    if active and constraints.height:  # no verified constraint: nothing to pair, the query source is not read
        q = SimpleNamespace(**{**QUERY_DEFAULTS, **cfg.queries})
        queries = select_queries(build_seed(q.source, fmt=q.format, fields=q.fields, config=q.config, split=q.split)[0], q)
        n_queries = queries.height
        pairs = pair_queries(constraints, queries, cfg.queries_per_constraint, cfg.seed)
    stats: dict = {}  # the LLM's tokens, failures and cost, per role (none when nothing was asked)
    if pairs.height:
        llm = open_role(params, "responder", open_cache(params))
        requests = [llm.request([{"role": "user", "content": prompts.render(RESPOND_TEMPLATE, constraint=c, query=x)}],
                                max_tokens=cfg.response_max_tokens) for c, x in zip(pairs["constraint"], pairs["query"])]
        outputs = llm.complete(requests, desc="autoif respond")
        meta |= {"model": llm.label, "model_identity": llm.identity, "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"]}
        stats = {"responder": llm.stats}
    # the evolver that wrote the constraints' functions, as the verify stage recorded it
    evolver = json.loads(Path(args.verified, META).read_text(encoding="utf-8")).get("model") or ""
    table = response_records(pairs, outputs, evolver_model=evolver, self_instruct_hash=prompts.hash(SELF_INSTRUCT_TEMPLATE),
                             response_hash=prompts.hash(RESPOND_TEMPLATE))
    if cfg.verify_responses:
        table = verify_responses(table, functions, cfg)
    else:
        table = table.with_columns(pass_rate=pl.lit(None, pl.Float64), response_verified=pl.lit(None, pl.Boolean))
    rejected = table.filter(pl.col("response_verified") == False).with_columns(  # noqa: E712 (null = not checked)
        status=pl.lit(FAILED), failure_reason=pl.lit("response_not_verified"))
    kept = table.filter(pl.col("response_verified").is_null() | pl.col("response_verified"))
    validation.check(kept, validation.item_columns(LINEAGE + ["instruction", "input", "output"]) + validation.unique("id"), args.out)

    rates = table["pass_rate"].drop_nulls()
    metrics = {"skipped": not active, "constraints": constraints.height if active else 0, "queries": n_queries,
               "pairs": table.height, "responses_kept": kept.height, "responses_rejected": rejected.height,
               "mean_pass_rate": float(rates.mean()) if rates.len() else None,
               "verified_share": kept.height / table.height if table.height and cfg.verify_responses else None,
               "calls": meta.get("calls", 0), "cache_hits": meta.get("cache_hits", 0), "llm": stats}
    write_output(args.out, kept, meta=meta, tables={"rejected.parquet": rejected})
    write_json(args.metrics, metrics)
    print(f"autoif_respond: {kept.height}/{table.height} responses kept (mean pass rate {metrics['mean_pass_rate']})")


if __name__ == "__main__":
    run_stage(main)
