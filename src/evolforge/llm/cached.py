"""The LLM of one role behind the call cache (:class:`LLM`), and how a stage opens one (:func:`open_role`).

The LLM is the cache wrapper a step calls: it keys every request, answers what the cache holds, generates only the
misses through its backend and commits them. What its calls came to (calls, hits, tokens, cost, failures) and
whether they fail the stage is its account's (:mod:`evolforge.llm.accounting`), kept in the stage's
:class:`~evolforge.llm.accounting.Accounting`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm.auto import tqdm

from evolforge.llm.cache import CacheWriter, CallCache, KeyFrame, open_cache
from evolforge.core.models import ModelError
from evolforge.config.backend_specs import checked_as
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest, role_request
from evolforge.config.runtime import LLMParams, LLMSettings
from evolforge.llm.backends import dryrun
from evolforge.llm.accounting import Accounting, RoleAccount, stage_accounting
from evolforge.llm.budget import BUDGET_EXHAUSTED, BudgetExhaustedError, open_gate
from evolforge.llm.identity import IDENTITY_FILE, recorded_entry
from evolforge.llm.pinning import resolve_identity
from evolforge.llm.keys import identity_digest, resolved_engine, sampling_options, sampling_signature, str_choices
from evolforge.llm.registry import shared_backend
from evolforge.llm.thinking import separate
from evolforge.llm.types import Backend, Completion, refuse_controls, refuse_ranking


class LLM:
    """One model role behind the call cache: it carries its :class:`Role` (generation defaults), looks
    every request up, generates only the misses and commits completions as they come: every
    ``commit_every`` completions or ``commit_interval_s`` seconds, whichever is first (and no sooner than
    ``COMMIT_SPACING`` times the last commit's duration), and at the end (also when the run stops on an error).

    A failed item (``Completion.failed``) is returned to the caller and counted, never cached, so a
    rerun retries exactly the failures. ``account`` (a :class:`~evolforge.llm.accounting.RoleAccount`, opened
    in ``accounting``: the stage's :func:`~evolforge.llm.accounting.stage_accounting` unless given) counts
    what this LLM was asked, and a call raises :class:`~evolforge.llm.types.LLMFailureError` when the failures
    pass ``llm.max_failure_rate`` (the accounting module says when); ``stats`` are the account's.

    The backend is loaded on the first cache miss, so a stage whose calls are all cached never loads
    its model. ``identity`` (from ``models/identity.json``) names the model in cache keys; without it
    the backend is asked, which loads it.
    """

    def __init__(self, backend: Backend | None, cache: CallCache | None, *, role: Role | None = None,
                 identity: dict[str, Any] | None = None, batch_size: int | None = None, desc: str | None = None,
                 settings: LLMSettings | None = None, engine: dict[str, Any] | None = None,
                 accounting: Accounting | None = None):
        if backend is None and (role is None or identity is None):
            raise ValueError("an LLM without a backend needs its role and the model identity")
        self._backend = backend
        self.role = role or Role(name=getattr(backend, "name", "llm"), backend=getattr(backend, "name", "?"),
                                 model=str(backend.identity().get("name", "?")))
        self.cache = cache
        self._identity = dict(identity) if identity is not None else backend.identity()
        # what the key says the model runs with: as recorded by the models stage, or resolved here
        self._engine = dict(engine) if engine is not None else resolved_engine(self.role)
        # the engine of a sampled call's key: with the backend's sampler named (greedy keys stay as they were)
        self._sampled_engine = {**self._engine, **sampling_options(self.role)}
        self._frames: dict[tuple, KeyFrame] = {}  # see key()
        self.served = self.role.served  # an OpenAI-compatible server
        if batch_size is None:  # servers: the backend's own pool bounds requests in flight (OpenAISettings)
            batch_size = self.role.settings.batch_size
        self.batch_size = max(1, int(batch_size))
        self.desc = desc or self.role.name
        self.settings = settings or LLMSettings()
        self.account: RoleAccount = (accounting or stage_accounting()).open(self.role, self.settings)
        if self._engine.get("extra_bufts") is False:  # llamacpp: the plain kernels made (or make) these answers
            self.stats["extra_bufts"] = False
        self.pinned = True  # False: a dry run's role that models/identity.json does not pin yet (open_role)

    @property
    def stats(self) -> dict[str, Any]:
        """What this LLM's calls came to (:class:`~evolforge.llm.accounting.RoleAccount`): calls, cache hits,
        failures by reason, tokens, and cost when the role has prices."""
        return self.account.stats

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            started = time.perf_counter()
            backend = shared_backend(self.role)
            self.account.loaded(time.perf_counter() - started)
            if backend.capabilities.runs_with:  # an ``auto`` the keys resolved elsewhere must be what loaded here
                # (a role's field set to auto: hf's device and dtype; or an option no field holds, llamacpp's kernels)
                settings = self.role.settings
                actual = {k: v for k, v in backend.runs_with().items() if getattr(settings, k, "auto") == "auto"}
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
    def control_backend(self) -> str:
        """What requests' controls and rankings are checked against: the backend, or for a server the kind its
        identity records (``openai:vllm``, ``openai:llamacpp``; evolforge.llm.backends.openai.served)."""
        kind = self.role.settings.server if self.served else "auto"
        return checked_as(self.role.backend, kind if kind != "auto" else self._identity.get("server", "openai"))

    @property
    def label(self) -> str:
        """``model@<first 12 of the identity digest>``: the model column of every artifact."""
        return f"{self.role.model}@{identity_digest(self._identity)[:12]}"

    def request(self, messages: Sequence[dict[str, str]], **overrides) -> ChatRequest:
        """A request with this role's generation defaults, overridden where given (None = default)."""
        return role_request(self.role, messages, **overrides)

    def key(self, request: ChatRequest) -> str:
        """``cache_key`` of ``request`` for this role, through a :class:`KeyFrame` kept per sampling."""
        sig = sampling_signature(request)
        frame = self._frames.get(sig)
        if frame is None:
            engine = self._engine if float(request.temperature) == 0.0 else self._sampled_engine
            frame = KeyFrame(backend=self.role.backend, model=self._identity, engine=engine,
                             temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens,
                             seed=request.seed, sample_index=request.sample_index,
                             constraint=self._constraint(request))
            if str_choices(request.choices) and len(self._frames) < 4096:
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
                # a server other than vLLM's walks top_logprobs (openai.walk), keyed apart from the echo it was once
                # read from; on llama.cpp's, apart from the walk that read the end of turn as listed, too; vLLM's
                # lists the answers' tokens (openai.ranking), apart from its echo, which the server tokenized itself
                server = self._identity.get("server")
                walk = "top_logprobs:end" if server == "llamacpp" else "top_logprobs"
                served = "logprob_token_ids" if server == "vllm" else walk
                constraint["rank"] = served if self.served else True
            elif self.served:
                constraint["format"] = self.role.settings.choice_format
        if controls:
            constraint["controls"] = controls
        return constraint

    def generate(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[Completion]:
        """One completion per request, in order; failed items carry ``failure_reason`` (see the class doc)."""
        refuse_controls(self.control_backend, requests, f"roles.{self.role.name}")
        refuse_ranking(self.control_backend, requests, f"roles.{self.role.name}")
        results, missing = self.lookup(requests)
        self.account.hits(len(requests) - sum(len(v) for v in missing.values()))
        if not missing:
            self.account.answered(len(requests))  # from the cache: asked all the same
            return results  # type: ignore[return-value]
        if dryrun.active():  # evolforge plan: count the misses, send nothing
            return self._dry_run(requests, missing, results, desc or self.desc)
        room = self.account.room(len(requests))  # the failures this call may add (early stops only)
        failed, unsent, message = self._generate_missing(requests, missing, results, room, desc or self.desc)
        for i in unsent:
            results[i] = Completion.failure(BUDGET_EXHAUSTED, message)
        self.account.settle(results, failed, len(unsent), room)  # past the threshold: LLMFailureError
        if unsent:
            raise BudgetExhaustedError(message)
        return results  # type: ignore[return-value]

    def lookup(self, requests: Sequence[ChatRequest]) -> tuple[list[Completion | None], dict[str, list[int]]]:
        """:meth:`_from_cache` for ``requests``: nothing counted, nothing generated."""
        return self._from_cache([self.key(r) for r in requests])

    def _from_cache(self, keys: list[str]) -> tuple[list[Completion | None], dict[str, list[int]]]:
        """The cached completions, in request order (None where missing), and the missing keys with the indices
        that ask for each (identical requests are generated once)."""
        hits = self.cache.get_many(sorted(set(keys)), thinking=True) if self.cache is not None else {}
        results: list[Completion | None] = [None] * len(keys)
        missing: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            hit = hits.get(k)
            if hit is not None:
                results[i] = Completion(hit[0], hit[1], cached=True, thinking=hit[2])
            else:
                missing.setdefault(k, []).append(i)
        return results, missing

    def _generate_missing(self, requests: Sequence[ChatRequest], missing: dict[str, list[int]],
                          results: list[Completion | None], allowed: float,
                          desc: str) -> tuple[Counter[str], list[int], str]:
        """Generate the misses through the spend gate, filling ``results`` and committing answers to the cache as
        they finish; stop early once more than ``allowed`` failed. Returns (failures by reason, the indices a cap
        kept back, the gate's message)."""
        # Length-sorted so batches pad little; outputs do not depend on batch composition.
        todo = sorted(missing.items(), key=lambda kv: size_of(requests[kv[1][0]]))
        failed: Counter[str] = Counter()
        store = CacheWriter(self.cache, self.settings, missing, results)
        gate = open_gate(self.role, self.settings, self.cache, desc, len(todo))  # spend and caps
        started, loading = time.perf_counter(), self.account.stats.get("load_s", 0.0)
        with tqdm(total=len(requests), initial=len(requests) - sum(len(v) for _, v in todo),
                  desc=desc, unit="req", leave=False) as bar:
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
                            store.pending.append((k, out.text, out.finish_reason, self.role.model, out.thinking))
                    self.account.count([out for _, out in finished])
                    bar.update(done)
                    bar.set_postfix_str(gate.postfix(), refresh=False)
                    if store.due():
                        store.commit()
                    if sum(failed.values()) > allowed:
                        break  # the threshold is passed whatever the rest brings
            finally:
                store.commit()
                # the wall seconds of the backend's work on the misses, its first load apart (load_s)
                self.account.spent(time.perf_counter() - started - (self.account.stats.get("load_s", 0.0) - loading))
        # unsent: kept back by a cap in llm.budget
        return failed, [i for j in gate.unsent for i in todo[j][1]], gate.message

    def _dry_run(self, requests: Sequence[ChatRequest], missing: dict[str, list[int]],
                 results: list[Completion | None], desc: str) -> list[Completion]:
        """A dry run's answers to the misses: stand-ins, or ``dry_run`` failures (evolforge.llm.backends.dryrun)."""
        cache_path = getattr(self.cache, "path", None)
        for k, text in dryrun.record(self.role, cache_path, requests, missing, desc, pinned=self.pinned,
                                     server=self._identity.get("server")).items():
            for i in missing[k]:
                results[i] = (Completion(text, "stop") if text is not None
                              else Completion.failure(dryrun.DRY_RUN, "dry run"))
        return results  # type: ignore[return-value]

    def _run(self, requests: list[ChatRequest], keys: list[str]) -> Iterator[list[tuple[int, Completion]]]:
        """Completions as they finish, as (position in ``requests``, completion) groups to commit.

        A backend that can ``stream`` keeps requests in flight and hands back each one as soon as it ends
        (hf: ``batch_size`` slots; openai: ``concurrency`` connections; vllm: the whole list in large
        chunks); the others take ``batch_size`` requests at a time. One that declares ``call_cache``
        (openai with ``batch_api``: it records its jobs there) also gets the cache and the requests' keys."""
        for group in self._backend_run(requests, keys):
            # a reasoning model's thinking leaves the answer before anything reads it (evolforge.llm.thinking)
            yield [(j, out if requests[j].rank else separate(out, self.role.thinking_tags)) for j, out in group]

    def _backend_run(self, requests: list[ChatRequest], keys: list[str]) -> Iterator[list[tuple[int, Completion]]]:
        backend = self.backend
        if backend.capabilities.stream:
            if backend.capabilities.call_cache:
                yield from backend.stream(requests, slots=self.batch_size, cache=self.cache, keys=keys)
            else:
                yield from backend.stream(requests, slots=self.batch_size)
            return
        for start in range(0, len(requests), self.batch_size):
            outputs = self.backend.generate(requests[start : start + self.batch_size])
            yield list(enumerate(outputs, start))

    def complete(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[str | None]:
        """The texts of :meth:`generate`; None for a failed item (never an invented text)."""
        return [None if c.failed else c.text for c in self.generate(requests, desc=desc)]


def size_of(request: ChatRequest) -> tuple[int, int]:
    """The order misses go to the backend in: by max_tokens, then by length."""
    return request.max_tokens, sum([len(content) for _, content in request.messages])


def open_llm(role: Role, cache: CallCache | None, identity: dict[str, Any] | None = None,
             desc: str | None = None, settings: LLMSettings | None = None,
             engine: dict[str, Any] | None = None, accounting: Accounting | None = None) -> LLM:
    """An LLM for ``role``. Given the model ``identity`` the backend loads only on the first cache miss.
    ``engine``: the role's :func:`resolved_engine` as the models stage recorded it (None: resolved here).
    ``accounting``: where its account is kept (None: the stage's, :func:`stage_accounting`)."""
    return LLM(None if identity is not None else shared_backend(role), cache, role=role, identity=identity,
               desc=desc, settings=settings, engine=engine, accounting=accounting)


def open_role(role: Role, cache: CallCache | None, settings: LLMSettings,
              identities: str | Path = IDENTITY_FILE, *, accounting: Accounting | None = None) -> LLM:
    """The LLM of ``role`` (parsed by the stage: :func:`evolforge.config.runtime.load_llm_params`), pinned by
    ``models/identity.json``; nothing loads until a request misses the cache."""
    try:
        entry = recorded_entry(role, identities) or {}
    except ModelError:
        if not dryrun.active():
            raise
        entry = None  # the models stage has not pinned it as params name it yet
    if entry is None or (not entry and dryrun.active() and role.served):
        # evolforge plan before `dvc repro models`: counted from params alone, asking no server (dryrun module doc)
        llm = open_llm(role, cache, dryrun.params_identity(role), settings=settings, accounting=accounting)
        llm.pinned = False
        return llm
    identity = entry["identity"] if entry else resolve_identity(role)
    return open_llm(role, cache, identity, settings=settings, engine=entry.get("engine"), accounting=accounting)


def open_roles(llms: LLMParams, accounting: Accounting | None = None) -> dict[str, LLM]:
    """An LLM for every role of ``llms`` (:func:`open_role`), all sharing one call cache and one accounting
    (None: the stage's, :func:`stage_accounting`)."""
    cache = open_cache(llms.cache)
    accounting = accounting or stage_accounting()
    return {name: open_role(role, cache, llms.llm, accounting=accounting) for name, role in llms.roles.items()}
