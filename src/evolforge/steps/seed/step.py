"""The seed stage: ``params.yaml seed`` read into the seed table (:func:`evolforge.steps.common.source.build_seed`),
with the dropped duplicates beside it. The rules are written for users in docs/how-to/seeds.md."""

from __future__ import annotations

import dataclasses
from typing import Any

from evolforge.config.loader import load_section
from evolforge.steps.seed.settings import SeedSettings
from evolforge.core.stage import Outputs
from evolforge.steps.common.source import build_seed


def run(params: dict[str, Any]) -> Outputs:
    """The seed stage: ``params.yaml seed`` read into the seed table, with the dropped duplicates beside it."""
    cfg = load_section(params, "seed", SeedSettings)
    table, metrics, duplicates = build_seed(cfg.source, fmt=cfg.format, fields=cfg.fields, config=cfg.config,
                                            split=cfg.split, revision=cfg.revision, limit=cfg.limit, seed=cfg.seed,
                                            min_checked=cfg.min_checked)
    return Outputs(metrics,
                   f"seed: {metrics['rows_written']} items ({metrics['duplicates_removed']} duplicates removed)",
                   table=table, meta={"params": dataclasses.asdict(cfg)}, tables={"duplicates.parquet": duplicates})
