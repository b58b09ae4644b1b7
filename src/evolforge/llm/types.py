"""What the LLM layer exchanges: a :class:`Completion` per request (or the reason it has none), what a backend
provides (:class:`Backend`), and the refusals made before any call (controls or ranking a backend cannot honour)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

from evolforge.config.backend_specs import spec_of
from evolforge.config.roles import Controls, controls_problems
from evolforge.llm.requests import ChatRequest

# failure_reason values: why an item got no completion
PROMPT_TOO_LONG = "prompt_too_long"  # the prompt does not fit the model's context (checked before sending)
REQUEST_REJECTED = "request_rejected"  # the server refused this request (a non-retryable 4xx)
RETRIES_EXHAUSTED = "retries_exhausted"  # every attempt failed (timeouts, 429, 5xx, dropped connections)
# how much of a failure's detail is kept: a server's message whole (a validation error quotes the request and
# ends with the fix), never a proxy's whole HTML page
ERROR_CHARS = 20_000


@dataclass(frozen=True, slots=True)  # slots: one per item, as ChatRequest
class Completion:
    text: str
    finish_reason: str | None = None  # "stop" | "length" | None when the backend does not say
    cached: bool = False
    failure_reason: str | None = None  # set when the item got no completion (then text is "")
    error: str | None = None  # the failure's detail: the server's message whole (up to ERROR_CHARS), never the key
    # tokens this call used (from the server's usage, or counted); None when unknown or cached.
    # completion_tokens counts every generated token, a reasoning model's thinking included
    prompt_tokens: int | None = field(default=None, compare=False)
    completion_tokens: int | None = field(default=None, compare=False)
    # a reasoning model's thinking, apart from ``text`` (evolforge.llm.thinking); None when it did not think
    thinking: str | None = None
    # of completion_tokens, the thinking's (where the server reports it) and the prompt's served from the
    # server's prefix cache (usage.prompt_tokens_details.cached_tokens; priced at price_per_mtok_cached_prompt)
    thinking_tokens: int | None = field(default=None, compare=False)
    cached_prompt_tokens: int | None = field(default=None, compare=False)
    # of prompt_tokens, those a backend found already evaluated in its KV store (llamacpp); None when unknown
    prompt_cached: int | None = field(default=None, compare=False)
    # of a ranking, the tokens of its choices' trie a backend evaluated after the prompt (llamacpp); None when unknown
    ranked_tokens: int | None = field(default=None, compare=False)

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


def refuse_ranking(backend: str, requests: Sequence[ChatRequest], where: str) -> None:
    """Raise :class:`ControlsError` when ``backend`` cannot rank a request's choices by likelihood."""
    if not spec_of(backend).ranks and any(r.rank for r in requests):
        # the stage that asks names its own setting first (evolforge.config.servers.ranking_problems); this is the
        # last guard, for a caller that did not
        raise ControlsError(f"{where}: {backend.replace('openai:', 'the ')} "
                            f"{'server' if backend.startswith('openai') else 'backend'} cannot score answers by "
                            f"their probabilities (it needs the log-probabilities of whole answers: backend "
                            f"hf, llamacpp, vllm or openai); set the setting that asked for them to false "
                            f"(judge.probabilities for the judge stage, verify.probabilities for verify)")
    if any(r.rank and not r.choices for r in requests):
        raise ControlsError(f"{where}: a ranking request needs its choices")


class LLMFailureError(RuntimeError):
    """Too many of a stage's calls failed (``llm.max_failure_rate``); every completion was committed first."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers beyond ``generate``, declared by the backend (the LLM reads it, never probes)."""

    # stream(requests, slots) yields lists of (index, completion) as requests finish (hf, llamacpp, vllm,
    # openai, ray); without it the LLM hands ``generate`` batch_size requests at a time
    stream: bool = False
    # stream also takes cache= and keys=: it records its jobs in the call cache (openai with batch_api)
    call_cache: bool = False
    # runs_with() says what the role's ``auto`` device / dtype resolved to where it loaded (hf), or which kernels
    # the model loaded with (llamacpp's extra_bufts, as the kernel probe chose them)
    runs_with: bool = False


class Backend(Protocol):
    """What a backend provides. ``generate`` keeps the order of its input; an item that cannot be served
    comes back as a failed completion (``Completion.failure``), and only a fault that concerns every
    request (a bad key, a wrong URL) raises. ``capabilities`` says what else it offers."""

    name: str
    capabilities: Capabilities

    def identity(self) -> dict[str, Any]: ...

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...


def collect(finished_groups: Iterator[list[tuple[int, "Completion"]]], n: int) -> list["Completion"]:
    """The completions a backend's ``stream`` yields, put back in request order (its ``generate``)."""
    results: list[Completion | None] = [None] * n
    for finished in finished_groups:
        for i, completion in finished:
            results[i] = completion
    return results  # type: ignore[return-value]
