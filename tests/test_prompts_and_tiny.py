"""Prompt rendering (strict, hashed) and the tiny model's deterministic build."""

from __future__ import annotations

import pytest

from evolforge.core.models import hash_model_dir
from evolforge.core.prompts import PromptError, PromptLibrary


def test_strict_undefined_and_hash(tmp_path):
    (tmp_path / "a.j2").write_text("Hello {{ name }}")
    lib = PromptLibrary(tmp_path)
    assert lib.render("a.j2", name="x") == "Hello x"
    with pytest.raises(ValueError, match="'name' is undefined"):
        lib.render("a.j2")
    before = lib.hash("a.j2")
    (tmp_path / "a.j2").write_text("Hello {{ name }}!")
    assert lib.hash("a.j2") == before  # compiled and hashed once per library (a stage): one version per run
    assert PromptLibrary(tmp_path).hash("a.j2") != before and len(before) == 16


@pytest.mark.parametrize("files, expected", [
    ({"a.j2": "Hello {% if name %}{{ name }}"}, r"a\.j2, line 1: Unexpected end of template"),
    ({"a.j2": "Hi\n{% include 'gone.j2' %}"}, r"a\.j2: it includes 'gone.j2', which is not in"),
    ({"a.j2": "Hi\n{% include 'b.j2' %}", "b.j2": "x\n{{ oops"}, r"b\.j2, line 2: unexpected end of template"),
    ({"a.j2": " \n"}, r"a\.j2: the template is empty"),
    ({"a.j2": "Caf\xe9 {{ name }}".encode("latin-1")}, r"a\.j2: not UTF-8 text \(byte 3"),
    ({}, r"a\.j2: no such template"),
])
def test_unusable_templates_are_refused_naming_the_file(tmp_path, files, expected):
    from evolforge.core.stage import refusal_types

    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PromptError, match=expected) as err:
        PromptLibrary(tmp_path).render("a.j2", name="x")
    assert isinstance(err.value, refusal_types())  # a stage prints it as it is, exit 2, no traceback


def test_shipped_templates_render(repo):
    lib = PromptLibrary(repo / "prompts")
    assert "#Rewritten Prompt#:" in lib.render("evolve/depth.j2", method="deepening", instruction="X")
    with pytest.raises(PromptError):
        lib.render("evolve/depth.j2", method="no_such_method", instruction="X")
    assert lib.render("respond/response.j2", instruction="Q", input="").endswith("Instruction: Q\nResponse:")
    assert "Input: I" in lib.render("respond/response.j2", instruction="Q", input="I")


@pytest.mark.slow
def test_tiny_model_build_is_deterministic(tmp_path, repo):
    from tiny import TinyConfig, build_tiny_model

    cfg = TinyConfig(steps=4)
    hashes = []
    for name in ("a", "b"):
        build_tiny_model(tmp_path / name, repo / "data/seeds/demo.jsonl", repo / "prompts", cfg, log=lambda _: None)
        hashes.append(hash_model_dir(tmp_path / name))
    assert hashes[0] == hashes[1]
    build_tiny_model(tmp_path / "c", repo / "data/seeds/demo.jsonl", repo / "prompts", TinyConfig(steps=4, seed=1), log=lambda _: None)
    assert hash_model_dir(tmp_path / "c") != hashes[0]
