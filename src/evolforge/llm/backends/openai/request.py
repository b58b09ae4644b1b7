"""One chat request of an openai role, as the server sees it and as it comes back: the JSON body (sampling,
the request's seed, a constrained request's choices in the role's ``choice_format``, the controls a server
honours), the check that the prompt fits ``max_model_len`` before it is sent, and a constrained reply's
``answer`` read back out of its JSON.

>>> from evolforge.llm.requests import ChatRequest
>>> from evolforge.llm.types import Completion
>>> ask = ChatRequest((("user", "Easy or hard?"),), choices=("easy", "hard"))
>>> chat_body(ask, "m", "structured_outputs")["structured_outputs"]
{'choice': ['easy', 'hard']}
>>> unwrap_answer(ask, Completion('{"answer": "hard"}', "stop"), "response_format").text
'hard'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from evolforge.llm.requests import ChatRequest
from evolforge.llm.keys import request_seed
from evolforge.llm.types import PROMPT_TOO_LONG, Completion, refuse_controls


def chat_body(request: ChatRequest, model: str, choice_format: str) -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` for ``request`` to ``model``."""
    body = {
        "model": model,
        "messages": request.message_dicts,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        # Derived from the whole request, sample_index included, so repeated samples of one prompt
        # differ on servers that honour seeds; 31 bits because some servers reject larger seeds.
        "seed": request_seed(request) & 0x7FFFFFFF,
    }
    if request.choices is not None and choice_format == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "answer", "strict": True, "schema": {
                "type": "object", "properties": {"answer": {"type": "string", "enum": list(request.choices)}},
                "required": ["answer"], "additionalProperties": False}}}
    elif request.choices is not None and choice_format == "structured_outputs":
        body["structured_outputs"] = {"choice": list(request.choices)}
    refuse_controls("openai", [request], "request")
    if request.controls is not None:  # those a server honours
        if request.controls.stop:
            body["stop"] = list(request.controls.stop)
        if request.controls.frequency_penalty is not None:
            body["frequency_penalty"] = request.controls.frequency_penalty
    return body


def prompt_tokens(request: ChatRequest, tokenizer: Any) -> int:
    """The prompt's tokens with the role's tokenizer and chat template."""
    text = tokenizer.apply_chat_template(request.message_dicts, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def too_long_failure(request: ChatRequest, tokenizer: Any, max_model_len: int | None) -> Completion | None:
    """A ``prompt_too_long`` failure when the prompt plus ``max_tokens`` cannot fit ``max_model_len``
    (as servers count it); None when it fits or nothing is known to check with."""
    if tokenizer is None or not max_model_len:
        return None
    n = prompt_tokens(request, tokenizer)
    if n + request.max_tokens <= max_model_len:
        return None
    return Completion.failure(PROMPT_TOO_LONG, f"the prompt is {n} tokens; with max_tokens {request.max_tokens} "
                                               f"it exceeds max_model_len {max_model_len}")


def unwrap_answer(request: ChatRequest, completion: Completion, choice_format: str) -> Completion:
    """A constrained request's answer out of its ``response_format`` JSON (see :func:`answer_field`)."""
    if request.choices is not None and choice_format == "response_format" and not completion.failed:
        return answer_field(completion)
    return completion


def answer_field(completion: Completion) -> Completion:
    """The ``answer`` of a ``response_format`` reply (``{"answer": "hard"}``); the text as it came when it
    is not that JSON (a server that ignored the schema), for the caller's free-text parser."""
    try:
        answer = orjson.loads(completion.text)["answer"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return completion
    return dataclasses.replace(completion, text=answer.strip()) if isinstance(answer, str) else completion
