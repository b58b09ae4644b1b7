"""The judge step: every item's difficulty level and score from the judge role
(:func:`evolforge.steps.common.difficulty.judge`, where the prompts, the parsers and the probabilities are described),
with per-round metrics and the levels plot."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.io import validation
from evolforge.io.columns import JUDGED
from evolforge.config.data import DataSettings
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.core.stage import Outputs
from evolforge.io.records import SETTINGS, TABLE, VERSIONS, output_versions
from evolforge.io.stream import (check_chunks, checked_chunks, iter_chunks, read_spilled, spilled,
                                 table_file, table_schema,
                                 write_output_chunks)
from evolforge.llm.cached import LLM
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.difficulty import LEVEL_TEMPLATE, LEVELS, SCORE_TEMPLATES, judge


def level_distribution(table: pl.DataFrame) -> list[dict]:
    """Share of each level per round (the SLM paper's Figure 2); unparsed answers are left out."""
    rows = []
    for (rnd,), part in table.group_by(["round"], maintain_order=True):
        parsed = part.filter(pl.col("difficulty_level").is_not_null())
        for level in LEVELS:
            n = int((parsed["difficulty_level"] == level).sum())
            rows.append({"round": int(rnd), "level": level, "count": n,
                         "share": n / parsed.height if parsed.height else 0.0})
    return sorted(rows, key=lambda r: (r["round"], LEVELS.index(r["level"])))


def _per_round(written: Path) -> tuple[dict, pl.DataFrame]:
    """The metrics' per-round item counts, means with their spread (sample standard deviation, null under two
    values) and level counts, from the written table read a column or two at a time (never the raw answers),
    and the (round, difficulty_level) columns for the levels plot."""
    levels = pl.read_parquet(written, columns=["round", "difficulty_level"])
    per_round: dict[str, dict] = {str(r): {"items": part.height}
                                  for (r,), part in levels.group_by(["round"], maintain_order=True)}
    for column in ("difficulty_score", "difficulty_expected", "level_expected"):
        values = pl.read_parquet(written, columns=["round", column])
        for (r,), part in values.group_by(["round"], maintain_order=True):
            per_round[str(r)][f"mean_{column}"] = part[column].mean()
            per_round[str(r)][f"sd_{column}"] = part[column].std()
    for (r,), part in levels.group_by(["round"], maintain_order=True):
        per_round[str(r)]["levels"] = {level: int((part["difficulty_level"] == level).sum()) for level in LEVELS}
    return per_round, levels


def held(cfg: Any, llm: LLM, column: Any) -> bool:
    """True when something held the judge's answers to the allowed ones: ``judge.constrain`` asked for it, the
    backend enforces it (a server role whose choice_format is not none; a ranking always) and no answer the
    judge gave fell outside them (a server that ignored the constraint answers free text)."""
    if not cfg.constrain:
        return False
    if cfg.probabilities:
        return True
    if llm.served and llm.role.settings.choice_format == "none":
        return False
    outside = {"not_a_level", "not_a_number", "out_of_range"}
    return not any(reason in outside for name in ("difficulty_level_reason", "difficulty_score_reason")
                   for reason in column(name).drop_nulls().to_list())


def run(items: str | Path, out: str | Path, cfg: JudgeSettings, data: DataSettings, llms: RoleLLMs,
        prompts: PromptLibrary) -> Outputs:
    """The judge stage over the table ``items`` with ``llms["judge"]``: the item texts are read ``data.chunk_rows``
    at a time and judged chunk by chunk (each item's answers are its own); each chunk's judged columns, without
    the texts, are spilled beside ``out`` and streamed into it; the metrics read the written table a column at a time
    (docs/how-to/scale.md)."""
    source, rows = table_file(items), data.chunk_rows
    check_chunks(source,
                 validation.item_columns(["id", "round", "instruction", "input"]) + validation.unique("id"), rows)
    llm = llms["judge"]

    def judged(chunk: pl.DataFrame) -> pl.DataFrame:
        return judge(chunk, llm, prompts, score_prompt=cfg.score_prompt, max_tokens=cfg.max_tokens,
                     constrain=cfg.constrain,
                     probabilities=cfg.probabilities).select(list(JUDGED))

    score_template = SCORE_TEMPLATES[cfg.score_prompt]
    meta = {VERSIONS: output_versions(), "model": llm.label, "model_identity": llm.identity,  # as write_output
            "score_prompt": cfg.score_prompt, "constrained": cfg.constrain, SETTINGS: dataclasses.asdict(cfg),
            "template_hashes": {LEVEL_TEMPLATE: prompts.hash(LEVEL_TEMPLATE),
                                score_template: prompts.hash(score_template)}}
    out = Path(out)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    # the model runs on this thread
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.absolute().parent) as work:
        checked = checked_chunks(map(judged, iter_chunks(source, rows)),
                                 validation.between("difficulty_score", 0, 100), out)
        files = spilled(checked, work)
        schema = pl.read_parquet_schema(files[0]) if files else judged(pl.DataFrame(schema=table_schema(source))).schema
        write_output_chunks(out, {TABLE: (schema, read_spilled(files))}, meta=meta)
    written = table_file(out)

    def column(name: str) -> pl.Series:
        return pl.read_parquet(written, columns=[name])[name]

    per_round, levels = _per_round(written)
    metrics = {"items": levels.height, "score_prompt": cfg.score_prompt, "constrained": held(cfg, llm, column),
               "mean_difficulty_score": column("difficulty_score").mean(), "probabilities": cfg.probabilities,
               "mean_difficulty_expected": column("difficulty_expected").mean(),
               "level_unparsed": int(levels["difficulty_level"].is_null().sum()),
               "score_unparsed": int(column("difficulty_score").is_null().sum()),
               "per_round": per_round, "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "llm": {"judge": llm.stats}}  # tokens, failures and cost of the calls
    return Outputs(metrics, f"judge: {levels.height} items, {metrics['level_unparsed']} levels and "
                            f"{metrics['score_unparsed']} scores unparsed",
                   plot=level_distribution(levels), peak_rss=True)
