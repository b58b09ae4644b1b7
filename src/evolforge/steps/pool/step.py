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

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.io import validation
from evolforge.config.data import DataSettings
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.io.jsonfiles import read_json
from evolforge.io.records import LINEAGE, META, SETTINGS, TABLE, VERSIONS
from evolforge.core.stage import Outputs, peak_rss_mib
from evolforge.io.stream import check_chunks, iter_chunks, table_file, table_schema, write_output_chunks

SCENARIOS = ("evol", "autoif")


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
        raise validation.DataError(autoif_source, "autoif.on_empty: fail", detail=why)
    return Pool(evol, scenario, evol_source, fallback=f"no_autoif_items: {why}")


def _recorded(folder: Path, key: str) -> dict[str, Any] | None:
    """What the chosen branch recorded in its ``meta.json`` under ``key`` (its package versions, its settings):
    the pool is that table unchanged, so the dataset card (which reads the pool, not the branch) reports what made
    it."""
    meta = folder / META
    recorded = (read_json(meta) or {}).get(key) if meta.is_file() else None
    return recorded if isinstance(recorded, dict) else None


def run(evol: str, autoif: str, out: str | Path, cfg: AutoIFSettings, data: DataSettings) -> Outputs:
    """The pick_scenario stage: one of the two tables unchanged, streamed into ``out``. The choice is made on
    each table's first row (whether the AutoIF one has rows); the chosen table then streams through
    (docs/how-to/scale.md)."""
    rows = data.chunk_rows
    files = {evol: table_file(evol), autoif: table_file(autoif)}
    heads = [next(iter(iter_chunks(files[path], 1)), pl.DataFrame(schema=table_schema(files[path])))
             for path in (evol, autoif)]
    pool = pick_pool(cfg.scenario, *heads, cfg.on_empty, evol_source=evol, autoif_source=autoif)
    source = files[pool.source]
    check_chunks(source,
                 validation.item_columns(LINEAGE + ["instruction", "input", "output"]) + validation.unique("id"), rows)
    items = pl.scan_parquet(source).select(pl.len()).collect().item()
    if not items:
        raise validation.DataError(pool.source, "non-empty pool",
                                   detail=f"no answered items for scenario {cfg.scenario!r}")
    counts = pl.scan_parquet(source).group_by("method").len().sort("method").collect(engine="streaming")
    per_method = {m: int(n) for m, n in counts.iter_rows()}
    write_output_chunks(out, {TABLE: (table_schema(source), iter_chunks(source, rows))},
                        meta={"scenario": pool.scenario, "source": pool.source, "fallback": pool.fallback,
                              VERSIONS: _recorded(Path(pool.source), VERSIONS),
                              SETTINGS: {"scenario": cfg.scenario, "on_empty": cfg.on_empty,
                                         "branch": _recorded(Path(pool.source), SETTINGS)}})
    metrics = {"scenario": pool.scenario, "source": pool.source, "fallback": pool.fallback, "items": items,
               "autoif_items": pl.scan_parquet(files[autoif]).select(pl.len()).collect().item(),
               "per_method": per_method,
               "peak_rss_mib": peak_rss_mib()}  # docs/how-to/scale.md
    if pool.fallback:
        print(f"pick_scenario: WARNING: scenario autoif fell back to {pool.source} ({pool.fallback}); "
              f"set autoif.on_empty: fail to stop instead", file=sys.stderr)
    return Outputs(metrics, f"pick_scenario: {pool.scenario}: {items} items from {pool.source}")
