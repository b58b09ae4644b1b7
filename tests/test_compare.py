"""Win-tie-lose: the paper's parsing table, both-order agreement, and the flow through the LLM layer."""

from __future__ import annotations

import pytest

from evolforge.config.loader import load_section
from evolforge.steps.compare.settings import CompareSettings

from evolforge.steps.compare.step import combine_orders, counts, judge_pairs, parse_verdict
from evolforge.core.prompts import PromptLibrary
from evolforge.config.roles import Role
from evolforge.llm.cached import LLM
from evolforge.llm.backends.fake import FakeBackend


@pytest.mark.parametrize("text, paper, last_line", [
    ("Assistant 1 is better than Assistant 2", "win", "win"),
    ("Assistant 1 is worse than Assistant 2", "lose", "lose"),
    ("Assistant 1 is equal to Assistant 2", "tie", "tie"),
    ("'Assistant 1 is Better Than Assistant 2'.", "win", "win"),
    ("", "tie", "tie"),
    ("I cannot decide.", "tie", "tie"),
    # the paper's rule reads the whole answer, "better than" first; last_line reads only the label line
    ("Assistant 2 explains it better than Assistant 1.\nAssistant 1 is worse than Assistant 2", "win", "lose"),
    ("Neither is worse than the other.\n\nAssistant 1 is equal to Assistant 2\n", "lose", "tie"),
])
def test_parse_verdict_table(text, paper, last_line):
    assert parse_verdict(text, "paper") == paper
    assert parse_verdict(text, "last_line") == last_line


@pytest.mark.parametrize("first, swapped, final", [
    ("win", "lose", "win"), ("lose", "win", "lose"),
    ("win", "win", "tie"), ("lose", "lose", "tie"),  # position bias: each order favours Assistant 1
    ("win", "tie", "tie"), ("tie", "lose", "tie"), ("tie", "tie", "tie"),
])
def test_both_orders_must_agree(first, swapped, final):
    assert combine_orders(first, swapped) == final


def _judge(replies) -> tuple[LLM, FakeBackend]:
    fake = FakeBackend(replies)
    return LLM(fake, None, role=Role(name="judge", backend="hf", model="fake", max_tokens=64)), fake


def test_judge_pairs_both_orders_swaps_the_answers():
    def reply(request):
        prompt = request.messages[0][1]
        first = prompt.split("[Assistant 1]\n")[1].split("\n[End of Assistant 1]")[0]
        return "Assistant 1 is better than Assistant 2" if first.startswith("A") else "Assistant 1 is worse than Assistant 2"

    llm, fake = _judge(reply)  # a consistent judge: always prefers the answers starting with "A"
    table = judge_pairs(llm, PromptLibrary(), ["q1", "q2"], ["A good", "B meh"], ["B meh", "A good"], both_orders=True)
    assert table["verdict_ab"].to_list() == ["win", "lose"] and table["verdict_ba"].to_list() == ["lose", "win"]
    assert table["verdict"].to_list() == ["win", "lose"]
    assert len(fake.sent) == 4 and "[User]\nq1\n[End of User]" in fake.sent[0].messages[0][1]
    assert counts(table["verdict"].to_list()) == {"win": 1, "tie": 0, "lose": 1, "win_rate": 0.5, "tie_rate": 0.0,
                                                   "lose_rate": 0.5, "items": 2}


def test_judge_pairs_position_biased_judge_gives_ties_with_both_orders_only():
    llm, _ = _judge(lambda r: "Assistant 1 is better than Assistant 2")
    one = judge_pairs(llm, PromptLibrary(), ["q"], ["a"], ["b"], both_orders=False)
    assert one["verdict"].to_list() == ["win"] and "verdict_ba" not in one.columns
    llm, _ = _judge(lambda r: "Assistant 1 is better than Assistant 2")
    assert judge_pairs(llm, PromptLibrary(), ["q"], ["a"], ["b"], both_orders=True)["verdict"].to_list() == ["tie"]


@pytest.mark.parametrize("both_orders", [False, True])
def test_identical_answers_are_a_tie_without_a_judge_call(both_orders):
    llm, fake = _judge(lambda r: "Assistant 1 is better than Assistant 2")  # position-biased: every pair a win
    table = judge_pairs(llm, PromptLibrary(), ["q1", "q2", "q3"], ["same", "a", "x"], ["same", "b", "x"],
                        both_orders=both_orders)
    assert table["identical"].to_list() == [True, False, True]
    assert table["verdict"].to_list() == ["tie", "tie" if both_orders else "win", "tie"]
    assert table["judge_raw_ab"].to_list()[0] is None and table["verdict_ab"].to_list() == [None, "win", None]
    assert len(fake.sent) == (2 if both_orders else 1) and "q2" in fake.sent[0].messages[0][1]


def test_identical_answers_judged_when_asked_and_none_to_judge_sends_nothing():
    llm, fake = _judge(lambda r: "Assistant 1 is better than Assistant 2")
    table = judge_pairs(llm, PromptLibrary(), ["q"], ["same"], ["same"], both_orders=False, judge_identical=True)
    assert table["verdict"].to_list() == ["win"] and table["identical"].to_list() == [True] and len(fake.sent) == 1
    llm, fake = _judge(lambda r: "Assistant 1 is better than Assistant 2")
    table = judge_pairs(llm, PromptLibrary(), ["q"], ["same"], ["same"], both_orders=True)
    assert table["verdict"].to_list() == ["tie"] and fake.sent == []


def test_settings():
    assert load_section({"compare": {"both_orders": False}}, "compare", CompareSettings).both_orders is False
    assert load_section({}, "compare", CompareSettings).judge_identical is False
    with pytest.raises(ValueError, match=r"compare.parse"):
        load_section({"compare": {"parse": "regex"}}, "compare", CompareSettings)
    with pytest.raises(ValueError, match=r"compare.orders: unknown key"):
        load_section({"compare": {"orders": 2}}, "compare", CompareSettings)
