"""AutoIF step 4 (the ``autoif_respond`` stage): verified constraints paired with queries, the responder's
answers as response rows, and (optionally) those answers checked by the constraint's kept functions.

>>> pair_queries(pl.DataFrame({"id": ["c1"], "constraint": ["Use no commas."]}),
...              pl.DataFrame({"query_id": ["q1", "q2"], "query": ["Name a fruit.", "Name a city."]}), 1, 0).height
1
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import polars as pl

from evolforge.io import validation
from evolforge.io.columns import AUTOIF_RESPONSES
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import EVOLVED, FAILED, LINEAGE, META, SETTINGS, make_id, read_table
from evolforge.steps.autoif.settings import QUERY_DEFAULTS, AutoIFSettings, QuerySource
from evolforge.steps.common.llms import RoleLLMs
from evolforge.core.stage import Outputs
from evolforge.steps.autoif.shared import KEPT, METHOD, RESPOND_TEMPLATE, SELF_INSTRUCT_TEMPLATE, first_by_hash
from evolforge.eval.sandbox import require_sandbox
from evolforge.steps.common.function_runs import Runner, run_all, run_function
from evolforge.steps.common.source import build_seed


# what verify_responses adds: the share of functions that accept a response, its verdict, and the same verdict as the
# item's answer check (the column the verify and select stages read: AutoIF's functions are this item's check, of the
# constraint's form, not of the answer's content, as the original AutoIF verifies its responses)
VERDICT = ("pass_rate", "response_verified", "answer_check_passed", "answer_check_detail")


def select_queries(queries: pl.DataFrame, source: QuerySource) -> pl.DataFrame:
    """Queries (id, query) from a seed-format table: instruction + "\\n" + input, within the length window
    (exclusive bounds, as the reference code's ``20 < len(q) < 300``)."""
    text = (pl.when(pl.col("input") != "").then(pl.col("instruction") + "\n" + pl.col("input"))
            .otherwise(pl.col("instruction")))
    out = queries.select(pl.col("id").alias("query_id"), text.alias("query"))
    length = pl.col("query").str.len_chars()
    return out.filter((length > source.min_chars) & (length < source.max_chars))


def pair_queries(constraints: pl.DataFrame, queries: pl.DataFrame, per_constraint: int, seed: int) -> pl.DataFrame:
    """Each constraint with ``per_constraint`` distinct queries, chosen by a seeded hash of (constraint, query):
    a constraint's queries do not change when other constraints come or go."""
    if queries.is_empty() and not constraints.is_empty():
        raise ValueError("params.yaml autoif.queries: no query within the length window (min_chars < len < max_chars)")
    rows = []
    for c in constraints.select("id", "constraint").iter_rows(named=True):
        ranked = sorted(queries.iter_rows(named=True), key=lambda q: make_id(seed, c["id"], q["query_id"]))
        for q in ranked[:per_constraint]:
            rows.append({"constraint_id": c["id"], "constraint": c["constraint"], **q})
    return pl.DataFrame(rows, schema=PAIR_SCHEMA)


PAIR_SCHEMA = {"constraint_id": pl.String, "constraint": pl.String, "query_id": pl.String, "query": pl.String}


def response_records(pairs: pl.DataFrame, outputs: Sequence[str], *, evolver_model: str, self_instruct_hash: str,
                     response_hash: str) -> pl.DataFrame:
    """The pairs as rows of :data:`evolforge.io.columns.AUTOIF_RESPONSES` before the verdict (``VERDICT``):
    instruction = constraint, input = query (the reference code's record), lineage from the constraint,
    ``round`` 1, ``method`` autoif."""
    return pairs.with_columns(
        id=pl.struct("constraint_id", "query_id").map_elements(lambda r: make_id(METHOD,
                                                                                 r["constraint_id"], r["query_id"]),
                                                            return_dtype=pl.String),
        root_id=pl.col("constraint_id"), parent_id=pl.col("constraint_id"), round=pl.lit(1, pl.Int32),
        method=pl.lit(METHOD), status=pl.lit(EVOLVED), failure_reason=pl.lit(None, pl.String),
        instruction=pl.col("constraint"), input=pl.col("query"), evolve_template_hash=pl.lit(self_instruct_hash),
        evolver_model=pl.lit(evolver_model), output=pl.Series(list(outputs), dtype=pl.String),
        response_template_hash=pl.lit(response_hash),
    ).select([c for c in AUTOIF_RESPONSES if c not in VERDICT])


def verify_responses(table: pl.DataFrame, functions: pl.DataFrame, settings: AutoIFSettings,
                     runner: Runner | None = None) -> pl.DataFrame:
    """Add ``pass_rate`` (share of the constraint's kept functions returning True) and ``response_verified``;
    a response passes when ``pass_rate >= response_min_pass``. One sandbox process per (function, constraint)."""
    runner = runner or (lambda func, inputs: run_function(func, inputs, settings.case_timeout_s, settings.memory_mb))
    kept = functions.filter(pl.col("status") == KEPT)
    jobs = []
    for (cid,), part in table.group_by(["constraint_id"], maintain_order=True):
        for func in kept.filter(pl.col("constraint_id") == cid)["func"].to_list():
            jobs.append((part["id"].to_list(), func, part["output"].to_list()))
    outcomes = run_all(runner, [(func, outputs) for _, func, outputs in jobs], settings.workers)
    votes: dict[str, list[bool]] = {}
    for (ids, _, _), run in zip(jobs, outcomes):
        for item_id, result in zip(ids, run.results):
            votes.setdefault(item_id, []).append(result is True)
    ids = table["id"].to_list()
    rates = [sum(votes[i]) / len(votes[i]) if votes.get(i) else None for i in ids]
    details = [f"AutoIF: {sum(votes[i])} of {len(votes[i])} of the constraint's verification functions accept it "
               f"(autoif.response_min_pass {settings.response_min_pass})" if votes.get(i) else None for i in ids]
    return table.with_columns(pass_rate=pl.Series(rates, dtype=pl.Float64)).with_columns(
        response_verified=pl.col("pass_rate") >= settings.response_min_pass).with_columns(
        answer_check_passed=pl.col("response_verified"), answer_check_detail=pl.Series(details, dtype=pl.String))


def run(verified: str | Path, cfg: AutoIFSettings, llms: RoleLLMs, prompts: PromptLibrary) -> Outputs:
    """The autoif_respond stage: (at most ``paired_constraints`` of) the verified constraints, each paired with
    queries and answered by ``llms["responder"]``; with ``verify_responses`` the answers the constraint's functions
    refuse go to rejected.parquet. An empty table marked skipped unless ``scenario: autoif``."""
    active = cfg.scenario == "autoif"
    if active and cfg.verify_responses:
        require_sandbox("autoif_respond (autoif.verify_responses)")
    constraints = read_table(verified)
    functions = pl.read_parquet(f"{verified}/functions.parquet")
    constraints = first_by_hash(constraints.filter(pl.col("status") == KEPT), cfg.paired_constraints, cfg.seed)
    meta = {"skipped": not active, SETTINGS: dataclasses.asdict(cfg), "template_hash": prompts.hash(RESPOND_TEMPLATE)}
    pairs, outputs, n_queries = pl.DataFrame(schema=PAIR_SCHEMA), [], 0
    if active and constraints.height:  # no verified constraint: nothing to pair, the query source is not read
        q = SimpleNamespace(**{**QUERY_DEFAULTS, **cfg.queries})
        queries = (select_queries(build_seed(q.source, fmt=q.format, fields=q.fields,
                                             config=q.config, split=q.split)[0], q))
        n_queries = queries.height
        pairs = pair_queries(constraints, queries, cfg.queries_per_constraint, cfg.seed)
    stats: dict = {}  # the LLM's tokens, failures and cost, per role (none when nothing was asked)
    if pairs.height:
        llm = llms["responder"]
        requests = [llm.request([{"role": "user", "content": prompts.render(RESPOND_TEMPLATE, constraint=c, query=x)}],
                                max_tokens=cfg.response_max_tokens) for c, x in zip(pairs["constraint"],
                                                                                    pairs["query"])]
        outputs = llm.complete(requests, desc="autoif respond")
        meta |= {"model": llm.label, "model_identity": llm.identity, "calls": llm.stats["calls"],
                 "cache_hits": llm.stats["cache_hits"]}
        stats = {"responder": llm.stats}
    # the evolver that wrote the constraints' functions, as the verify stage recorded it
    evolver = json.loads(Path(verified, META).read_text(encoding="utf-8")).get("model") or ""
    table = response_records(pairs, outputs, evolver_model=evolver,
                             self_instruct_hash=prompts.hash(SELF_INSTRUCT_TEMPLATE),
                             response_hash=prompts.hash(RESPOND_TEMPLATE))
    if cfg.verify_responses:
        table = verify_responses(table, functions, cfg)
    else:
        table = table.with_columns(pass_rate=pl.lit(None, pl.Float64), response_verified=pl.lit(None, pl.Boolean),
                                   answer_check_passed=pl.lit(None, pl.Boolean),
                                   answer_check_detail=pl.lit(None, pl.String))
    rejected = table.filter(pl.col("response_verified") == False).with_columns(  # noqa: E712 (null = not checked)
        status=pl.lit(FAILED), failure_reason=pl.lit("response_not_verified"))
    kept = table.filter(pl.col("response_verified").is_null() | pl.col("response_verified")).select(
        list(AUTOIF_RESPONSES))
    rates = table["pass_rate"].drop_nulls()
    metrics = {"skipped": not active, "constraints": constraints.height if active else 0, "queries": n_queries,
               "pairs": table.height, "responses_kept": kept.height, "responses_rejected": rejected.height,
               "mean_pass_rate": float(rates.mean()) if rates.len() else None,
               "verified_share": kept.height / table.height if table.height and cfg.verify_responses else None,
               "calls": meta.get("calls", 0), "cache_hits": meta.get("cache_hits", 0), "llm": stats}
    return Outputs(metrics, f"autoif_respond: {kept.height}/{table.height} responses kept (mean pass rate "
                            f"{metrics['mean_pass_rate']})",
                   table=kept, meta=meta, tables={"rejected.parquet": rejected},
                   checks=validation.item_columns(LINEAGE
                                                  + ["instruction", "input", "output"]) + validation.unique("id"))
