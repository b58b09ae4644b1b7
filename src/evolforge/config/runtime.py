"""The settings of the LLM layer's machinery, whatever a stage computes: ``cache`` (where completions are kept)
and ``llm`` (when calls are committed, when a stage gives up, the spend caps of ``llm.budget``), parsed with a
stage's roles once into :class:`LLMParams`, all the LLM layer is given (never params itself). The other
sections of no step: :mod:`~evolforge.config.data` (how the data stages stream their tables),
:mod:`~evolforge.config.fetch_model` (where the shipped model's file comes from), :mod:`~evolforge.config.training`.

Like every settings module, it holds dataclasses (``TypedDict`` for nested mappings) whose fields carry the
defaults and the types; :mod:`evolforge.schema` maps each params section to its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import (NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                                     PositiveInt, Probability)
from evolforge.config.loader import load_section
from evolforge.config.roles import Role, load_role


@dataclass
class CacheSettings:
    """``cache``; a relative path is relative to the repository root."""

    path: NonEmptyStr = field(default=".evolforge/cache.sqlite", metadata={
        "help": "the LLM call cache (SQLite), outside DVC outputs; a relative path is relative to the repository "
                "root"})


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class SpendCap(TypedDict, total=False):
    """A ceiling on spend (docs/explanation/llm.md "Spend caps"); absent or null = no ceiling of that kind."""

    cost: NonNegativeFloat | None  # in the roles' price currency (only roles with prices count)
    tokens: NonNegativeInt | None  # prompt + completion tokens


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class RoleBudget(TypedDict, total=False):
    """``llm.budget.roles.<role>``: one role's caps."""

    run: SpendCap  # this run (EVOLFORGE_RUN_ID, else one stage process)
    total: SpendCap  # everything recorded in the cache database


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class BudgetSettings(TypedDict, total=False):
    """``llm.budget``: hard caps; a stage stops sending before one would be passed (evolforge.llm.budget)."""

    run: SpendCap  # all roles together, this run
    total: SpendCap  # all roles together, cumulative in the cache database
    roles: dict[str, RoleBudget]


@dataclass
class LLMSettings:
    """``llm``: how every role's calls are committed and when a stage gives up."""

    max_failure_rate: Probability = field(default=0.05, metadata={
        "help": "a generate call fails past this share of failed items"})
    commit_every: PositiveInt = field(default=65536, metadata={
        "help": "commit completions every N (large transactions: SQLite writes less per row) ..."})
    commit_interval_s: PositiveFloat = field(default=0.5, metadata={
        "help": "... or this many seconds, whichever comes first (or 4 commit durations)",
        "unit": "s"})
    budget: BudgetSettings = field(default_factory=dict, metadata={
        "help": "hard spend caps, none by default: run / total / roles.<role>, each {cost, tokens} "
                "(docs/explanation/llm.md \"Spend caps\")"})


@dataclass(frozen=True)
class LLMParams:
    """What a stage opens its LLMs from (``evolforge.llm.open_role(llms.roles["judge"], cache, llms.llm)``),
    parsed from params once by :func:`load_llm_params`: the roles it uses (typed, each checked once: secrets
    by value, server settings, controls, extras), ``llm`` and ``cache``."""

    roles: Mapping[str, Role]
    llm: LLMSettings
    cache: CacheSettings


def load_llm_params(params: Mapping[str, Any], roles: Sequence[str]) -> LLMParams:
    """The :class:`LLMParams` of a stage that uses ``roles`` (a literal tuple of role names: tools/stage_params.py
    reads it to know which ``roles.<name>`` the stage depends on).

    >>> load_llm_params({"roles": {"judge": {"backend": "hf", "model": "m"}}}, ("judge",)).roles["judge"].settings
    HfSettings(batch_size=8, dtype='auto', device='auto', threads=None, threads_follow_load=False, replicas=1)
    """
    return LLMParams({name: load_role(params, name) for name in roles}, load_section(params, "llm", LLMSettings),
                     load_section(params, "cache", CacheSettings))
