"""HTTP pieces of the openai backend that the request path (:mod:`evolforge.llm.backends.openai.client`) and
the batch path (:mod:`evolforge.llm.backends.openai.batch`) share: which statuses are retried or fatal, reading a chat
completion and a ``Retry-After`` header out of a response, the API key (from the environment, never shown),
even pacing, and the event loop that is stepped in the caller's thread.

>>> parse_retry_after("2.5"), parse_retry_after("-3"), parse_retry_after("soon")
(2.5, 0.0, None)
>>> parse_completion(b'{"choices": [{"message": {"content": " hi "}, "finish_reason": "stop"}]}').text
'hi'
>>> preview(b""), preview(b"x" * 300)[-4:]
('(empty body)', "...'")
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Iterator

import orjson

from evolforge.config.roles import Role
from evolforge.llm.types import ERROR_CHARS, Completion

PREVIEW_CHARS = 200  # how much of a failing response body a message quotes
FATAL_STATUSES = {401, 403, 404}  # every request would fail the same way
RETRY_STATUSES = {408, 409, 429}  # plus 5xx
MIN_THROTTLE_WAIT_S = 0.5  # the least a 429 waits before its retry, whatever backoff_s and Retry-After say
# How servers word "prompt + max_tokens exceeds the context" in a 400 (vLLM, OpenAI, TGI, llama.cpp).
TOO_LONG = re.compile(r"context.length|maximum context|max_model_len|too long|too many tokens"
                      r"|exceeds? the (?:model|context)", re.IGNORECASE)
Finished = list[tuple[int, Completion]]


class LLMRequestError(RuntimeError):
    """A fault that concerns every request (bad key, wrong URL or model, a redirect): the run stops."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status that caused it, when one did


class Secret:
    """Holds the API key so that no repr, ``vars()`` dump or traceback local shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"


class Pace:
    """Even pacing to ``per_minute`` units: each acquire of ``n`` units waits until its turn."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / float(per_minute)
        self.next = 0.0

    async def acquire(self, n: float = 1.0) -> None:
        now = time.monotonic()
        start = max(now, self.next)
        self.next = start + n * self.interval
        if start > now:
            await asyncio.sleep(start - now)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key(role: Role) -> str | None:
    """The key from the environment variable the role's ``api_key_env`` names (None when it names none)."""
    if not role.settings.api_key_env:
        return None
    value = os.environ.get(role.settings.api_key_env)
    if not value:
        raise ValueError(
            f"params.yaml roles.{role.name}.api_key_env names the environment variable "
            f"{role.settings.api_key_env}, which is not set (or empty); export it, or drop api_key_env "
            f"for a server that needs no key"
        )
    return value


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (a dependency on Linux): on ``bench/http_client.py``
    aiohttp spends about 15-20% less client CPU per call on it than on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Waker:
    """The future the stepping loop waits on; requests set it when they end."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.waiter = loop.create_future()

    def wake(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)

    def reset(self) -> None:
        self.waiter = self.loop.create_future()


def stepped(serve: Callable[[Finished, Waker], Awaitable[None]]) -> Iterator[Finished]:
    """Run ``serve(done, run)`` on a fresh event loop in the caller's thread, stepped between completions:
    each time it calls ``run.wake()``, yield what it appended to ``done`` since. Stopping the iteration early
    (or an error it raises) cancels it; the error is raised after the completions before it were handed back."""
    loop = event_loop()
    done: Finished = []
    run = Waker(loop)
    main = loop.create_task(serve(done, run))
    main.add_done_callback(lambda _: run.wake())
    try:
        while True:
            loop.run_until_complete(run.waiter)
            run.reset()
            if done:
                batch = done[:]
                done.clear()
                yield batch
            if main.done() and not done:
                main.result()  # raises a fatal error, after the completions before it were handed back
                return
    finally:
        if not main.done():
            main.cancel()
            try:
                loop.run_until_complete(main)
            except (asyncio.CancelledError, LLMRequestError):
                pass
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def parse_completion(raw: bytes) -> Completion | None:
    """A completion from a 200 body, or None when the body is not a chat completion."""
    try:
        return completion_from(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def completion_from(body: Any) -> Completion | None:
    """A completion from a chat completion object, or None when it is not one. A reasoning model's thinking
    that the server sends apart (``reasoning_content``, or ``reasoning``) is kept in ``thinking``; the usage's
    cached prompt tokens (``prompt_tokens_details.cached_tokens``) and thinking tokens
    (``completion_tokens_details.reasoning_tokens``) are read where given."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
        content = message["content"]
        thinking = message.get("reasoning_content") or message.get("reasoning")
        if content is None and isinstance(thinking, str):  # thought until max_tokens, never answered
            content = ""
        if not isinstance(content, str):
            return None
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return Completion(content.strip(), choice.get("finish_reason"),
                          prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                          thinking=thinking.strip() or None if isinstance(thinking, str) else None,
                          thinking_tokens=completion_details.get("reasoning_tokens"),
                          cached_prompt_tokens=details.get("cached_tokens"))
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def setting_hint(raw: bytes, role: str) -> str:
        """The setting to change for a request the server refused as invalid, named where it is written."""
        text = raw[:ERROR_CHARS].decode("utf-8", "replace")
        where = f"roles.{role}"
        if "logits_all" in text:  # llama-cpp-python gives log-probabilities only when started with --logits_all
            return ("; llama-cpp-python's server gives log-probabilities (a ranking reads top_logprobs) only when "
                    "started with --logits_all true: restart it so, or set judge.probabilities: false (the judge "
                    "stage) or verify.probabilities: false (verify), whichever asked")
        if "response_format" in text or "json_schema" in text:
            return (f"; this server does not take response_format json_schema: set {where}.server to what it is "
                    f"(llamacpp: a grammar holds the answers) or {where}.choice_format: none")
        if "structured_outputs" in text or "guided" in text:
            return f"; this server does not take structured_outputs: set {where}.choice_format: response_format"
        for name, setting in (("bad_words", "banned_strings"), ("repeat_penalty", "repetition_penalty"),
                              ("repetition_penalty", "repetition_penalty"),
                              ("grammar", "banned_strings / assistant_prefix"),
                              ("continue_final_message", "assistant_prefix")):
            if name in text:
                return (f"; the server refused {name} ({setting}): set {where}.server to what it is, or remove "
                        f"{setting} from the stage's controls")
        return ""


def server_message(raw: bytes) -> str:
    """A refusal's body whole (whitespace collapsed; up to ERROR_CHARS): what a server says about a request it will
    never take is the user's only clue to the setting to change, and it often ends with it."""
    text = " ".join(raw[: ERROR_CHARS * 4].decode("utf-8", "replace").split())
    return repr(text[:ERROR_CHARS]) if text else "(empty body)"


def preview(raw: bytes) -> str:
    text = " ".join(raw[: PREVIEW_CHARS * 4].decode("utf-8", "replace").split())
    text = text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."
    return repr(text) if text else "(empty body)"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
