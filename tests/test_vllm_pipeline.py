"""End to end on vLLM: `dvc repro judge` on a temporary copy of the repository with the four chat roles (evolver,
optimizer, responder, judge) on the vllm backend -- vLLM's CPU build, ``make test-vllm`` -- and the others on hf,
every role on a trained tiny model (tests/tiny.py, with a head size vLLM's CPU attention takes). The stages from
the seed to the judge run for real, each of them asking the engine for its roles' answers: optimize (evolver and
optimizer), one evolving round (evolver, and the responder for the response rules), respond (responder) and the
judge, which ranks by likelihood (judge.probabilities). A second repro reruns nothing downstream.

Sized to start the engine once per stage (the four roles load the same model with the same settings, so a
stage's roles share one engine) and to keep each stage's work to seconds: four seeds, one evolving round, one
optimization candidate on a development set of two, short answers (tests/pipeline_build.py's TINY_TOKENS). Most
of its 3 minutes on two cores (more where they are shared) is the tiny model's training (about 40 s), four engine starts (about 25 s each:
vLLM's imports and its CPU engine) and dvc. The main suite skips it (no vllm there); tests/test_pipeline.py runs the whole pipeline, three rounds, on
hf and llamacpp."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

pytest.importorskip("vllm")

from pipeline_build import FAST, TINY, TINY_TOKENS, environment, metric, run, stages_run  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
CHAT = ("evolver", "optimizer", "responder", "judge")
# the smallest run that still asks every chat role (FAST's other settings as tests/test_pipeline.py runs them)
SMALL = {("seed", "limit"): 4, ("optimize", "dev_size"): 2, ("optimize", "batch_size"): 2,
         ("optimize", "candidates"): 1,
         ("optimize", "judge_difficulty"): False,  # the judge stage asks the judge: here it would cost 101 prefills
         ("evolve", "rounds"): {"round_1": {"src": "data/seed", "index": 1}}, ("respond", "rounds"): [1]}
LATER_ROUNDS = ("data/evolved/round_2",)
# each stage's engine: float32 as the hf roles, eager PyTorch, a KV cache of its own size (not a share of the RAM)
VLLM_ROLE = {"backend": "vllm", "dtype": "float32", "max_model_len": 2048,
             "extra": {"kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True}}


def build_tiny(out: Path, repo: Path, steps: int = 200) -> None:
    """The tiny model, heads of 32 dimensions (vLLM's CPU attention takes 32 and up; the suite's tiny model has 16),
    trained in a process of its own: an engine that ran in this one before (tests/test_vllm_backend.py) left it
    without ``torch.set_num_threads`` (vLLM's CPU worker replaces it for the rest of its process), and tests/tiny.py's
    fixed threads are what make the weights, and so every answer below, the same run to run."""
    code = ("import sys; from pathlib import Path; from tiny import TinyConfig, build_tiny_model; "
            "out, repo = map(Path, sys.argv[1:]); "
            f"build_tiny_model(out, repo / 'data/seeds/demo.jsonl', repo / 'prompts', TinyConfig(steps={steps}, "
            "heads=2), log=lambda _: None)")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(repo)], cwd=repo / "tests", capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"the tiny model's training failed:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def built(tmp_path_factory, repo) -> tuple[Path, dict, str]:
    work = tmp_path_factory.mktemp("vllm-pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # without the shipped run's metrics: every figure read below is this run's
        if (repo / name).is_file() and not name.startswith("metrics/"):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, work / name)
    (work / "dvc.lock").unlink(missing_ok=True)
    build_tiny(work / TINY, repo)
    dvc = yaml.safe_load((work / "dvc.yaml").read_text())
    for fetch in ("fetch_model", "fetch_evolver", "fetch_embedder"):  # the shipped models: every role runs the tiny one
        dvc["stages"]["models"]["deps"].remove(dvc["stages"].pop(fetch)["outs"][0])
    for stage in dvc["stages"].values():  # one evolving round: the stages reading the rounds read round_1 only
        if "deps" in stage:
            stage["deps"] = [dep for dep in stage["deps"] if not dep.startswith(LATER_ROUNDS)]
    (work / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    params = yaml.safe_load((work / "params.yaml").read_text())
    for (section, key), value in {**FAST, **SMALL}.items():
        params[section][key] = value
    for name in list(params["roles"]):
        role = params["roles"][name]
        params["roles"][name] = ({**VLLM_ROLE, "model": TINY, "temperature": role.get("temperature", 0.0),
                                  "top_p": role.get("top_p", 1.0), "max_tokens": TINY_TOKENS[name]}
                                 if name in CHAT else {"backend": "hf", "model": TINY})
    params["judge"]["probabilities"] = True
    # vLLM has no n-gram ban: every section's generation controls without it (`evolforge check` refuses it)
    for section in params.values():
        for controls in (section.get("controls"), section.get("method_controls")) if isinstance(section, dict) else ():
            if isinstance(controls, dict):
                controls.pop("no_repeat_ngram_size", None)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".gitignore").write_text((work / ".gitignore").read_text() + f"/{TINY}/\n")
    env = {**environment(work), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "start"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    out = run(["dvc", "repro", "judge"], work, env)
    return work, env, out


def calls(metrics: dict, role: str) -> tuple[int, int, int]:
    """A role's engine calls, failed calls and completion tokens in a stage's metrics."""
    llm = metrics["llm"][role]
    return llm["calls"], llm["failures"], llm["completion_tokens"]


def test_the_chat_stages_run_on_vllm_and_the_judge_ranks(built):
    work, env, out = built
    ran = stages_run(out)
    for stage in ("models", "seed", "optimize", "evolve@round_1", "respond", "judge"):
        assert stage in ran
    identity = json.loads((work / "models/identity.json").read_text())
    assert {name: entry["backend"] for name, entry in identity.items() if name in CHAT} == {n: "vllm" for n in CHAT}
    # each stage's own metrics (metrics/evolve.json is evolve_report's, which the judge does not need)
    optimize, evolved = metric(work, "optimize.json"), metric(work, "evolve/round_1.json")
    respond, judge = metric(work, "respond.json"), metric(work, "judge.json")
    for stage, role in ((optimize, "evolver"), (optimize, "optimizer"), (evolved, "evolver"), (evolved, "responder")):
        asked, failed, written = calls(stage, role)
        assert asked > 0 and failed == 0 and written > 0, (role, stage["llm"][role])  # the engine wrote answers
    # round 1's check call asked the seeds' answers too (respond.include_seed): respond finds them in the cache
    assert evolved["answered_ahead"] == respond["cache_hits"] > 0 and respond["calls"] == 0
    assert evolved["in"] == evolved["evolved"] + evolved["failed"] > 0
    asked, failed, _ = calls(judge, "judge")  # ranked answers: no tokens written
    assert asked > 0 and failed == 0 and judge["constrained"]
    judged = pl.read_parquet(work / "data/judged/items.parquet")
    assert judged.height == judge["items"] > 0 and judged["difficulty_expected"].null_count() == 0
    assert judged["difficulty_expected"].is_between(0, 100).all() and judged["level_expected"].is_between(0, 4).all()


def test_a_second_repro_runs_nothing_new(built):
    """Only the models and seed stages look again (they always do), and nothing downstream reruns."""
    work, env, _ = built
    assert sorted(stages_run(run(["dvc", "repro", "judge"], work, env))) == ["models", "seed"]
