"""Run a stage script in this test process, as `python stages/<script> <args>` would, with one import of its
dependencies for the whole test session."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

STAGES = Path(__file__).resolve().parents[1] / "stages"


def run_stage(script: str, *args: str) -> None:
    saved = sys.argv
    sys.argv = [script, *args]
    try:
        runpy.run_path(str(STAGES / script), run_name="__main__")
    finally:
        sys.argv = saved
