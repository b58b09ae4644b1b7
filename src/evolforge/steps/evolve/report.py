"""The evolve rounds at a glance: each round's metrics (as the evolve stage writes them) gathered into one
report with totals, and the plot data of failures per reason and length growth per round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from evolforge.io.jsonfiles import read_json
from evolforge.io.validation import DataError
from evolforge.steps.evolve.settings import EvolveRound

COUNTS = ("in", "evolved", "failed", "calls", "cache_hits")  # what the report adds up


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


def run(metrics_dir: str | Path, evolve_rounds: Mapping[str, EvolveRound]) -> tuple[dict, dict[str, list[dict]]]:
    """(the report: each round's metrics and their ``total``, {plot file name: rows}) for the rounds of
    ``evolve_rounds`` (``evolve.rounds``), read from ``metrics_dir/<round>.json``."""
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
    return report, {"evolve_failures.json": failures, "evolve_length.json": growth}
