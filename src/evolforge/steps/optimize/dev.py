"""The development set and the mini-batch pool of the optimize step, drawn from the seed stage's whole pool."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from evolforge.io.records import SEED_POOL, TABLE, read_table
from evolforge.steps.optimize.settings import OptimizeSettings


def split_dev_pool(items: list[dict], *, dev_size: int, batch_size: int, rng: random.Random,
                   held_out: frozenset[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """A seeded development set of ``dev_size`` items and the rest as the mini-batch pool (disjoint).

    The development set is drawn first from the items whose id is not in ``held_out`` (the seeds the rounds
    evolve, the paper's training data), so a method is measured on instructions it will not be applied to; only a
    pool too small for that lends it some of them."""
    if len(items) < dev_size + batch_size:
        raise ValueError(
            f"optimize: the seed pool has {len(items)} items, too few for a development set of {dev_size} "
            f"(params.yaml optimize.dev_size) plus a mini-batch of {batch_size} (optimize.batch_size) "
            f"from the remaining items; lower them or use a larger seed source")
    order = list(range(len(items)))
    rng.shuffle(order)
    order.sort(key=lambda i: items[i]["id"] in held_out)  # stable: the shuffle's order within each part
    return [items[i] for i in order[:dev_size]], [items[i] for i in order[dev_size:]]


def read_seed_pool(seed: str | Path) -> pl.DataFrame:
    """The seed stage's whole pool (every seed before ``seed.limit``'s sample), beside its table."""
    path = Path(seed) / SEED_POOL
    if not path.is_file():
        raise ValueError(f"{path}: missing; the seed stage writes it beside {TABLE} (rerun it: dvc repro seed)")
    return pl.read_parquet(path)


def read_dev_pool(seed: str | Path, settings: OptimizeSettings, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """The development set and the mini-batch pool, from the seed stage's whole pool (:func:`split_dev_pool`)."""
    pool = read_seed_pool(seed)
    # a seed's own answer, where it has one, is the parent answer the same_answer rule compares with
    answers = pool["output"].to_list() if "output" in pool.columns else [None] * pool.height
    items = [{"id": r["id"], "instruction": r["instruction"], "input": r.get("input") or "", "output": answer or None}
             for r, answer in zip(pool.select("id", "instruction", "input").to_dicts(), answers)]
    evolved = frozenset(read_table(seed)["id"].to_list())  # the seeds the rounds evolve
    return split_dev_pool(items, dev_size=settings.dev_size, batch_size=settings.batch_size, rng=rng,
                          held_out=evolved)
