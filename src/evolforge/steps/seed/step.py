"""The seed stage: ``params.yaml seed`` read into the seed table (:func:`evolforge.steps.common.source.build_seed`),
with the dropped duplicates beside it, and the whole seed pool before ``seed.limit``'s sample
(``all_seeds.parquet``: the items Auto Evol-Instruct draws its development set and mini-batches from, as the paper
splits its seed pool X). The rules are written for users in docs/how-to/seeds.md."""

from __future__ import annotations

import dataclasses

from evolforge.steps.seed.settings import SeedSettings
from evolforge.core.stage import Outputs
from evolforge.io.records import SEED_POOL, SETTINGS
from evolforge.steps.common.source import build_seed


def run(cfg: SeedSettings) -> Outputs:
    """The seed stage: ``params.yaml seed`` (``cfg``) read into the seed table, with the dropped duplicates and
    the whole pool beside it."""
    read = dict(fmt=cfg.format, fields=cfg.fields, config=cfg.config, split=cfg.split, revision=cfg.revision)
    table, metrics, duplicates = build_seed(cfg.source, limit=cfg.limit, seed=cfg.seed, min_checked=cfg.min_checked,
                                            **read)
    pool = table if cfg.limit is None else build_seed(cfg.source, **read).table
    metrics["pool_rows"] = pool.height
    return Outputs(metrics,
                   f"seed: {metrics['rows_written']} items of a pool of {pool.height} "
                   f"({metrics['duplicates_removed']} duplicates removed)",
                   table=table, meta={SETTINGS: dataclasses.asdict(cfg)},
                   tables={"duplicates.parquet": duplicates, SEED_POOL: pool})
