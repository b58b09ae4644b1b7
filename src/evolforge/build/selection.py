"""Selecting the training set: rank by a metric, keep a top fraction or everything above a threshold,
and export in the formats SFT trainers read.

Metrics: ``ic_ifd`` (SLM paper, higher is better), ``ifd`` (Cherry: higher = the instruction helps less,
i.e. harder to follow), ``difficulty_score`` (judge, 0-100) or ``random`` (seeded baseline). Items whose
metric is null (unparseable judge answer, degenerate loss) are never selected by a metric.
"""

from __future__ import annotations

import math
import random

import polars as pl

from dataclasses import dataclass
from typing import Literal

from evolforge.core.params import Fraction
from evolforge.core.text import question_text

METRICS = ("ic_ifd", "ifd", "difficulty_score", "random")


@dataclass
class SelectSettings:
    """``params.yaml select``."""

    metric: Literal["ic_ifd", "ifd", "difficulty_score", "random"] = "ic_ifd"
    top_fraction: Fraction | None = 0.25  # SLM paper keeps the top 25 %
    threshold: float | None = None  # keep items with metric >= threshold (wins over top_fraction)
    ifd_filter: bool = False  # drop IFD > 1 (the IFD paper does)
    rounds: list[int] | None = None  # null = every round
    seed: int = 0


def select_items(table: pl.DataFrame, metric: str = "ic_ifd", top_fraction: float | None = 0.25,
                 threshold: float | None = None, ifd_filter: bool = False, rounds: list[int] | None = None,
                 seed: int = 0) -> tuple[pl.DataFrame, dict]:
    """Return (selected rows, summary). ``threshold`` wins over ``top_fraction`` when both are set.

    >>> t = pl.DataFrame({"id": ["a", "b", "c", "d"], "round": [1, 1, 2, 2], "ifd": [0.5, 1.2, 0.9, 0.7],
    ...                   "ic_ifd": [0.3, 0.6, 0.4, None]})
    >>> select_items(t, "ic_ifd", top_fraction=0.5)[0]["id"].to_list()
    ['b', 'c']
    """
    if metric not in METRICS:
        raise ValueError(f"params.yaml select.metric: {metric!r} is not one of {METRICS}")
    if threshold is None and top_fraction is None:
        raise ValueError("params.yaml select: set top_fraction or threshold")
    if top_fraction is not None and not 0 < top_fraction <= 1:
        raise ValueError(f"params.yaml select.top_fraction: {top_fraction} is not in (0, 1]")
    if threshold is not None and metric == "random":
        raise ValueError("params.yaml select: a threshold makes no sense with metric random")
    summary = {"metric": metric, "items": table.height}
    pool = table if rounds is None else table.filter(pl.col("round").is_in(rounds))
    summary["in_rounds"] = pool.height
    if ifd_filter:
        pool = pool.filter(pl.col("ifd").is_not_null() & (pl.col("ifd") <= 1.0))
        summary["after_ifd_filter"] = pool.height
    if metric == "random":
        order = list(range(pool.height))
        random.Random(seed).shuffle(order)
        ranked = pool.with_columns(_rank=pl.Series(order, dtype=pl.Int64)).sort("_rank").drop("_rank")
    else:
        ranked = pool.filter(pl.col(metric).is_not_null() & pl.col(metric).is_not_nan() if pool.schema[metric].is_float()
                             else pl.col(metric).is_not_null())
        summary["with_metric"] = ranked.height
        ranked = ranked.sort([metric, "id"], descending=[True, False])
    if threshold is not None:
        chosen = ranked.filter(pl.col(metric) >= threshold)
    else:
        chosen = ranked.head(math.ceil(top_fraction * ranked.height)) if ranked.height else ranked
    summary["selected"] = chosen.height
    summary["selected_by_round"] = {str(r): n for r, n in sorted(zip(*chosen["round"].value_counts().to_dict(as_series=False).values()))}
    if metric != "random" and chosen.height:
        summary[f"selected_mean_{metric}"] = float(chosen[metric].mean())
        summary[f"pool_mean_{metric}"] = float(ranked[metric].mean())
    return chosen, summary


def join_metrics(items: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """``items`` with the columns of each per-item table (judged, scores, diversity; keyed by ``id``) joined on.
    Every item must have a row in every table: a missing one means that stage ran on other items."""
    for name, other in tables.items():
        other = other.drop("round", strict=False)
        unmatched = items.join(other, on="id", how="anti").height
        if unmatched:
            raise ValueError(f"{name}: {unmatched} items have no row; rerun that stage")
        items = items.join(other, on="id", how="left")
    return items


def conversational_row(prompt: str, completion: str) -> dict:
    """One TRL conversational prompt/completion record (TRL trains on the completion only by default)."""
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": completion}]}


def to_trl(rows: pl.DataFrame) -> list[dict]:
    """The selected rows as TRL records, each with its item id."""
    return [{"id": r["id"], **conversational_row(question_text(r["instruction"], r["input"]), r["output"])}
            for r in rows.select("id", "instruction", "input", "output").iter_rows(named=True)]


def to_alpaca(rows: pl.DataFrame) -> list[dict]:
    return rows.select("instruction", "input", "output").to_dicts()
