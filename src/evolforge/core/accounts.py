"""What a stage process has counted that can still fail it at its end: its accounts.

A layer above the stage runner keeps an account of what the stage asked of it and opens it here, in the
process's :class:`StageAccounts` (:data:`STAGE`): the LLM layer's
:class:`~evolforge.llm.accounting.Accounting` (every role's failures, judged against ``llm.max_failure_rate``)
is the one there is. The stage runner is handed the accounts (``run_stage(main, accounts=...)``,
``write(args, result, accounts=...)``, :data:`STAGE` unless given) and checks them before it writes and when
``main`` returns (:mod:`evolforge.core.stage`), without importing the layers that filled them; a stage that
opened no account checks nothing.

    >>> class Failures:
    ...     def __init__(self): self.failed = 0
    ...     def check(self):
    ...         if self.failed: raise RuntimeError(f"{self.failed} failed")
    >>> accounts = StageAccounts()
    >>> accounts.get("llm", Failures) is accounts.get("llm", Failures)  # opened once per stage
    True
    >>> accounts.get("llm", Failures).failed = 2
    >>> accounts.check()
    Traceback (most recent call last):
    ...
    RuntimeError: 2 failed
"""

from __future__ import annotations

from typing import Callable, Protocol, TypeVar


class Account(Protocol):
    """Something a stage counted that can fail it: ``check()`` raises the stage's error (for people) when it does."""

    def check(self) -> None: ...


A = TypeVar("A", bound=Account)


class StageAccounts:
    """The accounts of one stage process, by name, each opened the first time a layer asks for it."""

    def __init__(self) -> None:
        self._open: dict[str, Account] = {}

    def get(self, name: str, new: Callable[[], A]) -> A:
        """The account ``name``, opened with ``new()`` the first time it is asked for."""
        if name not in self._open:
            self._open[name] = new()
        return self._open[name]  # type: ignore[return-value]

    def check(self) -> None:
        """Check every account, in the order they were opened; the first that fails the stage raises."""
        for account in list(self._open.values()):
            account.check()

    def clear(self) -> None:
        """Forget every account (a test is one stage: the next one opens its own)."""
        self._open.clear()


STAGE = StageAccounts()  # this process's: a stage runs in a process of its own
