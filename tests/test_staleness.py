"""tools/staleness.py: the stages a one-line edit of a source file makes stale, read from dvc.yaml's deps, are
the stages real `dvc status` reports on a copy of the repository; only the shared base stales every stage."""

from __future__ import annotations

import importlib.util
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
