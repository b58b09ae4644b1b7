"""The select stage's dvc.yaml deps are the files its dataset card reads, no more and no fewer.

The card reads several earlier stages' outputs (its flags: the seeds, the rounds, the responses, the pool, dedup,
the identity file, two metrics files), and of most of them only a file or two: the rounds' ``items.parquet`` and
``meta.json``, not the pool the next round evolves; the responses' ``meta.json``, not their table. select declares
exactly those files, so an edit of a file the card does not read reruns nothing, and one it reads reruns select.
Both directions are checked on a small version laid out as the pipeline writes it (tests/report_fixture.py):
removing every undeclared file leaves the card byte for byte, and removing any one declared file changes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from evolforge.io.records import write_json, write_output
from evolforge.steps.select.card import card_params, write_card
from evolforge.steps.select.settings import SelectSettings
from report_fixture import CARD, REPO, build_version

# the flags only the card reads (the selection's own inputs, --items --judged --scores --diversity --verified, are
# read whole by the selection)
CARD_ONLY = ("seed", "evolved", "responses", "pool", "dedup", "identities", "pool_metrics", "score_metrics")


def select_deps() -> list[str]:
    return [d for d in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["select"]["deps"]
            if isinstance(d, str)]


def declared(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> Path:
    """The report's fixture version, with the files the stages write beside the ones the card reads: the seeds'
    whole source and duplicates, each round's pool for the next, dedup's and decontaminate's outputs."""
    root = tmp_path_factory.mktemp("card-version")
    shipped = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["evolve"]["rounds"]
    build_version(root, rounds=len(shipped))  # the rounds select declares: the shipped ones
    seed = pl.read_parquet(root / "data/seed/items.parquet")
    seed.write_parquet(root / "data/seed/all_seeds.parquet")
    seed.head(0).write_parquet(root / "data/seed/duplicates.parquet")
    for round_dir in sorted((root / "data/evolved").iterdir()):
        pl.read_parquet(round_dir / "items.parquet").write_parquet(round_dir / "pool.parquet")
    pool = pl.read_parquet(root / "data/pool/items.parquet")
    removed = pool.head(2).select("id", "round").with_columns(dedup_reason=pl.lit("near_duplicate"))
    for name, kept, meta in (("dedup", pool.slice(2), {"settings": {"threshold": 0.8}}),
                             ("clean", pool.slice(2), {"settings": {"ngram": 13}})):
        write_output(root / "data" / name, kept, meta=meta)
        removed.write_parquet(root / "data" / name / "removed.parquet")
    write_json(root / "metrics/score.json", {"scorer": "scorer-model"})
    return root


def files_under_card_flags(root: Path) -> list[str]:
    """Every file under the paths the card-only flags give, relative to ``root``."""
    paths = [getattr(CARD, name) for name in CARD_ONLY]
    found = []
    for path in (root / p for p in paths if p is not None):
        found += [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sorted(f.relative_to(root).as_posix() for f in found)


def card_of(root: Path) -> str:
    selected = root / "data/selected"
    for stale in ("README.md", "data"):  # the card and shards are rewritten whole
        target = selected / stale
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return write_card(selected, CARD.under(root), card_params({}), SelectSettings()).read_text(encoding="utf-8")


def test_the_card_reads_no_file_select_does_not_declare(version, tmp_path):
    deps = select_deps()
    files = files_under_card_flags(version)
    undeclared = [f for f in files if not declared(f, deps)]
    # the files the stages write that the card has no use for
    assert {"data/seed/all_seeds.parquet", "data/evolved/round_1/pool.parquet", "data/responses/items.parquet",
            "data/dedup/items.parquet", "data/dedup/removed.parquet"} <= set(undeclared)
    whole = card_of(version)
    copy = tmp_path / "v"
    shutil.copytree(version, copy)
    for name in undeclared:
        (copy / name).unlink()
    (copy / "data/clean/removed.parquet").unlink()  # select declares decontaminate's items and meta alone
    assert card_of(copy) == whole


def test_every_file_select_declares_for_the_card_is_read(version, tmp_path):
    deps = select_deps()
    files = [f for f in files_under_card_flags(version) if declared(f, deps)]
    assert {"data/responses/meta.json", "data/dedup/meta.json", "models/identity.json", "metrics/pool.json",
            "metrics/score.json", "data/evolved/round_2/items.parquet"} <= set(files)
    whole = card_of(version)
    unread = []
    for name in files:
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(version, copy)
        (copy / name).unlink()
        if card_of(copy) == whole:
            unread.append(name)
        shutil.rmtree(copy)
    assert not unread, f"select declares files its card does not read: {unread}"

