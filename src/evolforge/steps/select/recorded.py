"""What the dataset card's inputs recorded about how they were made: each stage output's settings (the
``settings`` key of its ``meta.json``, :data:`evolforge.io.records.SETTINGS`), and the lines of the card read
from them (the seed source, the evolution rounds).

The card quotes these, never ``params.yaml``: an output states the settings that made it, so the card changes
only with its inputs, and the select stage declares no other stage's params (a role or section select does not
use leaves it up to date). An output that recorded nothing reads as not recorded::

    >>> seed_line({})
    '**Seed source**: not recorded.'
    >>> seed_line({"source": "data/seeds/demo.jsonl", "revision": None, "limit": 6})
    '**Seed source**: `data/seeds/demo.jsonl`, limit 6.'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolforge.io.records import META, SETTINGS
from evolforge.steps.common.funnel import evolved_rounds, json_at, round_strategies
from evolforge.steps.common.layout import Layout

# the stage outputs whose recorded settings and package versions the card quotes (their meta.json), with the
# evolved rounds after the seed: the select stage's inputs, never an output of a later stage or one another
# experiment left behind. The pool stands for the branch it copied (it records that branch's settings and versions).
RECORDED = ("seed", "pool", "dedup", "clean", "judged", "scores", "diversity", "verified")


def recorded_folders(layout: Layout) -> list[Path]:
    """The folders of :data:`RECORDED` that ``layout`` gives, in that order, the evolved rounds' after the seed."""
    given = [f for f in (getattr(layout, name) for name in RECORDED) if f]
    rounds = evolved_rounds(layout.evolved)
    return given[:1] + rounds + given[1:] if layout.seed is not None else rounds + given


def settings_of(folder: Path | None) -> dict[str, Any] | None:
    """The settings the output ``folder`` recorded; None when it recorded none (or is not there)."""
    meta = json_at(folder / META if folder is not None else None) or {}
    found = meta.get(SETTINGS)
    return found if isinstance(found, dict) else None


def recorded_settings(layout: Layout) -> dict[str, dict[str, Any] | None]:
    """``{output, as the version names it: its recorded settings or None}`` of the outputs of
    :func:`recorded_folders` that are there; outputs next to each other that recorded the same settings (the
    evolved rounds, as a rule) share one entry, their names joined by ", "; those that recorded none stay apart."""
    groups: list[tuple[list[str], dict[str, Any] | None]] = []
    for folder in recorded_folders(layout):
        if not (folder / META).is_file():
            continue
        found = settings_of(folder)
        if groups and found is not None and groups[-1][1] == found:
            groups[-1][0].append(layout.relative(folder))
        else:
            groups.append(([layout.relative(folder)], found))
    return {", ".join(names): found for names, found in groups}


def seed_line(seed: dict[str, Any] | None) -> str:
    """``**Seed source**: ...`` from the seed output's recorded settings."""
    if not seed or not seed.get("source"):
        return "**Seed source**: not recorded."
    revision = f" at revision `{seed['revision']}`" if seed.get("revision") else ""
    limit = f", limit {seed['limit']}" if seed.get("limit") else ""
    return f"**Seed source**: `{seed['source']}`{revision}{limit}."


def evolution_line(layout: Layout) -> str:
    """``**Evolution**: ...``: per the rounds' meta.json, the strategy asked for, the one used (and why they
    differ), the rounds and what a failed evolution left (``on_failure``)."""
    strategies = round_strategies(layout)
    if not strategies:
        return "**Evolution**: no round was run."
    requested = sorted({s["requested"] for s in strategies if s["requested"]})
    used = sorted({s["used"] for s in strategies if s["used"]})
    line = "**Evolution**: strategy " + (", ".join(f"`{r}`" for r in requested) or "not recorded")
    if used and used != requested:
        line += " requested, used " + ", ".join(f"`{u}`" for u in used)
        reason = next((s["fallback"] for s in strategies if s["fallback"]), None)
        line += f" ({reason})" if reason else ""
    failures = sorted({str((settings_of(path) or {}).get("on_failure", "?"))
                       for path in evolved_rounds(layout.evolved)})
    rounds = ", ".join(str(s["round"]) for s in strategies)
    return line + f", rounds {rounds}, failures {', '.join(f'`{f}`' for f in failures)}."
