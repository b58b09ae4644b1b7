"""AutoIF step 4 (the ``autoif_respond`` stage): verified constraints paired with queries, the responder's
answers as response rows, and (optionally) those answers checked by the constraint's kept functions.

>>> pair_queries(pl.DataFrame({"id": ["c1"], "constraint": ["Use no commas."]}),
...              pl.DataFrame({"query_id": ["q1", "q2"], "query": ["Name a fruit.", "Name a city."]}), 1, 0).height
1
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import polars as pl

from evolforge.core.records import EVOLVED, LINEAGE, make_id
from evolforge.core.settings import AutoIFSettings, QuerySource
from evolforge.steps.autoif import KEPT, METHOD
from evolforge.steps.autoif_sandbox import Runner, run_function


def select_queries(queries: pl.DataFrame, source: QuerySource) -> pl.DataFrame:
    """Queries (id, query) from a seed-format table: instruction + "\\n" + input, within the length window
    (exclusive bounds, as the reference code's ``20 < len(q) < 300``)."""
    text = pl.when(pl.col("input") != "").then(pl.col("instruction") + "\n" + pl.col("input")).otherwise(pl.col("instruction"))
    out = queries.select(pl.col("id").alias("query_id"), text.alias("query"))
    return out.filter((pl.col("query").str.len_chars() > source.min_chars) & (pl.col("query").str.len_chars() < source.max_chars))


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
    """The pairs as rows of the responses schema (``data/responses``): instruction = constraint, input =
    query (the reference code's record), lineage from the constraint, ``round`` 1, ``method`` autoif."""
    return pairs.with_columns(
        id=pl.struct("constraint_id", "query_id").map_elements(lambda r: make_id(METHOD, r["constraint_id"], r["query_id"]),
                                                            return_dtype=pl.String),
        root_id=pl.col("constraint_id"), parent_id=pl.col("constraint_id"), round=pl.lit(1, pl.Int32),
        method=pl.lit(METHOD), status=pl.lit(EVOLVED), failure_reason=pl.lit(None, pl.String),
        instruction=pl.col("constraint"), input=pl.col("query"), evolve_template_hash=pl.lit(self_instruct_hash),
        evolver_model=pl.lit(evolver_model), output=pl.Series(list(outputs), dtype=pl.String),
        response_template_hash=pl.lit(response_hash),
    ).select(LINEAGE + ["instruction", "input", "evolve_template_hash", "evolver_model", "output",
                        "response_template_hash", "constraint_id", "query_id"])


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
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        outcomes = list(pool.map(lambda job: runner(job[1], job[2]), jobs))
    votes: dict[str, list[bool]] = {}
    for (ids, _, _), run in zip(jobs, outcomes):
        for item_id, result in zip(ids, run.results):
            votes.setdefault(item_id, []).append(result is True)
    rates = [sum(votes[i]) / len(votes[i]) if votes.get(i) else None for i in table["id"].to_list()]
    return table.with_columns(pass_rate=pl.Series(rates, dtype=pl.Float64)).with_columns(
        response_verified=pl.col("pass_rate") >= settings.response_min_pass)
