"""One way every stage script ends: success, or one clear message and a non-zero exit -- no traceback.

    if __name__ == "__main__":
        run_stage(main)

Refusals (bad params, bad data, a missing model) are already written for people: they name the file, the
row, the field and the rule, and are printed as they are. Anything else is printed as one line too, with
its type, since a traceback is for whoever debugs the code: ``--debug`` on the command line (taken out
before the stage parses its arguments) or ``EVOLFORGE_DEBUG=1`` shows it. ``--dry-run`` (taken out the same
way) prints the plan of the dvc.yaml stage that runs this command instead (``evolforge plan``, docs/llm.md).
Outputs are written whole or not at all (:mod:`evolforge.io.records`), so a refused stage leaves nothing
partial behind; under ``dvc repro``, which removes a stage's outputs before running it, a failed stage puts its
previous ones back from DVC's cache (:mod:`evolforge.core.restore`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from evolforge.config.refusal import Refusal
from evolforge.core.memory import return_freed_memory
from evolforge.core.restore import restore_under_dvc

EXIT_REFUSED = 2  # bad input or params: fix the input
EXIT_FAILED = 1  # anything else


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("EVOLFORGE_DEBUG", "") not in ("", "0")


def refusal_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is written for people: every :class:`~evolforge.config.refusal.Refusal` (bad params,
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


def run_stage(main: Callable[[], object], name: str | None = None) -> None:
    """Run a stage's ``main``; on an error print one message to stderr and exit non-zero."""
    return_freed_memory()
    debug = debug_enabled()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    name = name or Path(sys.argv[0]).stem
    if "--dry-run" in sys.argv:  # plan this stage's calls instead of making them (in a process of its own:
        sys.argv.remove("--dry-run")  # the planner is no dependency of the stage's outputs)
        sys.exit(subprocess.call([sys.executable, "-m", "evolforge.cli", "plan", "--command", *sys.argv]))
    try:
        main()
        cached = sys.modules.get("evolforge.llm.cached")  # a stage that wrote its outputs itself: past
        if cached is not None:  # llm.max_failure_rate over all it asked, it still fails
            cached.check_failures()
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # a stage's own `raise SystemExit("message")`
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
