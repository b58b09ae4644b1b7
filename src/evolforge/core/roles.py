"""Model roles from ``params.yaml`` (``roles.<name>``) and the chat requests they make.

Kept apart from the backends so that reading a role (to fine-tune or evaluate ``roles.base``) imports
no backend code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

BACKEND_NAMES = ("hf", "vllm", "openai")


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request. ``sample_index`` tells apart repeated samples of one prompt."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable and immutable
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    sample_index: int = 0

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, str]], **sampling) -> "ChatRequest":
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **sampling)

    @property
    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]



SECRET_WORDS = ("key", "token", "secret", "password", "auth", "header")


def refuse_secrets(where: str, base_url: str | None, settings: Mapping[str, Any], settings_where: str) -> None:
    """params.yaml is committed and recorded in dvc.lock: a secret written there would leak. Refuses
    credentials or a query string in ``base_url`` (at ``where``) and free-form ``settings`` (at
    ``settings_where``) whose keys name a secret. Keys are read from environment variables instead."""
    from urllib.parse import urlsplit

    if base_url and (urlsplit(base_url).username or urlsplit(base_url).password or urlsplit(base_url).query):
        raise ValueError(f"params.yaml {where}.base_url: no credentials or query string in the URL; "
                         "put the key in an environment variable")
    for k in settings:
        if any(word in k.lower() for word in SECRET_WORDS):
            raise ValueError(f"params.yaml {settings_where}.{k}: secrets do not belong in params; "
                             "put them in an environment variable")


@dataclass
class Role:
    """One model role from ``params.yaml`` (``roles.<name>``): which model, where, and its defaults."""

    name: str
    backend: str
    model: str
    revision: str | None = None
    # generation defaults; a stage may override them per call
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    # hf / vllm
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    # openai-compatible servers
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 5
    # openai: pace requests to a provider's limits (None = no limit); tokens are prompt + max_tokens
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    # openai: a tokenizer (hub id or local path) to check prompts against max_model_len before sending
    tokenizer: str | None = None
    # optional prices per million tokens (any currency); LLM.stats then carries the cost
    price_per_mtok_prompt: float | None = None
    price_per_mtok_completion: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> "Role":
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"params.yaml roles.{name}: unknown key(s) {unknown}; expected some of {sorted(known)}"
            )
        for required in ("backend", "model"):
            if not params.get(required):
                raise ValueError(f"params.yaml roles.{name}: '{required}' is required")
        refuse_secrets(f"roles.{name}", params.get("base_url"), params.get("extra") or {}, f"roles.{name}.extra")
        if params["backend"] not in BACKEND_NAMES:
            raise ValueError(
                f"params.yaml roles.{name}.backend: {params['backend']!r} is not one of {list(BACKEND_NAMES)}"
            )
        return cls(name=name, **params)

    def request(self, messages: Sequence[Mapping[str, str]], **overrides) -> ChatRequest:
        """A request with this role's generation defaults, overridden where given (None = default)."""
        sampling = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        sampling.update({k: v for k, v in overrides.items() if v is not None})
        return ChatRequest.chat(messages, **sampling)
