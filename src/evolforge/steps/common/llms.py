"""The LLMs a step calls: the roles its stage parsed from params.yaml
(:func:`~evolforge.config.runtime.load_llm_params`), each opened (:func:`~evolforge.llm.cached.open_role`) when
the step first asks for it, all sharing one call cache.

A stage parses the roles it may use and hands them to its step; the step asks for the ones its settings and
its data call for, so a role it leaves unused is never opened (its identity never resolved): the evolve step
opens the judge only for the judge checks, a skipped AutoIF stage opens none::

    llms = RoleLLMs(load_llm_params(params, ("judge",)))      # in the stage script
    judge = llms["judge"]                                     # in the step: the opened LLM
"""

from __future__ import annotations

from typing import Iterator, Mapping

from evolforge.config.roles import Role
from evolforge.config.runtime import LLMParams, LLMSettings
from evolforge.llm.cache import CallCache, open_cache
from evolforge.llm.cached import LLM, open_role


class RoleLLMs(Mapping[str, LLM]):
    """Role name -> its opened :class:`~evolforge.llm.cached.LLM`, opened on first use; ``None``: no role (a
    stage that asks none in this run, as a skipped one)."""

    def __init__(self, llms: LLMParams | None) -> None:
        self.params = llms
        self._cache: CallCache | None = None
        self._opened: dict[str, LLM] = {}

    @property
    def cache(self) -> CallCache:
        """The call cache every LLM of the stage shares (``cache``), opened once."""
        if self._cache is None:
            self._cache = open_cache(self._params().cache)
        return self._cache

    @property
    def settings(self) -> LLMSettings:
        """The ``llm`` section, for an LLM a step opens itself (another model on a role's settings)."""
        return self._params().llm

    def role(self, name: str) -> Role:
        """Role ``name`` as parsed (its model, backend and defaults), without opening it."""
        return self._params().roles[name]

    def _params(self) -> LLMParams:
        if self.params is None:
            raise KeyError("this stage parsed no role")
        return self.params

    def __getitem__(self, name: str) -> LLM:
        if name not in self._opened:
            self._opened[name] = open_role(self.role(name), self.cache, self.settings)
        return self._opened[name]

    def __contains__(self, name: object) -> bool:  # a parsed role, opened or not (Mapping's would open it)
        return self.params is not None and name in self.params.roles

    def __iter__(self) -> Iterator[str]:
        return iter(self.params.roles if self.params is not None else ())

    def __len__(self) -> int:
        return len(self.params.roles) if self.params is not None else 0
