"""What the AutoIF steps share (:mod:`evolforge.steps.autoif.constraints`, ``verify``, ``respond``): their
templates, the statuses of their intermediate tables, and the helpers that read them. Kept apart from each
step's run, so that editing one step reruns only its stage."""

from __future__ import annotations

import re

import polars as pl

from evolforge.io.records import FAILED, make_id

SELF_INSTRUCT_TEMPLATE = "autoif/self_instruct.j2"
VERIFICATION_TEMPLATE = "autoif/verification.j2"
RESPOND_TEMPLATE = "autoif/respond.j2"
METHOD = "autoif"
KEPT = "kept"  # status of a kept function, case or verified constraint in the intermediate tables
COPIED = "copied_demonstration"  # a function or case copied verbatim from a few-shot demonstration


def constraint_key(text: str) -> str:
    """What two constraints must share to be duplicates: case, spacing and end punctuation ignored."""
    return re.sub(r"\s+", " ", text).strip().strip(" .!").lower()


def usable_constraints(table: pl.DataFrame) -> pl.DataFrame:
    return table.filter(pl.col("status") != FAILED)


def first_by_hash(table: pl.DataFrame, n: int | None, seed: int) -> pl.DataFrame:
    """At most ``n`` rows, those with the smallest seeded hash of their id, in hash order: adding rows never
    reshuffles the others. (The seed stage's ``steps.common.source.hash_sample`` takes the same rows but keeps
    them in source order.)"""
    if n is None or table.height <= n:
        return table
    order = table["id"].map_elements(lambda i: make_id(seed, i), return_dtype=pl.String)
    return table.with_columns(_order=order).sort("_order").head(n).drop("_order")
