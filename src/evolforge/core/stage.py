"""What every stage script does around its step: take its paths, write what the step hands back, and end
with success or one clear message.

A stage script loads its params sections and roles, maps paths to its step's ``run()`` and writes the result::

    def main() -> None:
        args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics", "--plot"], prompts=True)
        params = read_params(args.params)
        llms = RoleLLMs(load_llm_params(params, ("judge",)))
        write(args, run(args.items, load_section(params, "judge", JudgeSettings), llms, PromptLibrary(args.prompts)))

    if __name__ == "__main__":
        run_stage(main)       # one clear message instead of a traceback

Every path a stage reads (``reads``) or writes (``writes``) and every other value dvc.yaml gives it
(``values``) is a required flag: a script run by hand reads what ``dvc repro`` gives it, never a default of
its own. ``--params`` and ``--prompts`` default to the repository's own configuration; ``optional`` flags
(``{flag: default}``) are the exceptions a stage documents. ``tests/test_stage_interfaces.py`` reads these
calls from the scripts' source and compares them with dvc.yaml's commands, deps and outputs.

How a stage ends (:func:`run_stage`): refusals (bad params, bad data, a missing model) are already written for
people: they name the file, the row, the field and the rule, and are printed as they are. Anything else is
printed as one line too, with its type, since a traceback is for whoever debugs the code: ``--debug`` on the
command line (taken out before the stage parses its arguments) or ``EVOLFORGE_DEBUG=1`` shows it.
``--dry-run`` (taken out the same way) prints the plan of the dvc.yaml stage that runs this command instead
(``evolforge plan``, docs/explanation/llm.md). Outputs are written whole or not at all
(:mod:`evolforge.io.records`), so a refused stage leaves nothing partial behind; under ``dvc repro``, which
removes a stage's outputs before running it, a failed stage puts its previous ones back from DVC's cache
(:func:`restore_outputs`); so does a stage killed by a crash in native code, with one message naming what
crashed (:mod:`evolforge.core.native`). Before it writes, and when ``main`` returns, the stage's accounts are
checked (:mod:`evolforge.core.accounts`): the LLM layer's fails a stage whose failed calls are past
``llm.max_failure_rate`` of all it asked.

A stage process hands the memory it frees back to the system at once, and keeps a fixed pad of it where it loads a
torch model (:mod:`evolforge.core.heap`; docs/how-to/scale.md, "Memory handed back").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import polars as pl
import yaml

from evolforge.config.bounds import Refusal
from evolforge.core import native
from evolforge.core.accounts import STAGE, StageAccounts
from evolforge.core.heap import return_freed_memory
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
    process's ``peak_rss_mib`` when ``peak_rss``: docs/how-to/scale.md), ``plot`` to ``--plot``, each ``plots``
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


def write(args: argparse.Namespace, result: Outputs, accounts: StageAccounts = STAGE) -> None:
    """Write ``result`` to the paths of ``args`` (``out``, ``metrics``, ``plot``, ``plots``), then print its
    message. The ``--out`` folder is written whole or not at all, before any metric; nothing is written when an
    account of the stage fails it (``accounts``: the process's unless given; the LLM layer's raises when failed
    calls are past ``llm.max_failure_rate``, evolforge.llm.accounting). The metrics get the process's wall
    seconds up to then (``wall_s``)."""
    accounts.check()
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


# ---------------------------------------------------------------------------------------------------
# how a stage ends: success, or one message and a non-zero exit


EXIT_REFUSED = 2  # bad input or params: fix the input
EXIT_FAILED = 1  # anything else


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("EVOLFORGE_DEBUG", "") not in ("", "0")


def refusal_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is written for people: every :class:`~evolforge.config.bounds.Refusal` (bad params,
    data, model, download or prompt template) and the operating system's refusals of a path."""
    return (Refusal, FileNotFoundError, IsADirectoryError, PermissionError)


def params_file(argv: list[str]) -> str | None:
    """The file a stage's ``--params`` names (``--params F`` or ``--params=F``), None when not given."""
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--params="):
            return arg.split("=", 1)[1]
    return None


def _with_params_file(message: str, argv: list[str]) -> str:
    """Messages name settings as ``params.yaml <key>``; a stage run on another file says which one it read."""
    given = params_file(argv)
    if given and Path(given).name != "params.yaml" and "params.yaml" in message:
        return f"{message}\n(params.yaml here is {given}: this run's --params)"
    return message


def run_stage(main: Callable[[], object], name: str | None = None, accounts: StageAccounts = STAGE) -> None:
    """Run a stage's ``main``; on an error print one message to stderr and exit non-zero. When ``main``
    returns, ``accounts`` (the process's unless given: :mod:`evolforge.core.accounts`) are checked, so a stage
    that wrote its outputs itself still fails past ``llm.max_failure_rate`` over all it asked."""
    return_freed_memory()
    debug = debug_enabled()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    name = name or Path(sys.argv[0]).stem
    if "--dry-run" in sys.argv:  # plan this stage's calls instead of making them (in a process of its own:
        sys.argv.remove("--dry-run")  # the planner is no dependency of the stage's outputs)
        sys.exit(subprocess.call([sys.executable, "-m", "evolforge.cli", "plan", "--command", *sys.argv]))
    native.arm(name, debug)  # a crash in native code: one message and the outputs back (evolforge.core.native)
    try:
        main()
        accounts.check()
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # a SystemExit with a message (the package raises Refusals instead)
            exit_.code = _with_params_file(exit_.code, sys.argv)
        if exit_.code not in (None, 0):
            restore_under_dvc(name)
        raise
    except KeyboardInterrupt:
        print(f"{name}: interrupted; nothing was written", file=sys.stderr)
        restore_under_dvc(name)
        sys.exit(130)
    except BaseException as err:  # noqa: BLE001 - the one place a stage's errors become messages
        restore_under_dvc(name)  # dvc repro removed the outputs before running: put them back
        if debug:
            raise
        message = _with_params_file(str(err), sys.argv)
        if isinstance(err, refusal_types()):
            print(f"{name}: error: {message}", file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        print(f"{name}: error ({type(err).__name__}): {message}\n"
              f"(rerun with --debug or EVOLFORGE_DEBUG=1 to see where)", file=sys.stderr)
        sys.exit(EXIT_FAILED)


# ---------------------------------------------------------------------------------------------------
# the outputs dvc repro removed, put back when the stage fails


def _lock_entry(root: Path, stage: str) -> dict:
    """``dvc.lock``'s entry of ``stage`` (``name`` or ``name@key`` of a foreach; ``file.yaml:name`` elsewhere)."""
    lock = root / "dvc.lock"
    if ":" in stage or not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
    return stages.get(stage) or {}


def _cache_dir(root: Path) -> Path:
    """The DVC cache's ``files/md5`` folder (``cache.dir`` of .dvc/config when set)."""
    from dvc.config import Config

    configured = Config(dvc_dir=str(root / ".dvc")).get("cache", {}).get("dir")
    base = Path(configured) if configured else root / ".dvc" / "cache"
    return (base if base.is_absolute() else root / ".dvc" / base) / "files" / "md5"


def _cached(cache: Path, md5: str) -> Path:
    return cache / md5[:2] / md5[2:]


def _copy(source: Path, target: Path) -> None:
    """Copy one cached file into place (written beside it, then renamed: never a half file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.restore-{os.getpid()}")
    shutil.copyfile(source, part)
    os.replace(part, target)


def restore_outputs(root: str | Path, stage: str) -> list[str]:
    """Restore ``stage``'s missing outputs from DVC's cache; return the paths put back (those whose cache
    entries are all present; the others are left missing, as they were)."""
    root = Path(root)
    entry = _lock_entry(root, stage)
    restored = []
    cache = None
    for out in entry.get("outs") or []:
        path, md5 = out.get("path"), out.get("md5")
        if not path or not md5 or (root / path).exists():
            continue
        cache = cache or _cache_dir(root)
        if md5.endswith(".dir"):
            listing_file = _cached(cache, md5)
            if not listing_file.is_file():
                continue
            listing = json.loads(listing_file.read_text(encoding="utf-8"))
            if not all(_cached(cache, f["md5"]).is_file() for f in listing):
                continue
            for f in listing:
                _copy(_cached(cache, f["md5"]), root / path / f["relpath"])
            (root / path).mkdir(parents=True, exist_ok=True)  # an empty folder too
        elif _cached(cache, md5).is_file():
            _copy(_cached(cache, md5), root / path)
        else:
            continue
        restored.append(path)
    return restored


def restore_under_dvc(name: str) -> None:
    """Called by a failing stage: under ``dvc repro``, put its previous outputs back and say so."""
    root, stage = os.environ.get("DVC_ROOT"), os.environ.get("DVC_STAGE")
    if not root or not stage:
        return
    try:
        restored = restore_outputs(root, stage)
    except Exception as err:  # noqa: BLE001 - restoring is a courtesy; the stage's own error is what matters
        print(f"{name}: could not restore the previous outputs ({type(err).__name__}: {err}); "
              f"`dvc checkout {stage}` does", file=sys.stderr)
        return
    if restored:
        print(f"{name}: the previous outputs are back in place (from DVC's cache): {', '.join(restored)}",
              file=sys.stderr)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
