"""What every stage script does around its step: take its paths, write what the step hands back.

A stage script maps paths to its step's ``run()`` and writes the result::

    def main() -> None:
        args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics", "--plot"], prompts=True)
        write(args, run(args.items, read_params(args.params), PromptLibrary(args.prompts)))

    if __name__ == "__main__":
        run_stage(main)       # evolforge.core.errors: one clear message instead of a traceback

Every path a stage reads (``reads``) or writes (``writes``) and every other value dvc.yaml gives it
(``values``) is a required flag: a script run by hand reads what ``dvc repro`` gives it, never a default of
its own. ``--params`` and ``--prompts`` default to the repository's own configuration; ``optional`` flags
(``{flag: default}``) are the exceptions a stage documents. ``tests/test_stage_interfaces.py`` reads these
calls from the scripts' source and compares them with dvc.yaml's commands, deps and outputs.
"""

from __future__ import annotations

import argparse
import sys
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import polars as pl

from evolforge.core.memory import peak_rss_mib
from evolforge.io import validation
from evolforge.io.records import write_json, write_output

_IMPORTED = __import__("time").time()


def arguments(doc: str | None, *, reads: Sequence[str] = (), writes: Sequence[str] = (), values: Sequence[str] = (),
              optional: Mapping[str, str | None] | None = None, prompts: bool = False,
              argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The stage's command-line arguments: ``--params`` (and ``--prompts``) with their defaults, every flag of
    ``reads``, ``values`` and ``writes`` required, ``optional`` ones with their defaults."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    if prompts:
        ap.add_argument("--prompts", default="prompts")
    for flag in (*reads, *values, *writes):
        ap.add_argument(flag, required=True)
    for flag, default in (optional or {}).items():
        ap.add_argument(flag, default=default)
    return ap.parse_args(argv)


@dataclasses.dataclass
class Outputs:
    """What a step hands back for its stage to write (:func:`write`).

    ``table`` (with ``meta``, ``tables``, ``extra`` and ``finish``: :func:`evolforge.io.records.write_output`)
    is the ``--out`` folder, checked against ``checks`` first; None when the step wrote ``--out`` itself
    (streamed tables, files that are not a table) or has none. ``metrics`` go to ``--metrics`` (with the
    process's ``peak_rss_mib`` when ``peak_rss``: docs/scale.md), ``plot`` to ``--plot``, each ``plots``
    entry to ``--plots/<name>``; ``message`` is the line printed at the end."""

    metrics: dict[str, Any]
    message: str
    table: pl.DataFrame | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    finish: Callable[[Path], object] | None = None
    checks: list[validation.Rule] = dataclasses.field(default_factory=list)
    plot: Any = None
    plots: dict[str, Any] = dataclasses.field(default_factory=dict)
    peak_rss: bool = False


def stage_failures() -> None:
    """Raise when an LLM of this stage failed past ``llm.max_failure_rate`` of what it was asked (a stage
    that made no call never imported the LLM layer)."""
    cached = sys.modules.get("evolforge.llm.cached")
    if cached is not None:
        cached.check_failures()


WALL_S = "wall_s"  # the metrics key of the stage process's wall seconds (report/summary.py gathers them)


def process_wall_s() -> float:
    """Wall seconds since this process started (its imports and model loading included), to 0.1 s."""
    import time

    try:
        import psutil

        started = psutil.Process().create_time()
    except Exception:  # psutil missing or refused: the time since this module was imported
        started = _IMPORTED
    return round(time.time() - started, 1)


def write(args: argparse.Namespace, result: Outputs) -> None:
    """Write ``result`` to the paths of ``args`` (``out``, ``metrics``, ``plot``, ``plots``), then print its
    message. The ``--out`` folder is written whole or not at all, before any metric; nothing is written when the
    stage's failed calls are past ``llm.max_failure_rate`` (evolforge.llm.cached.check_failures). The metrics
    get the process's wall seconds up to then (``wall_s``)."""
    stage_failures()
    if result.table is not None:
        validation.check(result.table, result.checks, args.out)
        write_output(args.out, result.table, meta=result.meta, extra=result.extra, tables=result.tables,
                     finish=result.finish)
    metrics = {**result.metrics, "peak_rss_mib": peak_rss_mib()} if result.peak_rss else dict(result.metrics)
    write_json(args.metrics, {**metrics, WALL_S: process_wall_s()})
    if result.plot is not None and getattr(args, "plot", None):  # decontaminate's --plot is optional
        write_json(args.plot, result.plot)
    for name, data in result.plots.items():
        write_json(Path(args.plots) / name, data)
    print(result.message)
