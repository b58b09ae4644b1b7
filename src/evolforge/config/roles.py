"""Model roles from ``params.yaml`` (``roles.<name>``): which model, where, its generation defaults and controls,
and its backend's own settings (``role.settings``: one class per backend, in
:mod:`evolforge.config.backend_settings`, named by its spec in :mod:`evolforge.config.backend_specs`, so what an hf
role can set is no field of a llamacpp role); :func:`load_role` types one.

    >>> load_role({"roles": {"evolver": {"backend": "llamacpp", "model": "m", "batch_size": 6}}}, "evolver").settings
    LlamacppSettings(batch_size=6, threads=None, threads_follow_load=False)

A params type only: the chat requests a role makes are built in the LLM layer (:mod:`evolforge.llm.requests`),
so reading a role (to fine-tune or evaluate ``roles.base``) imports no LLM code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

from annotated_types import Ge, Gt, Le

from evolforge.config.bounds import (NonEmptyStr, NonNegativeFloat, NonNegativeInt, ParamsError, settable,
                                     PositiveFloat, PositiveInt, secret_problems)
from evolforge.config.loader import check_section, parse
from evolforge.config.messages import suggest

from evolforge.config.backend_settings import BackendSettings, HfSettings
from evolforge.config.backend_specs import (BACKEND_NAMES, CHAT_ROLES, CONTROL_NAMES, SPECS, ROLE_NEEDS, checked_as,
                                            spec_of)



@dataclass(frozen=True, slots=True)
class Controls:
    """Generation controls for small models (docs/explanation/controls.md). The empty value (all unset) is no control.

    ``banned_strings`` can never be generated (each also with a leading space); ``assistant_prefix``
    starts the assistant's turn, which the model continues (the returned text is prefix + continuation);
    generation ends before the first ``stop`` string (cut from the text, ``finish_reason`` "stop");
    ``repetition_penalty`` divides (multiplies, when negative) the logits of tokens already generated,
    ``no_repeat_ngram_size`` forbids repeating an n-gram of the generated tokens, ``frequency_penalty``
    subtracts penalty x count from each generated token's logit (OpenAI's definition).

    ``stop_phrases`` is no params control (not in CONTROL_NAMES): a step sets it on requests whose answer it refuses
    once the answer holds ``stop_phrases_at_least`` of these phrases (word 5-grams, as
    :mod:`evolforge.steps.common.copying` counts them). The in-process backends (hf, llamacpp) then end the answer
    there (``finish_reason`` "stop"), saving the rest of its tokens; the others decode it whole, and the step's own
    check refuses it alike. It is part of the cache key."""

    banned_strings: tuple[str, ...] = ()
    assistant_prefix: str | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    frequency_penalty: float | None = None
    stop_phrases: tuple[str, ...] = ()  # set by a step (optimize), never by params
    stop_phrases_at_least: int = 0
    # where each set control was written ("evolve.controls", "roles.evolver"): what a refusal names; never in a key
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def source(self, name: str, default: str) -> str:
        """Where control ``name`` was written (``default`` when not recorded)."""
        return dict(self.sources).get(name, default)

    def used(self) -> list[str]:
        """Names of the controls that are set."""
        return [n for n in CONTROL_NAMES if getattr(self, n) not in (None, ())]

    def active(self) -> bool:
        """Whether anything here shapes decoding: a control that is set, or :attr:`stop_phrases`."""
        return bool(self.used() or self.stop_phrases)

    def key(self) -> dict[str, Any]:
        """The set controls as a plain dict (cache keys): unset ones are left out."""
        key = {n: list(v) if isinstance(v, tuple) else v for n in self.used() for v in [getattr(self, n)]}
        if self.stop_phrases:
            key.update(stop_phrases=list(self.stop_phrases), stop_phrases_at_least=self.stop_phrases_at_least)
        return key

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
    backend: Literal["hf", "llamacpp", "vllm", "openai", "ray"] = field(metadata={  # = BACKEND_NAMES
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
    max_model_len: PositiveInt | None = field(default=None, metadata={
        "help": "the context length (vllm's engine, llamacpp's KV cache: null = 4096, a server's --n_ctx to check "
                "prompts against)",
        "unit": "tokens"})
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
    extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "backend-specific settings: llamacpp reads reuse_prefix, speculative, gpu_layers, extra_bufts "
                "(config/backend_specs.py); vllm and ray pass them to vLLM's engine as written; openai reads none "
                "(its settings are keys of the role); hf does not read them"})
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
    # what the backend takes beside these (HfSettings, OpenAISettings, ...: config/backend_settings.py), from the
    # role's other keys; None: the backend's defaults
    settings: BackendSettings = field(default=None, metadata={"params": False})  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = spec_of(self.backend).settings()

    @property
    def controls(self) -> Controls:
        """The role's generation controls."""
        controls = Controls(tuple(self.banned_strings), self.assistant_prefix, tuple(self.stop),
                            self.repetition_penalty, self.no_repeat_ngram_size, self.frequency_penalty)
        return dataclasses.replace(controls, sources=tuple((n, f"roles.{self.name}") for n in controls.used()))

    @property
    def served(self) -> bool:
        """An OpenAI-compatible server (its settings are :class:`OpenAISettings`)."""
        return spec_of(self.backend).served

    @property
    def transformers(self) -> HfSettings:
        """How a transformers model of this role loads in this process (dtype, device, batch size): its own settings
        for an hf role, the defaults for a model of another backend read with transformers (evolver_analysis)."""
        return self.settings if spec_of(self.backend).transformers else HfSettings()

    @property
    def control_backend(self) -> str:
        """The spec controls are checked against: the backend, or ``openai:<server>`` for a server
        (:func:`~evolforge.config.backend_specs.checked_as`)."""
        return checked_as(self.backend, self.settings.server if self.served else "auto")

    @classmethod
    def from_params(cls, name: str, fields: Mapping[str, Any] | None) -> "Role":
        """``roles.<name>`` checked against the schema (the common keys and those of its backend's settings class):
        types, ranges, unknown keys, another backend's keys, secrets by value."""
        where = f"roles.{name}"
        problems = secret_problems(dict(fields or {}), where) if isinstance(fields, Mapping) else []
        if problems:
            raise ParamsError(problems)
        backend = fields.get("backend") if isinstance(fields, Mapping) else None
        if backend not in BACKEND_NAMES:  # the schema says what is wrong with the backend (or the mapping); a
            # backend's own keys are left out: whether they fit depends on the backend meant
            some_backends = {k for b in BACKEND_NAMES for k in _keys(SPECS[b].settings)}
            checked = {k: v for k, v in fields.items() if k not in some_backends} if isinstance(fields, Mapping) \
                else fields
            return parse(cls, checked, where, name=name)
        kind = SPECS[backend].settings
        mine = {k: v for k, v in fields.items() if k in _keys(kind)}
        rest = {k: v for k, v in fields.items() if k not in mine}
        foreign = _foreign_keys(rest, backend, where)  # another backend's keys, or no role's
        problems = [*foreign.values(), *check_section(kind, mine, where),
                    *check_section(cls, {k: v for k, v in rest.items() if k not in foreign}, where)]
        if problems:
            raise ParamsError(problems)
        role = parse(cls, rest, where, name=name, settings=parse(kind, mine, where))
        problems = (role.server_problems()
                    + controls_problems(role.control_backend, role.controls, where) + role.extra_problems())
        if role.thinking_tags and len(role.thinking_tags) != 2:
            problems.append(f"{where}.thinking_tags: got {json.dumps(role.thinking_tags)}; allowed: the opening and "
                            f"closing markers, e.g. [\"<think>\", \"</think>\"], or [] for none")
        if problems:
            raise ParamsError(problems)
        return role

    def extra_problems(self) -> list[str]:
        """What is wrong with a role its backend cannot serve (``BackendSpec.roles``: a llamacpp scorer, embedder
        or base, a vllm, openai or ray scorer), or an unknown ``extra`` where the backend reads it (llamacpp; the
        server roles read none: :meth:`server_problems`; the others pass ``extra`` on to their engines)."""
        spec = spec_of(self.backend)
        if spec.roles is not None and self.name not in spec.roles:
            serves = (f"the chat roles ({', '.join(sorted(CHAT_ROLES))})" if spec.roles == CHAT_ROLES
                      else f"every role but the {', '.join(sorted(set(ROLE_NEEDS) - spec.roles))}")
            able = [b for b in BACKEND_NAMES if SPECS[b].roles is None or self.name in SPECS[b].roles]
            return [f"roles.{self.name}.backend: {self.backend} serves {serves}, not the {self.name}: "
                    f"{ROLE_NEEDS[self.name]}; use backend {' or '.join(able)}"]
        if spec.extra is None:
            return []
        where = f"roles.{self.name}.extra"
        return [f"{where}.{name}: unknown for backend {self.backend}; allowed: {', '.join(spec.extra)}"
                if name not in spec.extra else f"{where}.{name}: got {value!r}; must be {spec.extra[name][1]}"
                for name, value in self.extra.items()
                if name not in spec.extra or not spec.extra[name][0](value)]

    def server_problems(self) -> list[str]:
        """What is wrong with a server role's settings (``base_url`` / ``base_urls`` / ``batch_api``); none for the
        other backends."""
        return self.settings.problems(f"roles.{self.name}", self.extra) if self.served else []

    def ranking_problems(self, setting: str, backend: str | None = None) -> list[str]:
        """What keeps this role from ranking answers by their probabilities, as ``setting`` (``judge.probabilities``,
        ``verify.probabilities``: the key the user wrote) asks it to; ``backend``: what its requests are checked
        against (``openai:vllm`` once the models stage found the server's kind), by default :attr:`control_backend`."""
        backend = backend or self.control_backend
        spec = spec_of(backend)
        if not spec.ranks:
            return [f"{setting}: {spec.called or f'backend {backend!r}'} (roles.{self.name}) cannot score answers by "
                    f"their probabilities (it needs the log-probabilities of whole answers: backend hf, llamacpp, "
                    f"vllm or openai); set {setting}: false"]
        if spec.ranks_with_tokenizer and not self.settings.tokenizer:
            return [f"{setting}: on vLLM's server it needs roles.{self.name}.tokenizer (the served model's tokenizer, "
                    f"with its chat template) and roles.{self.name}.max_model_len, to put each answer after the "
                    f"prompt; or set {setting}: false"]
        return []


def _keys(cls: type) -> set[str]:
    return {f.name for f in settable(cls)}


def _foreign_keys(fields: Mapping[str, Any], backend: str, where: str) -> dict[str, str]:
    """key -> problem, for each key of ``fields`` (a role's keys but its backend's own) that is no common key of
    a Role: a setting of another backend, or unknown (with the keys a role of ``backend`` may set)."""
    allowed = sorted(_keys(Role) | _keys(SPECS[backend].settings))
    problems = {}
    for key in fields:
        if key in allowed:
            continue
        others = [b for b in BACKEND_NAMES if key in _keys(SPECS[b].settings)]
        if others:
            problems[key] = f"{where}.{key}: a setting of backend {', '.join(others)}, not of {backend}"
        elif isinstance(key, str) and key.isascii() and key.isprintable():  # the schema names the others' characters
            problems[key] = (f"{where}.{key}: unknown key{suggest(key, allowed)} ({where} keys of backend {backend}: "
                             f"{', '.join(allowed)})")
    return problems


def load_role(params: Mapping[str, Any], name: str) -> Role:
    """Role ``name`` (a :class:`Role`)."""
    roles = params.get("roles") or {}
    if name not in roles:
        raise ParamsError([f"roles.{name}: the role is missing; roles present: {sorted(roles)}"])
    return Role.from_params(name, roles[name])
