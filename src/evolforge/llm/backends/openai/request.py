"""One chat request of an openai role, as the server sees it and as it comes back: the JSON body (sampling,
the request's seed, a constrained request's choices in the role's ``choice_format``, the controls a server
honours), the check that the prompt fits ``max_model_len`` before it is sent, and a constrained reply's
``answer`` read back out of its JSON.

>>> from evolforge.llm.requests import ChatRequest
>>> from evolforge.llm.types import Completion
>>> ask = ChatRequest((("user", "Easy or hard?"),), choices=("easy", "hard"))
>>> chat_body(ask, "m", "structured_outputs")["structured_outputs"]
{'choice': ['easy', 'hard']}
>>> chat_body(ask, "m", "response_format", server="llamacpp")["grammar"]
'root ::= "easy" | "hard"'
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


def chat_body(request: ChatRequest, model: str, choice_format: str, server: str = "openai",
              seed: bool = True) -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` for ``request`` to ``model`` on a ``server`` (vllm, llamacpp
    or openai: each control and constraint in the parameters that server offers); without ``seed``
    (``roles.<role>.send_seed: false``) it carries none."""
    body = {
        "model": model,
        "messages": request.message_dicts,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
    }
    if seed:
        # Derived from the whole request, sample_index included, so repeated samples of one prompt
        # differ on servers that honour seeds; 31 bits because some servers reject larger seeds.
        body["seed"] = request_seed(request) & 0x7FFFFFFF
    if request.choices is not None and choice_format != "none" and server == "llamacpp":
        # llama.cpp's server takes a GBNF grammar (its response_format has no json_schema): the answer is the choice
        body["grammar"] = choice_grammar(request.choices)
    elif request.choices is not None and choice_format == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "answer", "strict": True, "schema": {
                "type": "object", "properties": {"answer": {"type": "string", "enum": list(request.choices)}},
                "required": ["answer"], "additionalProperties": False}}}
    elif request.choices is not None and choice_format == "structured_outputs":
        body["structured_outputs"] = {"choice": list(request.choices)}
    refuse_controls(f"openai:{server}" if server in ("vllm", "llamacpp") else "openai", [request], "request")
    controls = request.controls
    if controls is not None:  # those the server honours (refused above otherwise)
        if controls.stop and not prefix_grammar(request, server, choice_format):
            body["stop"] = list(controls.stop)
        if controls.frequency_penalty is not None:
            body["frequency_penalty"] = controls.frequency_penalty
        if controls.repetition_penalty is not None:
            body["repeat_penalty" if server == "llamacpp" else "repetition_penalty"] = controls.repetition_penalty
        if server == "vllm":
            if controls.banned_strings:
                body["bad_words"] = list(controls.banned_strings)
            if controls.assistant_prefix is not None:  # the turn the model continues (the text is prefix + rest)
                body["messages"] = [*body["messages"], {"role": "assistant", "content": controls.assistant_prefix}]
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
        elif server == "llamacpp" and (controls.banned_strings or controls.assistant_prefix is not None) \
                and "grammar" not in body:
            # the stop strings after the prefix, in the grammar (see text_grammar); none in it without one
            body["grammar"] = text_grammar(controls.banned_strings, controls.assistant_prefix or "",
                                           controls.stop if controls.assistant_prefix is not None else ())
    return body


def prefix_grammar(request: ChatRequest, server: str, choice_format: str) -> bool:
    """True when llama.cpp's server gets ``request``'s assistant prefix as a grammar (which then holds its stop
    strings: see :func:`text_grammar`)."""
    controls = request.controls
    return (server == "llamacpp" and controls is not None and controls.assistant_prefix is not None
            and (request.choices is None or choice_format == "none"))


def _literal(text: str) -> str:
    """A GBNF string literal."""
    return '"' + "".join(f"\\x{ord(c):02X}" if ord(c) < 0x20 or c in '"\\' else c for c in text) + '"'


def choice_grammar(choices: tuple[str, ...]) -> str:
    """A GBNF grammar whose only sentences are ``choices``.

    >>> choice_grammar(("easy", "hard"))
    'root ::= "easy" | "hard"'
    """
    return "root ::= " + " | ".join(_literal(c) for c in choices)


def _char_class(chars: set[str]) -> str:
    return "".join(f"\\x{ord(c):02X}" if ord(c) < 0x80 and not c.isalnum() else c for c in sorted(chars))


def text_grammar(banned: tuple[str, ...], prefix: str = "", stop: tuple[str, ...] = ()) -> str:
    """A GBNF grammar of every text that starts with ``prefix`` and holds none of ``banned`` (each also after a
    space), and that ends once it has written one of ``stop``: an Aho-Corasick automaton over the banned and
    stop strings, one rule per state that has matched neither; a stop string is the last thing written (the
    caller cuts it off, as a server cuts its ``stop`` strings). Stop strings go in the grammar when it writes a
    prefix: a server applies its ``stop`` parameter to the prefix the grammar wrote too, so ``stop: ["```"]``
    after ``assistant_prefix: "```Optimized Method\\n"`` would end every answer at its own opening fence; in the
    grammar they hold after the prefix only, as the local backends and vLLM's server apply them.

    >>> print(text_grammar(("ab",)))
    root ::= s0
    s0 ::= "" | [^ab] s0 | "a" s1 | [b] s0
    s1 ::= "" | [^ab] s0 | "a" s1
    >>> print(text_grammar((), "go", ("!",)))
    root ::= "go" s0
    s0 ::= "" | [^\\x21] s0 | "!"
    """
    kinds = {b: "banned" for b in banned if b}
    kinds.update({s: "stop" for s in stop if s and s not in kinds})  # banned wins: it is never written
    patterns = sorted(kinds)
    goto, fail, ends = _automaton(patterns, kinds)
    alphabet = {c for p in patterns for c in p}

    def step(state: int, c: str) -> int:
        while state and c not in goto[state]:
            state = fail[state]
        return goto[state].get(c, 0)

    rules = ["root ::= " + (_literal(prefix) + " " if prefix else "") + "s0"]
    for state in range(len(goto)):
        if ends[state]:
            continue
        moves: dict[int, list[str]] = {}
        for c in sorted(alphabet):
            target = step(state, c)
            if "banned" not in ends[target]:
                moves.setdefault(target, []).append(c)
        alternatives = ['""', f"[^{_char_class(alphabet)}] s0"] if alphabet else ['""', "[^\\x00] s0"]
        for target, chars in sorted(moves.items()):
            if target == 0:
                continue
            follow = "" if ends[target] else f" s{target}"  # a stop string completed: the text ends
            alternatives.append(f"{_literal(chars[0])}{follow}" if len(chars) == 1
                                else f"[{_char_class(set(chars))}]{follow}")
        to_root = [c for c in moves.get(0, [])]
        if to_root:
            alternatives.append(f"[{_char_class(set(to_root))}] s0")
        rules.append(f"s{state} ::= " + " | ".join(alternatives))
    return "\n".join(rules)


def _automaton(patterns: list[str], kinds: dict[str, str]) -> tuple[list[dict[str, int]], list[int], list[set[str]]]:
    """The Aho-Corasick automaton of ``patterns``: its moves, failure links and, per state, the kinds of the
    patterns it has just completed."""
    goto: list[dict[str, int]] = [{}]
    ends: list[set[str]] = [set()]  # the kinds of the strings a state has just completed
    for pattern in patterns:
        state = 0
        for c in pattern:
            if c not in goto[state]:
                goto.append({})
                ends.append(set())
                goto[state][c] = len(goto) - 1
            state = goto[state][c]
        ends[state].add(kinds[pattern])
    fail = [0] * len(goto)
    order = list(goto[0].values())
    for state in order:  # breadth first: a state's failure link is known before its children's
        for c, child in goto[state].items():
            f = fail[state]
            while f and c not in goto[f]:
                f = fail[f]
            fail[child] = goto[f].get(c, 0) if goto[f].get(c, 0) != child else 0
            ends[child] |= ends[fail[child]]
            order.append(child)
    return goto, fail, ends


def cut_at_stop(text: str, prefix: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` (``prefix`` followed by what the model wrote, as a grammar writes it) cut before the first of
    ``stop`` after the prefix, and whether one was found.

    >>> cut_at_stop("```Optimized Method\\nStep 1: list.\\n```", "```Optimized Method\\n", ("```",))
    ('```Optimized Method\\nStep 1: list.\\n', True)
    """
    head = prefix.lstrip()  # the server's text comes stripped
    start = len(head) if text.startswith(head) else 0
    found = [i for i in (text.find(s, start) for s in stop if s) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


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


def unwrap_answer(request: ChatRequest, completion: Completion, choice_format: str,
                  server: str = "openai") -> Completion:
    """A constrained request's answer out of its ``response_format`` JSON (see :func:`answer_field`); a vLLM
    continuation of an ``assistant_prefix`` with the prefix put back before it (the text is prefix + rest); a
    llama.cpp grammar's text with the stop string it ended on cut off (:func:`text_grammar`)."""
    if completion.failed:
        return completion
    if request.choices is not None and choice_format == "response_format" and server != "llamacpp":
        return answer_field(completion)
    prefix = request.controls.assistant_prefix if request.controls is not None else None
    if server == "vllm" and prefix is not None and request.choices is None:
        return dataclasses.replace(completion, text=(prefix + completion.text).strip())
    if prefix is not None and prefix_grammar(request, server, choice_format) and request.controls.stop:
        text, stopped = cut_at_stop(completion.text, prefix, request.controls.stop)
        if stopped:  # the grammar wrote the stop string and ended there: the server's stop, as the text says
            return dataclasses.replace(completion, text=text.strip(), finish_reason="stop")
    return completion


def answer_field(completion: Completion) -> Completion:
    """The ``answer`` of a ``response_format`` reply (``{"answer": "hard"}``); the text as it came when it
    is not that JSON (a server that ignored the schema), for the caller's free-text parser."""
    try:
        answer = orjson.loads(completion.text)["answer"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return completion
    return dataclasses.replace(completion, text=answer.strip()) if isinstance(answer, str) else completion
