"""Every benchmark under bench/ still runs: each at a tiny size, or ``--help`` where it needs what the suite
has not (a GPU, the papers' official checkouts, a built repository). Figures are not checked here: a
benchmark prints them, and nothing about speed is asserted in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every benchmark script run end to end (make test-slow)
REPO = Path(__file__).resolve().parents[1]
TINY_RUNS = {  # script -> arguments of a run that takes seconds; "{tiny}" is the suite's tiny model ("{tiny_gguf}": as GGUF,
    # "{tmp}": the test's own folder)
    "dedup.py": ["--items", "300", "--rounds", "2"],
    "import_cost.py": ["--repeats", "1"],
    "cold_start.py": ["--command", "python -c 0", "--evict", "{tmp}", "--repeats", "1"],
    "dvc_lock.py": ["--repeats", "1"],
    "http_client.py": ["--requests", "200", "--repeat", "1", "--only", "aiohttp today", "raw streams (floor)"],
    "pipeline.py": ["--requests", "200"],
    "gpu_probe.py": ["--tokenizer", "{tiny}", "--small", "--section-s", "120"],  # a CPU run of the GPU probe's code
    "generation.py": ["--model", "{tiny}", "--n", "4", "--batch-size", "2", "--max-tokens", "4", "--repeat", "1"],
    "score.py": ["--model", "{tiny}", "--items", "8", "--batch-size", "4", "--peak-size", "256"],
    "stages.py": ["--seeds", "40", "--in-process"],
    "sandbox.py": ["--problems", "3"],
    "growth.py": ["--items", "300", "600", "--chunk-rows", "128"],
    "controls_survival.py": ["--model", "{tiny}", "--seeds", "2", "--max-tokens", "8", "--configs", "none"],
    "llamacpp_batch.py": ["--model", "{tiny_gguf}", "--sizes", "1", "3", "--prompt-tokens", "20", "--steps", "3",
                          "--threads", "1"],
    "llamacpp_limit.py": ["--model", "{tiny_gguf}", "--threads", "1", "--prompt-tokens", "40", "--steps", "3"],
    "quantizations.py": ["--model", "{tiny_gguf}", "--variants", "q8_0", "--threads", "1", "--workdir", "{tmp}/q",
                         "--quality", "data/seeds/demo.jsonl", "--json", "{tmp}/q.json"],
    "stage_account.py": ["--metrics", "metrics", "--model", "{tiny_gguf}", "--threads", "1", "--repeats", "1"],
    "class_estimate.py": ["--reference", "metrics/summary.json", "--proxy-then", "metrics/summary.json",  # the
                          "--proxy-now", "metrics/summary.json", "--proxy-run-s", "1500"],  # committed run, thrice
    "verify_humaneval.py": ["--model", "{tiny_gguf}", "--limit", "2", "--arithmetic", "2", "--cache", "{tmp}/c.sqlite"],
    "served_vs_inprocess.py": ["--inprocess", "metrics", "--served", "metrics"],  # the committed run against itself
    "cpu_linear.py": ["--model", "{tiny}", "--batches", "1,2", "--tokens", "4", "--repeats", "1"],
    "sampling.py": ["--n", "2", "--max-tokens", "4", "--vocab", "512", "--threads", "1", "--repeat", "1"],
    "llamacpp_speculative.py": ["--model", "{tiny_gguf}", "--threads", "1", "--n", "2", "--answers", "1",
                                "--answer-tokens", "4", "--fixed", "2"],
    "together.py": ["--model", "{tiny_gguf}", "--pairs", "1,2", "--max-tokens", "4", "--threads", "1", "--repeats", "1"],
    "side_by_side.py": ["--command", "python -c \"import os; os.makedirs('{tmp}/{mode}', exist_ok=True); "
                        "open('{tmp}/{mode}/a', 'w').write('a')\"", "--command", "python -c 0", "--same", "{tmp}/{mode}"],
    "heap_pad.py": ["--command", "python -c \"import os; os.makedirs('{tmp}/{pad}', exist_ok=True); "
                    "open('{tmp}/{pad}/a', 'w').write('a')\"", "--same", "{tmp}/{pad}", "--repeats", "1"],
}
HELP_ONLY = {  # script -> why the suite only checks that it starts
    "gpu.py": "needs a CUDA GPU and vLLM",
    "bytecode.py": "installs torch and the whole lock into two fresh venvs (a minute or more, 2.5 GB each)",
    "judge_calibration.py": "judges 61 answers with the shipped judge model (models/, fetched by make run)",
    "score_reference.py": "needs the shipped model and the papers' official checkouts",
    "fetch_gguf.py": "reads the shipped models' GGUF files (models/, fetched by make run)",
    "plant_contamination.py": "modifies a built copy of the repository and runs dvc repro",
    "selected_near_duplicates.py": "reads a built data/selected",
    "same_problem_calibration.py": "embeds the labelled rewrites with the shipped embedder (models/, fetched by make run)",
    "stub_stage.py": "a helper of growth.py, which runs it (tests/test_stream.py, test_growth_runs_every_data_stage)",
    "growth_stages.py": "a module of growth.py (test_growth_runs_every_data_stage)",
    "peer_datatrove.py": "runs in the datatrove virtualenv growth.py --peers installs from PyPI",
    "rewrite_rules.py": "embeds the labelled rewrites with the shipped embedder (models/, fetched by make run)",
    "autoevol_methods.py": "measures methods with the shipped evolver and judge on a built data/seed (tests/test_optimize_file.py "
                           "checks its conversion of the published file)",
}


def run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}  # as the scripts say
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_bench_script_is_covered():
    scripts = {p.name for p in (REPO / "bench").glob("*.py")}
    assert scripts == set(TINY_RUNS) | set(HELP_ONLY), "add the new bench script to TINY_RUNS or HELP_ONLY"


@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_bench_runs_at_tiny_size(script, tiny_model, tmp_path):
    models = {"{tiny}": str(tiny_model)}
    if "{tiny_gguf}" in TINY_RUNS[script]:
        from tiny_gguf import write_tiny_gguf

        models["{tiny_gguf}"] = str(write_tiny_gguf(tiny_model, tmp_path))
    args = [models.get(a, a).replace("{tmp}", str(tmp_path)) for a in TINY_RUNS[script]]
    proc = run(script, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(ch.isdigit() for ch in proc.stdout), f"{script} printed no figure:\n{proc.stdout[-2000:]}"


@pytest.mark.parametrize("script", sorted(HELP_ONLY))
def test_bench_starts(script):
    proc = run(script, ["--help"])
    assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr[-2000:]


def test_speculative_bench_replays_saved_requests_without_polars(tiny_model, tmp_path):
    """--save-requests writes the workloads built from params; --requests runs them where polars cannot be
    imported (a GPU machine's case), with --gpu-layers, --cost and --measure-cost."""
    import json

    from tiny_gguf import write_tiny_gguf

    saved, out = tmp_path / "requests.json", tmp_path / "spec.json"
    proc = run("llamacpp_speculative.py", ["--n", "2", "--answers", "1", "--answer-tokens", "4",
                                           "--save-requests", str(saved)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [len(json.loads(saved.read_text())[k]) for k in ("rewrites", "code answers")] == [2, 1]
    no_polars = ("import runpy, sys; sys.modules['polars'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", no_polars, str(REPO / "bench" / "llamacpp_speculative.py"),
                           "--requests", str(saved), "--model", str(write_tiny_gguf(tiny_model, tmp_path)),
                           "--threads", "1", "--max-tokens", "4", "--gpu-layers", "0", "--cost", "1", "0.1",
                           "--measure-cost", "--cost-repeats", "1", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["step_cost"] == [1.0, 0.1] and report["gpu_layers"] == 0
    assert len(report["measured_cost"]["points"]) == 16 and "measured step cost" in proc.stdout
    assert report["rewrites"]["on"]["requests"] == 2 and report["code answers"]["off"]["requests"] == 1


def test_growth_runs_every_data_stage(tmp_path):
    """growth.py --stages all at two sizes: a row with positive figures for each of the eight data stages, in
    dvc.yaml's order; at the size above --diversity-max-items the diversity row says it was skipped and select
    still runs (on the stand-in diversity table)."""
    import json

    out = tmp_path / "growth.json"
    proc = run("growth.py", ["--items", "300", "600", "--chunk-rows", "100", "--stages", "all", "--work", str(tmp_path),
                             "--diversity-max-items", "400", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    rows = json.loads(out.read_text())
    stages = ["respond", "pick_scenario", "dedup", "decontaminate", "judge", "score", "diversity", "select"]
    assert [(r["items"], r["stage"]) for r in rows] == [(n, s) for n in (300, 600) for s in stages]
    for r in rows:
        if (r["items"], r["stage"]) == (600, "diversity"):
            assert r["cpu_s"] is None and "diversity-max-items" in r["skipped"], r
            continue
        assert r["input_rows"] > 0, r
        assert r["cpu_s"] > 0 and r["wall_s"] > 0 and r["peak_rss_mib"] > 50 and r["machine_cpu_s"] >= 0, r
    assert "SKIPPED" in proc.stdout


def test_growth_refuses_select_without_its_inputs():
    proc = run("growth.py", ["--items", "300", "--stages", "dedup", "decontaminate", "select"])
    assert proc.returncode == 2 and "select reads the output of judge and score and diversity" in proc.stderr
