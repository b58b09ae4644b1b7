"""evolve_report stage: gather the per-round evolve metrics into one file and DVC plot data.

Reads:  metrics/evolve/<round>.json for every round in params.yaml `evolve.rounds`
Writes: metrics/evolve.json (per round: in, evolved, failed by reason, length growth, calls, cache hits),
        metrics/plots/evolve_failures.json (round, reason, count), metrics/plots/evolve_length.json
"""

import argparse
import json
from pathlib import Path

from evolforge.core.params import load_params, section
from evolforge.core.jsonfiles import read_json
from evolforge.core.records import write_json
from evolforge.core.validation import DataError
from evolforge.core.errors import run_stage


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
        raise DataError(path, "'failed_by_reason' maps each reason to a count", detail=f"got {json.dumps(reasons)[:200]}")
    if m.get("mean_length_growth") is not None and type(m["mean_length_growth"]) not in (int, float):
        raise DataError(path, "'mean_length_growth' is a number or null", detail=f"got {json.dumps(m['mean_length_growth'])}")
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plots", required=True)
    args = ap.parse_args()

    rounds = sorted(section(load_params(args.params), "evolve")["rounds"].items(), key=lambda kv: kv[1]["index"])
    report, failures, growth = {}, [], []
    for name, spec in rounds:
        m = read_round_metrics(Path(args.metrics_dir) / f"{name}.json")
        report[name] = m
        for reason, count in m["failed_by_reason"].items():
            failures.append({"round": spec["index"], "reason": reason, "count": count})
        growth.append({"round": spec["index"], "mean_length_growth": m["mean_length_growth"],
                       "evolved_share": m["evolved"] / m["in"] if m["in"] else None})
    report["total"] = {k: sum(report[n][k] for n, _ in rounds) for k in ("in", "evolved", "failed", "calls", "cache_hits")}
    write_json(args.out, report)
    write_json(Path(args.plots) / "evolve_failures.json", failures)
    write_json(Path(args.plots) / "evolve_length.json", growth)
    print(f"evolve: {report['total']}")


if __name__ == "__main__":
    run_stage(main)
