"""OpenAI-compatible HTTP backend: ``POST {base_url}/chat/completions`` through ``aiohttp``.

Requests stream through a bounded pool: ``concurrency`` requests in flight over keep-alive connections,
a new one starting as soon as one ends (no batch barriers), each completion handed back as it ends.
The event loop runs in the caller's thread, stepped between completions, so there is no thread hand-off.
aiohttp was chosen over httpx and the ``openai`` package for its cost per call, and runs on uvloop where
installed: on ``bench/http_client.py`` (an instant local server, 64 in flight) httpx spent about 2-3 ms of
client CPU per call, ``AsyncOpenAI`` about 4 ms, aiohttp about 0.15 ms and aiohttp on uvloop about 0.12 ms.

Retries, timeouts, replica health and what each HTTP answer means are the transport's
(:mod:`evolforge.llm.backends.openai.transport`). What cannot be served becomes that item's failed completion,
the others go on:

- ``prompt_too_long``: the prompt plus ``max_tokens`` exceeds ``max_model_len`` (checked before sending
  when the role names a ``tokenizer``), or the server says so in a 400/413/422;
- ``request_rejected``: any other non-retryable 4xx;
- ``retries_exhausted``: every attempt failed (each attempt's cause kept in the message).

Statuses that concern every request -- 401, 403, 404 (bad key, wrong URL or model) and any redirect --
raise :class:`LLMRequestError` at once.

The API key comes from the environment variable a role names (``api_key_env``) and is sent as a
bearer token. It never enters ``identity()`` (so never a cache key), ``repr``, logs or messages; sending
it over plain HTTP to a host that is not loopback logs a warning.

``requests_per_minute`` / ``tokens_per_minute`` pace requests evenly (tokens counted as the prompt's
characters / 4 plus ``max_tokens``, a provider's usual rule of thumb, before the request is sent).

The request body is built in :mod:`evolforge.llm.backends.openai.request`; several servers of one model
(``base_urls``) are routed in :mod:`evolforge.llm.backends.openai.replicas`; a provider's batch API (``batch_api``)
is driven by :mod:`evolforge.llm.backends.openai.batch`; what both paths share (statuses, bodies, the key, pacing,
the event loop) is :mod:`evolforge.llm.backends.openai.http`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import orjson

from evolforge.llm.cache import CallCache
from evolforge.config.backend_settings import TOP_LOGPROBS
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import Capabilities, Completion, collect
from evolforge.llm.backends.openai.batch import BatchJobs
from evolforge.llm.backends.openai.http import Finished, Pace, Waker, api_key, is_loopback, parse_completion, stepped
from evolforge.llm.backends.openai.replicas import Replicas
from evolforge.llm.backends.openai.request import chat_body, too_long_failure, unwrap_answer
from evolforge.llm.backends.openai.transport import Transport
from evolforge.llm.thinking import DEFAULT_TAGS, separate
from evolforge.llm.backends.openai.ranking import rank_on_server, server_requests
from evolforge.llm.backends.openai.walk import walk_on_server

log = logging.getLogger(__name__)


class OpenAIBackend:
    name = "openai"
    thinking_tags: tuple[str, ...] = DEFAULT_TAGS  # a reasoning model's markers (the role's thinking_tags)
    server = "openai"  # what the server is: vllm | llamacpp | openai (evolforge.llm.backends.openai.served)
    top_logprobs = TOP_LOGPROBS  # how many next tokens a ranking's walk asks for (roles.<role>.top_logprobs)

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        revision: str | None = None,
        max_backoff_s: float = 60.0,
        max_model_len: int | None = None,
        tokenizer: Any = None,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        choice_format: str = "response_format",
        batch_api: bool = False,
        batch_poll_s: float = 30.0,
        batch_completion_window: str = "24h",
        batch_max_requests: int = 50_000,
        role_name: str = "?",
        send_seed: bool = True,
    ):
        base_urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not base_urls or not all(base_urls):
            raise ValueError("OpenAIBackend needs a base_url, e.g. http://127.0.0.1:8000/v1")
        if int(concurrency) < 1 or int(max_retries) < 0 or float(timeout_s) <= 0 or float(backoff_s) < 0:
            raise ValueError(
                f"OpenAIBackend: need concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0; "
                f"got {concurrency}, {max_retries}, {timeout_s}, {backoff_s}"
            )
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.base_url = self.base_urls[0]  # the one a batch job goes to
        self.transport = Transport(self.base_urls, model, api_key, float(timeout_s), int(max_retries),
                                   float(backoff_s), float(max_backoff_s), role_name)
        self.model = model
        self.role_name = role_name  # the role, for messages that name its settings
        self.revision = revision
        self.concurrency = int(concurrency)
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.choice_format = choice_format
        self.batch_api = bool(batch_api)
        self.batch_poll_s = float(batch_poll_s)
        self.batch_completion_window = batch_completion_window
        self.batch_max_requests = int(batch_max_requests)
        self.send_seed = bool(send_seed)  # each request's seed in its body (roles.<role>.send_seed)
        if api_key:
            for url in self.base_urls:
                parts = urlsplit(url)
                if parts.scheme == "http" and not is_loopback(parts.hostname):
                    log.warning("%s: the API key is sent over plain HTTP to a host that is not loopback; "
                                "use https unless this network is trusted", url)

    @classmethod
    def from_role(cls, role: Role) -> "OpenAIBackend":
        # the role's server settings were checked where params were parsed (Role.from_params)
        if not role.settings.urls:
            raise ValueError(
                f"params.yaml roles.{role.name}: backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1), "
                f"or base_urls for several replicas of one model"
            )
        tokenizer = None
        if role.settings.tokenizer:
            if not role.max_model_len:
                raise ValueError(f"params.yaml roles.{role.name}.tokenizer counts prompts against max_model_len, "
                                 f"which is not set")
            from evolforge.core.models import load_tokenizer

            tokenizer = load_tokenizer(role.settings.tokenizer, None)
        backend = cls(
            role.settings.urls,
            role.model,
            api_key=api_key(role),
            concurrency=role.settings.concurrency,
            timeout_s=role.settings.timeout_s,
            max_retries=role.settings.max_retries,
            backoff_s=role.settings.backoff_s,
            revision=role.revision,
            max_model_len=role.max_model_len,
            tokenizer=tokenizer,
            requests_per_minute=role.settings.requests_per_minute,
            tokens_per_minute=role.settings.tokens_per_minute,
            choice_format=role.settings.choice_format,
            batch_api=role.settings.batch_api,
            batch_poll_s=role.settings.batch_poll_s,
            batch_completion_window=role.settings.batch_completion_window,
            batch_max_requests=role.settings.batch_max_requests,
            role_name=role.name,
            send_seed=role.settings.send_seed,
        )
        backend.thinking_tags = tuple(role.thinking_tags)
        backend.top_logprobs = role.settings.top_logprobs
        from evolforge.llm.backends.openai.served import in_flight, server_kind

        backend.server = server_kind(role, strict=False)  # asks GET /models once when the role says auto
        backend.concurrency = in_flight(role, backend.server, backend.concurrency)
        return backend

    def identity(self) -> dict[str, Any]:
        """As :func:`evolforge.llm.backends.openai.served.served_model_identity` would pin it, without asking the
        server."""
        ident: dict[str, Any] = {"served_model": self.model}
        if self.revision:
            ident["revision"] = self.revision
        if self.server != "openai":
            ident["server"] = self.server
        return ident

    def __repr__(self) -> str:
        auth = "bearer" if self.transport.key else "none"
        where = f"base_url={self.base_url!r}" if len(self.base_urls) == 1 else f"base_urls={self.base_urls!r}"
        return (
            f"OpenAIBackend({where}, model={self.model!r}, "
            f"concurrency={self.concurrency}, auth={auth}{', batch_api' if self.batch_api else ''})"
        )

    @staticmethod
    def requests_sent(requests: Sequence[ChatRequest], server: str | None, tokenizer: Any) -> int | None:
        """How many HTTP requests ``requests`` cost on a server of kind ``server`` (``evolforge plan``): one each; a
        ranking on vLLM's server, its trie's requests (with the role's ``tokenizer``); None where that is not known
        before the answers come (a walk of top_logprobs goes as far as the answers lead it)."""
        ranked = [r for r in requests if r.rank]
        if not ranked:
            return len(requests)
        if server != "vllm" or tokenizer is None:
            return None
        return len(requests) - len(ranked) + sum(server_requests(tokenizer, r) for r in ranked)

    @property
    def capabilities(self) -> Capabilities:
        """It streams; with ``batch_api`` :meth:`stream` needs the LLM's call cache and the requests' cache
        keys (batch jobs are recorded there, and each line's ``custom_id`` is the request's key); on vLLM's server a
        ranking of several requests keeps each answered one there (:mod:`evolforge.llm.backends.openai.ranking`)."""
        return Capabilities(stream=True, call_cache=self.batch_api or self.server == "vllm")

    # -- many requests --------------------------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Complete every request; results are in input order."""
        return collect(self.stream(requests), len(requests))

    def stream(self, requests: Sequence[ChatRequest], slots: int | None = None, *, cache: CallCache | None = None,
               keys: Sequence[str] | None = None) -> Iterator[Finished]:
        """Yield (index, completion) groups as requests end, ``concurrency`` in flight per server (``slots``
        is the LLM layer's batch size, which a server role does not need: the pool bounds what is in flight).
        With ``batch_api`` the requests go as batch jobs, recorded in ``cache`` under their ``keys``; a ranking on
        vLLM's server keeps its answered requests there.

        Stopping the iteration early (or a fatal status) cancels the requests in flight."""
        if not requests:
            return
        if self.batch_api:
            yield from stepped(lambda done, run: BatchJobs(self).serve(requests, done, run, cache, keys))
        else:
            yield from stepped(lambda done, run: self._serve(requests, done, run, cache, keys))

    async def _serve(self, requests: Sequence[ChatRequest], done: Finished, run: Waker, cache: CallCache | None,
                     keys: Sequence[str] | None) -> None:
        slots = self.concurrency * len(self.base_urls)
        replicas = self.transport.replicas(self.concurrency)
        pending = iter(range(len(requests)))
        paces = [(Pace(self.requests_per_minute), lambda r: 1.0)] if self.requests_per_minute else []
        if self.tokens_per_minute:
            paces.append((Pace(self.tokens_per_minute),
                          lambda r: sum(len(c) for _, c in r.messages) / 4 + r.max_tokens))

        async def worker() -> None:
            for i in pending:
                request = requests[i]
                for pace, cost in paces:
                    await pace.acquire(cost(request))
                done.append((i, await self._complete(session, request, replicas, cache, keys[i] if keys else None)))
                run.wake()

        async with self.transport.session(slots) as session:
            workers = [asyncio.ensure_future(worker()) for _ in range(min(slots, len(requests)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    # -- one request ----------------------------------------------------------------------------

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``request`` to this server (see
        :func:`~evolforge.llm.backends.openai.request.chat_body`)."""
        return chat_body(request, self.model, self.choice_format, self.server, self.send_seed)

    def too_long(self, request: ChatRequest) -> Completion | None:
        """A ``prompt_too_long`` failure when the prompt cannot fit ``max_model_len``; None when it fits or
        nothing is known to check with (see :func:`~evolforge.llm.backends.openai.request.too_long_failure`)."""
        return too_long_failure(request, self.tokenizer, self.max_model_len)

    async def _complete(self, session, request: ChatRequest, replicas: Replicas, cache: CallCache | None,
                        key: str | None) -> Completion:
        refused = self.too_long(request)
        if refused is not None:
            return refused
        if request.rank:  # vLLM's server lists given tokens' log-probabilities, the others a walk of top_logprobs
            if self.server == "vllm":
                return await rank_on_server(self, session, request, replicas, cache, key)
            return await walk_on_server(self, session, request, replicas)
        return await self.transport.post(session, request, replicas, "chat/completions",
                                         orjson.dumps(self.payload(request)), self._chat_answer)

    def _chat_answer(self, request: ChatRequest, raw: bytes) -> Completion | None:
        completion = parse_completion(raw)
        if completion is None:
            return None
        # the thinking out first: a constrained answer's JSON follows it (evolforge.llm.thinking)
        return unwrap_answer(request, separate(completion, self.thinking_tags), self.choice_format, self.server)

