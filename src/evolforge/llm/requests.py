"""The chat requests the LLM layer sends: :class:`ChatRequest` (one completion asked for, hashable, part of its
cache key) and :func:`role_request` (a request with a role's generation defaults, overridden per call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from evolforge.config.roles import Controls, Role


@dataclass(frozen=True, slots=True)  # slots: a stage holds one per item (a third less memory, built faster)
class ChatRequest:
    """One chat completion request. ``sample_index`` tells apart repeated samples of one prompt.

    ``choices``, when given, constrains the answer to exactly one of those strings (a judge's labels,
    a score's numbers): each backend enforces it its own way (see :mod:`evolforge.llm`)."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable and immutable
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    sample_index: int = 0
    choices: tuple[str, ...] | None = None
    controls: Controls | None = None  # None (or all unset) = none: the request's key is as it always was
    # with choices: instead of decoding, score every choice's likelihood; the text is then the JSON list of
    # the choices' log-probabilities (each choice and the end of the turn), in order (evolforge.llm.ranking)
    rank: bool = False

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, str]], **sampling) -> "ChatRequest":
        return cls(messages=tuple([(m["role"], m["content"]) for m in messages]), **sampling)

    @property
    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def as_json(self) -> dict[str, Any]:
        """The whole request as JSON values; :meth:`from_json` rebuilds an equal one (same key, same seed).
        Controls keep the set ones (not where each was written, which no comparison sees)."""
        return {"messages": [list(m) for m in self.messages], "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed, "sample_index": self.sample_index,
                "choices": None if self.choices is None else list(self.choices),
                "controls": None if self.controls is None else self.controls.key(), "rank": self.rank}

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "ChatRequest":
        controls = fields.get("controls")
        return cls(tuple((role, content) for role, content in fields["messages"]), fields["temperature"],
                   fields["top_p"], fields["max_tokens"], fields["seed"], fields["sample_index"],
                   None if fields.get("choices") is None else tuple(fields["choices"]),
                   None if controls is None else Controls(**{k: tuple(v) if isinstance(v, list) else v
                                                             for k, v in controls.items()}),
                   fields.get("rank", False))


def role_request(role: Role, messages: Sequence[Mapping[str, str]], *, temperature: float | None = None,
                 top_p: float | None = None, max_tokens: int | None = None, seed: int | None = None,
                 sample_index: int | None = None, choices: Sequence[str] | None = None,
                 controls: Controls | None = None, rank: bool = False) -> ChatRequest:
    """A request with the role's generation defaults, overridden where given (None = default).
    Called once per item of a stage: the fields are passed as they are, not through a dict.
    ``controls`` replaces the role's own (build it with ``role.controls.merged(stage_overrides)``)."""
    controls = role.controls if controls is None else controls
    return ChatRequest(tuple([(m["role"], m["content"]) for m in messages]),
                       role.temperature if temperature is None else temperature,
                       role.top_p if top_p is None else top_p,
                       (role.max_tokens if max_tokens is None else max_tokens) + role.thinking_budget,
                       role.seed if seed is None else seed,
                       0 if sample_index is None else sample_index,
                       None if choices is None else tuple(choices),
                       controls if controls.active() else None, rank)
