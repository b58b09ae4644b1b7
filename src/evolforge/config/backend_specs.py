"""What each backend can do, declared once: the generation controls it honours (and why not where it does
not), whether it scores given answers by their log-probabilities (``judge.probabilities``,
``verify.probabilities``: ranking), which roles it can serve (:data:`ROLE_NEEDS`: a scorer needs a transformers
model's logits), which ``extra`` settings it reads, and what it is (a server, the scorer's in-process
transformers model, a build whose kernels are probed). The role checks (:mod:`evolforge.config.roles`,
``evolforge check``, the models stage), the LLM layer and the steps ask this table what a backend does, never
test its name; docs/explanation/controls.md explains it. What a role of each backend sets beside the common keys
is its settings class (:mod:`evolforge.config.backend_settings`).

An ``openai`` role's server is ``openai:<kind>`` once its kind is known (``Role.server``, or found by the
models stage), ``openai:any`` while it is not: a server is held to what its API offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from evolforge.config.backend_settings import (BackendSettings, HfSettings, LlamacppSettings, LocalSettings,
                                               OpenAISettings, RaySettings, VllmSettings)

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
_ALL = frozenset(CONTROL_NAMES)
_SERVED = _ALL - {"no_repeat_ngram_size"}  # vLLM's engine and the vLLM / llama.cpp servers: no n-gram ban


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _layers(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= -1


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
    # ranks from the log-probabilities a server lists for given tokens (vLLM's logprob_token_ids): each answer is put
    # after the prompt with the role's tokenizer, so a ranking needs roles.<name>.tokenizer (the others walk
    # top_logprobs)
    ranks_with_tokenizer: bool = False
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
    # every server kind ranks: vLLM's from the log-probabilities of given tokens, the others from a walk of the chat
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
    # vLLM's /completions list given tokens' log-probabilities (ranking needs the role's tokenizer there)
    "openai:vllm": BackendSpec(_SERVED, OpenAISettings, ranks=True, served=True, called="vllm's server",
                               ranks_with_tokenizer=True,
                               why_not={"no_repeat_ngram_size": _NO_NGRAM_SERVER.format("vLLM")}),
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
