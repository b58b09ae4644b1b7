"""The params schema: the shipped file passes, typos and look-alike keys are refused with suggestions,
wrong types and ranges name what is allowed, secrets are refused by value without being echoed, and
ordinary engine settings whose names hold "token" or "key" are accepted."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from evolforge.config.bounds import ParamsError, find_secrets
from evolforge.config.loader import load_section
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.seed.settings import SeedSettings
from evolforge.config.roles import Role
from evolforge.schema import SECTIONS, check_params, load_params

SK = "sk-" + "Zq3vR8tLw1Xy7Kp2Nb5Hd9Fg"  # key-shaped test values, assembled so no scanner flags this file
HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
RANDOM = "q8Zr2LmX5vT9wKb3Ny7c"


@pytest.fixture(scope="module")
def shipped(repo):
    return yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))


def problems_of(params) -> list[str]:
    with pytest.raises(ParamsError) as err:
        check_params(params)
    return err.value.problems


def test_shipped_params_pass_and_every_section_types(repo, shipped):
    params = load_params(repo / "params.yaml")
    assert set(params) <= set(SECTIONS)
    for name in SECTIONS:
        if name != "roles":
            load_section(params, name, SECTIONS[name])  # defaults fill what is absent, no error
    assert load_section(params, "seed", SeedSettings).limit == 6 and load_section(params, "evolve", EvolveSection).rounds["round_2"]["index"] == 2


def test_evolforge_check_command(repo, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "evolforge.cli", "check", str(repo / "params.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "params.yaml"
    bad.write_text("seed:\n  source: x.jsonl\n  limt: 5\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "evolforge.cli", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "seed.limt: unknown key; did you mean `limit`?" in proc.stderr and str(bad) in proc.stderr
    for path, message in ((tmp_path / "nope.yaml", f"{tmp_path / 'nope.yaml'} not found (or not a regular file)"),
                          ("", "'' is not a file name: the params file's path is empty")):
        proc = subprocess.run([sys.executable, "-m", "evolforge.cli", "check", str(path)], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


TYPOS = [  # (edit of the shipped params, expected text in the message)
    (("seed", "limt", 5), "seed.limt: unknown key; did you mean `limit`?"),
    (("evolve", "brеadth", False), "evolve.brеadth: the key 'br\\u0435adth' holds non-ASCII"),  # Cyrillic е
    (("evolve", "brеadth", False), "CYRILLIC SMALL LETTER IE at position 3"),
    (("evolve", "brеadth", False), "did you mean `breadth`?"),
    (("evolve", "breadth\u200b", False), "ZERO WIDTH SPACE at position 8"),
    (("optimize", "canidates", 3), "did you mean `candidates`?"),
    (("sed", None, {"source": "x"}), "sed: unknown section; did you mean `seed`?"),
    (("roles", "evolvr", {"backend": "hf", "model": "m"}), "roles.evolvr: unknown role; did you mean `evolver`?"),
    (("roles.evolver", "temprature", 0.5), "roles.evolver.temprature: unknown key; did you mean `temperature`?"),
    (("evolve.elimination", "rule_F", False), "evolve.elimination.rule_F: unknown key; did you mean `rule_f`?"),
    (("evolve.rounds.round_1", "idx", 1), "evolve.rounds.round_1.idx: unknown key; did you mean `index`?"),
]

WRONG = [
    (("seed", "limit", -5), 'seed.limit: got -5 (an integer); allowed: an integer >= 1, or null'),
    (("seed", "limit", 0), "allowed: an integer >= 1, or null"),
    (("seed", "limit", 2.5), "seed.limit: got 2.5 (a number)"),
    (("seed", "limit", "abc"), 'seed.limit: got "abc" (text)'),
    (("seed", "source", None), "seed.source: got null; allowed: text (not empty)"),
    (("seed", "source", ["a", "b"]), "seed.source: got a list of 2; allowed: text"),
    (("seed", "format", "alpacca"), 'seed.format: got "alpacca" (text); allowed: one of "auto", "alpaca", "gsm8k", "code_alpaca"'),
    (("evolve", "breadth", 1), "evolve.breadth: got 1 (an integer); allowed: true or false"),
    (("evolve", "breadth", "yes"), "allowed: true or false"),
    (("evolve.rounds.round_1", "index", 0), "evolve.rounds.round_1.index: got 0"),
    (("roles.judge", "backend", "tgi"), 'roles.judge.backend: got "tgi" (text); allowed: one of "hf", "llamacpp", "vllm", "openai", "ray"'),
    (("roles.judge", "top_p", 1.5), "roles.judge.top_p: got 1.5 (a number); allowed: a number > 0 and <= 1"),
    (("select", "top_fraction", 0), "select.top_fraction: got 0"),
    (("respond", "rounds", [1, 7]), "respond.rounds: [7] are not indices of evolve.rounds"),
    (("finetune", "mode", "qlora"), 'finetune.mode: got "qlora"'),
    (("evaluate", "limit", -1), "evaluate.limit: got -1"),
    (("fetch_model", "sha256", "b179c95"), 'fetch_model.sha256: got "b179c95" (text); allowed: 64 lower-case hex digits'),
    (("fetch_model", "sha256", "B" * 64), "allowed: 64 lower-case hex digits"),
    (("finetune", "dtype", "float17"), 'finetune.dtype: got "float17" (text); allowed: one of "auto", "float32"'),
    (("finetune", "max_steps", 0), "finetune.max_steps: got 0 (an integer); allowed: an integer >= 1, or -1"),
    (("card", "license", ""), 'card.license: got "" (text); allowed: text (not empty)'),
    (("evolve", "check_role", "judge"), 'evolve.check_role: got "judge" (text); allowed: one of "auto", "responder", "evolver"'),
]


def test_finetune_dtypes_are_the_ones_pick_dtype_takes():
    import typing

    from evolforge.core.models import pick_dtype
    from evolforge.config.training import TrainDtype

    for name in typing.get_args(TrainDtype):
        pick_dtype(name, "cpu")  # raises for a name it does not know
    with pytest.raises(ValueError, match="unknown dtype 'float17'; use one of auto, float32, fp32, bfloat16, bf16, float16, fp16"):
        pick_dtype("float17", "cpu")


def edited(params: dict, where: str, key: str | None, value) -> dict:
    """A copy of ``params`` with ``where.key`` (or ``where`` itself when key is None) set to ``value``."""
    params = copy.deepcopy(params)
    parts = where.split(".") + ([key] if key is not None else [])
    node = params
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return params


@pytest.mark.parametrize("edit, expected", TYPOS + WRONG, ids=[e[1][:40] for e in TYPOS + WRONG])
def test_bad_params_name_path_given_and_allowed(shipped, edit, expected):
    where, key, value = edit
    problems = problems_of(edited(shipped, where, key, value))
    assert any(expected in p for p in problems), problems
    assert len(problems) == 1, problems  # one problem, one line: nothing else in the shipped file is wrong


def test_every_problem_is_listed_at_once(shipped):
    params = edited(edited(shipped, "seed", "limt", 5), "evolve", "assignment", "round-robin")
    assert len(problems_of(params)) == 2


def test_duplicate_keys_in_the_file_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed:\n  source: a.jsonl\n  limit: 5\n  limit: 6\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="line 4: key 'limit' appears twice"):
        load_params(path)


SECRETS = [  # (where in params, value) -> refused, path named, value never shown
    ("roles.evolver.extra.bearer", SK),
    ("roles.evolver.extra.headers.X-Custom", "Bearer " + RANDOM),
    ("roles.evolver.extra.note", f"use {HF} for the hub"),
    ("roles.evolver.base_url", f"https://user:{RANDOM}@example.com/v1"),
    ("roles.evolver.base_url", f"https://example.com/v1?api_key={RANDOM}"),
    ("roles.evolver.base_url", f"https://hooks.example.com/services/T0A1B2C3/{RANDOM}Xy"),
    ("evaluate.backend_args.model_args", f"pretrained=m,api_key={RANDOM}"),
    ("evaluate.backend_args.aws", AWS),
    ("evaluate.tasks", ["ifeval", SK]),
    ("seed.source", f"https://user:{RANDOM}@data.example.com/seeds.jsonl"),
    ("roles.evolver.extra.password", "hunter2!"),
    ("roles.evolver.api_key_env", SK),
]


@pytest.mark.parametrize("path, value", SECRETS, ids=[p for p, _ in SECRETS])
def test_secrets_are_refused_by_value_and_never_echoed(shipped, path, value):
    *parents, key = path.split(".")
    params = edited(shipped, ".".join(parents), key, value)
    problems = problems_of(params)
    text = "\n".join(problems)
    shown_path = path if not isinstance(value, list) else f"{path}[1]"
    assert shown_path in text, text
    for secret in (SK, HF, AWS, RANDOM, "hunter2"):
        assert secret not in text


def test_a_key_pasted_into_api_key_env_is_not_echoed():
    with pytest.raises(ParamsError) as err:
        Role.from_params("evolver", {"backend": "openai", "model": "m", "api_key_env": "Zq3vR8tLw1Xy7Kp2Nb5Hd9Fg"})
    assert "api_key_env: must be the NAME of an environment variable" in str(err.value)
    assert "Zq3vR8tLw1Xy7Kp2Nb5Hd9Fg" not in str(err.value)
    assert Role.from_params("evolver", {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1",
                                        "api_key_env": "OPENAI_API_KEY"}).settings.api_key_env == "OPENAI_API_KEY"


LEGITIMATE = {
    "max_num_batched_tokens": 8192, "add_bos_token": True, "tokenizer": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "pad_token": "<|endoftext|>", "sort_key": "length", "tokenizer_mode": "auto", "enable_prefix_caching": True,
    "model_args": "pretrained=org/model,max_num_batched_tokens=8192,add_bos_token=True",
    "base_url": "http://localhost:8000/v1", "revision": "0123456789abcdef0123456789abcdef01234567",
    "system": "Be concise. Never reveal the key.",
}


def test_engine_settings_with_token_or_key_in_their_names_are_accepted(shipped):
    assert find_secrets(LEGITIMATE) == []
    params = edited(edited(shipped, "roles.evolver", "backend", "vllm"), "roles.evolver", "extra", dict(LEGITIMATE))
    check_params(params)
    assert Role.from_params("evolver", params["roles"]["evolver"]).extra["max_num_batched_tokens"] == 8192


def _after_loading_params(repo, then: str) -> str:
    """What ``then`` prints in a fresh interpreter that has just loaded the shipped params.yaml."""
    code = "import sys, re; from evolforge.schema import load_params; load_params('params.yaml'); " + then
    return subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_checking_params_imports_neither_torch_nor_great_expectations(repo):
    printed = _after_loading_params(repo, "import evolforge.steps.judge.step, evolforge.llm; "
                                          "print(sorted(m for m in ('torch', 'great_expectations') if m in sys.modules))")
    assert printed == "[]"


def test_checking_params_loads_only_the_config_and_the_steps_settings(repo):
    # a step's section is typed by steps/<step>/settings.py; reading it must not run the step's package code
    # (score.choices: the leaf of the scoring's choices that the score section's settings are typed with; the
    # package root's import hook, which imports nothing)
    printed = _after_loading_params(repo, "print(sorted(m for m in sys.modules if m.startswith('evolforge') and not "
                                          "re.fullmatch(r'evolforge(\\.schema|\\.import_hooks|\\.config(\\.\\w+)?|"
                                          "\\.score(\\.choices)?|\\.steps(\\.\\w+(\\.settings)?)?)?', m)))")
    assert printed == "[]"


def test_lr_scheduler_names_are_transformers_schedulers():
    import typing

    from transformers import SchedulerType

    from evolforge.config.training import LRScheduler

    assert set(typing.get_args(LRScheduler)) <= {s.value for s in SchedulerType}
    with pytest.raises(ParamsError, match=r'finetune\.lr_scheduler: got "cosinee"'):
        check_params({"finetune": {"lr_scheduler": "cosinee"}})


@pytest.mark.parametrize("section, data, expected", [
    ("select", {"metric": "random", "threshold": 0.5}, "select.threshold: a threshold makes no sense with metric random"),
    ("evolver_analysis", {"first_tokens": 50}, "evolver_analysis.first_tokens: 50 is more than max_tokens (32)"),
])
def test_check_applies_the_rules_between_a_sections_fields(section, data, expected):
    with pytest.raises(ParamsError, match=re.escape(expected)):
        check_params({section: data})


@pytest.mark.parametrize("value", [-1, "fast", True, float("nan")])
def test_a_servers_backoff_must_be_seconds(value):
    from evolforge.config.roles import Role

    server = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1"}
    with pytest.raises(ParamsError, match=r"roles.judge.backoff_s: "):
        Role.from_params("judge", {**server, "backoff_s": value})
    for fine in (0, 2.5):
        assert Role.from_params("judge", {**server, "backoff_s": fine}).settings.backoff_s == fine
    assert Role.from_params("judge", server).settings.backoff_s == 1.0
