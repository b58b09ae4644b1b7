"""The LLM layer: chat requests in, completions out, in the same order, through the call cache.

Every stage talks to models the same way::

    llm = open_role(params, "evolver", cache)      # an LLM that carries its role's defaults
    texts = llm.complete([llm.request([{"role": "user", "content": prompt}]) for prompt in prompts])
    llm.stats  # {"calls": ..., "cache_hits": ...}

Backends (``role.backend``): ``hf`` (transformers in-process), ``vllm`` (vLLM offline engine, GPU extra)
and ``openai`` (any OpenAI-compatible ``/v1/chat/completions`` server). Tests use ``FakeBackend``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from tqdm.auto import tqdm

from evolforge.core.cache import CallCache, cache_key
from evolforge.core.models import ModelError, model_identity
from evolforge.core.params import load_role
from evolforge.core.roles import ChatRequest, Role


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
    """One model role behind the call cache: it carries its :class:`Role` (generation defaults), looks
    every request up, generates only the misses and commits finished completions as they come (a whole
    batch at a time, or each one as soon as it ends for backends that stream).

    The backend is loaded on the first cache miss, so a stage whose calls are all cached never loads
    its model. ``identity`` (from ``models/identity.json``) names the model in cache keys; without it
    the backend is asked, which loads it.
    """

    def __init__(self, backend: Backend | None, cache: CallCache | None, *, role: Role | None = None,
                 identity: dict[str, Any] | None = None, batch_size: int | None = None, desc: str | None = None):
        if backend is None and (role is None or identity is None):
            raise ValueError("an LLM without a backend needs its role and the model identity")
        self._backend = backend
        self.role = role or Role(name=getattr(backend, "name", "llm"), backend=getattr(backend, "name", "?"),
                                 model=str(backend.identity().get("name", "?")))
        self.cache = cache
        self._identity = dict(identity) if identity is not None else backend.identity()
        if batch_size is None:  # openai batches keep every connection busy; in-process backends use batch_size
            batch_size = self.role.concurrency * 4 if self.role.backend == "openai" else self.role.batch_size
        self.batch_size = max(1, int(batch_size))
        self.desc = desc or self.role.name
        self.stats = {"calls": 0, "cache_hits": 0}

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = shared_backend(self.role)
        return self._backend

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def label(self) -> str:
        """``model@<first 12 of the identity digest>``: the model column of every artifact."""
        return f"{self.role.model}@{identity_digest(self._identity)[:12]}"

    def request(self, messages: Sequence[dict[str, str]], **overrides) -> ChatRequest:
        """A request with this role's generation defaults, overridden where given (None = default)."""
        return self.role.request(messages, **overrides)

    def key(self, request: ChatRequest) -> str:
        return cache_key(
            backend=self.role.backend,
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
        if not missing:
            return results  # type: ignore[return-value]

        # Length-sorted so batches pad little; outputs do not depend on batch composition.
        todo = sorted(missing.items(), key=lambda kv: _size(requests[kv[1][0]]))
        with tqdm(total=len(requests), initial=len(requests) - sum(len(v) for _, v in todo),
                  desc=desc or self.desc, unit="req", leave=False) as bar:
            for finished in self._run([requests[idx[0]] for _, idx in todo]):
                if self.cache is not None:
                    self.cache.put_many([(todo[j][0], o.text, o.finish_reason, self.role.model) for j, o in finished])
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


def identity_digest(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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


def shared_backend(role: Role) -> Backend:
    """The backend for ``role``; one already loaded for another role with the same loading fields is reused."""
    key = _loading_key(role)
    if key not in _LOADED:
        _LOADED[key] = make_backend(role)
    return _LOADED[key]


def open_llm(role: Role, cache: CallCache | None, identity: dict[str, Any] | None = None,
             desc: str | None = None) -> LLM:
    """An LLM for ``role``. Given the model ``identity`` the backend loads only on the first cache miss."""
    return LLM(None if identity is not None else shared_backend(role), cache, role=role, identity=identity, desc=desc)


IDENTITY_FILE = Path("models/identity.json")  # written by the models stage; every LLM stage reads it


def resolve_identity(role: Role, memo: str | Path | None = None) -> dict[str, Any]:
    """Pin the model a role names, without loading it: weights hash or hub commit sha, or for a server the
    model id it serves (asked with ``GET /models``; the URL is not part of it)."""
    if role.backend == "openai":
        from evolforge.llm.openai_api import served_model_identity

        return served_model_identity(role)
    return model_identity(role.model, role.revision, memo=memo)


def identity_entry(role: Role, identity: dict[str, Any]) -> dict[str, Any]:
    """One role's entry of ``models/identity.json``: what params say, and what that resolved to."""
    return {"backend": role.backend, "model": role.model, "revision": role.revision, "identity": identity}


def recorded_identity(role: Role, path: str | Path = IDENTITY_FILE) -> dict[str, Any] | None:
    """The identity the models stage recorded for ``role``, or None when there is no such file (a stage run
    outside the pipeline resolves it itself). An entry written for another model is refused."""
    path = Path(path)
    if not path.is_file():
        return None
    entry = json.loads(path.read_text(encoding="utf-8")).get(role.name)
    expected = identity_entry(role, {})
    if entry is None or any(entry.get(k) != expected[k] for k in ("backend", "model", "revision")):
        raise ModelError(f"{path} does not pin roles.{role.name} as params.yaml names it "
                         f"({role.backend}: {role.model}); run the models stage first (`dvc repro models`)")
    return entry["identity"]


def open_role(params: dict[str, Any], name: str, cache: CallCache | None,
              identities: str | Path = IDENTITY_FILE) -> LLM:
    """The LLM for role ``name`` of ``params``, pinned by ``models/identity.json``; nothing loads until a
    request misses the cache."""
    role = load_role(params, name)
    identity = recorded_identity(role, identities)
    return open_llm(role, cache, identity if identity is not None else resolve_identity(role))


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

__all__ = ["ChatRequest", "Completion", "Backend", "Role", "LLM", "open_llm", "open_role", "make_backend",
           "shared_backend", "request_seed", "identity_digest", "resolve_identity", "recorded_identity", "IDENTITY_FILE"]
