"""Scores from probabilities on vLLM's server (``ChatRequest.rank``, judge.probabilities): each allowed answer's
log-probability after the prompt, as the local backends rank it (evolforge.llm.ranking), in one request per item,
or a few. The other server kinds walk the chat API's top_logprobs instead (:mod:`evolforge.llm.backends.openai.walk`).

Each answer is put after the prompt with the role's ``tokenizer`` (the served model's chat template): the prompt,
the answer and the end of the assistant's turn, as tokens. The answers' tokens form a trie. Every node an answer
goes on from -- the prompt itself, a shared first token (``"very"`` of ``"very easy"``, ``"1"`` of ``"10"``),
each whole answer (its end of turn follows) -- is one prompt of ``POST {base_url}/completions``: the prompt's
tokens and the node's, one token generated, and vLLM's ``logprob_token_ids`` listing, at that generated position,
the log-probability of every token that follows the node. An answer's log-probability is the sum along its path:
what the in-process backends sum (the answer's tokens and the end of the turn), read where vLLM's prefix cache
serves the prompt, which every prompt of an item starts with. The echo it replaces (one ``/completions`` request per
answer, ``echo`` with the prompt's log-probabilities) prefilled the whole prompt once per answer, 101 times for a
0-100 score: vLLM reads no prefix cache for a request that asks for prompt log-probabilities.

An item's prompts go in requests of at most ``PROMPTS_PER_REQUEST`` prompts and ``MAX_TOKEN_IDS`` listed tokens
(vLLM's bound); each is retried as a chat request is. With a call cache, every answered request of an item that
takes several is kept there at once, under a key derived from the item's (never a request's own key), so a ranking
stopped midway (a server that died, a killed stage) resends only the requests not answered. The completion's text
is the JSON list of the answers' log-probabilities, in the order of the choices. The OpenAI API lists no
log-probabilities of given tokens, so an ``openai`` server kind is refused before any request
(evolforge.llm.types.refuse_ranking).

>>> trie = answer_trie([1, 2], [[1, 2, 7, 9], [1, 2, 7, 8, 9], [1, 2, 5, 9]])
>>> trie.nodes, trie.follow[(7,)]
([(), (5,), (7,), (7, 8)], [8, 9])
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from evolforge.llm.cache import CallCache
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import REQUEST_REJECTED, Completion

PROMPTS_PER_REQUEST = 32  # trie nodes per /completions request: a level's 7 in one, a 0-100 score's 102 in 4
MAX_TOKEN_IDS = 128  # vLLM's bound on logprob_token_ids per request (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS)
PART_MODEL = "ranking-part"  # the model column of a ranking's kept requests in the call cache


def rendered(tokenizer: Any, request: ChatRequest, choice: str) -> tuple[str, str]:
    """(the prompt as the chat template renders it for the assistant's turn, the choice and the turn's end)."""
    messages = request.message_dicts
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": choice}], tokenize=False)
    if full.startswith(prompt + choice):
        tail = full[len(prompt) + len(choice):]
        end = tail.strip().split("\n")[0].strip() if tail.strip() else (tokenizer.eos_token or "")
    else:  # a template that renders the answer otherwise: the choice and the tokenizer's end of text
        end = tokenizer.eos_token or ""
    return prompt, choice + end


Logprobs = dict[tuple[int, ...], dict[int, float]]  # node -> the log-probability of each token after it


@dataclass(frozen=True)
class Answer:
    """What one request answered: each of its nodes' log-probabilities, and the prompt tokens the server counted."""

    logprobs: Logprobs
    prompt_tokens: int


@dataclass(frozen=True)
class Trie:
    """The answers of one ranking request as tokens: ``context`` (what every prompt starts with: the rendered
    prompt), each answer's ``paths`` after it, the ``nodes`` answers go on from (the root ``()`` first) and the
    tokens that ``follow`` each node."""

    context: list[int]
    paths: list[tuple[int, ...]]
    nodes: list[tuple[int, ...]]
    follow: dict[tuple[int, ...], list[int]]

    def score(self, logprobs: Logprobs) -> list[float]:
        """Each answer's log-probability: the sum along its path of each token's after the node before it."""
        return [sum(logprobs[path[:j]][token] for j, token in enumerate(path)) for path in self.paths]


def answer_trie(context: list[int], answers: list[list[int]]) -> Trie:
    """The trie of ``answers`` (each the whole text's tokens: prompt, answer, end of turn) after ``context`` (the
    prompt's tokens). Where an answer's first token merged with the prompt's last, the context is cut back to what
    every answer starts with, so every path holds its answer's own tokens."""
    shared = len(context)
    for tokens in answers:
        same = next((i for i, (a, b) in enumerate(zip(context, tokens)) if a != b), min(len(context), len(tokens)))
        shared = min(shared, same)
    paths = [tuple(tokens[shared:]) for tokens in answers]
    follow: dict[tuple[int, ...], list[int]] = {}
    for path in paths:
        for j, token in enumerate(path):
            after = follow.setdefault(path[:j], [])
            if token not in after:
                after.append(token)
    return Trie(list(context[:shared]), paths, sorted(follow, key=lambda node: (len(node) > 0, node)),
                {node: sorted(tokens) for node, tokens in follow.items()})


def request_trie(tokenizer: Any, request: ChatRequest) -> Trie:
    """The trie of ``request``'s choices, tokenized as the served model reads them (no special tokens added: the
    chat template writes them)."""
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt = rendered(tokenizer, request, "")[0]
    return answer_trie(ids(prompt), [ids(prompt + rendered(tokenizer, request, c)[1]) for c in request.choices or ()])


def groups(trie: Trie) -> list[list[tuple[int, ...]]]:
    """The trie's nodes in requests: ``PROMPTS_PER_REQUEST`` at most, listing ``MAX_TOKEN_IDS`` tokens at most."""
    out: list[list[tuple[int, ...]]] = []
    listed: set[int] = set()
    for node in trie.nodes:
        wanted = listed | set(trie.follow[node])
        if not out or len(out[-1]) >= PROMPTS_PER_REQUEST or len(wanted) > MAX_TOKEN_IDS:
            out.append([])
            wanted = set(trie.follow[node])
        out[-1].append(node)
        listed = wanted
    return out


def server_requests(tokenizer: Any, request: ChatRequest) -> int:
    """How many ``/completions`` requests the ranking of ``request`` sends (``evolforge plan``)."""
    return len(groups(request_trie(tokenizer, request)))


def body(model: str, trie: Trie, nodes: list[tuple[int, ...]]) -> bytes:
    """One request of ``nodes``: a prompt each, one greedy token, the log-probabilities of what follows them."""
    listed = sorted({t for node in nodes for t in trie.follow[node]})
    return orjson.dumps({"model": model, "prompt": [trie.context + list(node) for node in nodes], "max_tokens": 1,
                         "temperature": 0.0, "logprobs": 1, "logprob_token_ids": listed,
                         "return_tokens_as_token_ids": True})


def read_answer(raw: bytes, trie: Trie, nodes: list[tuple[int, ...]]) -> Answer | str | None:
    """Each node's listed log-probabilities from a ``/completions`` answer, with the prompt tokens the server
    counted; None when the body is not a completion (retried); a str when it is one that lists no
    log-probability of a token asked for (a server without ``logprob_token_ids``: every request would fail so)."""
    try:
        answer = orjson.loads(raw)
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        listed = [{int(str(k).rsplit(":", 1)[-1]): float(v) for k, v in c["logprobs"]["top_logprobs"][0].items()}
                  for c in choices]
        counted = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if len(listed) != len(nodes):
        return None
    missing = sorted({t for node, got in zip(nodes, listed) for t in trie.follow[node] if t not in got})
    if missing:
        return (f"the server listed no log-probability for tokens {missing[:8]} it was asked for "
                f"(logprob_token_ids, vLLM's server from 0.32)")
    return Answer({node: {t: got[t] for t in trie.follow[node]} for node, got in zip(nodes, listed)}, counted)


class Parts:
    """An item's answered requests in the call cache (none without one): each under the item's key and its nodes."""

    def __init__(self, cache: CallCache | None, key: str | None):
        self.cache, self.key = (cache, key) if cache is not None and key is not None else (None, None)

    def _key(self, nodes: list[tuple[int, ...]]) -> str:
        return hashlib.sha256(f"{self.key}\0ranking-part\0{json.dumps(nodes)}".encode()).hexdigest()

    def get(self, nodes: list[tuple[int, ...]]) -> Logprobs | None:
        if self.cache is None:
            return None
        stored = self.cache.get_many([self._key(nodes)])
        if not stored:
            return None
        listed = json.loads(next(iter(stored.values()))[0])
        return {tuple(node): {int(t): v for t, v in values.items()} for node, values in zip(nodes, listed)}

    def put(self, nodes: list[tuple[int, ...]], found: Logprobs) -> None:
        if self.cache is not None:
            self.cache.put_many([(self._key(nodes), json.dumps([found[n] for n in nodes]), "stop", PART_MODEL)])


def _reader(trie: Trie, nodes: list[tuple[int, ...]], answered: list[Answer]):
    """The transport's parse of one request's answer: kept in ``answered``; None (retried) when malformed."""
    def parse(_: ChatRequest, raw: bytes) -> Completion | None:
        found = read_answer(raw, trie, nodes)
        if isinstance(found, Answer):
            answered.append(found)
            return Completion("", "stop")
        return None if found is None else Completion.failure(REQUEST_REJECTED, found)

    return parse


async def rank_on_server(backend: Any, session: Any, request: ChatRequest, replicas: Any,
                         cache: CallCache | None = None, key: str | None = None) -> Completion:
    """The ranking completion of ``request`` from ``backend``'s server (see the module doc); with ``cache`` and the
    request's ``key``, an item of several requests keeps each answered one there."""
    if backend.tokenizer is None:
        return Completion.failure(REQUEST_REJECTED, (
            f"a ranking (judge.probabilities, verify.probabilities) on vLLM's server needs "
            f"roles.{backend.role_name}.tokenizer (the served model's tokenizer with its chat template, and "
            f"max_model_len) to put each answer after the prompt"))
    trie = request_trie(backend.tokenizer, request)
    batches = groups(trie)
    parts = Parts(cache, key) if len(batches) > 1 else Parts(None, None)
    logprobs: Logprobs = {}
    sent = 0  # prompt tokens the server counted
    for nodes in batches:
        kept = parts.get(nodes)
        if kept is not None:
            logprobs.update(kept)
            continue
        answered: list[Answer] = []
        out = await backend.transport.post(session, request, replicas, "completions", body(backend.model, trie, nodes),
                                           _reader(trie, nodes, answered))
        if out.failed:
            return out
        parts.put(nodes, answered[-1].logprobs)
        logprobs.update(answered[-1].logprobs)
        sent += answered[-1].prompt_tokens
    return Completion(json.dumps([round(s, 6) for s in trie.score(logprobs)]), "stop", prompt_tokens=sent,
                      completion_tokens=0)
