"""The scenario switch: which branch's answered table (evolved data or AutoIF) feeds dedup onwards.

``autoif.scenario: evol`` takes ``data/responses`` as it is; ``autoif`` takes the AutoIF answers
(``data/autoif/responses``). When the AutoIF branch left nothing (no constraint verified, every response
rejected), ``autoif.on_empty`` decides: ``evol`` trains on the evol pool instead and the pool records why
(``fallback``), ``fail`` stops with that reason.

>>> import polars as pl
>>> pick_pool("autoif", pl.DataFrame({"id": ["e"]}), pl.DataFrame({"id": []}, schema={"id": pl.String})).fallback[:15]
'no_autoif_items'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

SCENARIOS = ("evol", "autoif")


def read_scenario(params: dict[str, Any]) -> str:
    """``params.yaml autoif.scenario``: which branch (evol | autoif) feeds judge, score, select and finetune."""
    from evolforge.core.params import load_section

    return load_section(params, "autoif").scenario


@dataclass(frozen=True)
class Pool:
    """The answered pool for dedup onwards: the table, where it came from, and why (``fallback`` names the
    reason the AutoIF branch could not be used, or is None)."""

    table: pl.DataFrame
    scenario: str
    source: str
    fallback: str | None = None


def pick_pool(scenario: str, evol: pl.DataFrame, autoif: pl.DataFrame, on_empty: str = "evol", *,
              evol_source: str = "data/responses", autoif_source: str = "data/autoif/responses") -> Pool:
    """The chosen branch's answered table, unchanged. With scenario ``autoif`` and no AutoIF item,
    ``on_empty: evol`` falls back to the evol table (recorded in ``fallback``) and ``fail`` raises."""
    if scenario not in SCENARIOS:
        raise ValueError(f"autoif.scenario: {scenario!r} is not one of {SCENARIOS}")
    if scenario == "evol":
        return Pool(evol, scenario, evol_source)
    if autoif.height:
        return Pool(autoif, scenario, autoif_source)
    why = "no answered AutoIF item (see metrics/autoif/*.json: constraints verified, responses kept)"
    if on_empty == "fail":
        from evolforge.core.validation import DataError

        raise DataError(autoif_source, "autoif.on_empty: fail", detail=why)
    return Pool(evol, scenario, evol_source, fallback=f"no_autoif_items: {why}")
