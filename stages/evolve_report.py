"""evolve_report stage: gather the per-round evolve metrics into one file and DVC plot data.

Reads:  metrics/evolve/<round>.json for every round in params.yaml `evolve.rounds`
Writes: metrics/evolve.json (per round: in, evolved, failed by reason, length growth, calls, cache hits),
        metrics/plots/evolve_failures.json (round, reason, count), metrics/plots/evolve_length.json
"""

from pathlib import Path

from evolforge.core.stage import arguments, run_stage
from evolforge.config.loader import load_section, read_params
from evolforge.io.records import write_json
from evolforge.steps.evolve.report import run
from evolforge.steps.evolve.settings import EvolveSection


def main() -> None:
    args = arguments(__doc__, reads=["--metrics-dir"], writes=["--out", "--plots"])
    report, plots = run(args.metrics_dir, load_section(read_params(args.params), "evolve", EvolveSection).rounds)
    write_json(args.out, report)
    for name, rows in plots.items():
        write_json(Path(args.plots) / name, rows)
    print(f"evolve: {report['total']}")


if __name__ == "__main__":
    run_stage(main)
