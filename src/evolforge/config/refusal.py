"""The base of every error whose message is written for people (:class:`Refusal`): a leaf that every layer can
build on. Its subclasses -- bad params (:class:`~evolforge.config.bounds.ParamsError`), bad data
(``DataError``), a missing or unusable model (``ModelError``, ``FetchError``), a broken prompt template
(``PromptError``) -- name the file, the row, the field and the rule; a stage prints one as it is, with no
traceback (:func:`evolforge.core.errors.run_stage`)."""

from __future__ import annotations


class Refusal(Exception):
    """Refused input: the message says what to fix, so it is shown as it is (exit 2, no traceback)."""
