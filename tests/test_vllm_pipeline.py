"""End to end on vLLM: `dvc repro judge` on a temporary copy of the repository with the four chat roles (evolver,
optimizer, responder, judge) on the vllm backend -- vLLM's CPU build, ``make test-vllm
VLLM_TESTS=tests/test_vllm_pipeline.py`` (10-18 minutes on two cores) -- and the others on hf, every role on a
trained tiny model (tests/tiny.py, with a head size vLLM's CPU attention takes). The stages from the seed to the
judge run for real, the judge ranks by likelihood (judge.probabilities), and a second repro reruns nothing
downstream. The main suite skips it (no vllm there); tests/test_pipeline.py runs the whole pipeline on hf and
llamacpp."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

pytest.importorskip("vllm")

from pipeline_build import FAST, TINY, TINY_TOKENS, environment, run, stages_run  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
CHAT = ("evolver", "optimizer", "responder", "judge")
# each stage's engine: float32 as the hf roles, eager PyTorch, a KV cache of its own size (not a share of the RAM)
VLLM_ROLE = {"backend": "vllm", "dtype": "float32", "max_model_len": 2048,
             "extra": {"kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True}}


@pytest.fixture(scope="module")
def built(tmp_path_factory, repo) -> tuple[Path, dict, str]:
    from tiny import TinyConfig, build_tiny_model

    work = tmp_path_factory.mktemp("vllm-pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (repo / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, work / name)
    (work / "dvc.lock").unlink(missing_ok=True)
    # heads of 32 dimensions: vLLM's CPU attention takes 32 and up (the suite's tiny model has 16)
    build_tiny_model(work / TINY, repo / "data/seeds/demo.jsonl", repo / "prompts", TinyConfig(steps=200, heads=2),
                     log=lambda _: None)
    dvc = yaml.safe_load((work / "dvc.yaml").read_text())
    fetched = dvc["stages"].pop("fetch_evolver")["outs"][0]  # the shipped 1.5B GGUF: not needed, never downloaded
    dvc["stages"]["models"]["deps"].remove(fetched)
    (work / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    params = yaml.safe_load((work / "params.yaml").read_text())
    for (section, key), value in FAST.items():
        params[section][key] = value
    for name in list(params["roles"]):
        role = params["roles"][name]
        params["roles"][name] = ({**VLLM_ROLE, "model": TINY, "temperature": role.get("temperature", 0.0),
                                  "top_p": role.get("top_p", 1.0), "max_tokens": TINY_TOKENS[name]}
                                 if name in CHAT else {"backend": "hf", "model": TINY})
    params["judge"]["probabilities"] = True
    # vLLM has no n-gram ban: the evolving calls' controls without it (optimize.on_unusable: evol would use them)
    params["evolve"]["controls"].pop("no_repeat_ngram_size")
    params["fetch_model"]["downloads"] = str(repo / ".evolforge/downloads")  # one download per machine
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".gitignore").write_text((work / ".gitignore").read_text() + f"/{TINY}/\n")
    env = {**environment(work), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "start"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    out = run(["dvc", "repro", "judge"], work, env)
    return work, env, out


def test_the_chat_stages_run_on_vllm_and_the_judge_ranks(built):
    work, env, out = built
    ran = stages_run(out)
    for stage in ("models", "seed", "optimize", "evolve@round_1", "evolve@round_3", "respond", "judge"):
        assert stage in ran
    identity = json.loads((work / "models/identity.json").read_text())
    assert {name: entry["backend"] for name, entry in identity.items() if name in CHAT} == {n: "vllm" for n in CHAT}
    evolve = json.loads((work / "metrics/evolve.json").read_text())
    assert all(evolve[r]["in"] == evolve[r]["evolved"] + evolve[r]["failed"] > 0
               for r in ("round_1", "round_2", "round_3"))
    assert sum(evolve[r]["evolved"] for r in ("round_1", "round_2", "round_3")) > 0  # the engine wrote rewrites
    judged = pl.read_parquet(work / "data/judged/items.parquet")
    assert judged.height > 0 and judged["difficulty_expected"].null_count() == 0
    assert judged["difficulty_expected"].is_between(0, 100).all() and judged["level_expected"].is_between(0, 4).all()


def test_a_second_repro_runs_nothing_new(built):
    """Only the models and seed stages look again (they always do), and nothing downstream reruns."""
    work, env, _ = built
    assert sorted(stages_run(run(["dvc", "repro", "judge"], work, env))) == ["models", "seed"]
