"""A reasoning model behind a server (tests/fake_openai.py's thinking modes: ``<think>`` tags, a thinking the
chat template opened, ``reasoning_content``): the evolver's instructions, the judge's labels and scores and
the responder's answers carry no thinking text, the thinking is in its own column and in the call cache, its
tokens are counted, and a role's thinking_budget is added to what each request may generate."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from evolforge.config.roles import Role
from evolforge.config.runtime import LLMSettings
from evolforge.llm.cache import CallCache
from evolforge.core.prompts import PromptLibrary
from evolforge.io.columns import JUDGED, RESPONSES, ROUND
from evolforge.io.records import LINEAGE
from evolforge.llm.cached import open_llm
from evolforge.llm.thinking import separate, split
from evolforge.llm.types import Completion
from evolforge.steps.evolve.step import EvolveSettings, evolve_round
from evolforge.steps.common.difficulty import judge
from evolforge.steps.respond.step import KEEP, answer
from fake_openai import FakeOpenAIServer, chat_body

pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py

THOUGHT = "Let me think"  # the start of fake_openai.thinking_body's thinking
MODES = ("tags", "open", "field")


def reply(body: dict):
    """An evolver, a responder and a judge in one: a constrained request gets a JSON answer from its enum."""
    prompt = body["messages"][-1]["content"]
    if "response_format" in body:
        enum = body["response_format"]["json_schema"]["schema"]["properties"]["answer"]["enum"]
        pick = "hard" if "hard" in enum else enum[len(enum) // 3]
        return 200, chat_body(json.dumps({"answer": pick}), 40, 5), {}
    task = re.search(r"task \d\d", prompt)
    return 200, chat_body(f"Solve {task.group(0) if task else 'it'} twice, with a proof of each step.", 40, 10), {}


def role(server: FakeOpenAIServer, name: str = "evolver", **kw) -> Role:
    return Role.from_params(name, dict(backend="openai", model="test-model", base_url=server.base_url, concurrency=4,
                                       timeout_s=5, max_retries=1, **kw))


def pool(n: int) -> pl.DataFrame:
    rows = [{"id": f"s{i:02d}", "root_id": f"s{i:02d}", "parent_id": None, "round": 0, "method": "seed", "status": "seed",
             "failure_reason": None, "instruction": f"Describe task {i:02d} in detail.", "input": "", "output": ""}
            for i in range(n)]
    return pl.DataFrame(rows, schema={c: (pl.Int32 if c == "round" else pl.String) for c in LINEAGE + ["instruction", "input", "output"]})


def test_split_and_separate():
    assert split("<think>a</think>b") == ("b", "a", True)
    assert split("a</think>\n\nb") == ("b", "a", True)
    assert split("<think>never done") == ("", "never done", False)
    assert split("plain </b> text") == ("plain </b> text", None, True)
    assert split("[[x]] answer", ["[[", "]]"]) == ("answer", "x", True)
    assert split("<think>a</think>b", []) == ("<think>a</think>b", None, True)
    kept = separate(Completion("<think>more</think> b", "stop", thinking="sent apart"))
    assert (kept.text, kept.thinking) == ("b", "sent apart\nmore")
    cut = separate(Completion("<think>thinking until the end", "stop"))
    assert (cut.text, cut.finish_reason) == ("", "length")
    assert separate(Completion.failure("request_rejected", "x")).failed


@pytest.mark.parametrize("mode", MODES)
def test_a_thinking_server_yields_answers_without_thinking_and_the_thinking_apart(tmp_path, mode):
    settings = EvolveSettings(elimination={"sorry_short": False, "stopwords_only": False, "rule_f": False,
                                           "same_answer": False})
    with FakeOpenAIServer(reply) as server:
        server.thinking = mode
        cache = CallCache(tmp_path / "c.sqlite")
        evolver = open_llm(role(server), cache, settings=LLMSettings(max_failure_rate=0.0))
        table, _, summary = evolve_round(pool(6), round_index=1, settings=settings, prompts=PromptLibrary(), evolver=evolver)
        assert list(table.columns) == list(ROUND) and summary["evolved"] == 6
        for column in ("instruction", "raw_output"):
            assert not table[column].str.contains("think|</?think>").any(), table[column].to_list()
        assert all(t.startswith(THOUGHT) for t in table["instruction_thinking"])
        # every generated token counted, the thinking's too; the server said how many were thinking
        assert evolver.stats["completion_tokens"] == 6 * (10 + len(table["instruction_thinking"][0].split()))
        assert evolver.stats["thinking_tokens"] == 6 * len(table["instruction_thinking"][0].split())

        items = table.drop("check_response", "check_finish_reason", "check_request_key", "check_thinking")
        items = items.with_columns(pl.lit(None, pl.String).alias(c) for c in KEEP if c not in items.columns).select(KEEP)
        responder = open_llm(role(server, "responder"), cache)
        answered = answer(items, responder, PromptLibrary())
        assert list(answered.columns) == list(RESPONSES)
        assert not answered["output"].str.contains("think").any()
        assert all(t.startswith(THOUGHT) for t in answered["response_thinking"])

        judge_llm = open_llm(role(server, "judge", max_tokens=8), cache)
        judged = judge(answered.select("id", "round", "instruction", "input"), judge_llm, PromptLibrary())
        assert judged["difficulty_level"].to_list() == ["hard"] * 6  # the JSON answer after the thinking
        assert judged["difficulty_score"].drop_nulls().len() == 6
        assert not judged["difficulty_level_raw"].str.contains("think").any()
        assert all(t.startswith(THOUGHT) for t in judged["difficulty_level_thinking"])
        assert set(JUDGED) <= set(judged.columns)

        # the call cache keeps the thinking: a rerun sends nothing and has the same columns
        sent = server.chats()
        again = answer(items, open_llm(role(server, "responder"), CallCache(tmp_path / "c.sqlite")), PromptLibrary())
        assert server.chats() == sent and again.equals(answered)


def test_a_model_that_does_not_think_has_null_thinking_columns(tmp_path):
    with FakeOpenAIServer(reply) as server:
        responder = open_llm(role(server, "responder"), CallCache(tmp_path / "c.sqlite"))
        items = pool(3).with_columns(pl.lit(None, pl.String).alias(c) for c in KEEP if c not in pool(3).columns).select(KEEP)
        answered = answer(items, responder, PromptLibrary())
        assert answered["response_thinking"].is_null().all() and answered["output"].is_not_null().all()


def test_thinking_budget_is_added_to_every_requests_max_tokens(tmp_path):
    with FakeOpenAIServer(reply) as server:
        server.thinking = "open"
        judge_llm = open_llm(role(server, "judge", max_tokens=8, thinking_budget=500), CallCache(tmp_path / "c.sqlite"))
        judge(pool(1).select("id", "round", "instruction", "input"), judge_llm, PromptLibrary(), max_tokens=8)
        assert {s["body"]["max_tokens"] for s in server.seen if s["path"].endswith("/chat/completions")} == {508}
    with pytest.raises(ValueError, match=r"roles.judge.thinking_tags: got \[\"<t>\"\]"):
        Role.from_params("judge", dict(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", thinking_tags=["<t>"]))
