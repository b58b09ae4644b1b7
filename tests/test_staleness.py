"""tools/staleness.py: the stages a one-line edit of a source file makes stale, read from dvc.yaml's deps, are
the stages real `dvc status` reports on a copy of the repository; only the shared base stales every stage."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("staleness", REPO / "tools" / "staleness.py")
staleness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(staleness)


def test_the_prediction_is_what_dvc_status_reports(capsys):
    # the worst file outside the base, a base file, one no stage runs, and one at random
    assert staleness.main(["--worst", "0", "--verify", "1"]) == 0, capsys.readouterr().out[-3000:]


def test_only_the_shared_base_stales_every_stage():
    found = staleness.figures()
    assert found["every_stage"] and set(found["every_stage"]) <= found["base"]
    assert not [p for p in found["base"] if not p.startswith("src/evolforge/")]


def test_the_figures_the_docs_quote_are_current():
    """docs/explanation/architecture.md quotes FIGURES_FILE behind checked markers (tests/test_docs.py); the file
    holds what the code's stages and files make today."""
    written = json.loads((staleness.REPO / staleness.FIGURES_FILE).read_text(encoding="utf-8"))
    assert written == staleness.quoted(staleness.figures()), (
        f"{staleness.FIGURES_FILE} is stale: run python tools/staleness.py --write (and update the figures that "
        f"docs/explanation/architecture.md quotes from it)")
