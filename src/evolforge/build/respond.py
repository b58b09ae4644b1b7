"""Responses: answer instructions with the response template (the SLM paper's, one user turn).

``gather`` collects the surviving (``evolved``) items of the chosen rounds, plus the seeds if asked,
keeping every lineage column; ``answer`` fills ``output`` from the responder role. A call that failed
(prompt too long, rejected, retries exhausted) keeps its row with a null ``output`` and the reason in
``response_failure_reason`` / ``response_failure_detail``: never an invented text.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from evolforge.llm import LLM, Completion
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import EVOLVED, LINEAGE, read_table

RESPONSE_TEMPLATE = "respond/response.j2"
KEEP = LINEAGE + ["instruction", "input", "template_hash", "model"]


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
        parts.append(seeds.with_columns(template_hash=pl.lit(None, pl.String), model=pl.lit(None, pl.String)).select(KEEP))
    for d in round_dirs:
        parts.append(read_table(d).filter(pl.col("status") == EVOLVED).select(KEEP))
    if not parts:
        raise ValueError("respond: no rounds selected (params.yaml respond.rounds) and include_seed is false")
    return pl.concat(parts, how="vertical_relaxed")


def answer(items: pl.DataFrame, llm: LLM, prompts: PromptLibrary, **sampling) -> pl.DataFrame:
    outputs = respond(llm, prompts, items["instruction"].to_list(), items["input"].to_list(), **sampling)
    return items.rename({"template_hash": "evolve_template_hash", "model": "evolver_model"}).with_columns(
        output=pl.Series([None if c.failed else c.text for c in outputs], dtype=pl.String),
        response_failure_reason=pl.Series([c.failure_reason for c in outputs], dtype=pl.String),
        response_failure_detail=pl.Series([c.error for c in outputs], dtype=pl.String),
        response_template_hash=pl.lit(prompts.hash(RESPONSE_TEMPLATE)),
    )
