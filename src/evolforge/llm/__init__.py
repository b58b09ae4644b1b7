"""The LLM layer: chat requests in, completions out, in the same order, through the call cache.

Every stage talks to models the same way::

    llm = open_role(params, "evolver", cache)      # an LLM that carries its role's defaults
    texts = llm.complete([llm.request([{"role": "user", "content": prompt}]) for prompt in prompts])
    llm.stats  # {"calls": ..., "cache_hits": ..., "failures": ..., "prompt_tokens": ..., ...}

Backends (``role.backend``): ``hf`` (transformers in-process), ``vllm`` (vLLM offline engine, GPU extra)
``openai`` (any OpenAI-compatible ``/v1/chat/completions`` server) and ``ray`` (a Ray Data pipeline over
several copies of the model, ray extra; docs/scale_ray.md). Tests use ``FakeBackend``.

A request with ``choices`` gets exactly one of them where the backend can enforce it: hf masks every
token that leaves the set (see :class:`ChoiceTrie`), vllm uses its structured outputs (``choice``), and
a server gets ``response_format`` with an enum (or vLLM's ``structured_outputs``, per the role's
``choice_format``). Callers still parse the text, so a server that ignores the constraint falls back to
the free-text parser.

One item's failure is that item's: a prompt that cannot fit, a rejected request or exhausted retries
comes back as a :class:`Completion` with ``failure_reason`` set (never cached), while every other
completion is committed as it arrives. ``LLM.generate`` raises :class:`LLMFailureError` -- after
committing everything it got -- only when the failures pass ``max_failure_rate`` of its requests.

Spend (tokens, cost, time) is recorded in the cache database and caps in ``llm.budget`` are enforced before
sending (:mod:`evolforge.llm.budget`: the rest ``budget_exhausted``, then :class:`BudgetExhaustedError`);
under ``EVOLFORGE_DRY_RUN`` nothing is sent and the misses are counted (:mod:`evolforge.llm.dryrun`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import orjson
from tqdm.auto import tqdm

from evolforge.core.cache import CallCache, KeyFrame, json_around
from evolforge.core.models import ModelError, model_identity
from evolforge.core.params import load_role, load_section
from evolforge.core.settings import LLMSettings
from evolforge.core.roles import CONTROL_NAMES, ChatRequest, Controls, Role, controls_problems
from evolforge.llm import dryrun
from evolforge.llm.budget import BUDGET_EXHAUSTED, BudgetExhaustedError, open_gate


# failure_reason values: why an item got no completion
PROMPT_TOO_LONG = "prompt_too_long"  # the prompt does not fit the model's context (checked before sending)
REQUEST_REJECTED = "request_rejected"  # the server refused this request (a non-retryable 4xx)
RETRIES_EXHAUSTED = "retries_exhausted"  # every attempt failed (timeouts, 429, 5xx, dropped connections)
ERROR_CHARS = 300  # how much of a server's message a failure keeps
# A commit writes every index page its rows land on, so a small one costs more per row. When answers come
# faster than a half-second commit can store them (a large cache, a fast backend), the next commit waits
# this many times as long as the last one took: committing stays within a fifth of the time.
COMMIT_SPACING = 4.0


@dataclass(frozen=True, slots=True)  # slots: one per item, as ChatRequest
class Completion:
    text: str
    finish_reason: str | None = None  # "stop" | "length" | None when the backend does not say
    cached: bool = False
    failure_reason: str | None = None  # set when the item got no completion (then text is "")
    error: str | None = None  # the failure's detail: the server's message, trimmed, never the key
    # tokens this call used (from the server's usage, or counted); None when unknown or cached
    prompt_tokens: int | None = field(default=None, compare=False)
    completion_tokens: int | None = field(default=None, compare=False)

    @property
    def failed(self) -> bool:
        return self.failure_reason is not None

    @classmethod
    def failure(cls, reason: str, error: str) -> "Completion":
        error = " ".join(error.split())
        return cls("", None, failure_reason=reason,
                   error=error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS] + "...")


class ControlsError(ValueError):
    """A request carries a generation control its role's backend cannot honour (refused before any call)."""


def refuse_controls(backend: str, requests: Sequence[ChatRequest], where: str) -> None:
    """Raise :class:`ControlsError` when a request carries a control ``backend`` cannot honour."""
    seen: set[Controls] = set()
    for request in requests:
        if request.controls is None or request.controls in seen:
            continue
        seen.add(request.controls)
        problems = controls_problems(backend, request.controls, where)
        if problems:
            raise ControlsError("; ".join(problems))


RANKING_BACKENDS = ("hf", "vllm")  # backends that score choices by their log-probabilities


def refuse_ranking(backend: str, requests: Sequence[ChatRequest], where: str) -> None:
    """Raise :class:`ControlsError` when ``backend`` cannot rank a request's choices by likelihood."""
    if backend not in RANKING_BACKENDS and any(r.rank for r in requests):
        raise ControlsError(f"{where}: backend {backend!r} cannot score answers by their probabilities "
                            f"(params.yaml judge.probabilities needs log-probabilities of whole answers: "
                            f"backend {' or '.join(RANKING_BACKENDS)}); set judge.probabilities: false")
    if any(r.rank and not r.choices for r in requests):
        raise ControlsError(f"{where}: a ranking request needs its choices")


class LLMFailureError(RuntimeError):
    """Too many of a stage's calls failed (``llm.max_failure_rate``); every completion was committed first."""


class Backend(Protocol):
    """What a backend provides. ``generate`` keeps the order of its input; an item that cannot be served
    comes back as a failed completion (``Completion.failure``), and only a fault that concerns every
    request (a bad key, a wrong URL) raises. A backend may also offer ``stream(requests, slots)``,
    yielding lists of (index, completion) as requests finish (hf, vllm, openai, ray)."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...


def collect(finished_groups: Iterator[list[tuple[int, "Completion"]]], n: int) -> list["Completion"]:
    """The completions a backend's ``stream`` yields, put back in request order (its ``generate``)."""
    results: list[Completion | None] = [None] * n
    for finished in finished_groups:
        for i, completion in finished:
            results[i] = completion
    return results  # type: ignore[return-value]


def request_seed(request: ChatRequest) -> int:
    """A 60-bit sampling seed derived from the whole request (messages, sampling, seed, sample index),
    so a request samples the same tokens whichever batch it lands in."""
    # sha256 of json.dumps(dataclasses.asdict(request) without None choices, sort_keys=True,
    # ensure_ascii=False), built as cache keys are (see KeyFrame): the rest once per sampling, the
    # messages by orjson with json's default ", " between them (``[["user", "..."]]``)
    sig = _sampling_signature(request)
    around = _SEED_FRAMES.get(sig, _UNSEEN)
    if around is _UNSEEN:
        around = _seed_frame(request)
        if len(_SEED_FRAMES) < 4096:
            _SEED_FRAMES[sig] = around
    messages = request.messages
    if around is not None and type(messages) is tuple and all(
            type(m) is tuple and len(m) == 2 and type(m[0]) is str and type(m[1]) is str for m in messages):
        try:
            blob = b"[%s]" % b", ".join([b"[%s, %s]" % (orjson.dumps(r), orjson.dumps(c)) for r, c in messages])
        except orjson.JSONEncodeError:  # a lone surrogate: the plain encoding below fails as it always did
            pass
        else:
            return int(hashlib.sha256(b"%s%s%s" % (around[0], blob, around[1])).hexdigest()[:15], 16)
    return int(hashlib.sha256(_SEED_JSON(_seed_fields(request)).encode("utf-8")).hexdigest()[:15], 16)


# json.dumps(fields, sort_keys=True, ensure_ascii=False), without building an encoder per call
_SEED_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode
_SEED_FRAMES: dict[tuple, tuple[bytes, bytes] | None] = {}  # request_seed's rest, per sampling signature
_UNSEEN = object()


def _seed_fields(request: ChatRequest) -> dict[str, Any]:
    fields = {"messages": request.messages, "temperature": request.temperature, "top_p": request.top_p,
              "max_tokens": request.max_tokens, "seed": request.seed, "sample_index": request.sample_index}
    if request.choices is not None:  # only then: unconstrained requests keep the seeds they always had
        fields["choices"] = request.choices
    return fields


def _seed_frame(request: ChatRequest) -> tuple[bytes, bytes] | None:
    return json_around(_SEED_JSON, _seed_fields(request), "messages") if _str_choices(request.choices) else None


def _sampling_signature(request: ChatRequest) -> tuple:
    """What a request's key and seed depend on besides its messages, with the types of the numbers: 1 and
    1.0 are equal but json writes them apart (a seed sees them raw)."""
    t, p, n, s, i = request.temperature, request.top_p, request.max_tokens, request.seed, request.sample_index
    return t, p, n, s, i, request.choices, request.controls, request.rank, type(t), type(p), type(n), type(s), type(i)


def _str_choices(choices: tuple[str, ...] | None) -> bool:
    """Frames are kept only for str choices: equal tuples of them are written alike (1 and 1.0 are not)."""
    return choices is None or all(type(c) is str for c in choices)


class LLM:
    """One model role behind the call cache: it carries its :class:`Role` (generation defaults), looks
    every request up, generates only the misses and commits completions as they come: every
    ``commit_every`` completions or ``commit_interval_s`` seconds, whichever is first (and no sooner than
    ``COMMIT_SPACING`` times the last commit's duration), and at the end (also when the run stops on an error).

    A failed item (``Completion.failed``) is returned to the caller and counted, never cached, so a
    rerun retries exactly the failures. Past ``max_failure_rate`` of a call's requests the call raises
    :class:`LLMFailureError` once everything it got is committed -- early, as soon as the failures
    already exceed what the threshold allows for the whole call.

    The backend is loaded on the first cache miss, so a stage whose calls are all cached never loads
    its model. ``identity`` (from ``models/identity.json``) names the model in cache keys; without it
    the backend is asked, which loads it.

    ``stats``: ``calls`` (requests handed to the backend), ``cache_hits``, ``failures`` and
    ``failed_by_reason`` (items), ``prompt_tokens`` / ``completion_tokens`` (of the calls made), and
    ``cost`` when the role has prices.
    """

    def __init__(self, backend: Backend | None, cache: CallCache | None, *, role: Role | None = None,
                 identity: dict[str, Any] | None = None, batch_size: int | None = None, desc: str | None = None,
                 settings: LLMSettings | None = None, engine: dict[str, Any] | None = None):
        if backend is None and (role is None or identity is None):
            raise ValueError("an LLM without a backend needs its role and the model identity")
        self._backend = backend
        self.role = role or Role(name=getattr(backend, "name", "llm"), backend=getattr(backend, "name", "?"),
                                 model=str(backend.identity().get("name", "?")))
        self.cache = cache
        self._identity = dict(identity) if identity is not None else backend.identity()
        # what the key says the model runs with: as recorded by the models stage, or resolved here
        self._engine = dict(engine) if engine is not None else resolved_engine(self.role)
        self._frames: dict[tuple, KeyFrame] = {}  # see key()
        if batch_size is None:  # servers: the backend's own pool bounds requests in flight
            batch_size = self.role.concurrency * 4 if self.role.backend == "openai" else self.role.batch_size
        self.batch_size = max(1, int(batch_size))
        self.desc = desc or self.role.name
        self.settings = settings or LLMSettings()
        self.stats: dict[str, Any] = {"calls": 0, "cache_hits": 0, "failures": 0, "failed_by_reason": {},
                                      "prompt_tokens": 0, "completion_tokens": 0}
        if self.role.price_per_mtok_prompt is not None or self.role.price_per_mtok_completion is not None:
            self.stats["cost"] = 0.0

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            backend = shared_backend(self.role)
            runs_with = getattr(backend, "runs_with", None)
            if runs_with is not None:  # an ``auto`` the keys resolved elsewhere must be what loaded here
                actual = {k: v for k, v in runs_with().items() if getattr(self.role, k, None) == "auto"}
                keyed = {k: self._engine.get(k) for k in actual}
                if actual != keyed:
                    raise ModelError(
                        f"roles.{self.role.name} ({self.role.model}) loaded with {actual}, but its cache keys say "
                        f"{keyed} (models/identity.json, written where the models stage ran); rerun the models "
                        f"stage on this machine (`dvc repro models`)")
            self._backend = backend
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
        """``cache_key`` of ``request`` for this role, through a :class:`KeyFrame` kept per sampling."""
        sig = _sampling_signature(request)
        frame = self._frames.get(sig)
        if frame is None:
            frame = KeyFrame(backend=self.role.backend, model=self._identity, engine=self._engine,
                             temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens,
                             seed=request.seed, sample_index=request.sample_index,
                             constraint=self._constraint(request))
            if _str_choices(request.choices) and len(self._frames) < 4096:
                self._frames[sig] = frame
        return frame.key_of_pairs(request.messages)

    def _constraint(self, request: ChatRequest) -> dict[str, Any] | None:
        """The part of a constrained request's key: its choices and, for a server, how they are enforced;
        its generation controls when it has some (a request without any keeps the key it always had)."""
        controls = request.controls.key() if request.controls is not None else {}
        if request.choices is None and not controls:
            return None
        constraint: dict[str, Any] = {}
        if request.choices is not None:
            constraint["choices"] = list(request.choices)
            if request.rank:  # log-probabilities of every choice instead of a decoded answer
                constraint["rank"] = True
            elif self.role.backend == "openai":
                constraint["format"] = self.role.choice_format
        if controls:
            constraint["controls"] = controls
        return constraint


    def generate(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[Completion]:
        """One completion per request, in order; failed items carry ``failure_reason`` (see the class doc)."""
        refuse_controls(self.role.backend, requests, f"roles.{self.role.name}")
        refuse_ranking(self.role.backend, requests, f"roles.{self.role.name}")
        keys = [self.key(r) for r in requests]
        hits = self.cache.get_many(sorted(set(keys))) if self.cache is not None else {}
        results: list[Completion | None] = [None] * len(requests)
        missing: dict[str, list[int]] = {}  # identical requests are generated once
        for i, k in enumerate(keys):
            hit = hits.get(k)
            if hit is not None:
                results[i] = Completion(hit[0], hit[1], cached=True)
            else:
                missing.setdefault(k, []).append(i)
        self.stats["cache_hits"] += len(requests) - sum(len(v) for v in missing.values())
        if not missing:
            return results  # type: ignore[return-value]
        if dryrun.active():  # evolforge plan: count the misses, send nothing
            return self._dry_run(requests, missing, results, desc or self.desc)

        # Length-sorted so batches pad little; outputs do not depend on batch composition.
        todo = sorted(missing.items(), key=lambda kv: _size(requests[kv[1][0]]))
        allowed = math.floor(self.settings.max_failure_rate * len(requests) + 1e-9)
        failed: Counter[str] = Counter()
        pending: list[tuple[str, str, str | None, str]] = []
        last_commit = time.monotonic()
        interval = self.settings.commit_interval_s
        model = self.role.model
        gate = open_gate(self.role, self.settings, self.cache, desc or self.desc, len(todo))  # spend and caps

        def commit() -> None:
            nonlocal last_commit, interval
            start = time.monotonic()
            if self.cache is not None and pending:
                # first stored wins: another process may have filled a key meanwhile
                for k, (text, finish) in self.cache.put_many(pending).items():
                    for i in missing[k]:
                        results[i] = Completion(text, finish)
            pending.clear()
            last_commit = time.monotonic()
            interval = max(self.settings.commit_interval_s, COMMIT_SPACING * (last_commit - start))

        with tqdm(total=len(requests), initial=len(requests) - sum(len(v) for _, v in todo),
                  desc=desc or self.desc, unit="req", leave=False) as bar:
            try:
                for finished in gate.stream(self._run, [requests[idx[0]] for _, idx in todo], [k for k, _ in todo]):
                    done = 0
                    for j, out in finished:
                        k, idx = todo[j]
                        for i in idx:
                            results[i] = out
                        done += len(idx)
                        if out.failure_reason is not None:
                            failed[out.failure_reason] += len(idx)
                        else:
                            pending.append((k, out.text, out.finish_reason, model))
                    self._count([out for _, out in finished])
                    bar.update(done)
                    bar.set_postfix_str(gate.postfix(), refresh=False)
                    if len(pending) >= self.settings.commit_every or (
                            pending and time.monotonic() - last_commit >= interval):
                        commit()
                    if sum(failed.values()) > allowed:
                        break  # the threshold is passed whatever the rest brings
            finally:
                commit()
        unsent = [i for j in gate.unsent for i in todo[j][1]]  # kept back by a cap in llm.budget
        for i in unsent:
            results[i] = Completion.failure(BUDGET_EXHAUSTED, gate.message)
        self._record_failures(failed + Counter({BUDGET_EXHAUSTED: len(unsent)}))
        if sum(failed.values()) > allowed:
            self._raise_failures(failed, results, len(requests))
        if unsent:
            raise BudgetExhaustedError(gate.message)
        return results  # type: ignore[return-value]

    def _dry_run(self, requests: Sequence[ChatRequest], missing: dict[str, list[int]],
                 results: list[Completion | None], desc: str) -> list[Completion]:
        """A dry run's answers to the misses: stand-ins, or ``dry_run`` failures (evolforge.llm.dryrun)."""
        cache_path = getattr(self.cache, "path", None)
        for k, text in dryrun.record(self.role, cache_path, requests, missing, desc).items():
            for i in missing[k]:
                results[i] = Completion(text, "stop") if text is not None else Completion.failure(dryrun.DRY_RUN, "dry run")
        return results  # type: ignore[return-value]

    def _count(self, outs: list[Completion]) -> None:
        """Add the calls of ``outs`` (completions just made, failed ones included) to the stats."""
        prompt = sum([out.prompt_tokens or 0 for out in outs])
        completion = sum([out.completion_tokens or 0 for out in outs])
        self.stats["calls"] += len(outs)
        self.stats["prompt_tokens"] += prompt
        self.stats["completion_tokens"] += completion
        if "cost" in self.stats:
            self.stats["cost"] += (prompt * (self.role.price_per_mtok_prompt or 0.0)
                                   + completion * (self.role.price_per_mtok_completion or 0.0)) / 1e6

    def _record_failures(self, failed: Counter) -> None:
        self.stats["failures"] += sum(failed.values())
        by_reason = self.stats["failed_by_reason"]
        for reason, n in failed.items():
            by_reason[reason] = by_reason.get(reason, 0) + n

    def _raise_failures(self, failed: Counter, results: list[Completion | None], total: int) -> None:
        example = next(c for c in results if c is not None and c.failed)
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(failed.items()))
        raise LLMFailureError(
            f"roles.{self.role.name} ({self.role.model}): {sum(failed.values())} of {total} requests failed "
            f"({counts}), more than params.yaml llm.max_failure_rate = {self.settings.max_failure_rate} allows; "
            f"every completion received is in the cache, so a rerun retries only the rest. "
            f"First failure: {example.failure_reason}: {example.error}")

    def _run(self, requests: list[ChatRequest], keys: list[str]) -> Iterator[list[tuple[int, Completion]]]:
        """Completions as they finish, as (position in ``requests``, completion) groups to commit.

        A backend with ``stream`` keeps requests in flight and hands back each one as soon as it ends
        (hf: ``batch_size`` slots; openai: ``concurrency`` connections; vllm: the whole list in large
        chunks); the others take ``batch_size`` requests at a time. A backend that ``wants_call_cache``
        (openai with ``batch_api``: it records its jobs there) also gets the cache and the requests' keys."""
        stream = getattr(self.backend, "stream", None)
        if stream is not None:
            if getattr(self.backend, "wants_call_cache", False):
                yield from stream(requests, slots=self.batch_size, cache=self.cache, keys=keys)
            else:
                yield from stream(requests, slots=self.batch_size)
            return
        for start in range(0, len(requests), self.batch_size):
            outputs = self.backend.generate(requests[start : start + self.batch_size])
            yield list(enumerate(outputs, start))

    def complete(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[str | None]:
        """The texts of :meth:`generate`; None for a failed item (never an invented text)."""
        return [None if c.failed else c.text for c in self.generate(requests, desc=desc)]


class ChoiceTrie:
    """Token sequences of a request's choices as a prefix tree, for constrained decoding.

    ``allowed(prefix)`` is the set of tokens that keep ``prefix`` on the way to some choice, plus
    ``stop`` once ``prefix`` spells a whole choice (it may also go on: "1" -> "10" -> "100"). A choice is
    written as the tokenizer encodes it at the start of an answer.

    >>> trie = ChoiceTrie([[5], [5, 6], [7]], stop=0)
    >>> sorted(trie.allowed(())), sorted(trie.allowed((5,))), sorted(trie.allowed((5, 6)))
    ([5, 7], [0, 6], [0])
    """

    def __init__(self, sequences: Sequence[Sequence[int]], stop: int):
        self.stop = stop
        self._next: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            seq = tuple(seq)
            if not seq:
                raise ValueError("a choice encodes to no tokens")
            for n in range(len(seq)):
                self._next.setdefault(seq[:n], set()).add(seq[n])
            self._next.setdefault(seq, set()).add(stop)

    def allowed(self, prefix: Sequence[int]) -> set[int]:
        """Tokens that may follow ``prefix``; empty when ``prefix`` is on no choice's way."""
        return self._next.get(tuple(prefix), set())


def identity_digest(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _size(request: ChatRequest) -> tuple[int, int]:
    return request.max_tokens, sum([len(content) for _, content in request.messages])


def engine_options(role: Role) -> dict[str, Any]:
    """The options of ``role`` that change outputs beyond the model's identity: part of every cache key.

    hf: dtype and device (numerics differ between them), and ``max_model_len`` when set (it cuts each
    answer's token budget; unset, the key is as it was before it counted). vllm: dtype, tensor
    parallelism, context length and the engine arguments in ``extra`` (quantization, ...). ray: the
    actors' ``engine`` and that engine's options (as hf or vllm; ``auto`` holds both). A server's engine
    is its own business: its served model id stands for it, so an openai role has none."""
    hf = {"dtype": role.dtype, "device": role.device}
    if role.max_model_len is not None:
        hf["max_model_len"] = role.max_model_len
    vllm = {"dtype": role.dtype, "tensor_parallel_size": role.tensor_parallel_size,
            "max_model_len": role.max_model_len, **{k: role.extra[k] for k in sorted(role.extra)}}
    if role.backend in ("hf", "vllm"):
        return hf if role.backend == "hf" else vllm
    if role.backend == "ray":  # replicas, GPUs per replica and the cluster's address change no output
        return {"engine": role.engine, **{"hf": hf, "vllm": vllm, "auto": {**hf, **vllm}}[role.engine]}
    return {}


def resolved_engine(role: Role) -> dict[str, Any]:
    """:func:`engine_options` with an hf role's ``device: auto`` and ``dtype: auto`` resolved as its backend
    will load the model (CUDA when torch sees a GPU, else the CPU; bf16 on a GPU, fp32 on the CPU), so
    that completions made on a GPU and on the CPU are never served for each other. torch is imported only
    for such a role. A ray role's actors resolve ``auto`` on their own machines: keyed as written."""
    options = engine_options(role)
    if role.backend == "hf" and "auto" in (role.device, role.dtype):
        from evolforge.core.models import dtype_name, pick_device, pick_dtype

        device = pick_device(role.device)
        options["device"] = device
        options["dtype"] = dtype_name(pick_dtype(role.dtype, device)) if role.dtype == "auto" else role.dtype
    return options


def make_backend(role: Role) -> Backend:
    """Build the backend a role names; heavy imports happen only for the backend in use."""
    return BACKENDS[role.backend](role)


# Fields of a role that only shape requests or batching; roles equal in every other field share one
# loaded model within a process (one GPU rarely holds two copies; loading twice wastes minutes).
_REQUEST_FIELDS = {"name", "temperature", "top_p", "max_tokens", "seed", "batch_size",
                   "price_per_mtok_prompt", "price_per_mtok_completion", *CONTROL_NAMES}
_LOADED: dict[str, Backend] = {}


def _loading_key(role: Role) -> str:
    fields = {k: v for k, v in dataclasses.asdict(role).items() if k not in _REQUEST_FIELDS}
    return json.dumps(fields, sort_keys=True, default=str)


def loads_nothing_more(role: Role, other: Role) -> bool:
    """True when a stage that already uses ``other`` can use ``role`` too without loading another model in
    its process: ``role`` is a server (``openai``), or both load the same model with the same settings
    (they share one backend, see :func:`shared_backend`)."""
    return role.backend == "openai" or _loading_key(role) == _loading_key(other)


def shared_backend(role: Role) -> Backend:
    """The backend for ``role``; one already loaded for another role with the same loading fields is reused."""
    key = _loading_key(role)
    if key not in _LOADED:
        _LOADED[key] = make_backend(role)
    return _LOADED[key]


def open_llm(role: Role, cache: CallCache | None, identity: dict[str, Any] | None = None,
             desc: str | None = None, settings: LLMSettings | None = None,
             engine: dict[str, Any] | None = None) -> LLM:
    """An LLM for ``role``. Given the model ``identity`` the backend loads only on the first cache miss.
    ``engine``: the role's :func:`resolved_engine` as the models stage recorded it (None: resolved here)."""
    return LLM(None if identity is not None else shared_backend(role), cache, role=role, identity=identity,
               desc=desc, settings=settings, engine=engine)


IDENTITY_FILE = Path("models/identity.json")  # written by the models stage; every LLM stage reads it


def resolve_identity(role: Role, memo: str | Path | None = None) -> dict[str, Any]:
    """Pin the model a role names, without loading it: weights hash or hub commit sha, or for a server the
    model id it serves (asked with ``GET /models``; the URL is not part of it)."""
    if role.backend == "openai":
        from evolforge.llm.openai_api import served_model_identity

        return served_model_identity(role)
    return model_identity(role.model, role.revision, memo=memo)


def identity_entry(role: Role, identity: dict[str, Any], engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """One role's entry of ``models/identity.json``: what params say, and what that resolved to (the model's
    identity, and with ``engine`` the options its cache keys carry, ``auto`` resolved)."""
    entry = {"backend": role.backend, "model": role.model, "revision": role.revision, "identity": identity}
    if engine is not None:
        entry["engine"] = engine
    return entry


def recorded_identity(role: Role, path: str | Path = IDENTITY_FILE) -> dict[str, Any] | None:
    """The identity the models stage recorded for ``role``, or None when there is no such file (a stage run
    outside the pipeline resolves it itself). An entry written for another model is refused."""
    entry = recorded_entry(role, path)
    return None if entry is None else entry["identity"]


def recorded_entry(role: Role, path: str | Path = IDENTITY_FILE) -> dict[str, Any] | None:
    """``role``'s whole entry of ``models/identity.json`` (see :func:`recorded_identity`)."""
    path = Path(path)
    if not path.is_file():
        return None
    from evolforge.core.jsonfiles import read_json  # (polars: not for every importer of the LLM layer)

    found = read_json(path)
    entry = found.get(role.name) if isinstance(found, dict) else None
    expected = identity_entry(role, {})
    if entry is None or any(entry.get(k) != expected[k] for k in ("backend", "model", "revision")):
        raise ModelError(f"{path} does not pin roles.{role.name} as params.yaml names it "
                         f"({role.backend}: {role.model}); run the models stage first (`dvc repro models`)")
    return entry


def open_role(params: dict[str, Any], name: str, cache: CallCache | None,
              identities: str | Path = IDENTITY_FILE) -> LLM:
    """The LLM for role ``name`` of ``params``, pinned by ``models/identity.json``; nothing loads until a
    request misses the cache."""
    role = load_role(params, name)
    settings = load_section(params, "llm")
    entry = recorded_entry(role, identities) or {}
    identity = entry["identity"] if entry else resolve_identity(role)
    return open_llm(role, cache, identity, settings=settings, engine=entry.get("engine"))


def _hf(role: Role) -> Backend:
    from evolforge.llm.hf import HFBackend

    return HFBackend.from_role(role)


def _vllm(role: Role) -> Backend:
    from evolforge.llm.vllm_backend import VLLMBackend

    return VLLMBackend.from_role(role)


def _openai(role: Role) -> Backend:
    from evolforge.llm.openai_api import OpenAIBackend

    return OpenAIBackend.from_role(role)


def _ray(role: Role) -> Backend:
    from evolforge.llm.ray_backend import RayBackend

    return RayBackend.from_role(role)


BACKENDS = {"hf": _hf, "vllm": _vllm, "openai": _openai, "ray": _ray}

__all__ = ["collect", "ChoiceTrie", "ChatRequest", "Controls", "ControlsError", "refuse_controls", "Completion", "Backend", "Role", "LLM", "LLMSettings", "LLMFailureError", "open_llm",
           "open_role", "make_backend", "engine_options", "resolved_engine", "PROMPT_TOO_LONG", "REQUEST_REJECTED", "RETRIES_EXHAUSTED",
           "shared_backend", "loads_nothing_more", "request_seed", "identity_digest", "resolve_identity", "recorded_identity", "IDENTITY_FILE"]
