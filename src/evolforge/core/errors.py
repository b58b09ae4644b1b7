"""One way every stage script ends: success, or one clear message and a non-zero exit -- no traceback.

    if __name__ == "__main__":
        run_stage(main)

Refusals (bad params, bad data, a missing model) are already written for people: they name the file, the
row, the field and the rule, and are printed as they are. Anything else is printed as one line too, with
its type, since a traceback is for whoever debugs the code: ``--debug`` on the command line (taken out
before the stage parses its arguments) or ``EVOLFORGE_DEBUG=1`` shows it. Outputs are written whole or not
at all (:mod:`evolforge.core.records`), so a refused stage leaves nothing partial behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

EXIT_REFUSED = 2  # bad input or params: fix the input
EXIT_FAILED = 1  # anything else


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("EVOLFORGE_DEBUG", "") not in ("", "0")


def refusal_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is written for people (imported here, not at the top, to stay cheap)."""
    from evolforge.core.fetch import FetchError
    from evolforge.core.models import ModelError
    from evolforge.core.params import ParamsError
    from evolforge.core.prompts import PromptError
    from evolforge.core.validation import DataError

    return (ParamsError, DataError, ModelError, FetchError, PromptError, FileNotFoundError, IsADirectoryError,
            PermissionError)


def run_stage(main: Callable[[], object], name: str | None = None) -> None:
    """Run a stage's ``main``; on an error print one message to stderr and exit non-zero."""
    debug = debug_enabled()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    name = name or Path(sys.argv[0]).stem
    try:
        main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{name}: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    except BaseException as err:  # noqa: BLE001 - the one place a stage's errors become messages
        if debug:
            raise
        if isinstance(err, refusal_types()):
            print(f"{name}: error: {err}", file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        print(f"{name}: error ({type(err).__name__}): {err}\n"
              f"(rerun with --debug or EVOLFORGE_DEBUG=1 to see where)", file=sys.stderr)
        sys.exit(EXIT_FAILED)
