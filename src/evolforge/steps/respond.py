"""Responses: answer instructions with the response template (the SLM paper's, one user turn).

``gather`` collects the surviving (``evolved``) items of the chosen rounds, plus the seeds if asked,
keeping every lineage column and the evolver's ``finish_reason`` (as ``instruction_finish_reason``);
``answer`` fills ``output`` from the responder role and marks each response with ``response_status``:
``complete``, ``truncated`` (cut at ``max_tokens``), ``repetitive`` (loops) or ``empty``
(:func:`evolforge.steps.elimination.response_status`). Only complete responses are training material.
A call that failed (prompt too long, rejected, retries exhausted) keeps its row with a null ``output``
and the reason in ``response_failure_reason`` / ``response_failure_detail``: never an invented text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.core.params import load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import EVOLVED, LINEAGE, read_table
from evolforge.core.settings import RespondSettings  # noqa: F401  (part of this module's API)
from evolforge.core.stage import Outputs
from evolforge.llm.cached import LLM, open_role
from evolforge.llm.types import Completion
from evolforge.steps import elimination

RESPONSE_TEMPLATE = "respond/response.j2"
KEEP = LINEAGE + ["instruction", "input", "template_hash", "model", "finish_reason"]


def response_sampling(settings: RespondSettings) -> dict[str, float | int | None]:
    """The sampling the respond stage asks the responder for (None = the role's default). The evolve stage's
    response check asks with the same, so respond finds those answers in the cache."""
    return {"temperature": settings.temperature, "max_tokens": settings.max_tokens}


def respond(llm: LLM, prompts: PromptLibrary, instructions: list[str], inputs: list[str],
            desc: str = "respond", **sampling) -> list[Completion]:
    """Answer each (instruction, input) with one chat turn rendered from the response template; a failed
    call is a failed completion (``Completion.failed``)."""
    requests = [llm.request([{"role": "user", "content": prompts.render(RESPONSE_TEMPLATE, instruction=q, input=x)}], **sampling)
                for q, x in zip(instructions, inputs)]
    return llm.generate(requests, desc=desc)


def gather(round_dirs: list[str | Path], seed_dir: str | Path | None = None) -> pl.DataFrame:
    """Evolved items of the given round folders (and all seeds when ``seed_dir`` is given), lineage kept."""
    parts = []
    if seed_dir is not None:
        seeds = read_table(seed_dir)
        validation.check(seeds, validation.item_columns(LINEAGE + ["instruction", "input"]), seed_dir)
        parts.append(seeds.with_columns(template_hash=pl.lit(None, pl.String), model=pl.lit(None, pl.String),
                                        finish_reason=pl.lit(None, pl.String)).select(KEEP))
    for d in round_dirs:
        table = read_table(d)
        validation.check(table, validation.item_columns(LINEAGE + ["instruction", "input"]), d)
        if "finish_reason" not in table.columns:  # a round written before finish reasons were kept
            table = table.with_columns(finish_reason=pl.lit(None, pl.String))
        parts.append(table.filter(pl.col("status") == EVOLVED).select(KEEP))
    if not parts:
        raise ValueError("respond: no rounds selected (params.yaml respond.rounds) and include_seed is false")
    return pl.concat(parts, how="vertical_relaxed")


def answer(items: pl.DataFrame, llm: LLM, prompts: PromptLibrary,
           repetition: elimination.RepetitionTest = elimination.RepetitionTest(), **sampling) -> pl.DataFrame:
    """``items`` with ``output``, ``response_finish_reason`` and ``response_status`` filled in; a failed call
    leaves ``output`` null with its reason (``response_status`` failed)."""
    completions = respond(llm, prompts, items["instruction"].to_list(), items["input"].to_list(), **sampling)
    return items.rename({"template_hash": "evolve_template_hash", "model": "evolver_model",
                         "finish_reason": "instruction_finish_reason"}).with_columns(
        output=pl.Series([None if c.failed else c.text for c in completions], dtype=pl.String),
        response_finish_reason=pl.Series([c.finish_reason for c in completions], dtype=pl.String),
        response_status=pl.Series([elimination.FAILED_RESPONSE if c.failed else elimination.response_status(c.text, c.finish_reason, repetition)
                                   for c in completions], dtype=pl.String),
        response_failure_reason=pl.Series([c.failure_reason for c in completions], dtype=pl.String),
        response_failure_detail=pl.Series([c.error for c in completions], dtype=pl.String),
        response_template_hash=pl.lit(prompts.hash(RESPONSE_TEMPLATE)),
    )


def status_counts(table: pl.DataFrame) -> dict[str, int]:
    """Responses per ``response_status``, every status listed (0 when absent)."""
    counts = dict.fromkeys(elimination.RESPONSE_STATUSES, 0)
    counts.update(table["response_status"].value_counts().iter_rows())
    return counts


def run(evolved: str | Path, seed: str | Path, params: dict[str, Any], prompts: PromptLibrary) -> Outputs:
    """The respond stage: the evolved items of ``respond.rounds`` (round folders under ``evolved``; the seeds
    of ``seed`` with ``include_seed``), answered by the responder role."""
    cfg = load_section(params, "respond")  # load_params checked that its rounds are evolve.rounds indices
    rounds = {r["index"]: name for name, r in load_section(params, "evolve").rounds.items()}
    items = gather([f"{evolved}/{rounds[k]}" for k in cfg.rounds], seed if cfg.include_seed else None)
    llm = open_role(params, "responder", open_cache(params))
    table = answer(items, llm, prompts, repetition=elimination.repetition_test(cfg.repetition), **response_sampling(cfg))
    statuses = status_counts(table)
    metrics = {"items": table.height, "response_status": statuses, "empty_responses": statuses["empty"],
               "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "failed_responses": int(table["response_failure_reason"].is_not_null().sum()), "llm": {"responder": llm.stats},
               "per_round": {str(k): v for k, v in zip(*table["round"].value_counts(sort=True).to_dict(as_series=False).values())}}
    meta = {"model": llm.label, "model_identity": llm.identity, "template_hash": prompts.hash(RESPONSE_TEMPLATE),
            "params": dataclasses.asdict(cfg)}
    return Outputs(metrics, f"respond: {table.height} responses {statuses}; {llm.stats['calls']} calls, {llm.stats['cache_hits']} cache hits",
                   table=table, meta=meta, peak_rss=True,  # docs/scale.md
                   checks=validation.item_columns(LINEAGE + ["instruction", "input", "output", "response_status"]) + validation.unique("id"))
