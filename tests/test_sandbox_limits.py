"""The sandbox's limits are declared once (config/sandbox_limits.py): every section that runs model-written code
types its limits with those fields, and every default of a sandbox run is the declared value."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from evolforge.config import sandbox_limits
from evolforge.config.training import EvaluateSettings
from evolforge.eval.sandbox import run_untrusted
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.common.answer_check import check_python
from evolforge.steps.common.function_runs import run_function
from evolforge.steps.verify.settings import VerifySettings

# section class -> {its key: the declaration's field builder}
SECTIONS = {
    EvaluateSettings: {"sandbox_timeout_s": "program_timeout_s", "sandbox_memory_mb": "memory_mb"},
    AutoIFSettings: {"case_timeout_s": "case_timeout_s", "memory_mb": "memory_mb", "workers": "workers"},
    VerifySettings: {"case_timeout_s": "case_timeout_s", "memory_mb": "memory_mb", "workers": "workers"},
}


@pytest.mark.parametrize("section", SECTIONS, ids=lambda cls: cls.__name__)
def test_each_section_types_its_limits_with_the_declared_fields(section):
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, builder in SECTIONS[section].items():
        declared = getattr(sandbox_limits, builder)()
        assert (fields[key].default, dict(fields[key].metadata)) == (declared.default, dict(declared.metadata)), key
    # written as the declaration's call in the section's source, not as a copy of its value
    tree = ast.parse(inspect.getsource(section))
    calls = {node.target.id: ast.unparse(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None}
    assert {key: calls[key] for key in SECTIONS[section]} == {
        key: f"sandbox_limits.{builder}()" for key, builder in SECTIONS[section].items()}


def written_defaults(function) -> dict[str, str]:
    """A function's parameters -> its default as written in its source."""
    args = ast.parse(inspect.getsource(function)).body[0].args
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    return {a.arg: ast.unparse(d) for a, d in pairs}


@pytest.mark.parametrize("function, limits", [
    (run_untrusted, {"timeout_s": "PROGRAM_TIMEOUT_S", "memory_mb": "MEMORY_MB"}),
    (check_python, {"timeout_s": "PROGRAM_TIMEOUT_S", "memory_mb": "MEMORY_MB"}),
    (run_function, {"case_timeout_s": "CASE_TIMEOUT_S", "memory_mb": "MEMORY_MB"}),
], ids=lambda x: getattr(x, "__name__", ""))
def test_every_default_of_a_sandbox_run_is_the_declared_one(function, limits):
    assert {name: written_defaults(function)[name] for name in limits} == limits
    defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()}
    assert {name: defaults[name] for name in limits} == {name: getattr(sandbox_limits, c) for name, c in limits.items()}
