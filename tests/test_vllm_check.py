"""What the vllm backend cannot do is refused before any model loads (``evolforge check``, a role's loading),
and its settings reach the engine and the cache keys as declared. No vLLM needed: tests/test_vllm_backend.py
runs the engine itself (make test-vllm)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from evolforge.config.backend_settings import VLLM_STEP_TOKENS, VllmSettings
from evolforge.config.bounds import ParamsError
from evolforge.config.roles import Role
from evolforge.llm.keys import engine_options


def check(repo, tmp_path, edit) -> subprocess.CompletedProcess:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "evolforge.cli", "check", str(path)], capture_output=True, text=True)


def test_evolforge_check_refuses_what_the_vllm_backend_cannot_do(repo, tmp_path):
    def stage_ngram_ban(params):
        params["roles"]["evolver"] = {"backend": "vllm", "model": "m"}
        params["evolve"].update(strategy="evol", controls={"no_repeat_ngram_size": 3})

    proc = check(repo, tmp_path, stage_ngram_ban)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("evolve.controls.no_repeat_ngram_size: backend 'vllm' (roles.evolver) cannot honour this generation "
            "control (vLLM's sampling parameters have no n-gram ban") in proc.stderr

    def scorer(params):
        params["roles"]["scorer"] = {"backend": "vllm", "model": "m"}

    proc = check(repo, tmp_path, scorer)
    assert proc.returncode != 0 and "roles.scorer.backend: vllm serves the chat roles" in proc.stderr

    def role_ngram_ban(params):
        params["roles"]["judge"] = {"backend": "vllm", "model": "m", "no_repeat_ngram_size": 2}

    proc = check(repo, tmp_path, role_ngram_ban)
    assert proc.returncode != 0 and "roles.judge.no_repeat_ngram_size: backend 'vllm' cannot honour" in proc.stderr

    def judge_ranks(params):  # vLLM ranks from prompt log-probabilities; its other controls are honoured
        params["roles"]["judge"] = {"backend": "vllm", "model": "m", "tensor_parallel_size": 2,
                                    "max_num_batched_tokens": 1024, "stop": ["\n"], "repetition_penalty": 1.1}
        params["judge"]["probabilities"] = True

    proc = check(repo, tmp_path, judge_ranks)
    assert proc.returncode == 0, proc.stderr


def test_an_in_process_backend_that_cannot_rank_is_refused_by_the_check(repo, tmp_path):
    def ray_judge(params):
        params["roles"]["judge"] = {"backend": "ray", "model": "m"}
        params["judge"]["probabilities"] = True

    proc = check(repo, tmp_path, ray_judge)
    assert proc.returncode != 0
    assert "judge.probabilities: backend 'ray' (roles.judge) cannot score answers" in proc.stderr


def test_an_engine_argument_a_role_key_sets_is_refused_in_extra():
    from evolforge.llm.backends.vllm.backend import VLLMBackend

    role = Role.from_params("judge", {"backend": "vllm", "model": "m", "extra": {"max_num_batched_tokens": 8192,
                                                                                "dtype": "half"}})
    with pytest.raises(ValueError, match=r"roles.judge.extra: dtype, max_num_batched_tokens are role keys: set "
                                         r"roles.judge.dtype, roles.judge.max_num_batched_tokens instead"):
        VLLMBackend.from_role(role)


def test_the_step_size_enters_the_cache_key_only_when_changed():
    plain = Role(name="judge", backend="vllm", model="m", max_model_len=4096)
    assert engine_options(plain) == {"dtype": "auto", "tensor_parallel_size": 1, "max_model_len": 4096}
    assert plain.settings.max_num_batched_tokens == VLLM_STEP_TOKENS
    bigger = Role(name="judge", backend="vllm", model="m", settings=VllmSettings(max_num_batched_tokens=8192))
    assert engine_options(bigger)["max_num_batched_tokens"] == 8192
    with pytest.raises(ParamsError, match="roles.judge.max_num_batched_tokens"):
        Role.from_params("judge", {"backend": "vllm", "model": "m", "max_num_batched_tokens": 0})
    with pytest.raises(ParamsError, match="a setting of backend vllm, not of ray"):
        Role.from_params("judge", {"backend": "ray", "model": "m", "max_num_batched_tokens": 1024})
