"""Constrained answers: a request with ``choices`` gets one of them from every backend, and the judge
asks with its labels and scores so that small models' answers parse."""

from __future__ import annotations

import polars as pl
import pytest

from evolforge.steps.common.difficulty import LEVELS, SCORES

from evolforge.steps.common.difficulty import judge
from evolforge.core.prompts import PromptLibrary
from evolforge.config.backend_settings import OpenAISettings
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.cached import LLM
from evolforge.llm.choices import ChoiceTrie
from evolforge.llm.keys import request_seed
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.backends.openai.client import OpenAIBackend
from fake_openai import FakeOpenAIServer, chat_body
from test_llm_failures import stub_vllm


def ask(content: str, **kw) -> ChatRequest:
    return ChatRequest.chat([{"role": "user", "content": content}], **kw)


def test_trie_allows_only_what_leads_to_a_choice():
    trie = ChoiceTrie([[1, 2], [1, 2, 3], [4]], stop=0)
    assert trie.allowed(()) == {1, 4}
    assert trie.allowed((1,)) == {2}
    assert trie.allowed((1, 2)) == {0, 3}  # a whole choice may stop or go on to a longer one
    assert trie.allowed((1, 2, 3)) == {0} and trie.allowed((4,)) == {0}
    assert trie.allowed((9,)) == set()
    with pytest.raises(ValueError, match="no tokens"):
        ChoiceTrie([[]], stop=0)


def test_choices_change_the_cache_key_and_seed_only_when_given():
    llm = LLM(FakeBackend(), None, role=Role(name="judge", backend="hf", model="m"))
    plain, constrained = ask("q"), ask("q", choices=("a", "b"))
    assert llm.key(plain) != llm.key(constrained)
    assert llm.key(constrained) != llm.key(ask("q", choices=("a", "c")))
    assert request_seed(plain) != request_seed(constrained)
    # an unconstrained request keeps the key it had before choices existed
    from evolforge.llm.cache import cache_key
    from evolforge.llm.keys import resolved_engine
    assert llm.key(plain) == cache_key(backend="hf", model=llm.identity, engine=resolved_engine(llm.role),
                                       messages=plain.message_dicts, temperature=0.0, top_p=1.0, max_tokens=256,
                                       seed=0, sample_index=0)
    settings = OpenAISettings(base_url="http://127.0.0.1:1/v1")
    server = LLM(FakeBackend(), None, role=Role(name="judge", backend="openai", model="m", settings=settings))
    other = LLM(FakeBackend(), None, role=Role(name="judge", backend="openai", model="m",
                                               settings=OpenAISettings(base_url=settings.base_url, choice_format="none")))
    assert server.key(constrained) != other.key(constrained)  # how a server is held to the choices matters


@pytest.mark.parametrize("choice_format", ["response_format", "structured_outputs", "none"])
def test_openai_sends_the_choices_as_the_role_says_and_reads_the_answer(choice_format):
    def reply(body):
        if "response_format" in body:
            return 200, chat_body('{"answer": "hard"}'), {}
        return 200, chat_body("hard" if "structured_outputs" in body else "It is hard."), {}

    with FakeOpenAIServer(reply) as server:
        backend = OpenAIBackend(server.base_url, "test-model", choice_format=choice_format)
        out = backend.generate([ask("rate it", choices=tuple(LEVELS)), ask("plain")])
        bodies = [s["body"] for s in server.seen if s["body"] is not None]
    constrained = next(b for b in bodies if b["messages"][0]["content"] == "rate it")
    plain = next(b for b in bodies if b["messages"][0]["content"] == "plain")
    assert "response_format" not in plain and "structured_outputs" not in plain
    if choice_format == "response_format":
        schema = constrained["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["answer"]["enum"] == LEVELS
        assert out[0].text == "hard"  # the JSON's answer, ready for the judge's parser
    elif choice_format == "structured_outputs":
        assert constrained["structured_outputs"] == {"choice": LEVELS}
        assert out[0].text == "hard"
    else:
        assert "response_format" not in constrained and "structured_outputs" not in constrained
        assert out[0].text == "It is hard."  # free text, left to the parser


def test_openai_reply_that_ignores_the_schema_falls_back_to_the_text():
    with FakeOpenAIServer(lambda body: (200, chat_body("medium"), {})) as server:
        out = OpenAIBackend(server.base_url, "test-model").generate([ask("rate it", choices=tuple(LEVELS))])
    assert out[0].text == "medium"


def test_vllm_gets_a_guided_choice_per_constrained_request(monkeypatch):
    stub_vllm(monkeypatch)
    from evolforge.llm.backends.vllm.backend import VLLMBackend

    monkeypatch.setattr("evolforge.llm.backends.vllm.backend.model_identity", lambda model, revision: {"name": model})
    backend = VLLMBackend("stub", max_model_len=32)
    constrained = backend.sampling_params(ask("rate it", choices=("easy", "hard")))
    assert constrained["structured_outputs"] == ("structured", {"choice": ["easy", "hard"]})
    assert backend.sampling_params(ask("plain"))["structured_outputs"] is None


def test_judge_asks_with_its_labels_and_scores_unless_told_not_to():
    items = pl.DataFrame({"id": ["a", "b"], "round": [1, 1], "instruction": ["Sort a list.", "Prove it."], "input": ["", ""]})
    for constrain in (True, False):
        fake = FakeBackend(lambda r: "hard" if "label" in r.messages[-1][1] else "70")
        llm = LLM(fake, None, role=Role(name="judge", backend="hf", model="m"))
        out = judge(items, llm, PromptLibrary("prompts"), constrain=constrain)
        assert out["difficulty_level"].to_list() == ["hard", "hard"] and out["difficulty_score"].to_list() == [70.0, 70.0]
        assert out["judge_constrained"].to_list() == [constrain, constrain]
        sent = {r.choices for r in fake.sent}
        assert sent == ({tuple(LEVELS), SCORES} if constrain else {None})
    assert SCORES[0] == "0" and SCORES[-1] == "100" and len(SCORES) == 101


@pytest.mark.slow
def test_hf_answers_are_one_of_the_choices(tiny_model):
    from evolforge.llm.backends.hf.backend import HFBackend

    backend = HFBackend(str(tiny_model))
    numbers = tuple(str(n) for n in range(101))
    requests = [ask(p, choices=choices, max_tokens=8, **sampling)
                for p in ("Name a color.", "Write a haiku about rain.", "How hard is sorting a list?")
                for choices in (tuple(LEVELS), numbers, ("yes", "no"))
                for sampling in ({}, {"temperature": 1.0, "seed": 5})]
    out = backend.generate(requests)
    for request, completion in zip(requests, out):
        assert completion.text in request.choices, (request.choices, completion.text)
        assert completion.finish_reason == "stop"
    # constrained rows share batches with free ones without changing them
    free = [ask("Name a color.", max_tokens=8)]
    assert backend.generate(free + requests[:3])[0] == backend.generate(free)[0]
    # greedy constrained decoding follows the model's own preference among the first tokens
    trie = backend.trie(("yes", "no"))
    assert trie.allowed(()) == {backend.tokenizer.encode(c, add_special_tokens=False)[0] for c in ("yes", "no")}
