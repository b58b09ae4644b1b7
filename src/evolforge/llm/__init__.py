"""The LLM layer: chat requests in, completions out, in the same order, through the call cache.

Every stage talks to models the same way::

    role = Role.from_params("evolver", params["roles"]["evolver"])
    llm = open_llm(role, cache=CallCache())
    texts = llm.complete([role.request([{"role": "user", "content": prompt}]) for prompt in prompts])
    llm.stats  # {"calls": ..., "cache_hits": ...}

Backends (``role.backend``): ``hf`` (transformers in-process), ``vllm`` (vLLM offline engine, GPU extra)
and ``openai`` (any OpenAI-compatible ``/v1/chat/completions`` server). Tests use ``FakeBackend``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from tqdm.auto import tqdm

from evolforge.cache import CallCache, cache_key
from evolforge.roles import ChatRequest, Role  # noqa: F401  (part of the LLM layer's API)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None  # "stop" | "length" | None when the backend does not say
    cached: bool = False


class Backend(Protocol):
    """What a backend provides. ``generate`` keeps the order of its input. A backend may also offer
    ``stream(requests, slots)``, yielding lists of (index, completion) as requests finish (see hf)."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...


def request_seed(request: ChatRequest) -> int:
    """A 60-bit sampling seed derived from the whole request (messages, sampling, seed, sample index),
    so a request samples the same tokens whichever batch it lands in."""
    blob = json.dumps(dataclasses.asdict(request), sort_keys=True, ensure_ascii=False)
    return int(hashlib.sha256(blob.encode("utf-8")).hexdigest()[:15], 16)


class LLM:
    """A backend behind the call cache: looks every request up, generates only the misses in batches,
    and commits finished completions as they come (a whole batch at a time, or each one as soon as it
    ends for backends that stream)."""

    def __init__(self, backend: Backend, cache: CallCache | None, batch_size: int = 8, desc: str = "generate"):
        self.backend = backend
        self.cache = cache
        self.batch_size = max(1, int(batch_size))
        self.desc = desc
        self.stats = {"calls": 0, "cache_hits": 0}
        self._identity = backend.identity()

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def label(self) -> str:
        """``name@revision`` or ``name@sha256:<first 12>``: the model column of every artifact."""
        ident = self._identity
        tag = ident.get("revision") or ("sha256:" + ident["weights_sha256"][:12] if "weights_sha256" in ident else "")
        return f"{ident.get('name', '?')}@{tag}" if tag else str(ident.get("name", "?"))

    def key(self, request: ChatRequest) -> str:
        return cache_key(
            backend=self.backend.name,
            model=self._identity,
            messages=request.message_dicts,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            seed=request.seed,
            sample_index=request.sample_index,
        )

    def generate(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[Completion]:
        keys = [self.key(r) for r in requests]
        hits = self.cache.get_many(sorted(set(keys))) if self.cache is not None else {}
        results: list[Completion | None] = [None] * len(requests)
        missing: dict[str, list[int]] = {}  # identical requests are generated once
        for i, k in enumerate(keys):
            if k in hits:
                results[i] = Completion(hits[k][0], hits[k][1], cached=True)
            else:
                missing.setdefault(k, []).append(i)
        self.stats["cache_hits"] += len(requests) - sum(len(v) for v in missing.values())

        # Length-sorted so batches pad little; outputs do not depend on batch composition.
        todo = sorted(missing.items(), key=lambda kv: _size(requests[kv[1][0]]))
        with tqdm(total=len(requests), initial=len(requests) - sum(len(v) for _, v in todo),
                  desc=desc or self.desc, unit="req", disable=len(todo) == 0, leave=False) as bar:
            for finished in self._run([requests[idx[0]] for _, idx in todo]):
                if self.cache is not None:
                    self.cache.put_many(
                        [(todo[j][0], o.text, o.finish_reason, self._identity.get("name", "")) for j, o in finished]
                    )
                self.stats["calls"] += len(finished)
                for j, out in finished:
                    for i in todo[j][1]:
                        results[i] = out
                    bar.update(len(todo[j][1]))
        return results  # type: ignore[return-value]

    def _run(self, requests: list[ChatRequest]) -> Iterator[list[tuple[int, Completion]]]:
        """Completions as they finish, as (position in ``requests``, completion) groups to commit.

        A backend with ``stream`` (hf) keeps ``batch_size`` requests in flight and hands back each one
        as soon as it ends; the others take ``batch_size`` requests at a time."""
        stream = getattr(self.backend, "stream", None)
        if stream is not None:
            yield from stream(requests, slots=self.batch_size)
            return
        for start in range(0, len(requests), self.batch_size):
            outputs = self.backend.generate(requests[start : start + self.batch_size])
            yield list(enumerate(outputs, start))

    def complete(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[str]:
        return [c.text for c in self.generate(requests, desc=desc)]


def _size(request: ChatRequest) -> tuple[int, int]:
    return request.max_tokens, sum(len(content) for _, content in request.messages)


def make_backend(role: Role) -> Backend:
    """Build the backend a role names; heavy imports happen only for the backend in use."""
    return BACKENDS[role.backend](role)


# Fields of a role that only shape requests or batching; roles equal in every other field share one
# loaded model within a process (one GPU rarely holds two copies; loading twice wastes minutes).
_REQUEST_FIELDS = {"name", "temperature", "top_p", "max_tokens", "seed", "batch_size"}
_LOADED: dict[str, Backend] = {}


def _loading_key(role: Role) -> str:
    fields = {k: v for k, v in dataclasses.asdict(role).items() if k not in _REQUEST_FIELDS}
    return json.dumps(fields, sort_keys=True, default=str)


def open_llm(role: Role, cache: CallCache | None, desc: str | None = None) -> LLM:
    """An LLM for ``role``; a model already loaded for another role with the same loading fields is reused."""
    key = _loading_key(role)
    backend = _LOADED.get(key)
    if backend is None:
        backend = _LOADED[key] = make_backend(role)
    # openai batches are sized to keep every connection busy; in-process backends use batch_size
    batch = role.concurrency * 4 if role.backend == "openai" else role.batch_size
    return LLM(backend, cache, batch_size=batch, desc=desc or role.name)


def _hf(role: Role) -> Backend:
    from evolforge.llm.hf import HFBackend

    return HFBackend.from_role(role)


def _vllm(role: Role) -> Backend:
    from evolforge.llm.vllm_backend import VLLMBackend

    return VLLMBackend.from_role(role)


def _openai(role: Role) -> Backend:
    from evolforge.llm.openai_api import OpenAIBackend

    return OpenAIBackend.from_role(role)


BACKENDS = {"hf": _hf, "vllm": _vllm, "openai": _openai}

__all__ = ["ChatRequest", "Completion", "Backend", "Role", "LLM", "open_llm", "make_backend", "request_seed"]
