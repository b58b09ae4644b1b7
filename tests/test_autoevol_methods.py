"""The record of the Auto Evol-Instruct methods experiment (``docs/experiments/autoevol-methods.json``, written by
``bench/autoevol_methods.py measure``): the paper's published methods at each optimization step, this project's
initial method and Evol-Instruct's in-depth methods, each measured on the shipped development set. The record must
say where the methods come from, hold every method in the experiment's order, and its figures must add up."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "experiments" / "autoevol-methods.json"


def bench():
    spec = importlib.util.spec_from_file_location("autoevol_methods", ROOT / "bench" / "autoevol_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text(encoding="utf-8"))


def test_the_record_names_the_published_file_its_commit_and_licence(record):
    module = bench()
    assert record["source"] == {"repository": module.REPOSITORY, "commit": module.COMMIT, "file": module.PATH,
                                "sha256": module.SHA256, "licence": module.LICENCE}
    assert "bench/autoevol_methods.py measure" in record["command"]


def test_every_method_is_measured_in_the_experiments_order(record):
    from evolforge.steps.optimize.method_file import read_methods

    names = [m["name"] for m in record["methods"]]
    in_depth = [m.name for m in read_methods(bench().IN_DEPTH)]
    assert names == ["initial", *(f"step_{k}" for k in range(9)), *in_depth]


def test_each_methods_figures_add_up(record):
    n = record["settings"]["dev_size"]
    assert n == len(record["dev"])
    for m in record["methods"]:
        assert len(m["evolutions"]) == n, m["name"]
        assert [e["id"] for e in m["evolutions"]] == [d["id"] for d in record["dev"]], m["name"]
        failed = [e for e in m["evolutions"] if e["failure"] is not None]
        assert m["failures"] == len(failed) and m["failure_rate"] == pytest.approx(len(failed) / n), m["name"]
        assert sum(m["failures_by_reason"].values()) == m["failures"], m["name"]
        assert m["difficulty"]["items"] <= sum(e["evolved"] is not None for e in m["evolutions"]), m["name"]


def test_equal_method_texts_give_equal_figures(record):
    """Steps whose published texts are equal send the same requests: the call cache answers them alike."""
    by_name = {m["name"]: m for m in record["methods"]}
    same = [m for m in record["methods"] if m["same_as"]]
    for m in same:
        first = by_name[m["same_as"]]
        assert m["sha256"] == first["sha256"]
        assert [e["evolved"] for e in m["evolutions"]] == [e["evolved"] for e in first["evolutions"]]
        assert m["failures_by_reason"] == first["failures_by_reason"]
