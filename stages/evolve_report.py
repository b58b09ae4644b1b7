"""evolve_report stage: gather the per-round evolve metrics into one file and DVC plot data.

Reads:  metrics/evolve/<round>.json for every round in params.yaml `evolve.rounds`
Writes: metrics/evolve.json (per round: in, evolved, failed by reason, length growth, calls, cache hits),
        metrics/plots/evolve_failures.json (round, reason, count), metrics/plots/evolve_length.json
"""

import argparse
import json
from pathlib import Path

from evolforge.core.params import load_params, section
from evolforge.core.records import write_json
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", default="metrics/evolve")
    ap.add_argument("--out", default="metrics/evolve.json")
    ap.add_argument("--plots", default="metrics/plots")
    args = ap.parse_args()

    rounds = sorted(section(load_params(args.params), "evolve")["rounds"].items(), key=lambda kv: kv[1]["index"])
    report, failures, growth = {}, [], []
    for name, spec in rounds:
        m = json.loads((Path(args.metrics_dir) / f"{name}.json").read_text(encoding="utf-8"))
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
