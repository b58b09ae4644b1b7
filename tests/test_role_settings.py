"""A role's settings are split by backend (config/backend_settings.py): the common keys on Role, each backend's
own on its settings class; a stage parses its roles once and hands the LLM layer typed roles, never params."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from evolforge.config.backend_settings import HfSettings, LlamacppSettings, OpenAISettings
from evolforge.config.backend_specs import BACKEND_NAMES, SPECS
from evolforge.config.bounds import ParamsError
from evolforge.config.roles import Role
from evolforge.config.runtime import CacheSettings, LLMSettings, load_llm_params

SRC = Path(__file__).resolve().parents[1] / "src" / "evolforge"
SERVER = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "server": "vllm"}


def test_a_role_holds_its_backends_settings_and_refuses_another_backends_keys():
    role = Role.from_params("judge", {"backend": "llamacpp", "model": "m", "batch_size": 6, "threads": 2})
    assert role.settings == LlamacppSettings(batch_size=6, threads=2)
    assert Role.from_params("judge", SERVER).settings.urls == ["http://127.0.0.1:9/v1"]
    with pytest.raises(ParamsError) as info:
        Role.from_params("judge", {"backend": "llamacpp", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                                   "dtype": "float32"})
    assert info.value.problems == ["roles.judge.base_url: a setting of backend openai, not of llamacpp",
                                   "roles.judge.dtype: a setting of backend hf, vllm, ray, not of llamacpp"]
    with pytest.raises(ParamsError, match=r"roles.scorer.dtype: got 3 \(an integer\); allowed: text"):
        Role.from_params("scorer", {"backend": "hf", "model": "m", "dtype": 3})
    with pytest.raises(ParamsError, match=r"roles.judge.batch_sise: unknown key; did you mean `batch_size`\? "
                                          r"\(roles.judge keys of backend hf: .*threads_follow_load"):
        Role.from_params("judge", {"backend": "hf", "model": "m", "batch_sise": 2})


def test_every_backend_declares_its_settings_once_with_defaults():
    for backend in BACKEND_NAMES:
        role = Role(name="judge", backend=backend, model="m")  # no settings given: the backend's defaults
        assert type(role.settings) is SPECS[backend].settings
    assert Role(name="judge", backend="hf", model="m").settings == HfSettings()
    assert not hasattr(HfSettings(), "base_url") and not hasattr(OpenAISettings(), "dtype")
    assert OpenAISettings(concurrency=3).batch_size == 12  # a server's pool bounds what is in flight


def test_a_servers_settings_are_checked_once_where_params_are_parsed(monkeypatch):
    from evolforge.llm.backends.openai.client import OpenAIBackend

    checks = []
    original = OpenAISettings.problems
    monkeypatch.setattr(OpenAISettings, "problems", lambda self, *a: checks.append(1) or original(self, *a))
    llms = load_llm_params({"roles": {"judge": SERVER}, "cache": {"path": "c.sqlite"}}, ("judge",))
    assert llms.cache == CacheSettings(path="c.sqlite") and llms.llm == LLMSettings()
    OpenAIBackend.from_role(llms.roles["judge"])
    assert checks == [1]


def test_the_llm_layer_takes_no_params_mapping():
    """No function under llm/ has a ``params`` argument or reads a params section or role itself."""
    readers = {"load_role", "load_section", "load_llm_params", "section", "read_params", "load_params"}
    found = []
    for path in (SRC / "llm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.name}:{node.lineno} {node.name}(params)" for a in node.args.args if a.arg == "params"]
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in readers]
    assert found == []


def test_no_backend_name_is_tested_outside_the_backends_and_the_spec():
    """What a backend does is asked of its spec (served, transformers, probes_kernels, ...), never of its name.
    eval/harness.py's `backend` is lm-evaluation-harness's model type (hf, vllm, local-chat-completions), another
    thing."""
    allowed = {SRC / "config" / "backend_specs.py", SRC / "eval" / "harness.py"}
    # backend == "x", .get("backend") != "x", backend in ("x", "y")
    test = re.compile(r"backend\b[\"'\]\)]*\s*(==|!=|\bin\s*[(\[{])")
    found = [f"{path.relative_to(SRC)}:{i}: {line.strip()}"
             for path in SRC.rglob("*.py") if path not in allowed and (SRC / "llm" / "backends") not in path.parents
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if test.search(line)]
    assert found == []


OPENAI = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1", "server": "openai"}


@pytest.mark.parametrize("extra, says", [
    ({"top_logprobs": 5}, "roles.judge.extra.top_logprobs: backend openai reads no extra settings (its settings are "
                          "keys of roles.judge itself; write roles.judge.top_logprobs)"),
    ({"backoff_s": 0.5}, "roles.judge.extra.backoff_s: backend openai reads no extra settings"),
    ({"logprobs": True}, "roles.judge.extra.logprobs: backend openai reads no extra settings (its settings are keys "
                         "of roles.judge itself)"),
])
def test_an_openai_roles_extra_is_refused_naming_the_key(extra, says):
    """A server role reads no ``extra``: a key there was once read (top_logprobs, backoff_s) or silently ignored."""
    with pytest.raises(ParamsError) as err:
        Role.from_params("judge", {**OPENAI, "extra": extra})
    assert says in str(err.value)


def test_an_openai_backend_is_built_with_its_roles_typed_settings():
    from evolforge.llm.backends.openai.client import OpenAIBackend

    default = OpenAISettings()
    assert (default.backoff_s, default.top_logprobs) == (1.0, 20)
    built = OpenAIBackend.from_role(Role.from_params("judge", {**OPENAI, "backoff_s": 0.25, "top_logprobs": 5}))
    assert (built.transport.backoff_s, built.top_logprobs) == (0.25, 5)
    plain = OpenAIBackend.from_role(Role.from_params("judge", OPENAI))
    assert (plain.transport.backoff_s, plain.top_logprobs) == (1.0, 20)
    with pytest.raises(ParamsError, match=r"roles\.judge\.top_logprobs"):
        Role.from_params("judge", {**OPENAI, "top_logprobs": 0})
