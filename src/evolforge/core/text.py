"""Text helpers shared by every stage: one normalisation for "the same text", and the question Q.

:func:`normalize_text` is the one definition of "the same text" in the project: the seed stage drops
rows whose instruction and input normalise alike, and near-duplicate removal compares normalised text.

>>> normalize_text("  Add\\u00a02 and 3.\\n")
'add 2 and 3.'
>>> normalize_text("ＡＤＤ  2") == normalize_text("add 2")
True
"""

from __future__ import annotations

import re
import unicodedata

FENCED_CODE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)  # a fenced code block, or one left open to the end
# a number as answers write it: -1,234.5 / 42 / .5 / 3e8; currency and percent signs around it are not part of it
NUMBER = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\w.])({NUMBER})(?![\w])")


def number(text: str) -> float:
    """One :data:`NUMBER` as a float (thousands separators and the minus sign read)."""
    return float(text.replace(",", "").replace("−", "-"))


def numbers(text: str) -> list[float]:
    """Every number of ``text``, in order.

    >>> numbers("The two numbers are 38 and 1,200.5.")
    [38.0, 1200.5]
    """
    return [number(n) for n in _NUMBER_RE.findall(text)]


_NOT_WORDS = re.compile(r"[^\w\s]+")


def plain_words(text: str) -> str:
    """``text``'s words alone: case, spacing and punctuation aside ("How long?" and "how long." are one).

    >>> plain_words("How long?  Until it's EMPTY.")
    'how long until it s empty'
    """
    return " ".join(_NOT_WORDS.sub(" ", text).split()).lower()


def normalize_text(text: str | None) -> str:
    """NFKC (full-width and compatibility forms fold to their plain letters), casefold (case-insensitive,
    also for non-Latin scripts), whitespace runs collapsed to one space and trimmed; None -> ''."""
    if not text:
        return ""
    # str.split() splits on exactly the characters re's \s matches (str.isspace), so this is the same as
    # re.sub(r"\s+", " ", ...).strip() at a quarter of the cost; ASCII is its own NFKC and casefold is
    # lower() there
    if text.isascii():
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def item_text(instruction: str | None, input_text: str | None) -> str:
    """The text compared for an item: normalised instruction, plus newline + normalised input when present
    (:func:`evolforge.core.text.normalize_text`, the seed stage's exact-duplicate rule too)."""
    instruction, input_text = normalize_text(instruction), normalize_text(input_text)
    return f"{instruction}\n{input_text}" if input_text else instruction


def question_text(instruction: str, input_text: str | None) -> str:
    """Q as paper B builds it: the instruction, plus "\\n" + input when the input is non-empty."""
    return instruction + "\n" + input_text if input_text else instruction
