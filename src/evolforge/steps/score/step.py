"""The score stage: IFD and IC-IFD losses of every item from roles.scorer (:mod:`evolforge.score.ifd`), stored
at the precision of :mod:`evolforge.score.precision` (docs/explanation/scoring.md): losses at 4 significant
digits, IFD / IC-IFD recomputed from them and the means at 6, so another CPU's last-bit differences do not
change the hashes.

The items are read, scored and written in chunks of whole scorer encode chunks (``data.chunk_rows`` rounded
down to a multiple of :data:`evolforge.score.ifd.ENCODE_CHUNK`, at least one): the scorer forms its batches
within an encode chunk, so every item meets the same batch, hence the same floats, as in one whole-table run
(docs/how-to/scale.md)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import torch

from evolforge.io import validation
from evolforge.config.roles import Role
from evolforge.config.data import DataSettings
from evolforge.io.records import SETTINGS, TABLE, VERSIONS, output_versions
from evolforge.core.stage import Outputs
from evolforge.io.ray_data import map_chunks, session
from evolforge.io.stream import check_chunks, read_spilled, spilled, table_file, table_schema, write_output_chunks
from evolforge.core.models import load_scorer
from evolforge.llm.identity import recorded_identity
from evolforge.score import ifd
from evolforge.io.columns import SCORE_VALUES
from evolforge.score.histogram import histogram
from evolforge.score.precision import RATIO_DIGITS, significant, stored_scores
from evolforge.steps.score.settings import ScoreSettings

MEANS = ("loss_instruction", "loss_response", "loss_response_given_instruction", "ifd", "ic_ifd")  # in the metrics


def scoring_rows(chunk_rows: int) -> int:
    """Rows read and scored at a time: ``chunk_rows`` rounded down to whole encode chunks, at least one.

    >>> scoring_rows(100_000), scoring_rows(7)
    (99328, 1024)
    """
    return max(1, chunk_rows // ifd.ENCODE_CHUNK) * ifd.ENCODE_CHUNK


class ChunkScorer:
    """The stored scores of a chunk of items (id, round, then :data:`SCORE_VALUES`), the scorer loaded on
    the first call: once in the stage's process, or once per Ray actor (``data.engine: ray``). The encode
    chunk is fixed here, in the stage's process, so an actor batches as the stage would."""

    def __init__(self, role: Role, settings: ScoreSettings, threads: int | None = None) -> None:
        self.role, self.settings, self.threads = role, settings, threads
        self.encode_chunk = ifd.ENCODE_CHUNK
        self._scorer: tuple[Any, Any] | None = None

    def __call__(self, chunk: pl.DataFrame) -> pl.DataFrame:
        role = self.role
        if self._scorer is None:
            if self.threads is not None:  # an actor takes `threads` CPUs of its node, not all of them
                torch.set_num_threads(self.threads)
            hf = role.settings  # an hf role (BackendSpec.roles: the others cannot serve the scorer)
            self._scorer = load_scorer(role.model, role.revision, dtype=hf.dtype, device=hf.device)
        model, tokenizer = self._scorer
        scores = ifd.ifd_scores(model, tokenizer, chunk["instruction"].to_list(), chunk["input"].to_list(),
                                chunk["output"].to_list(),
                                **dataclasses.asdict(self.settings), batch_size=role.settings.batch_size,
                                chunk_size=self.encode_chunk)
        return pl.concat([chunk.select("id", "round"), stored_scores(scores)], how="horizontal")


def run(items: str | Path, out: str | Path, cfg: ScoreSettings, role: Role, data: DataSettings) -> Outputs:
    """Scores (id, round, losses in nats, ifd, ic_ifd, token counts) of the items of ``items``, streamed into
    ``out``; the scorer (``role``: roles.scorer) runs in-process (hf): scoring needs logits. With
    ``data.engine: ray`` the chunks are scored by ``roles.scorer.replicas`` Ray actors of
    ``roles.scorer.threads`` CPUs (default 1) each."""
    source = table_file(items)
    check_chunks(source,
                 validation.item_columns(["id", "round",
                                          "instruction", "input", "output"]) + validation.unique("id"), data.chunk_rows)
    schema = pl.Schema({**{c: table_schema(source)[c] for c in ("id", "round")}, **SCORE_VALUES})
    scorer = ChunkScorer(role, cfg, threads=(role.settings.threads or 1) if data.engine == "ray" else None)
    scored = map_chunks(source, scoring_rows(data.chunk_rows),
                        ["id", "round", "instruction", "input", "output"], scorer, data,
                        actors=role.settings.replicas, cpus=role.settings.threads or 1)

    # as write_output
    meta = {VERSIONS: output_versions(), "scorer": role.model, "scorer_identity": recorded_identity(role),
            SETTINGS: dataclasses.asdict(cfg)}
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    # the model runs on this thread
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.parent) as work, session(data):
        write_output_chunks(out, {TABLE: (schema, read_spilled(spilled(scored, work)))}, meta=meta)
    written = table_file(out)

    def column(name: str) -> pl.Series:  # one column of the written table at a time: 8 bytes per item
        return pl.read_parquet(written, columns=[name])[name]

    def mean(col: str) -> float | None:
        s = column(col).drop_nulls().drop_nans()
        return significant(float(s.mean()), RATIO_DIGITS) if s.len() else None

    scored_ifd = column("ifd")
    metrics = {"items": scored_ifd.len(), "template": cfg.template, "scorer": role.model,
               "null_scores": int(column("ic_ifd").is_null().sum()), **{f"mean_{c}": mean(c) for c in MEANS},
               "share_ifd_above_1": float((scored_ifd > 1).sum() / max(1, scored_ifd.drop_nulls().len()))}
    plots = {"ifd_hist.json": histogram(scored_ifd.to_numpy())}
    del scored_ifd
    plots["ic_ifd_hist.json"] = histogram(column("ic_ifd").to_numpy())
    return Outputs(metrics, f"score: {metrics['items']} items, mean IFD {metrics['mean_ifd']}, mean IC-IFD "
                            f"{metrics['mean_ic_ifd']}",
                   plots=plots, peak_rss=True)

