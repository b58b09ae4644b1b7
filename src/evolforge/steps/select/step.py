"""The select stage: the clean items joined with their judged, scored and diversity tables, chosen by
``params.yaml select`` (:func:`evolforge.steps.select.selection.choose`), exported for SFT (TRL's
conversational prompt/completion, Alpaca) with the dataset card (:mod:`evolforge.steps.select.card`).

In bounded memory (docs/how-to/scale.md): the inputs are checked ``data.chunk_rows`` rows at a time, the ranking runs
on a narrow table (:mod:`evolforge.steps.select.narrow`), the embeddings are read by row from their file
(:mod:`evolforge.steps.select.embeddings`), and the chosen rows are joined back and written in rank order a
chunk at a time (:mod:`evolforge.steps.select.export`), in a scratch folder beside the output.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
import polars as pl

from evolforge.config.bounds import Refusal
from evolforge.config.data import DataSettings
from evolforge.steps.select.settings import SelectSettings
from evolforge.core.stage import Outputs
from evolforge.io.records import SETTINGS, write_table
from evolforge.steps.common.layout import Layout
from evolforge.steps.select.card import CardParams, write_card
from evolforge.steps.select.embeddings import load_embeddings
from evolforge.steps.select.export import write_selection
from evolforge.steps.select.narrow import Inputs, check_inputs, file_texts, ranking_table
from evolforge.steps.select.selection import Selection, choose


def _write(folder: Path, inputs: Inputs, selection: Selection, cfg: SelectSettings, card_params: CardParams,
           chunk_rows: int, card: Layout) -> None:
    """The selection's files into ``folder`` (the output's temporary folder): the chosen rows streamed in rank
    order (items.parquet, train.jsonl, train_alpaca.json), excluded.parquet, then the card from items.parquet
    and the outputs of ``card``."""
    with tempfile.TemporaryDirectory(prefix=".select-work-", dir=folder.parent) as work:
        write_selection(folder, [inputs.items, *inputs.per_item()], selection.chosen["id"], chunk_rows, Path(work))
    write_table(selection.excluded, folder / "excluded.parquet")
    write_card(folder, card, card_params, cfg)


def run(items: str, judged: str, scores: str, diversity: str, cfg: SelectSettings, data: DataSettings,
        card_params: CardParams, verified: str | None = None, card: Layout | None = None) -> Outputs:
    """The select stage: the items of ``items`` joined with the per-item tables of ``judged``, ``scores``,
    ``diversity`` and (when given) ``verified``, selected by ``cfg`` (``params.yaml select``), exported for SFT,
    with the dataset card (``card_params``), which tells what the outputs of ``card`` (the earlier stages'; None:
    none) count."""
    rows = data.chunk_rows
    inputs = Inputs(items, judged, scores, diversity, verified)
    check_inputs(inputs, cfg, rows)
    table, guards = ranking_table(inputs, rows)
    selection = choose(table, cfg, guards, embeddings=load_embeddings(diversity, rows), texts=file_texts(items))
    summary = selection.summary
    if selection.chosen.height == 0:
        counts = ", ".join(f"{s['filter']} -{s['removed']}" for s in summary["filters"] if s["removed"])
        raise Refusal(f"nothing to train on: filter '{summary['emptied_by']}' removed the last items "
                      f"(of {table.height}: {counts}); see params.yaml select and metrics of the earlier stages")
    # the folder is written whole by finish(), streamed; the table handed over only gives way to it
    return Outputs(summary, f"select: {summary['selected']} of {summary['items']} items by {summary['metric']}; "
                            f"removed per filter {summary['removed_by_filter']}",
                   table=pl.DataFrame(), meta={SETTINGS: dataclasses.asdict(cfg)},
                   finish=lambda folder: _write(folder, inputs, selection, cfg, card_params, rows, card or Layout()),
                   peak_rss=True)
