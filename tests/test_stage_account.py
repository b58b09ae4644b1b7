"""bench/stage_account.py's arithmetic on a run's metrics with given engine rates (no model): each llamacpp stage's
work at the engine's rates, and the ratios to the stage's seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE = {"model": "m.gguf", "cpu": "test CPU", "threads": 2, "extra_bufts": True, "load_s": 1.0,
          "prefill": {"64": 50.0, "512": 100.0}, "step": {"1": 20.0, "6": 30.0, "64": 60.0}}


def judge_metrics(folder: Path, **stats) -> None:
    (folder / "judge.json").write_text(json.dumps({"wall_s": 40.0, "llm": {"judge": {"calls": 4, **stats}}}))
    (folder / "respond.json").write_text(json.dumps({"wall_s": 9.0, "llm": {"other": {"calls": 2, "prompt_tokens": 5,
                                                                                     "completion_tokens": 7}}}))


def run_bench(tmp_path: Path, metrics: Path) -> dict:
    (tmp_path / "engine.json").write_text(json.dumps({"engine": ENGINE}))
    params = tmp_path / "params.yaml"
    params.write_text("roles:\n  judge: {backend: llamacpp, model: m, batch_size: 6}\n")
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "stage_account.py"), "--metrics", str(metrics),
                           "--params", str(params), "--engine", str(tmp_path / "engine.json"), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "judge" in proc.stdout
    return json.loads(out.read_text())


def test_a_stage_limit_is_its_work_at_the_engine_rates(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    judge_metrics(metrics, prompt_tokens=600, prompt_tokens_cached=200, completion_tokens=60, ranked_tokens=120,
                  generate_s=20.0, load_s=3.0)
    lines = run_bench(tmp_path, metrics)["stages"]
    assert [line["stage"] for line in lines] == ["judge"]  # the hf role's stage has no limit to give
    judge = lines[0]
    limit = 400 / 100.0 + 60 / 30.0 + 120 / 60.0  # best prefill; 6 sequences; a 64-node level
    assert judge["limit_s"] == pytest.approx(limit)
    assert judge["limit_vs_llm"] == pytest.approx(limit / 20.0)
    assert judge["limit_vs_wall"] == pytest.approx(limit / 40.0)
    assert (judge["evaluated"], judge["load_s"]) == (400, 3.0)


def test_a_run_without_the_backends_seconds_has_no_llm_ratio(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    judge_metrics(metrics, prompt_tokens=100, completion_tokens=0)
    judge = run_bench(tmp_path, metrics)["stages"][0]
    assert judge["llm_s"] is None and judge["limit_vs_llm"] is None
    assert judge["limit_s"] == pytest.approx(1.0)
