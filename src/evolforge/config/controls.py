"""The generation controls a stage puts over its role's (``evolve.controls``, ``optimize.controls``) and the
thresholds of the repetition tests (``evolve.repetition``, ``respond.repetition``): types shared by several
steps' settings.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Le
from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import NonEmptyStr, NonNegativeInt, PositiveFloat, PositiveInt, Probability


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class Repetition(TypedDict, total=False):
    """Thresholds of the ``repetitive`` rule and of ``response_status`` (see ``failures.RepetitionTest``)."""

    ngram: PositiveInt
    max_repeated_ngram_fraction: Probability
    max_compression_ratio: Annotated[float, Ge(1)]  # bytes over compressed bytes; prose is above 1
    min_words: NonNegativeInt
    phrase_words: PositiveInt
    max_phrase_repeats: PositiveInt | None


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class ControlSettings(TypedDict, total=False):
    """A stage's generation controls (``evolve.controls``, ``optimize.controls``), put over its role's own
    (``roles.<name>.banned_strings`` ...; see :class:`evolforge.config.roles.Controls`,
    docs/explanation/controls.md)."""

    banned_strings: list[str]
    assistant_prefix: str | None
    stop: list[NonEmptyStr]
    repetition_penalty: PositiveFloat | None
    no_repeat_ngram_size: PositiveInt | None
    frequency_penalty: Annotated[float, Ge(-2), Le(2)] | None
