"""Responses: answer instructions with the response template (the SLM paper's, one user turn).

``gather`` collects the surviving (``evolved``) items of the chosen rounds, plus the seeds if asked,
keeping every lineage column; ``answer`` fills ``output`` from the responder role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from evolforge.core.params import NonNegativeFloat, PositiveInt

from evolforge.llm import LLM
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import EVOLVED, LINEAGE, read_table

RESPONSE_TEMPLATE = "respond/response.j2"


@dataclass
class RespondSettings:
    """``params.yaml respond``; each round index must be one of ``evolve.rounds``."""

    rounds: list[PositiveInt] = field(default_factory=list)
    include_seed: bool = False  # also answer the seed instructions (round 0)
    temperature: NonNegativeFloat | None = None  # null = roles.responder's
    max_tokens: PositiveInt | None = None


KEEP = LINEAGE + ["instruction", "input", "template_hash", "model"]


def respond(llm: LLM, prompts: PromptLibrary, instructions: list[str], inputs: list[str],
            desc: str = "respond", **sampling) -> list[str]:
    """Answer each (instruction, input) with one chat turn rendered from the response template."""
    requests = [llm.request([{"role": "user", "content": prompts.render(RESPONSE_TEMPLATE, instruction=q, input=x)}], **sampling)
                for q, x in zip(instructions, inputs)]
    return llm.complete(requests, desc=desc)


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
        output=pl.Series(outputs, dtype=pl.String),
        response_template_hash=pl.lit(prompts.hash(RESPONSE_TEMPLATE)),
    )
