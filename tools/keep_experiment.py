"""Keep a DVC experiment's figures in the repository: the metrics files it wrote, with the command that ran it.

``dvc exp run`` leaves an experiment's metrics in the workspace (and in an experiment ref that a clone does not
fetch); this copies the named metrics files into one JSON file under ``docs/experiments/``, which
a results page under ``docs/results/`` quotes with checked figure markers and ``tests/test_experiments.py`` reads::

    dvc exp run -n weak-method -S optimize.initial_method=weak optimize
    python tools/keep_experiment.py docs/experiments/weak-method.json \\
        --command "dvc exp run -n weak-method -S optimize.initial_method=weak optimize" metrics/optimize.json

Each metrics file is kept under its path less ``metrics/`` and ``.json`` (``metrics/autoif/verify.json`` ->
``autoif/verify``); the run's date and the machine's CPU are recorded beside them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def keep(out: Path, command: str, files: list[str]) -> dict:
    kept = {"command": command, "date": datetime.date.today().isoformat(), "cpu": cpu_name(), "metrics": {}}
    for name in files:
        key = name.removeprefix("metrics/").removesuffix(".json")
        kept["metrics"][key] = json.loads(Path(name).read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return kept


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the JSON file to write, e.g. docs/experiments/weak-method.json")
    ap.add_argument("--command", required=True, help="the command that ran the experiment, as written in the docs")
    ap.add_argument("files", nargs="+", help="the metrics files to keep")
    args = ap.parse_args(argv)
    keep(args.out, args.command, args.files)
    print(f"kept {len(args.files)} metrics files in {args.out}")


if __name__ == "__main__":
    main()
