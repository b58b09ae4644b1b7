"""A ranking on vLLM's server (judge.probabilities, ``server: vllm``) against a loopback stand-in for vLLM's
``/completions`` with ``logprob_token_ids``: a toy model whose next-token log-probabilities are a fixed function of
the last tokens, so each answer's log-probability is computed here by hand and compared. One request per item for
the five levels, a few for a 0-100 score; a server that dies midway leaves every answered request in the call cache,
and the rerun sends only the rest. The real server: tests/test_vllm_server.py (make test-vllm)."""

from __future__ import annotations

import json
import math

import pytest

from evolforge.config.roles import Role
from evolforge.config.runtime import LLMSettings
from evolforge.llm.backends.openai import ranking
from evolforge.llm.backends.openai.client import OpenAIBackend
from evolforge.llm.cache import CallCache
from evolforge.llm.cached import LLM
from evolforge.llm.requests import ChatRequest
from evolforge.steps.common.difficulty import LEVELS, SCORES
from fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("no_proxy")  # tests/conftest.py
VOCAB = 128


class CharTokenizer:
    """A chat template and one token per character (its code point): enough to put answers after a prompt."""

    eos_token = "$"
    chat_template = "chars"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role'][0]}>{m['content']}$\n" for m in messages)
        return text + ("<a>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % VOCAB for c in text]}


def toy_logprobs(context: list[int]) -> list[float]:
    """The toy model: next-token log-probabilities from the last three tokens."""
    seed = sum((i + 1) * t for i, t in enumerate(context[-3:]))
    logits = [((seed * 31 + t * 7) % 97) / 10 for t in range(VOCAB)]
    top = max(logits)
    norm = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - norm for x in logits]


def vllm_completions(body: dict):
    """vLLM's /completions as the ranking asks it: token prompts, one token, ``logprob_token_ids`` listed."""
    if "prompt" not in body:
        return 404, {"error": "chat requests are not served here"}, {}
    if not body.get("logprob_token_ids") or body.get("logprobs") is None or body.get("max_tokens") != 1:
        return 400, {"error": {"message": f"unexpected body {sorted(body)}"}}, {}
    choices = []
    for n, prompt in enumerate(body["prompt"]):
        logprobs = toy_logprobs(prompt)
        top = max(range(VOCAB), key=logprobs.__getitem__)
        listed = {f"token_id:{t}": logprobs[t] for t in [top, *body["logprob_token_ids"]]}
        choices.append({"index": n, "text": "", "finish_reason": "length",
                        "logprobs": {"tokens": [f"token_id:{top}"], "token_logprobs": [logprobs[top]],
                                     "top_logprobs": [listed], "text_offset": [0]}})
    usage = {"prompt_tokens": sum(map(len, body["prompt"])), "completion_tokens": len(choices)}
    return 200, {"id": "cmpl", "object": "text_completion", "choices": choices, "usage": usage}, {}


def by_hand(request: ChatRequest) -> list[float]:
    """Each choice's log-probability: its characters and the end of the turn, one after another after the prompt."""
    tokenizer = CharTokenizer()
    prompt = tokenizer(tokenizer.apply_chat_template(request.message_dicts, add_generation_prompt=True))["input_ids"]
    scores = []
    for choice in request.choices:
        context, total = list(prompt), 0.0
        for token in tokenizer(choice + "$")["input_ids"]:
            total += toy_logprobs(context)[token]
            context.append(token)
        scores.append(total)
    return scores


def judge_role(server: FakeOpenAIServer) -> Role:
    return Role.from_params("judge", {"backend": "openai", "model": "test-model", "base_url": server.base_url,
                                      "server": "vllm", "max_retries": 1, "backoff_s": 0.01, "concurrency": 2})


def served_llm(server: FakeOpenAIServer, cache: CallCache | None, **settings) -> LLM:
    role = judge_role(server)
    backend = OpenAIBackend.from_role(role)
    backend.tokenizer = CharTokenizer()  # the role's tokenizer: a stand-in that loads nothing
    return LLM(backend, cache, role=role, identity={"served_model": "test-model", "server": "vllm"},
               settings=LLMSettings(**settings))


def rank(question: str, choices) -> ChatRequest:
    return ChatRequest.chat([{"role": "user", "content": question}], choices=tuple(choices), rank=True)


def test_each_answers_log_probability_is_the_sum_along_its_path_in_one_request_per_item():
    levels, scores = rank("How hard is it to sort a list?", LEVELS), rank("Score: sort a list.", SCORES)
    with FakeOpenAIServer(vllm_completions) as server:
        out = served_llm(server, None).generate([levels, scores])
        assert [c.failure_reason for c in out] == [None, None]
        assert json.loads(out[0].text) == pytest.approx(by_hand(levels), abs=2e-6)
        assert json.loads(out[1].text) == pytest.approx(by_hand(scores), abs=2e-6)
        sent = [s["body"] for s in server.seen if s["path"] == "/v1/completions"]
    trie = ranking.request_trie(CharTokenizer(), scores)
    # the levels' nodes in one request; the 101 scores' (root, 9 first digits, 90 second, "10", each whole answer
    # before its end of turn) in requests of PROMPTS_PER_REQUEST
    assert len(sent) == 1 + math.ceil(len(trie.nodes) / ranking.PROMPTS_PER_REQUEST) == 1 + len(ranking.groups(trie))
    assert all(b["max_tokens"] == 1 and b["temperature"] == 0.0 and "echo" not in b and "seed" not in b for b in sent)
    assert all(len(b["logprob_token_ids"]) <= ranking.MAX_TOKEN_IDS for b in sent)
    assert ranking.server_requests(CharTokenizer(), levels) == 1  # what `evolforge plan` counts


def test_the_trie_cuts_the_context_where_an_answer_merges_with_the_prompt():
    trie = ranking.answer_trie([1, 2, 3], [[1, 2, 4, 9], [1, 2, 3, 5, 9]])
    assert trie.context == [1, 2] and trie.paths == [(4, 9), (3, 5, 9)]
    assert trie.nodes == [(), (3,), (3, 5), (4,)]
    assert trie.score({(): {3: -1.0, 4: -2.0}, (3,): {5: -0.5}, (3, 5): {9: -0.25}, (4,): {9: -0.125}}) == \
        [-2.125, -1.75]


def test_a_ranking_stopped_midway_resends_only_the_requests_not_answered(tmp_path):
    """The server dies after two of the score's requests (connections closed, as a killed server's): the item
    fails with every attempt's cause; the rerun, on a healed server, sends only the requests not answered."""
    scores = rank("Score: sort a list.", SCORES)
    batches = len(ranking.groups(ranking.request_trie(CharTokenizer(), scores)))
    assert batches >= 3
    with FakeOpenAIServer(vllm_completions) as server:
        server.fail_after, server.fail_status = 2, None
        [failed] = served_llm(server, CallCache(tmp_path / "c.sqlite"), max_failure_rate=1.0).generate([scores])
        assert failed.failure_reason == "retries_exhausted" and "connection error" in failed.error
        assert server.completions() == 2 + 2  # two answered, then the third and its one retry
        server.fail_after = None
        before = server.completions()
        [ranked] = served_llm(server, CallCache(tmp_path / "c.sqlite")).generate([scores])
        assert not ranked.failed and server.completions() - before == batches - 2
        assert json.loads(ranked.text) == pytest.approx(by_hand(scores), abs=2e-6)
        # the whole ranking is cached now: a third run sends nothing
        again = served_llm(server, CallCache(tmp_path / "c.sqlite")).generate([scores])
        assert again[0].text == ranked.text and server.completions() - before == batches - 2


def test_a_server_that_does_not_list_the_tokens_asked_for_is_refused_at_once():
    def unlisted(body: dict):
        status, answer, headers = vllm_completions(body)
        for choice in answer["choices"]:
            top = choice["logprobs"]["tokens"][0]
            choice["logprobs"]["top_logprobs"] = [{top: choice["logprobs"]["token_logprobs"][0]}]
        return status, answer, headers

    with FakeOpenAIServer(unlisted) as server:
        [failed] = served_llm(server, None, max_failure_rate=1.0).generate([rank("Easy?", LEVELS)])
        assert failed.failure_reason == "request_rejected" and "logprob_token_ids" in failed.error
        assert server.completions() == 1  # not retried: every request would be answered so


def test_the_plan_counts_the_requests_a_ranking_sends():
    """`evolforge plan`: a judge on vLLM's server sends one request for an item's level and four for its score (the
    echo sent 5 and 101); a walk's count is not known before its answers, an in-process role's is not a request."""
    from evolforge.llm.backends.dryrun import requests_sent
    from evolforge.plan import Plan, Row
    from evolforge.plan.table import render

    with FakeOpenAIServer(vllm_completions) as server:
        role = judge_role(server)
    items = [rank(f"Score item {i}.", SCORES) for i in range(3)] + [rank(f"Level {i}?", LEVELS) for i in range(3)]
    per_score = len(ranking.groups(ranking.request_trie(CharTokenizer(), items[0])))
    assert per_score == 4 and requests_sent(role, items, "vllm", CharTokenizer()) == 3 * per_score + 3
    assert requests_sent(role, items, "llamacpp", CharTokenizer()) is None  # walked: as far as the answers lead
    assert requests_sent(role, [ChatRequest.chat([{"role": "user", "content": "hi"}])], "vllm", None) == 1
    assert requests_sent(Role(name="judge", backend="hf", model="m"), items, None, CharTokenizer()) is None
    table = render(Plan(rows=[Row("judge", "judge", "judge score", 3, 900, 0, sent=12),
                              Row("judge", "judge", "judge level", 3, 600, 0, sent=3)], stale=["judge"]))
    assert "3 (12 sent)" in table and "3 (3 sent)" not in table
