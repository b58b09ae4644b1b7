"""Model roles from ``params.yaml`` (``roles.<name>``): which model, where, its generation defaults and controls;
:func:`load_role` types one.

    >>> load_role({"roles": {"evolver": {"backend": "hf", "model": "m"}}}, "evolver").batch_size
    8

A params type only: the chat requests a role makes are built in the LLM layer (:mod:`evolforge.llm.requests`),
so reading a role (to fine-tune or evaluate ``roles.base``) imports no LLM code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le

from evolforge.config.bounds import (NonEmptyStr, NonNegativeFloat, NonNegativeInt, ParamsError,
                                     PositiveFloat, PositiveInt, secret_problems)
from evolforge.config.loader import parse

from evolforge.config.backend_specs import CHAT_ROLES, CONTROL_NAMES, checked_as, spec_of

BACKEND_NAMES = ("hf", "llamacpp", "vllm", "openai", "ray")  # = the `backend` Literal of Role


@dataclass(frozen=True, slots=True)
class Controls:
    """Generation controls for small models (docs/explanation/controls.md). The empty value (all unset) is no control.

    ``banned_strings`` can never be generated (each also with a leading space); ``assistant_prefix``
    starts the assistant's turn, which the model continues (the returned text is prefix + continuation);
    generation ends before the first ``stop`` string (cut from the text, ``finish_reason`` "stop");
    ``repetition_penalty`` divides (multiplies, when negative) the logits of tokens already generated,
    ``no_repeat_ngram_size`` forbids repeating an n-gram of the generated tokens, ``frequency_penalty``
    subtracts penalty x count from each generated token's logit (OpenAI's definition)."""

    banned_strings: tuple[str, ...] = ()
    assistant_prefix: str | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    frequency_penalty: float | None = None
    # where each set control was written ("evolve.controls", "roles.evolver"): what a refusal names; never in a key
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def source(self, name: str, default: str) -> str:
        """Where control ``name`` was written (``default`` when not recorded)."""
        return dict(self.sources).get(name, default)

    def used(self) -> list[str]:
        """Names of the controls that are set."""
        return [n for n in CONTROL_NAMES if getattr(self, n) not in (None, ())]

    def key(self) -> dict[str, Any]:
        """The set controls as a plain dict (cache keys): unset ones are left out."""
        return {n: list(v) if isinstance(v, tuple) else v for n in self.used() for v in [getattr(self, n)]}

    def merged(self, overrides: Mapping[str, Any] | None, where: str | None = None) -> "Controls":
        """These controls with the non-null ``overrides`` (a stage's ``controls`` section, written at ``where``,
        e.g. "evolve.controls") put over them."""
        fields = {n: getattr(self, n) for n in CONTROL_NAMES}
        sources = dict(self.sources)
        for name, value in (overrides or {}).items():
            if value is not None:
                fields[name] = tuple(value) if isinstance(value, list) else value
                if where:
                    sources[name] = where
        return Controls(**fields, sources=tuple(sorted(sources.items())))


def controls_problems(backend: str, controls: "Controls", where: str) -> list[str]:
    """One message per control that ``backend`` cannot honour (empty when it honours them all)."""
    problems, spec = [], spec_of(backend)
    for name in controls.used():
        if name not in spec.controls:
            why = spec.why_not.get(name, f"the {backend} backend does not implement it")
            at = controls.source(name, where)
            role = f" ({where})" if at != where else ""
            problems.append(f"{at}.{name}: {spec.called or f'backend {backend!r}'}{role} cannot honour this "
                            f"generation control ({why}); remove it or use a backend that can "
                            "(docs/explanation/controls.md)")
    return problems


# add a role's name here first
ROLE_NAMES = ("evolver", "optimizer", "responder", "judge", "scorer", "embedder", "base")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def refuse_secrets(where: str, base_url: str | None, settings: Mapping[str, Any], settings_where: str) -> None:
    """params.yaml is committed and recorded in dvc.lock: a secret written there would leak. Refuses any
    secret-shaped value (see :func:`evolforge.config.bounds.find_secrets`: recognised by value, whatever the
    key's name) in ``base_url`` (at ``where``) and in the free-form ``settings`` (at ``settings_where``),
    naming the key path only, never the value. Keys are read from environment variables instead."""
    problems = secret_problems({"base_url": base_url}
                               if base_url else {}, where) + secret_problems(dict(settings), settings_where)
    if problems:
        raise ParamsError(problems)


@dataclass
class Role:
    """One model role from ``params.yaml`` (``roles.<name>``): which model, where, and its defaults."""

    name: str = field(metadata={"params": False})  # the key under `roles`, set by from_params
    backend: Literal["hf", "llamacpp", "vllm", "openai", "ray"] = field(metadata={
        "help": "what runs the model: hf (transformers in-process), llamacpp (a GGUF on llama.cpp, chat roles only), "
                "vllm (GPU extra), openai (any OpenAI-compatible server), ray (Ray Data)"})
    model: NonEmptyStr = field(metadata={
        "help": "a local folder or a hub id (llamacpp: a folder with one .gguf and its tokenizer; openai: the served "
                "model id)"})
    revision: str | None = field(default=None, metadata={
        "help": "hub id: the revision to pin (resolved to a commit sha by the models stage); a server: a label of "
                "the weights it serves, changed with them"})
    temperature: NonNegativeFloat = field(default=0.0, metadata={
        "help": "generation default; a stage setting that is not null overrides it per call",
        "paper": "evolver 0.7 (SLM), optimizer 0.6 (Auto Evol-Instruct)"})
    top_p: Annotated[float, Gt(0), Le(1)] = field(default=1.0, metadata={
        "help": "generation default (nucleus sampling); a stage setting that is not null overrides it",
        "paper": "0.95"})
    max_tokens: PositiveInt = field(default=256, metadata={
        "help": "generation default: new tokens per completion; a stage setting that is not null overrides it",
        "unit": "tokens",
        "paper": "2048"})
    seed: int = field(default=0, metadata={"help": "the base of each request's seed (with the item and sample index)"})
    # hf / vllm
    batch_size: PositiveInt = field(default=8, metadata={"help": "hf / vllm / llamacpp: requests decoded together"})
    dtype: str = field(default="auto", metadata={
        "help": "hf / vllm: weights' dtype; auto resolves on this machine (bfloat16 on GPU, float32 on CPU) and is "
                "recorded in the identity"})
    device: str = field(default="auto", metadata={
        "help": "hf: where the model runs; auto = cuda where torch sees a GPU, else cpu (recorded in the identity)"})
    tensor_parallel_size: PositiveInt = field(default=1, metadata={
        "help": "vllm (and ray's vllm engines): GPUs one model is split across"})
    gpu_memory_utilization: Annotated[float, Gt(0), Le(1)] = field(default=0.9, metadata={
        "help": "vllm: the share of GPU memory the engine may take"})
    max_model_len: PositiveInt | None = field(default=None, metadata={
        "help": "the context length (vllm's engine, llamacpp's KV cache: null = 4096, a server's --n_ctx to check "
                "prompts against)",
        "unit": "tokens"})
    threads: PositiveInt | None = field(default=None, metadata={
        "help": "hf, llamacpp: CPU threads; None = every usable core (llm/threads.py)"})
    threads_follow_load: bool = field(default=False, metadata={
        "help": "hf, llamacpp without `threads`: fewer threads while other processes keep cores busy, picked again "
                "at a call 30 s after the last pick; faster on a shared machine, but the count changes llama.cpp's "
                "logits, so a rerun may then decode other tokens"})
    # ray: a Ray Data pipeline over `replicas` actors (docs/how-to/scale-ray.md)
    ray_address: str | None = field(default=None, metadata={
        "help": "ray: an existing cluster (\"auto\", \"ray://host:10001\"); None = start a local one "
                "(docs/how-to/scale-ray.md)"})
    replicas: PositiveInt = field(default=1, metadata={
        "help": "actors, each holding one copy of the model (data parallel)"})
    engine: Literal["auto", "vllm", "hf"] = field(default="auto", metadata={
        "help": "what each actor runs; auto = vllm when the cluster has GPUs"})
    gpus_per_replica: NonNegativeFloat | None = field(default=None, metadata={
        "help": "hf actors (vllm ones take tensor_parallel_size); None = 0"})
    # openai-compatible servers
    base_url: str | None = field(default=None, metadata={
        "help": "openai: the server's URL, e.g. http://127.0.0.1:8000/v1"})
    base_urls: list[NonEmptyStr] | None = field(default=None, metadata={
        "help": "or several replicas of one model (e.g. one `vllm serve` per GPU), instead of base_url"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "the NAME of the environment variable holding the key"})
    served_identity: NonEmptyStr | None = field(default=None, metadata={
        "help": "openai: the identity you state for a server without GET /models (e.g. the weights' sha or a release "
                "tag; change it when the weights change): the models stage then does not ask the server"})
    server: Literal["auto", "vllm", "llamacpp", "openai"] = field(default="auto", metadata={
        "help": "openai: what the server is -- vllm, llamacpp (llama.cpp's or llama-cpp-python's server) or openai "
                "(any other: the OpenAI API's own parameters only); auto = found from GET /models by the models "
                "stage, recorded in the identity"})
    concurrency: PositiveInt = field(default=8, metadata={
        "help": "requests in flight per server (per replica with base_urls)"})
    timeout_s: PositiveFloat = field(default=120.0, metadata={
        "help": "openai: seconds one request may take before it is retried",
        "unit": "s"})
    max_retries: NonNegativeInt = field(default=5, metadata={
        "help": "openai: retries of a failed request before it is the item's recorded failure (retries_exhausted)"})
    requests_per_minute: PositiveFloat | None = field(default=None, metadata={
        "help": "openai: pace requests to a provider's limit (None = no limit)"})
    tokens_per_minute: PositiveFloat | None = field(default=None, metadata={
        "help": "openai: pace requests to a provider's token limit, counting prompt + max_tokens (None = no limit)",
        "unit": "tokens / minute"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "openai: a tokenizer (hub id or local path) to check prompts against max_model_len before sending"})
    choice_format: Literal["response_format", "structured_outputs", "none"] = field(
        default="response_format", metadata={
        "help": "openai: how an answer is held to a request's choices -- response_format (a JSON schema with an "
                "enum: OpenAI, vLLM, SGLang, llama.cpp), structured_outputs (vLLM's exact-choice extension) or none "
                "(free text)"})
    # optional prices per million tokens (any currency); LLM.stats then carries the cost
    price_per_mtok_prompt: NonNegativeFloat | None = field(default=None, metadata={
        "help": "optional price per million prompt tokens (any currency); the stage's metrics then carry the cost"})
    price_per_mtok_completion: NonNegativeFloat | None = field(default=None, metadata={
        "help": "optional price per million completion tokens (any currency)"})
    price_per_mtok_cached_prompt: NonNegativeFloat | None = field(default=None, metadata={
        "help": "the price of prompt tokens a provider serves from its prompt cache "
                "(usage.prompt_tokens_details.cached_tokens); None: they cost price_per_mtok_prompt"})
    thinking_tags: list[NonEmptyStr] = field(default_factory=lambda: ["<think>", "</think>"], metadata={
        "help": "a reasoning model's thinking (evolforge.llm.thinking): the markers around it in the text, [open, "
                "close] ([] = none: the text is the answer whatever it holds); a server's reasoning_content is "
                "always kept apart"})
    thinking_budget: NonNegativeInt = field(default=0, metadata={
        "help": "tokens a thinking model may think, added to every request's max_tokens (a stage's own max_tokens, "
                "e.g. a judge's 8, is what the answer may take; servers count max_tokens over thinking and answer "
                "together)"})
    batch_api: bool = field(default=False, metadata={
        "help": "openai: submit a stage's cache misses as batch jobs (POST /files + /batches: about half the price, "
                "results within batch_completion_window), polled every batch_poll_s seconds"})
    batch_poll_s: PositiveFloat = field(default=30.0, metadata={
        "help": "openai with batch_api: seconds between polls of a batch job",
        "unit": "s"})
    batch_completion_window: NonEmptyStr = field(default="24h", metadata={
        "help": "openai with batch_api: the completion window asked of the provider"})
    batch_max_requests: PositiveInt = field(default=50_000, metadata={
        "help": "requests per job (OpenAI's limit per batch is 50,000)"})
    extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "backend-specific settings: llamacpp reads reuse_prefix, speculative, gpu_layers "
                "(config/backend_specs.py); other backends pass them to the engine as written"})
    # generation controls for small models (see Controls, docs/explanation/controls.md); a stage's `controls` overrides
    banned_strings: list[str] = field(default_factory=list, metadata={
        "help": "generation control: strings that can never be generated (each also with a leading space); a stage's "
                "`controls` overrides (docs/explanation/controls.md)"})
    assistant_prefix: str | None = field(default=None, metadata={
        "help": "generation control: text that starts the assistant's turn, which the model continues"})
    stop: list[NonEmptyStr] = field(default_factory=list, metadata={
        "help": "generation control: generation ends before the first of these strings (cut from the text)"})
    repetition_penalty: PositiveFloat | None = field(default=None, metadata={
        "help": "generation control: divides the logits of tokens already generated (multiplies negative ones)"})
    no_repeat_ngram_size: PositiveInt | None = field(default=None, metadata={
        "help": "generation control: forbids repeating an n-gram of the generated tokens (hf, llamacpp)"})
    frequency_penalty: Annotated[float, Ge(-2), Le(2)] | None = field(default=None, metadata={
        "help": "generation control: subtracts penalty x count from each generated token's logit (OpenAI's "
                "definition)"})

    @property
    def controls(self) -> Controls:
        """The role's generation controls."""
        controls = Controls(tuple(self.banned_strings), self.assistant_prefix, tuple(self.stop),
                            self.repetition_penalty, self.no_repeat_ngram_size, self.frequency_penalty)
        return dataclasses.replace(controls, sources=tuple((n, f"roles.{self.name}") for n in controls.used()))

    @property
    def control_backend(self) -> str:
        """The spec controls are checked against: the backend, or ``openai:<server>`` for a server
        (:func:`~evolforge.config.backend_specs.checked_as`)."""
        return checked_as(self.backend, self.server)

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any] | None) -> "Role":
        """``roles.<name>`` checked against the schema: types, ranges, unknown keys, secrets by value."""
        where = f"roles.{name}"
        problems = secret_problems(dict(params or {}), where) if isinstance(params, Mapping) else []
        if problems:
            raise ParamsError(problems)
        role = parse(cls, params, where, name=name)
        if role.api_key_env is not None and not _ENV_NAME.match(role.api_key_env):
            # the value itself is never shown: a key pasted here instead of a variable's name must not be echoed
            raise ParamsError([f"{where}.api_key_env: must be the NAME of an environment variable (capitals, digits "
                               "and _, e.g. OPENAI_API_KEY), not the key itself; the value given is not shown"])
        problems = (role.server_problems()
                    + controls_problems(role.control_backend, role.controls, where) + role.extra_problems())
        if role.thinking_tags and len(role.thinking_tags) != 2:
            problems.append(f"{where}.thinking_tags: got {json.dumps(role.thinking_tags)}; allowed: the opening and "
                            f"closing markers, e.g. [\"<think>\", \"</think>\"], or [] for none")
        if problems:
            raise ParamsError(problems)
        return role

    @property
    def urls(self) -> list[str]:
        """The servers of an openai role: ``base_urls``, or ``[base_url]`` (empty when neither is set)."""
        return list(self.base_urls) if self.base_urls else ([self.base_url] if self.base_url else [])

    def extra_problems(self) -> list[str]:
        """What is wrong with a role its backend cannot serve (a llamacpp scorer: scores, embeddings and training
        need a transformers model), or an unknown ``extra`` where the backend reads it (llamacpp; the others
        pass ``extra`` on to their engines)."""
        spec = spec_of(self.backend)
        if spec.roles is not None and self.name in ("scorer", "embedder", "base"):
            return [f"roles.{self.name}.backend: {self.backend} serves the chat roles "
                    f"({', '.join(sorted(CHAT_ROLES))}); "
                    f"{self.name} runs in-process on a transformers model: backend hf"]
        if spec.extra is None:
            return []
        where = f"roles.{self.name}.extra"
        return [f"{where}.{name}: unknown for backend {self.backend}; allowed: {', '.join(spec.extra)}"
                if name not in spec.extra else f"{where}.{name}: got {value!r}; must be {spec.extra[name][1]}"
                for name, value in self.extra.items()
                if name not in spec.extra or not spec.extra[name][0](value)]

    def server_problems(self) -> list[str]:
        """What is wrong with the role's server settings (``base_url`` / ``base_urls`` / ``batch_api``)."""
        where = f"roles.{self.name}"
        problems = []
        if self.base_url is not None and self.base_urls is not None:
            problems.append(f"{where}: give base_url (one server) or base_urls (replicas of one model), not both")
        if self.base_urls is not None:
            if not self.base_urls:
                problems.append(f"{where}.base_urls: an empty list; list at least one server, or use base_url")
            seen: set[str] = set()
            for i, url in enumerate(self.base_urls):
                canonical = url.rstrip("/")
                if canonical in seen:
                    problems.append(f"{where}.base_urls[{i}]: {url!r} is listed twice")
                seen.add(canonical)
        served = spec_of(self.backend).served
        if served and self.base_url is None and self.base_urls is None:
            problems.append(f"{where}: backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1), or base_urls "
                            "for several replicas of one model")
        given = [("base_url", self.base_url)] if self.base_url is not None else []
        given += [(f"base_urls[{i}]", u) for i, u in enumerate(self.base_urls or [])]
        for field_name, url in given:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"{where}.{field_name}: got {json.dumps(url)}; allowed: an http:// or https:// URL "
                                "with a host, e.g. http://127.0.0.1:8000/v1")
        backoff = self.extra.get("backoff_s")
        if served and "backoff_s" in self.extra and (
                isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not math.isfinite(backoff)
                or backoff < 0):
            problems.append(f"{where}.extra.backoff_s: got {json.dumps(backoff, default=str)}; allowed: a number "
                            "of seconds >= 0 (the first retry's wait, doubled on each retry; default 1)")
        if self.served_identity is not None and not served:
            problems.append(f"{where}.served_identity: only an openai role states its identity; the others are pinned "
                            "from their weights or hub revision")
        if self.batch_api and not served:
            problems.append(f"{where}.batch_api: only an openai role can use a provider's batch API")
        if self.batch_api and self.base_urls is not None and len(self.base_urls) > 1:
            problems.append(f"{where}.batch_api: a batch job goes to one provider; use base_url, not several base_urls")
        for limit in ("requests_per_minute", "tokens_per_minute"):
            if self.batch_api and getattr(self, limit) is not None:
                # silently ignored otherwise: a batch job is scheduled by the provider, not paced by us
                problems.append(f"{where}.{limit}: paces requests sent one by one; with batch_api the provider "
                                f"schedules the job under its own batch limits (queued tokens): remove {limit} "
                                f"or set batch_api: false")
        return problems


def load_role(params: Mapping[str, Any], name: str) -> Role:
    """Role ``name`` (a :class:`Role`)."""
    roles = params.get("roles") or {}
    if name not in roles:
        raise ParamsError([f"roles.{name}: the role is missing; roles present: {sorted(roles)}"])
    return Role.from_params(name, roles[name])
