"""OpenAI-compatible HTTP backend: ``POST {base_url}/chat/completions``, standard library only.

Requests run ``concurrency`` at a time on a thread pool and come back in input order. Each attempt has
a timeout (``timeout_s``, per socket operation). HTTP 408, 429 and 5xx, connection errors, timeouts and
malformed bodies are retried up to ``max_retries`` times, waiting ``backoff_s`` doubling up to
``max_backoff_s`` (or what the server's ``Retry-After`` asks for); any other status fails at once.
A request that still fails raises :class:`LLMRequestError`, and the rest of the batch is abandoned.

The API key comes from the environment variable a role names (``api_key_env``) and is sent as a
bearer token. It never enters ``identity()`` (so never a cache key), ``repr``, logs or error messages.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any, Sequence

from evolforge.llm import ChatRequest, Completion, Role, request_seed

log = logging.getLogger(__name__)

PREVIEW_CHARS = 200  # how much of a failing response body an error message quotes


class LLMRequestError(RuntimeError):
    """A chat completion request failed for good: a non-retryable status, or its retries ran out."""


class _Abandoned(LLMRequestError):
    """Raised by requests dropped because another request of the same batch failed."""


class _Failure(Exception):
    """One failed attempt: what went wrong, whether another attempt may help, and any server-set delay."""

    def __init__(self, cause: str, retryable: bool, retry_after: float | None = None):
        super().__init__(cause)
        self.cause = cause
        self.retryable = retryable
        self.retry_after = retry_after


class _Secret:
    """Holds the API key so that no repr, ``vars()`` dump or traceback local shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        revision: str | None = None,
        max_backoff_s: float = 60.0,
    ):
        if not base_url:
            raise ValueError("OpenAIBackend needs a base_url, e.g. http://127.0.0.1:8000/v1")
        if int(concurrency) < 1 or int(max_retries) < 0 or float(timeout_s) <= 0:
            raise ValueError(
                f"OpenAIBackend: need concurrency >= 1, max_retries >= 0, timeout_s > 0; "
                f"got {concurrency}, {max_retries}, {timeout_s}"
            )
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.revision = revision
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._key = _Secret(api_key) if api_key else None
        # Our own opener: honours http(s)_proxy / no_proxy like urlopen, without sharing global state.
        self._opener = urllib.request.build_opener()

    @classmethod
    def from_role(cls, role: Role) -> "OpenAIBackend":
        if not role.base_url:
            raise ValueError(
                f"params.yaml roles.{role.name}: backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        api_key = None
        if role.api_key_env:
            api_key = os.environ.get(role.api_key_env)
            if not api_key:
                raise ValueError(
                    f"params.yaml roles.{role.name}.api_key_env names the environment variable "
                    f"{role.api_key_env}, which is not set (or empty); export it, or drop api_key_env "
                    f"for a server that needs no key"
                )
        return cls(
            role.base_url,
            role.model,
            api_key=api_key,
            concurrency=role.concurrency,
            timeout_s=role.timeout_s,
            max_retries=role.max_retries,
            backoff_s=float(role.extra.get("backoff_s", 1.0)),
            revision=role.revision,
        )

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"name": self.model, "base_url": self.base_url}
        if self.revision:
            ident["revision"] = self.revision
        return ident

    def __repr__(self) -> str:
        auth = "bearer" if self._key else "none"
        return (
            f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, "
            f"concurrency={self.concurrency}, auth={auth})"
        )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Complete every request, ``concurrency`` at a time; results are in input order."""
        if not requests:
            return []
        stop = threading.Event()  # set on the first failure so no worker starts another attempt
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="openai")
        try:
            futures = [pool.submit(self._complete, r, stop) for r in requests]
            for future in as_completed(futures):
                if future.exception() is not None:
                    break
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
        errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        if errors:
            # report a real failure, not one of the requests abandoned because of it
            raise next((e for e in errors if not isinstance(e, _Abandoned)), errors[0])
        return [f.result() for f in futures]

    # -- one request ----------------------------------------------------------------------------

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": request.message_dicts,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            # Derived from the whole request, sample_index included, so repeated samples of one prompt
            # differ on servers that honour seeds; 31 bits because some servers reject larger seeds.
            "seed": request_seed(request) & 0x7FFFFFFF,
        }

    def _complete(self, request: ChatRequest, stop: threading.Event) -> Completion:
        body = json.dumps(self.payload(request), ensure_ascii=False).encode("utf-8")
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            if stop.is_set():
                raise _Abandoned(f"POST {self.url} (model {self.model!r}): abandoned, another request failed")
            try:
                return self._attempt(body)
            except _Failure as failure:
                if not failure.retryable or attempt == attempts:
                    stop.set()
                    raise LLMRequestError(self._redact(
                        f"POST {self.url} (model {self.model!r}) failed after {attempt} attempt"
                        f"{'s' if attempt > 1 else ''}: {failure.cause}"
                    )) from None  # the chained traceback would only repeat the cause
                delay = self._delay(attempt, failure.retry_after)
                log.warning(self._redact(
                    f"{self.url} (model {self.model!r}) attempt {attempt}/{attempts}: {failure.cause}; "
                    f"retrying in {delay:.2f}s"
                ))
                stop.wait(delay)  # wakes early when the batch is abandoned
        raise AssertionError("unreachable")  # the loop returns or raises

    def _attempt(self, body: bytes) -> Completion:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "evolforge"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.value}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            status = err.code
            retryable = status in (408, 429) or status >= 500
            retry_after = _retry_after(err.headers) if retryable else None
            raise _Failure(f"HTTP {status}: {_preview(_read_quietly(err))}", retryable, retry_after) from None
        except TimeoutError:
            raise _Failure(f"no response within {self.timeout_s:g}s", True) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise _Failure(f"no response within {self.timeout_s:g}s", True) from None
            raise _Failure(f"connection error: {err.reason}", True) from None
        except (http.client.HTTPException, OSError) as err:  # dropped connections, truncated bodies
            raise _Failure(f"connection error: {type(err).__name__}: {err}", True) from None
        return _parse(raw)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        # Jitter so that workers throttled together do not all come back together.
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(0.5, 1.0)

    def _redact(self, message: str) -> str:
        # A server may echo the key back (e.g. in a 401 body); never pass it on.
        return message.replace(self._key.value, "<redacted>") if self._key is not None else message


def _parse(raw: bytes) -> Completion:
    try:
        choice = json.loads(raw)["choices"][0]
        content = choice["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"content is {type(content).__name__}")
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        reason = "not JSON" if isinstance(err, ValueError) else "no choices[0].message.content"
        raise _Failure(f"malformed response body ({reason}): {_preview(raw)}", True) from None
    return Completion(content.strip(), finish)


def _read_quietly(err: urllib.error.HTTPError) -> bytes:
    try:
        return err.read()
    except (OSError, http.client.HTTPException):
        return b""


def _preview(raw: bytes) -> str:
    text = " ".join(raw[: PREVIEW_CHARS * 4].decode("utf-8", "replace").split())
    text = text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."
    return repr(text) if text else "(empty body)"


def _retry_after(headers: Message | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or unreadable."""
    value = headers.get("Retry-After") if headers is not None else None
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
