"""Scores from probabilities on a chat API (``ChatRequest.rank``, judge.probabilities) in a few short generations:
each allowed answer's probability read from the ``top_logprobs`` of chat completions, walking the answers'
tokens, where the OpenAI API, llama.cpp's server and vLLM's all return them.

The allowed answers (the five levels, the numbers 0-100) form a tree of text prefixes. One greedy generation held
to the answers (llama.cpp's server: a grammar) reports, at each token it writes, the model's top next tokens with
their log-probabilities: the distribution at every prefix along its path. A prefix with enough probability
(``EXPAND_AT``) whose answers are not all known yet is walked by one more generation held to the answers that go
on past it (``"5"`` then a digit: the distribution after ``"5"``, its end of turn included). An answer's
probability is the product along its path, times the end of the turn after it where the server lists it (a
leaf, which no answer goes on from, is taken to end there); the answers are then renormalised, as the local
backends' ranking (:mod:`evolforge.llm.ranking`) renormalises theirs. A 0-100 score of a model sure of its
first digit takes 2-4 generations, a level 1-2.

How close this comes to the local ranking: every tokenization of an answer counts (the local ranking scores the
tokenizer's own one); prefixes under ``EXPAND_AT`` are left out (at most that mass per prefix); a token outside
the ``top_logprobs`` the server lists (``roles.<role>.top_logprobs``, default 20, OpenAI's most) is not
seen. For a model whose answers lie within its top tokens, the expected values agree within about a point of
100 (tests/test_llamacpp_server.py). The completion's text is the JSON list of the answers' log-probabilities, as
a ranking's is; an answer never seen gets ``UNSEEN``.

On vLLM's server, which lists the log-probability of any given token (``logprob_token_ids``), the ranking of
:mod:`evolforge.llm.backends.openai.ranking` scores every answer exactly (with the role's tokenizer) instead. The
echo of prompt log-probabilities was tried on llama.cpp's servers: llama-cpp-python's (0.3.36) reports each echoed
token's log-probability one position late for a model whose prompt starts with no BOS token (Qwen), so llama.cpp's
servers are walked.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from evolforge.config.backend_settings import TOP_LOGPROBS
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import Completion

EXPAND_AT = 0.002  # a prefix with this share of the answers' mass is walked when its answers are not known
MAX_GENERATIONS = 24  # per ranking request, at most
UNSEEN = -1000.0  # the log-probability of an answer the walk never saw
# what an end of turn looks like in top_logprobs: llama-cpp-python lists a control token as ""
END_TOKENS = frozenset({"", "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<|end|>", "<end_of_turn>"})


def _literal(text: str) -> str:
    return '"' + "".join(f"\\x{ord(c):02X}" if ord(c) < 0x20 or c in '"\\' else c for c in text) + '"'


def past_grammar(choices: tuple[str, ...], prefix: str) -> str:
    """A GBNF grammar of the answers that start with ``prefix`` and go on past it (the walk's next generation).

    >>> past_grammar(("1", "10", "100", "2"), "1")
    'root ::= "10" | "100"'
    """
    longer = [c for c in choices if c.startswith(prefix) and len(c) > len(prefix)]
    return "root ::= " + " | ".join(_literal(c) for c in longer)


def record_path(content: list[dict[str, Any]], seen: dict[str, dict[str, float]]) -> None:
    """Add the top next tokens at each prefix a generation's ``logprobs.content`` passed through to ``seen``."""
    written = ""
    for entry in content:
        token = entry.get("token")
        if not isinstance(token, str):
            return
        top = seen.setdefault(written, {})
        for alt in entry.get("top_logprobs") or []:
            if isinstance(alt.get("token"), str) and isinstance(alt.get("logprob"), (int, float)):
                top[alt["token"]] = max(float(alt["logprob"]), top.get(alt["token"], -math.inf))
        if isinstance(entry.get("logprob"), (int, float)):
            top[token] = max(float(entry["logprob"]), top.get(token, -math.inf))
        written += token


def end_probability(top: dict[str, float], alone: bool) -> float:
    """The probability that the turn ends at a position, from the top next tokens listed there; where none of them
    is an end of turn, 1 for an answer that nothing goes on from (``alone``), else 0.

    llama-cpp-python's server names every control token ``""`` and keeps one of them per position, the least likely
    listed (its top_logprobs is a mapping from the token's text): after ``"10"`` it lists ``"": -9.6`` where the
    end of turn has -1.3. Where ``""`` is listed, the end of turn is therefore taken as what the listed text tokens
    leave (at least the listed ``""``): every token is listed but the unlikeliest, so that is the end of turn plus
    the unlisted tail.

    >>> round(end_probability({"0": math.log(0.7), "5": math.log(0.02), "": -9.6}, alone=False), 3)
    0.28
    >>> end_probability({"0": math.log(0.7)}, alone=True), end_probability({"0": math.log(0.7)}, alone=False)
    (1.0, 0.0)
    """
    ends = [math.exp(lp) for t, lp in top.items() if t in END_TOKENS]
    if not ends:
        return 1.0 if alone else 0.0
    if "" in top:
        rest = 1.0 - sum(math.exp(lp) for t, lp in top.items() if t not in END_TOKENS)
        return max(sum(ends), rest)
    return sum(ends)


def answer_probabilities(choices: tuple[str, ...], seen: dict[str, dict[str, float]]) -> tuple[dict[str, float],
                                                                                                 dict[str, float]]:
    """(each answer's probability from what the walk has seen, the prefixes still to walk with their probability).

    >>> seen = {"": {"1": math.log(0.5), "2": math.log(0.5)}, "1": {"0": math.log(0.5), "": math.log(0.5)}}
    >>> probs, todo = answer_probabilities(("1", "10", "2"), seen)
    >>> {c: round(p, 3) for c, p in probs.items()}, todo
    ({'1': 0.25, '10': 0.25, '2': 0.5}, {})
    """
    probs = dict.fromkeys(choices, 0.0)
    pending: dict[str, float] = {}
    stack = [("", 1.0)]
    while stack:
        prefix, mass = stack.pop()
        top = seen.get(prefix)
        under = [c for c in choices if c.startswith(prefix)]
        if top is None:
            if len(under) == 1:
                probs[under[0]] += mass  # one answer there: no walk needed (a leaf ends there)
            else:
                pending[prefix] = pending.get(prefix, 0.0) + mass
            continue
        if prefix in probs:
            probs[prefix] += mass * end_probability(top, alone=len(under) == 1)
        for token, lp in top.items():
            if token in END_TOKENS:
                continue
            nxt = prefix + token
            if any(c.startswith(nxt) for c in under):
                stack.append((nxt, mass * math.exp(lp)))
    # EXPAND_AT of the answers' mass (seen or not): a model may give all of them little of its whole vocabulary
    total = sum(probs.values()) + sum(pending.values())
    return probs, {p: m for p, m in pending.items() if m >= EXPAND_AT * total}


def walk_body(request: ChatRequest, model: str, server: str, prefix: str | None, top: int,
              seed: bool = True) -> dict[str, Any]:
    """The chat completion that walks past ``prefix`` (None: from the start), greedy, with its top log-probabilities;
    held to the answers by a grammar on llama.cpp's server, by guided choice on vLLM's, free on the OpenAI API; seed 0
    unless ``seed`` is off (``roles.<role>.send_seed``)."""
    choices = tuple(request.choices or ())
    held = choices if prefix is None else tuple(c for c in choices if c.startswith(prefix) and len(c) > len(prefix))
    # held to the answers, no answer takes more tokens than bytes: the generation stops at its last token, without
    # a step for the end of turn (read, where an answer goes on, from the top tokens listed after it); a free one
    # (the OpenAI API) may open with a space or a quote
    longest = max(len(c.encode("utf-8")) for c in held) + (0 if server in ("llamacpp", "vllm") else 2)
    body: dict[str, Any] = {"model": model, "messages": request.message_dicts, "temperature": 0.0,
                            "max_tokens": longest, "logprobs": True, "top_logprobs": top}
    if seed:
        body["seed"] = 0
    if server == "llamacpp":
        body["grammar"] = "root ::= " + " | ".join(_literal(c) for c in held)
    elif server == "vllm":
        body["structured_outputs"] = {"choice": list(held)}
    return body


async def walk_on_server(backend: Any, session: Any, request: ChatRequest, replicas: Any) -> Completion:
    """The ranking completion of ``request`` from the walk (see the module doc)."""
    choices = tuple(request.choices or ())
    top = int(getattr(backend, "top_logprobs", TOP_LOGPROBS))
    seen: dict[str, dict[str, float]] = {}
    tokens = [0, 0]  # prompt, completion
    walked: set[str | None] = set()
    queue: list[str | None] = [None]
    generations = 0
    while queue and generations < MAX_GENERATIONS:
        prefix = queue.pop(0)
        walked.add(prefix)
        body = orjson.dumps(walk_body(request, backend.model, backend.server, prefix, top, backend.send_seed))

        def parse(_: ChatRequest, raw: bytes) -> Completion | None:
            try:
                answer = orjson.loads(raw)
                content = answer["choices"][0]["logprobs"]["content"]
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                return None
            if not isinstance(content, list):
                return None
            record_path(content, seen)
            usage = answer.get("usage") or {}
            tokens[0] += int(usage.get("prompt_tokens") or 0)
            tokens[1] += int(usage.get("completion_tokens") or 0)
            return Completion("", "stop")

        out = await backend.transport.post(session, request, replicas, "chat/completions", body, parse)
        generations += 1
        if out.failed:
            return out
        if backend.server not in ("llamacpp", "vllm"):
            break  # the OpenAI API cannot be held past a prefix: one generation
        _, todo = answer_probabilities(choices, seen)
        queue = [p for p, _ in sorted(todo.items(), key=lambda kv: -kv[1]) if p not in walked]
    probs, _ = answer_probabilities(choices, seen)
    if not any(probs.values()):
        return Completion.failure("request_rejected", (
            f"roles.{backend.role_name}: none of the allowed answers is among the {top} most likely tokens the server "
            f"listed for a ranking; raise roles.{backend.role_name}.top_logprobs where the server allows it"))
    scores = [math.log(p) if p > 0 else UNSEEN for p in probs.values()]
    return Completion(json.dumps([round(s, 6) for s in scores]), "stop", prompt_tokens=tokens[0],
                      completion_tokens=tokens[1])
