"""Difficulty parsing for both judge prompts, and training-set selection by fraction and threshold."""

from __future__ import annotations

import math

import polars as pl
import pytest

from evolforge.steps.common.difficulty import LEVELS

from evolforge.steps.common.difficulty import judge, parse_level, parse_score
from evolforge.steps.judge.step import level_distribution
from evolforge.config.roles import Role
from evolforge.llm.cached import LLM
from evolforge.llm.backends.fake import FakeBackend
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.select.settings import SelectSettings
from evolforge.steps.select.export import to_alpaca, to_trl
from evolforge.steps.select.selection import select_items


@pytest.mark.parametrize("raw,expected", [
    ("very hard", ("very hard", None)), ("Medium", ("medium", None)), ("'easy'", ("easy", None)),
    ("hard.", ("hard", None)), ("  very easy\n", ("very easy", None)),
    ("The difficulty is hard.", (None, "not_a_level")), ("extremely hard", (None, "not_a_level")),
    ("54", (None, "not_a_level")), ("", (None, "empty")),
])
def test_parse_level(raw, expected):
    assert parse_level(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("85", (85.0, None)), (" 42.5 ", (42.5, None)), ("0", (0.0, None)), ("100.", (100.0, None)),
    ("101", (None, "out_of_range")), ("-3", (None, "out_of_range")), ("85/100", (None, "not_a_number")),
    ("It is fairly hard.", (None, "not_a_number")), ("hard", (None, "not_a_number")), ("", (None, "empty")),
])
def test_parse_score(raw, expected):
    assert parse_score(raw) == expected


@pytest.mark.parametrize("variant,marker", [("paper", "## User Query"), ("code", "## Question:")])
def test_judge_uses_the_chosen_score_prompt(variant, marker):
    def reply(request):
        prompt = request.messages[-1][1]
        if "from 0 to 100" in prompt:
            assert marker in prompt
            return "70" if "Hard one" in prompt else "no idea"
        return "hard" if "Hard one" in prompt else "kind of easy"

    items = pl.DataFrame({"id": ["a", "b"], "round": [1, 2], "instruction": ["Hard one", "Other"], "input": ["", "ctx"]})
    role = Role.from_params("judge", {"backend": "hf", "model": "fake"})
    out = judge(items, LLM(FakeBackend(reply), None, role=role), PromptLibrary(), score_prompt=variant)
    assert out["difficulty_level"].to_list() == ["hard", None]
    assert out["difficulty_level_reason"].to_list() == [None, "not_a_level"]
    assert out["difficulty_level_raw"].to_list() == ["hard", "kind of easy"]
    assert out["difficulty_score"].to_list() == [70.0, None]
    assert set(out["score_prompt"]) == {variant}
    dist = level_distribution(out)
    assert [r["level"] for r in dist if r["round"] == 1] == LEVELS
    assert next(r for r in dist if r["round"] == 1 and r["level"] == "hard")["share"] == 1.0


def table(n: int = 20) -> pl.DataFrame:
    return pl.DataFrame({
        "id": [f"i{k:02d}" for k in range(n)], "round": [1 + k % 3 for k in range(n)],
        "instruction": [f"q{k}" for k in range(n)], "input": ["" if k % 2 else "x" for k in range(n)],
        "output": [f"a{k}" for k in range(n)],
        "ic_ifd": [None if k == 5 else k / 10 for k in range(n)],
        "ifd": [k / 10 for k in range(n)],
        "difficulty_score": [float(100 - k) for k in range(n)],
    })


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_top_fraction(fraction):
    chosen, summary, _ = select_items(table(), SelectSettings("ic_ifd", top_fraction=fraction))
    ranked = sorted((k / 10, f"i{k:02d}") for k in range(20) if k != 5)
    expected = [i for _, i in reversed(ranked)][: math.ceil(fraction * 19)]
    assert chosen["id"].to_list() == expected and summary["selected"] == len(expected)
    assert summary["removed_by_filter"]["no_metric"] == 1  # the null IC-IFD is never selected


def test_threshold_ifd_filter_rounds_and_random():
    chosen, _, _ = select_items(table(), SelectSettings("difficulty_score", top_fraction=None, threshold=90))
    assert sorted(chosen["difficulty_score"].to_list()) == [90.0 + k for k in range(11)]
    chosen, summary, _ = select_items(table(), SelectSettings("ifd", top_fraction=1.0, ifd_filter=True))
    assert chosen["ifd"].max() <= 1.0 and next(s for s in summary["filters"] if s["filter"] == "ifd_above_1")["left"] == 11
    chosen, _, _ = select_items(table(), SelectSettings("ic_ifd", top_fraction=1.0, rounds=[2]))
    assert set(chosen["round"]) == {2}
    a, _, _ = select_items(table(), SelectSettings("random", top_fraction=0.3, seed=1))
    b, _, _ = select_items(table(), SelectSettings("random", top_fraction=0.3, seed=1))
    c, _, _ = select_items(table(), SelectSettings("random", top_fraction=0.3, seed=2))
    assert a["id"].to_list() == b["id"].to_list() != c["id"].to_list() and a.height == 6
    with pytest.raises(ValueError, match="select.metric"):
        select_items(table(), SelectSettings("loss"))
    with pytest.raises(ValueError, match="top_fraction"):
        select_items(table(), SelectSettings("ifd", top_fraction=1.5))


def test_exports():
    rows = table(3)
    trl = to_trl(rows)
    assert trl[0]["prompt"] == [{"role": "user", "content": "q0\nx"}]  # Q exactly as it was judged and scored
    assert trl[1]["prompt"] == [{"role": "user", "content": "q1"}]
    assert trl[0]["completion"] == [{"role": "assistant", "content": "a0"}]
    assert to_alpaca(rows)[0] == {"instruction": "q0", "input": "x", "output": "a0"}
