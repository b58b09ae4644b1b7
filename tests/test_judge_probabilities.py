"""Scores from probabilities: the judge's expected score and level equal a hand computation on known
log-probabilities (a scripted backend), the most likely answer is recorded beside them, and the hf backend
ranks whole answers (tiny model)."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from evolforge.config.bounds import ParamsError
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.select.settings import SelectSettings
from evolforge.config.backend_settings import OpenAISettings
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.cached import LLM
from evolforge.llm.types import ControlsError
from evolforge.llm.backends.fake import FakeBackend
from evolforge.steps.common.difficulty import LEVELS, SCORES
from evolforge.steps.common.difficulty import judge
from evolforge.steps.select.selection import select_items
from evolforge.llm.ranking import choice_probabilities, expected_value


def scripted(request: ChatRequest) -> str:
    """Test double: log-probabilities a model might give. Levels: 0.5 easy, 0.3 medium, 0.2 hard; scores:
    0.6 on "100", 0.3 on "40", 0.1 on "10", nothing (-inf as -1000) on the rest."""
    assert request.rank and request.choices is not None
    if request.choices == tuple(LEVELS):
        probs = {"easy": 0.5, "medium": 0.3, "hard": 0.2}
    else:
        probs = {"100": 0.6, "40": 0.3, "10": 0.1}
    return json.dumps([math.log(probs[c]) if c in probs else -1000.0 for c in request.choices])


def items() -> pl.DataFrame:
    return pl.DataFrame({"id": ["a"], "round": [1], "instruction": ["Explain what a leap year is."], "input": [""]})


def test_expected_score_and_level_equal_a_hand_computation(repo):
    llm = LLM(FakeBackend(scripted), None, role=Role(name="judge", backend="hf", model="m"))
    out = judge(items(), llm, PromptLibrary(repo / "prompts"), probabilities=True).row(0, named=True)
    assert out["difficulty_expected"] == pytest.approx(0.6 * 100 + 0.3 * 40 + 0.1 * 10)  # 73
    assert out["level_expected"] == pytest.approx(0.5 * 1 + 0.3 * 2 + 0.2 * 3)  # 1.7: between easy and medium
    assert out["difficulty_score"] == 100.0 and out["difficulty_level"] == "easy"  # the most likely answers
    assert json.loads(out["difficulty_score_raw"])[SCORES.index("40")] == pytest.approx(math.log(0.3), abs=1e-6)


def test_without_probabilities_the_expected_columns_are_null(repo):
    llm = LLM(FakeBackend(lambda r: "hard" if r.choices == tuple(LEVELS) else "70"), None,
              role=Role(name="judge", backend="hf", model="m"))
    out = judge(items(), llm, PromptLibrary(repo / "prompts")).row(0, named=True)
    assert out["difficulty_score"] == 70.0 and out["difficulty_expected"] is None and out["level_expected"] is None


def test_ranking_is_keyed_apart_and_refused_where_a_backend_cannot_score():
    llm = LLM(FakeBackend(), None, role=Role(name="judge", backend="hf", model="m"))
    plain = ChatRequest.chat([{"role": "user", "content": "q"}], choices=("a", "b"))
    ranked = ChatRequest.chat([{"role": "user", "content": "q"}], choices=("a", "b"), rank=True)
    assert llm.key(plain) != llm.key(ranked)
    served = Role(name="judge", backend="openai", model="m", settings=OpenAISettings(base_url="http://127.0.0.1:1/v1"))
    walked = LLM(None, None, role=served, identity={"served_model": "m", "server": "llamacpp"})
    echoed = LLM(None, None, role=served, identity={"served_model": "m", "server": "vllm"})
    api = LLM(None, None, role=served, identity={"served_model": "m"})  # the OpenAI API: one generation, as before
    assert walked._constraint(ranked)["rank"] == "top_logprobs:end"
    assert echoed._constraint(ranked)["rank"] == "logprob_token_ids" and llm._constraint(ranked)["rank"] is True
    assert api._constraint(ranked)["rank"] == "top_logprobs"  # its walks read the end of turn as they always did
    ray = LLM(FakeBackend(), None, role=Role(name="judge", backend="ray", model="m"))
    with pytest.raises(ControlsError, match="cannot score answers by their probabilities"):
        ray.generate([ranked])
    with pytest.raises(ParamsError, match="judge.probabilities"):
        JudgeSettings(constrain=False, probabilities=True)


def test_select_may_rank_by_the_expected_difficulty():
    table = pl.DataFrame({"id": ["a", "b", "c", "d"], "round": [0, 1, 2, 3], "difficulty_expected": [10.0, 80.0, 55.0, 30.0]})
    chosen = select_items(table, SelectSettings("difficulty_expected", top_fraction=0.5)).chosen
    assert sorted(chosen["id"].to_list()) == ["b", "c"]


def test_hf_ranks_whole_answers_by_their_likelihood(tmp_path):
    """The ranking's log-probabilities equal the sum of the per-token log-probabilities of each answer
    followed by the end of the turn, computed here with one plain forward pass per answer (a small random
    Llama from tests/tiny.py: the arithmetic is what is checked; more answers than one chunk of 16)."""
    import torch
    from tiny import build_random_llama

    from evolforge.llm.backends.hf.backend import HFBackend

    path = build_random_llama(tmp_path / "m", vocab_size=300, hidden_size=32, num_layers=2, num_heads=2,
                              intermediate_size=64, texts=["rate it very easy easy medium hard 0 1 10 100 42"] * 50)
    backend = HFBackend(str(path), threads=1)
    choices = ("very easy", "easy", *SCORES)
    request = ChatRequest.chat([{"role": "user", "content": "Rate: Explain what a leap year is."}], choices=choices,
                               rank=True)
    scores = json.loads(backend.generate([request])[0].text)
    prompt = backend.tokenizer(backend.render(request), add_special_tokens=False)["input_ids"]
    stop = backend.trie(choices).stop
    assert len(scores) == len(choices)
    for choice, score in list(zip(choices, scores))[::7]:
        tail = backend.tokenizer.encode(choice, add_special_tokens=False) + [stop]
        with torch.inference_mode():
            logits = backend.model(input_ids=torch.tensor([prompt + tail])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(tail))
        assert score == pytest.approx(expected, abs=1e-3)


def test_a_dry_run_counts_no_completion_tokens_for_a_ranking(tmp_path, monkeypatch):
    from evolforge.llm.backends.dryrun import DRY_RUN_ENV, record

    monkeypatch.setenv(DRY_RUN_ENV, str(tmp_path / "calls.jsonl"))
    role = Role(name="judge", backend="hf", model="m", max_tokens=32)
    ranked = ChatRequest.chat([{"role": "user", "content": "q"}], choices=("1", "10", "100"), rank=True, max_tokens=32)
    decoded = ChatRequest.chat([{"role": "user", "content": "r"}], choices=("1", "10", "100"), max_tokens=32)
    record(role, None, [ranked], {"k": [0]}, "judge score")
    record(role, None, [decoded], {"k": [0]}, "judge level")
    lines = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [(line["requests"], line["max_tokens"]) for line in lines] == [(1, 0), (1, 32)]


# --- on a chat API: a walk of top_logprobs (evolforge.llm.backends.openai.walk) ----------------------------------

def _answers_model(center: float, spread: float) -> dict[str, float]:
    """A model's probabilities over the 0-100 answers: a discretised bell around ``center``."""
    weights = {s: math.exp(-((float(s) - center) / spread) ** 2 / 2) for s in SCORES}
    total = sum(weights.values())
    return {s: w / total for s, w in weights.items()}


def _walking_server(answers: dict[str, float], asked: list[dict], collapsed: bool = False):
    """A chat server of a character-level model whose answers are ``answers``: greedy, held to the grammar's
    answers, at most ``max_tokens`` characters, reporting the top next characters ("" is the end of the turn) at
    each one it writes. ``collapsed``: as llama-cpp-python's server, which names every control token "" and keeps
    the least likely of them, the end of the turn is listed with a control token's -12 in place of its own."""
    import re

    from fake_openai import chat_body

    def under(prefix: str) -> float:
        return sum(p for a, p in answers.items() if a.startswith(prefix))

    def reply(body: dict):
        asked.append(body)
        held = re.findall(r'"((?:[^"\\]|\\.)*)"', body["grammar"].split("::=", 1)[1])
        written, content = "", []
        while True:
            here = under(written)
            nxt = {c: under(written + c) / here for c in "0123456789" if under(written + c) > 0}
            if written in answers:
                nxt[""] = answers[written] / here
            top = sorted(nxt.items(), key=lambda kv: -kv[1])[:body["top_logprobs"]]
            if collapsed:
                top = [(t, p if t else math.exp(-12.0)) for t, p in top]
            allowed = [c for c in nxt if c and any(h.startswith(written + c) for h in held)]
            if written in held:
                allowed.append("")
            pick = max(allowed, key=nxt.__getitem__)
            if pick == "" or len(content) == body["max_tokens"]:
                break
            content.append({"token": pick, "logprob": math.log(nxt[pick]),
                            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top]})
            written += pick
        out = chat_body(written, 30, len(content))
        out["choices"][0]["logprobs"] = {"content": content}
        return 200, out, {}

    return reply


def test_on_llamacpps_server_a_walk_of_top_logprobs_gives_the_expected_score_in_a_few_generations():
    from fake_openai import FakeOpenAIServer

    from evolforge.llm.backends.openai.client import OpenAIBackend

    answers = _answers_model(63.0, 6.0)
    exact = sum(float(a) * p for a, p in answers.items())
    asked: list[dict] = []
    with FakeOpenAIServer(_walking_server(answers, asked)) as server:
        backend = OpenAIBackend(server.base_url, "test-model")
        backend.server = "llamacpp"
        ask = ChatRequest.chat([{"role": "user", "content": "How hard, 0-100?"}], choices=SCORES, rank=True)
        [out] = backend.generate([ask])
    probs = choice_probabilities(out.text)
    assert abs(expected_value(probs, [float(s) for s in SCORES]) - exact) < 0.5  # mass left out: < EXPAND_AT a prefix
    assert SCORES[max(range(len(probs)), key=probs.__getitem__)] == "63"
    assert 2 <= len(asked) <= 8  # against 101 echoed prompts
    assert all(b["logprobs"] is True and b["top_logprobs"] == 20 and b["temperature"] == 0.0 for b in asked)
    assert asked[0]["grammar"].startswith('root ::= "0" | "1" | "2"')  # the first: every answer
    assert all(b["grammar"].startswith('root ::= "') for b in asked[1:])  # then past one prefix each


@pytest.mark.parametrize("collapsed", [False, True])
def test_the_walk_reads_the_end_of_turn_where_a_server_lists_control_tokens_as_one(collapsed):
    """Low scores hang on the end of the turn: "1" ... "9" and "10" are answers that others go on from. Where the
    server keeps only the least likely of its control tokens (llama-cpp-python), the end of the turn is what the
    listed digits leave. Every generation stops at its answer's last character (max_tokens: its bytes)."""
    from fake_openai import FakeOpenAIServer

    from evolforge.llm.backends.openai.client import OpenAIBackend

    answers = _answers_model(9.0, 5.0)
    exact = sum(float(a) * p for a, p in answers.items())
    asked: list[dict] = []
    with FakeOpenAIServer(_walking_server(answers, asked, collapsed)) as server:
        backend = OpenAIBackend(server.base_url, "test-model")
        backend.server = "llamacpp"
        ask = ChatRequest.chat([{"role": "user", "content": "How hard, 0-100?"}], choices=SCORES, rank=True)
        [out] = backend.generate([ask])
    probs = choice_probabilities(out.text)
    assert abs(expected_value(probs, [float(s) for s in SCORES]) - exact) < 0.5
    assert abs(probs[SCORES.index("10")] - answers["10"]) < 0.01
    assert asked[0]["max_tokens"] == 3 and all(b["max_tokens"] == 2 for b in asked[1:] if '"100"' not in b["grammar"])
