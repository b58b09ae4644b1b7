"""Scores from probabilities on vLLM's server (``ChatRequest.rank``, judge.probabilities): each allowed answer's
log-probability after the prompt, as the local backends rank it (evolforge.llm.ranking), read from the
server's prompt log-probabilities. The other server kinds walk the chat API's top_logprobs instead
(:mod:`evolforge.llm.backends.openai.walk`): llama-cpp-python's server (0.3.36) echoes each prompt token's
log-probability one position late when the prompt has no BOS token (Qwen), and the OpenAI API echoes none.

For each choice, ``POST {base_url}/completions`` with the chat prompt rendered by the role's ``tokenizer``
(the served model's chat template), the choice and the end of the assistant's turn, ``echo: true`` and
``logprobs: 1``: vLLM's server and llama.cpp's (llama-cpp-python started with ``--logits_all true``) answer
with the log-probability of every prompt token; the choice's are the last ones, as many as the choice and the
turn's end add to the rendered prompt (counted with the tokenizer). One request per choice (101 for a 0-100
score), each retried as a chat request is; the completion's
text is the JSON list of the choices' log-probabilities. The OpenAI API echoes no prompt log-probabilities,
so an ``openai`` server kind is refused before any request (evolforge.llm.types.refuse_ranking).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import REQUEST_REJECTED, Completion


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


def answer_tokens(tokenizer: Any, prompt: str, answer: str) -> int:
    """How many tokens ``answer`` adds after ``prompt`` (special tokens such as the turn's end parsed)."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count(prompt + answer) - count(prompt)


def echo_logprob(raw: bytes, n: int) -> tuple[float, int] | None:
    """(the summed log-probability of the last ``n`` echoed prompt tokens, the prompt's tokens) from a
    ``/completions`` answer with ``echo`` and ``logprobs``; None when the body is not one. The prompt's tokens
    are counted from its end: a token listed past the prompt (the one generated: vLLM lists it, llama-cpp-python
    does not) is left out, and so are the offsets, which servers count over the text without special tokens."""
    try:
        body = orjson.loads(raw)
        values = body["choices"][0]["logprobs"]["token_logprobs"]
        prompt_tokens = int((body.get("usage") or {}).get("prompt_tokens") or len(values))
        end = min(len(values), prompt_tokens)
        picked = values[end - n:end] if 0 < n <= end else []
        if not picked or any(v is None for v in picked):
            return None
        return float(sum(picked)), prompt_tokens
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None


async def rank_on_server(backend: Any, session: Any, request: ChatRequest, replicas: Any) -> Completion:
    """The ranking completion of ``request`` from ``backend``'s server (see the module doc)."""
    tokenizer = backend.tokenizer
    if tokenizer is None:
        return Completion.failure(REQUEST_REJECTED, (
            f"a ranking (judge.probabilities, verify.probabilities) on vLLM's server needs "
            f"roles.{backend.role_name}.tokenizer (the served model's tokenizer with its chat template, and "
            f"max_model_len) to put each answer after the prompt"))
    scores: list[float] = []
    prompt_tokens = 0
    for choice in request.choices or ():
        prompt, answer = rendered(tokenizer, request, choice)
        body = orjson.dumps({"model": backend.model, "prompt": prompt + answer, "max_tokens": 1, "temperature": 0.0,
                             "echo": True, "logprobs": 1})
        found: dict[str, tuple[float, int]] = {}

        def parse(_: ChatRequest, raw: bytes, n: int = answer_tokens(tokenizer, prompt, answer),
                  found: dict[str, tuple[float, int]] = found) -> Completion | None:
            value = echo_logprob(raw, n)
            if value is None:
                return None
            found["value"] = value
            return Completion("", "stop")

        out = await backend.transport.post(session, request, replicas, "completions", body, parse)
        if out.failed:
            return out
        logprob, echoed = found["value"]
        scores.append(logprob)
        prompt_tokens += echoed
    return Completion(json.dumps(scores), "stop", prompt_tokens=prompt_tokens, completion_tokens=0)
