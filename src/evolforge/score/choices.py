"""The choices of IFD / IC-IFD scoring, named once: the ``score`` section's settings
(:mod:`evolforge.steps.score.settings`) and the scoring itself (:mod:`evolforge.score.ifd`) take the same ones.
A leaf: it imports nothing of evolforge."""

from __future__ import annotations

from typing import Literal

Template = Literal["raw", "chat", "cherry"]


Boundary = Literal["prefix", "offsets"]


CherryTruncation = Literal["official", "same-tokens"]
