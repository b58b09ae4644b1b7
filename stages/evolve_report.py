"""evolve_report stage: gather the per-round evolve metrics into one file and DVC plot data, with how hard the
judge finds each round's items (the SLM paper's measure); it runs after the judge stage.

Reads:  metrics/evolve/<round>.json for every round in params.yaml `evolve.rounds`; data/judged/ (round,
        difficulty_level, difficulty_expected, difficulty_score: the answered, deduplicated, decontaminated pool)
Writes: metrics/evolve.json (per round: in, evolved, failed by reason, length growth, calls, cache hits; `difficulty`:
        per round, the seeds as round 0, the share judged hard or very hard and the mean expected score),
        metrics/plots/evolve_failures.json (round, reason, count), metrics/plots/evolve_length.json
"""

from pathlib import Path

from evolforge.core.stage import arguments, run_stage
from evolforge.config.loader import load_section, read_params
from evolforge.io.records import write_json
from evolforge.steps.evolve.report import run
from evolforge.steps.evolve.settings import EvolveSection


def main() -> None:
    args = arguments(__doc__, reads=["--metrics-dir", "--judged"], writes=["--out", "--plots"])
    rounds = load_section(read_params(args.params), "evolve", EvolveSection).rounds
    report, plots = run(args.metrics_dir, rounds, args.judged)
    write_json(args.out, report)
    for name, rows in plots.items():
        write_json(Path(args.plots) / name, rows)
    harder = ", ".join(f"{name} {r['top_two_share']} / {r['mean_expected']}"
                       for name, r in report["difficulty"]["rounds"].items())
    print(f"evolve: {report['total']}; judged hard or very hard / mean expected score: {harder}")


if __name__ == "__main__":
    run_stage(main)
