"""bench/class_estimate.py's arithmetic on three runs' summaries (no model): each stage of the new run scaled by its
own ratio of reference to proxy seconds, or by the whole run's; side-by-side stages counted once; the same-work
check; the range with the time outside the stages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAME = {"surv": {"r1": 0.5}, "sel": {"n": 3}, "ev": {"math": 0.2}}
REFERENCE = {**SAME, "wall": {"optimize": 200.0, "judge": 30.0, "seed": 2.0, "evaluate": 40.0, "evaluate_base": 60.0,
                              "total": 332.0}}
THEN = {**SAME, "wall": {"optimize": 100.0, "judge": 20.0, "seed": 1.0, "evaluate": 20.0, "evaluate_base": 25.0,
                         "total": 166.0}}
NOW = {**SAME, "wall": {"optimize": 150.0, "judge": 20.0, "seed": 1.0, "evaluate": 30.0, "evaluate_base": 30.0,
                        "new_stage": 10.0, "total": 241.0}}


def run_bench(tmp_path: Path, *extra: str, then: dict = THEN) -> tuple[dict, str]:
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"runs": {"reference": REFERENCE, "then": then}}))
    (tmp_path / "summary.json").write_text(json.dumps(NOW))
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "class_estimate.py"),
                           "--reference", f"{record}:runs.reference", "--proxy-then", f"{record}:runs.then",
                           "--proxy-now", str(tmp_path / "summary.json"), "--json", str(out), *extra],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_each_stage_scaled_by_its_own_ratio_or_the_whole_runs(tmp_path):
    out, printed = run_bench(tmp_path)
    stages = out["stages"]
    assert out["whole_ratio"] == 2.0 and out["same_work"] == {"surv": True, "sel": True, "ev": True}
    assert (stages["optimize"]["ratio"], stages["optimize"]["estimate"]) == (2.0, 300.0)
    assert (stages["judge"]["ratio"], stages["judge"]["estimate"]) == (1.5, 30.0)
    # under 5 s in the calibration, or absent from it: the whole run's ratio
    assert (stages["seed"]["ratio_of"], stages["seed"]["estimate"]) == ("run", 2.0)
    assert (stages["new_stage"]["ratio_of"], stages["new_stage"]["estimate"]) == ("run", 20.0)
    # the evaluations run side by side: the longer of 30 x 2 and 30 x 2.4 counts, once
    assert stages["evaluate_base"]["estimate"] == 72.0
    assert out["estimate_stages_s"] == 300.0 + 30.0 + 2.0 + 20.0 + 72.0
    assert out["proxy_now_span_s"] == 150.0 + 20.0 + 1.0 + 10.0 + 30.0
    assert "same work in the calibration (surv: yes, sel: yes, ev: yes)" in printed


def test_run_ratio_and_the_range_outside_the_stages(tmp_path):
    out, printed = run_bench(tmp_path, "--run-ratio", "judge", "--proxy-run-s", "261")
    assert (out["stages"]["judge"]["ratio_of"], out["stages"]["judge"]["estimate"]) == ("run", 40.0)
    stages = 300.0 + 40.0 + 2.0 + 20.0 + 72.0
    assert out["outside_proxy_s"] == 50.0 and out["estimate_run_s"] == [stages + 50.0, stages + 100.0]
    assert "make run estimate" in printed


def test_different_work_is_flagged(tmp_path):
    _, printed = run_bench(tmp_path, then={**THEN, "sel": {"n": 2}})
    assert "sel: NO" in printed and "not sound" in printed
