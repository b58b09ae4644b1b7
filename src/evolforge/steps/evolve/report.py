"""The evolve rounds at a glance: each round's metrics (as the evolve stage writes them) gathered into one
report with totals, the plot data of failures per reason and length growth per round, and whether the rounds made
the instructions harder (:func:`difficulty_per_round`).

Harder is the SLM paper's measure, read from the judge stage's output: per round, the share of the judged items that
the judge puts at the top two of its five difficulty levels (``hard``, ``very hard``) and their mean expected score
(``difficulty_expected``, 0-100), for the seeds (round 0) and each round. The judged population is the answered,
deduplicated and decontaminated pool (``data/clean``), the items the selection chooses from: a round's surviving
rewrites less those whose answer was incomplete and those dedup or decontamination removed, not every rewrite that
passed elimination.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import polars as pl

from evolforge.io.jsonfiles import read_json
from evolforge.io.stream import table_file, table_schema
from evolforge.io.validation import DataError
from evolforge.steps.evolve.settings import EvolveRound

COUNTS = ("in", "evolved", "failed", "calls", "cache_hits")  # what the report adds up
TOP_TWO = ("hard", "very hard")  # the top two of the judge's five levels (steps/common/difficulty.py LEVELS)
POPULATION = "the judged items: the answered, deduplicated and decontaminated pool (data/clean)"


def read_round_metrics(path: Path) -> dict:
    """One round's metrics as the evolve stage writes them; a file without what the report reads (a hand
    edit, a file from elsewhere) is refused naming the file and the key."""
    m = read_json(path)
    if not isinstance(m, dict):
        raise DataError(path, "a JSON object of the round's metrics (as the evolve stage writes it)")
    for key in COUNTS:
        if type(m.get(key)) is not int or m[key] < 0:
            raise DataError(path, f"'{key}' is a count (an integer >= 0)", detail=f"got {json.dumps(m.get(key))}")
    reasons = m.get("failed_by_reason")
    if not isinstance(reasons, dict) or any(type(c) is not int for c in reasons.values()):
        raise DataError(path, "'failed_by_reason' maps each reason to a count",
                        detail=f"got {json.dumps(reasons)[:200]}")
    if m.get("mean_length_growth") is not None and type(m["mean_length_growth"]) not in (int, float):
        raise DataError(path, "'mean_length_growth' is a number or null",
                        detail=f"got {json.dumps(m['mean_length_growth'])}")
    return m


def difficulty_per_round(judged: str | Path, names: Mapping[int, str]) -> dict:
    """Per round of the judge stage's output ``judged`` (``seeds`` for round 0, ``names`` for the others): items
    judged, levels parsed, how many and what share of those at the top two levels, and the mean expected and most
    likely scores over the items that have one (null where none has). Two columns are read, never the texts."""
    schema = table_schema(judged)
    if "round" not in schema or "difficulty_level" not in schema:
        raise DataError(table_file(judged), "the judge stage's output has the columns round and difficulty_level",
                        detail=f"got {', '.join(schema.names())}")
    level = pl.col("difficulty_level")
    means = {f"mean_{short}": pl.col(column).mean() if column in schema else pl.lit(None, dtype=pl.Float64)
             for short, column in (("expected", "difficulty_expected"), ("score", "difficulty_score"))}
    stats = (pl.scan_parquet(table_file(judged)).group_by("round")
             .agg(judged=pl.len(), levels=level.count(), top_two=level.is_in(TOP_TWO).sum(), **means)
             .sort("round").collect())
    rounds = {}
    for row in stats.to_dicts():
        index = int(row.pop("round"))
        row["top_two"] = int(row["top_two"])
        row["top_two_share"] = round(row["top_two"] / row["levels"], 4) if row["levels"] else None
        rounds["seeds" if index == 0 else names.get(index, f"round_{index}")] = {
            "round": index, **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}}
    return {"population": POPULATION, "levels": list(TOP_TWO), "rounds": rounds}


def run(metrics_dir: str | Path, evolve_rounds: Mapping[str, EvolveRound],
        judged: str | Path | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """(the report: each round's metrics and their ``total`` and, from the judge stage's output ``judged``, the
    difficulty per round (:func:`difficulty_per_round`); {plot file name: rows}) for the rounds of ``evolve_rounds``
    (``evolve.rounds``), read from ``metrics_dir/<round>.json``."""
    rounds = sorted(evolve_rounds.items(), key=lambda kv: kv[1]["index"])
    report, failures, growth = {}, [], []
    for name, spec in rounds:
        m = read_round_metrics(Path(metrics_dir) / f"{name}.json")
        report[name] = m
        for reason, count in m["failed_by_reason"].items():
            failures.append({"round": spec["index"], "reason": reason, "count": count})
        growth.append({"round": spec["index"], "mean_length_growth": m["mean_length_growth"],
                       "evolved_share": m["evolved"] / m["in"] if m["in"] else None})
    report["total"] = {k: sum(report[n][k] for n, _ in rounds) for k in COUNTS}
    if judged is not None:
        report["difficulty"] = difficulty_per_round(judged, {spec["index"]: name for name, spec in rounds})
    return report, {"evolve_failures.json": failures, "evolve_length.json": growth}
