"""Near-duplicate removal in bounded memory: the answers of :func:`evolforge.steps.dedup.minhash.dedup_table` (the
same ``duplicate_of``, similarity and reason for every item), with the table read and written in chunks.

Why it can be split. In the greedy walk an item is only ever compared with kept items that share an LSH
band with it, and an exact-text twin shares every band. So the walk restricted to one connected component
of the "shares a band" graph gives that component's items the answers the walk over all items gives them
(the survival order restricted to a component is the same order). Components are walked a group at a
time, each group with the in-memory walk (:func:`~evolforge.steps.dedup.minhash.walk_duplicates`, the one
:func:`~evolforge.steps.dedup.minhash.find_duplicates` runs), keyed by the band digests of pass 1.

Passes (``work`` is a scratch folder; nothing in it outlives the stage):

1. per chunk: text, shingles, MinHash; each band's 64-bit digest is appended to a file per band (the
   sketching is a Ray Data task per chunk with ``data.engine: ray``; the appending stays here);
2. per band (one column of 8 bytes per item in memory): which items share a band (they are "walked";
   an item that shares none is kept without a comparison, as in the in-memory walk), and the components
   of the walked items, merged band by band with ``scipy.sparse.csgraph.connected_components``;
3. components are packed into groups of about ``chunk_rows / 4`` walked items; per chunk, the walked rows'
   (index, id, round, usable, text) and their band digests (read back from pass 1's files) are spilled to
   their group's folder;
4. per group: :func:`walk_duplicates` over its rows with those digests as band keys (nothing is sketched
   again: only the shingle hashes, for the exact Jaccard), the removed rows' answers spilled per output chunk;
5. the output: every input chunk with its answers (:func:`dedup_chunks`); the stage streams the kept rows to
   items.parquet and the duplicates, with their answers, to removed.parquet.

Memory: a chunk's texts and sketches, one group's walk (a group holds whole components, so one very large
cluster of near-duplicates is walked at once), and in pass 2 one band's digests (8 bytes per item: 10 MiB
per million items). Every sketch is computed once, in pass 1.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from evolforge.io import validation
from evolforge.io.columns import DUPLICATE_FLAGS
from evolforge.config.data import DataSettings
from evolforge.io.ray_data import map_chunks, session
from evolforge.io.records import SETTINGS, TABLE
from evolforge.steps.dedup.settings import DedupSettings
from evolforge.core.stage import Outputs, peak_rss_mib
from evolforge.core.text import item_text
from evolforge.io.stream import (check_unique, checked_chunks, iter_chunks, read_spilled, table_file,
                                 table_schema, write_output_chunks)
from evolforge.steps.common.guards import GUARDS, guard_reason
from evolforge.steps.common.shingles import shingle_hashes
from evolforge.steps.dedup.minhash import (EXACT, NEAR, band_digest, lsh_bands, mark_shared, minhash_signatures,
                                           survival_order, walk_duplicates)

# a fresh pass over the input table, chunk by chunk: all columns (None) or only those named
Chunks = Callable[[list[str] | None], Iterable[pl.DataFrame]]
Usable = Callable[[pl.DataFrame], Sequence[bool]]
# fn applied to every chunk of a pass over the input table (all columns), the results in chunk order
Mapped = Callable[[Callable[[pl.DataFrame], pl.DataFrame]], Iterable[pl.DataFrame]]
WALK_SHARE = 4  # a group walks about chunk_rows / WALK_SHARE items (see dedup_chunks)


@dataclass
class _Tally:
    """The metrics' counts, summed over groups."""

    removed_per_round: dict[int, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=lambda: {EXACT: 0, NEAR: 0})
    clusters: int = 0
    distinct_texts: int = 0


def _texts(chunk: pl.DataFrame) -> list[str]:
    return [item_text(q, x) for q, x in zip(chunk["instruction"].to_list(), chunk["input"].to_list())]


def _sketch(chunk: pl.DataFrame, usable: Usable, config: DedupSettings) -> pl.DataFrame:
    """Pass 1's work on one chunk, a row per item: usable, has shingles (nonempty), each band's 64-bit digest
    (``band_K``). Depends on the chunk alone: it may run in a Ray task."""
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    hashes, offsets = shingle_hashes(_texts(chunk), config.shingle_size)
    signatures = minhash_signatures(hashes, offsets, bands * rows, config.seed)
    return pl.DataFrame({"usable": np.asarray(usable(chunk), dtype=bool), "nonempty": offsets[1:] > offsets[:-1],
                         **{f"band_{k}": band_digest(signatures, k, rows) for k in range(bands)}})


def _sketch_pass(sketches: Iterable[pl.DataFrame], bands: int, work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1: each chunk's sketches (:func:`_sketch`, in chunk order), their band digests appended to
    ``work/band-K.u64``; returns (each chunk's first row, then the row count; mask of the texts with
    shingles; mask of the usable items)."""
    files = [open(work / f"band-{k}.u64", "wb") for k in range(bands)]
    nonempty: list[np.ndarray] = []  # 1 byte per item
    usable_rows: list[np.ndarray] = []
    starts = [0]
    try:
        for sketch in sketches:
            usable_rows.append(sketch["usable"].to_numpy())
            for k, fh in enumerate(files):
                sketch[f"band_{k}"].to_numpy().tofile(fh)
            nonempty.append(sketch["nonempty"].to_numpy())
            starts.append(starts[-1] + sketch.height)
            del sketch  # not held while the next chunk is read and sketched (io/stream.py)
    finally:
        for fh in files:
            fh.close()
    def joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    return np.array(starts, dtype=np.int64), joined(nonempty), joined(usable_rows)


def _walked(work: Path, bands: int, nonempty: np.ndarray) -> np.ndarray:
    """Indices of the items that share a band with another item and have shingles (the walk's items)."""
    shared = np.zeros(nonempty.size, dtype=bool)
    for k in range(bands):
        mark_shared(np.fromfile(work / f"band-{k}.u64", dtype=np.uint64), shared)
    return np.flatnonzero(shared & nonempty)


def _components(work: Path, bands: int, walked: np.ndarray) -> np.ndarray:
    """Component label of every walked item in the graph "shares a band", merged one band at a time (a
    64-bit digest collision can only merge two components: a larger group, the same answers)."""
    m = walked.size
    labels = np.arange(m)
    for k in range(bands):
        digest = np.fromfile(work / f"band-{k}.u64", dtype=np.uint64)[walked]
        order = np.argsort(digest, kind="stable")
        ordered = digest[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        leader = order[np.repeat(starts, np.diff(np.r_[starts, m]))]  # the first item of each equal run
        linked = leader != order
        if linked.any():
            edges = coo_matrix((np.ones(int(linked.sum()), dtype=np.int8),
                                (labels[order[linked]], labels[leader[linked]])), shape=(m, m))
            labels = connected_components(edges, directed=False)[1][labels]
    return labels


def _groups(labels: np.ndarray, target: int) -> np.ndarray:
    """Group of every walked item: whole components, packed in label order to about ``target`` items."""
    if not labels.size:
        return labels
    sizes = np.bincount(labels)
    before = np.cumsum(sizes) - sizes
    return (before // target)[labels]


def _spill_groups(chunks: Chunks, usable: np.ndarray, walked: np.ndarray, groups: np.ndarray, bands: int,
                  work: Path) -> int:
    """Pass 3: the walked rows of each chunk, to ``work/group-G/chunk-C.parquet``, and their band digests
    (pass 1's, read back from ``work/band-K.u64``) to ``work/group-G/keys-C.npy``; returns the group count."""
    count = int(groups.max()) + 1 if groups.size else 0
    for g in range(count):
        (work / f"group-{g}").mkdir()
    lo = 0
    for c, chunk in enumerate(chunks(["id", "round", "instruction", "input"])):
        hi = lo + chunk.height
        a, b = np.searchsorted(walked, [lo, hi])
        if b > a:
            index = walked[a:b]
            keys = np.stack([np.fromfile(work / f"band-{k}.u64", dtype=np.uint64,
                                         count=hi - lo, offset=8 * lo)[index - lo]
                             for k in range(bands)], axis=1)
            part = chunk[index - lo]
            rows = part.select("id", "round").with_columns(index=pl.Series(index), usable=pl.Series(usable[index]),
                                                           text=pl.Series(_texts(part), dtype=pl.String))
            mine = groups[a:b]
            by_group = np.argsort(mine, kind="stable")  # each group's rows stay in input order
            for taken in np.split(by_group, np.flatnonzero(np.diff(mine[by_group])) + 1):
                folder = work / f"group-{mine[taken[0]]}"
                rows[taken].write_parquet(folder / f"chunk-{c:06d}.parquet")
                np.save(folder / f"keys-{c:06d}.npy", keys[taken])
            del part, rows, keys
        lo = hi
        del chunk
    return count


def _walk_groups(count: int, config: DedupSettings, starts: np.ndarray, work: Path, tally: _Tally) -> None:
    """Pass 4: the in-memory walk over each group, keyed by the band digests pass 3 spilled; the removed
    rows' answers go to ``work/answers-C/``."""
    for g in range(count):
        files = sorted((work / f"group-{g}").glob("chunk-*.parquet"))  # chunk order: input order
        rows = pl.concat([pl.read_parquet(f) for f in files])
        keys = np.concatenate([np.load(f.with_name(f"keys-{f.stem.removeprefix('chunk-')}.npy")) for f in files])
        texts = rows["text"].to_list()
        found = walk_duplicates(texts, survival_order(rows["round"].to_list(), rows["id"].to_list(),
                                                      rows["usable"].to_list()), keys, config)
        ids = rows["id"].to_list()
        removed = [k for k, j in enumerate(found.duplicate_of) if j is not None]
        answers = pl.DataFrame({
            "index": rows["index"].gather(removed), "round": rows["round"].gather(removed),
            "duplicate_of": pl.Series([ids[found.duplicate_of[k]] for k in removed], dtype=pl.String),
            "duplicate_similarity": pl.Series([found.similarity[k] for k in removed], dtype=pl.Float64),
            "dedup_reason": pl.Series([found.reason[k] for k in removed], dtype=pl.String)})
        for r in answers["round"].to_list():
            tally.removed_per_round[r] = tally.removed_per_round.get(r, 0) + 1
        for reason in (EXACT, NEAR):
            tally.reasons[reason] += int((answers["dedup_reason"] == reason).sum())
        tally.clusters += answers["duplicate_of"].n_unique()
        tally.distinct_texts += len(set(texts))
        answers = (answers.with_columns(chunk=pl.Series(np.searchsorted(starts, answers["index"].to_numpy(),
                                                                        side="right") - 1)))
        for (c,), frame in answers.group_by("chunk", maintain_order=True):
            folder = work / f"answers-{c}"
            folder.mkdir(exist_ok=True)
            frame.drop("chunk", "round").write_parquet(folder / f"group-{g}.parquet")


def _with_answers(chunks: Chunks, starts: np.ndarray, work: Path) -> Iterator[pl.DataFrame]:
    """Pass 5: every input chunk with its three answer columns (null where kept), as dedup_table adds them."""
    lo = 0
    for c, chunk in enumerate(chunks(None)):
        if c + 1 >= starts.size or starts[c + 1] - lo != chunk.height:  # the input changed under us
            raise RuntimeError(f"dedup: input chunk {c} has {chunk.height} rows, not as in the first pass")
        columns = {name: pl.Series(name, [None] * chunk.height, dtype=dtype) for name, dtype in DUPLICATE_FLAGS.items()}
        files = sorted((work / f"answers-{c}").glob("*.parquet"))
        if files:
            answers = pl.concat([pl.read_parquet(f) for f in files])
            where = (answers["index"] - lo).to_numpy()
            for name in DUPLICATE_FLAGS:
                columns[name].scatter(where, answers[name])
        lo += chunk.height
        yield chunk.with_columns(**columns)
        del chunk, columns


def dedup_chunks(chunks: Chunks, usable: Usable, work: Path, config: DedupSettings = DedupSettings(),
                 chunk_rows: int = 50_000, mapped: Mapped | None = None) -> tuple[Iterator[pl.DataFrame], dict]:
    """:func:`evolforge.steps.dedup.minhash.dedup_table` over a table read in chunks: ``chunks(columns)`` gives a
    fresh pass over them (all columns for None), the same rows in the same chunks each time (it is called
    three times), ``usable(chunk)`` the selection guards' verdict per row, ``work`` an empty scratch folder
    that must outlive the returned iterator, ``chunk_rows / WALK_SHARE`` about how many walked items one group holds.
    ``mapped(fn)``, when given, runs pass 1: ``fn`` over the same chunks, the results in order (the stage's
    :func:`evolforge.io.ray_data.map_chunks`, on Ray with ``data.engine: ray``); by default it is
    ``map(fn, chunks(None))``. Returns (the output chunks, to stream to Parquet, metrics)."""
    bands, _ = lsh_bands(config.threshold, config.num_perm)
    sketch = partial(_sketch, usable=usable, config=config)
    sketches = mapped(sketch) if mapped is not None else map(sketch, chunks(None))
    starts, nonempty, usable_rows = _sketch_pass(sketches, bands, work)
    n = int(starts[-1])
    walked = _walked(work, bands, nonempty)
    # a walked item costs about 4x a streamed row (its band keys, bucket entries and shingle set), so a
    # group of a quarter chunk takes about the memory of a chunk being read
    groups = _groups(_components(work, bands, walked), max(1, chunk_rows // WALK_SHARE))
    tally = _Tally(distinct_texts=int(nonempty.sum()) - walked.size)  # a text sharing no band is unique
    _walk_groups(_spill_groups(chunks, usable_rows, walked, groups, bands, work), config, starts, work, tally)
    removed = sum(tally.removed_per_round.values())
    metrics = {
        "items": n, "removed": removed, "kept": n - removed,
        "removed_exact": tally.reasons[EXACT], "removed_near": tally.reasons[NEAR],
        "removed_per_round": {str(r): c for r, c in sorted(tally.removed_per_round.items())},
        "clusters_with_duplicates": tally.clusters, "distinct_texts_before": tally.distinct_texts,
        "threshold": config.threshold, "shingle_size": config.shingle_size, "num_perm": config.num_perm,
    }
    return _with_answers(chunks, starts, work), metrics


def run(items: str | Path, out: str | Path, cfg: DedupSettings, data: DataSettings) -> Outputs:
    """The dedup stage: the items of ``items`` that no kept item duplicates, with their input's columns,
    streamed into ``out`` ``data.chunk_rows`` rows at a time (the scratch folder beside it); removed.parquet
    holds the duplicates with their answers (``DUPLICATE_FLAGS``). A usable item (one selection could take)
    wins its cluster over an unusable twin."""
    source, rows = table_file(items), data.chunk_rows
    # check_chunks' checks without a pass of their own: the columns and their types from the schema now, the
    # values (no null id, round or instruction) in every pass that reads them (pass 3 is the first that uses
    # them: pass 1 takes a null text as empty), then the ids' uniqueness (one query over their column)
    rules, schema = validation.item_columns(["id", "round", "instruction", "input"]), table_schema(source)
    validation.check(pl.DataFrame(schema=schema), rules, source)
    # pass 1 reads the texts and the columns the guards read, no other
    sketched = [c for c in dict.fromkeys(["instruction", "input", *(c for g in GUARDS.values() for c in g.columns)])
                if c in schema]
    Path(out).absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dedup-work-", dir=Path(out).absolute().parent) as work, session(data):
        answered, metrics = dedup_chunks(lambda columns: checked_chunks(iter_chunks(source, rows, columns), rules,
                                                                        source),
                                         lambda chunk: guard_reason(chunk).is_null().to_list(), Path(work), cfg, rows,
                                         # pass 1 on Ray
                                         mapped=lambda fn: map_chunks(source, rows, sketched, fn, data))
        check_unique(pl.scan_parquet(source), "id", source)
        removed = Path(work) / "removed"
        removed.mkdir()

        def kept() -> Iterator[pl.DataFrame]:
            """The kept items; the duplicates spilled to ``removed``."""
            for c, chunk in enumerate(answered):
                duplicate = chunk["duplicate_of"].is_not_null()
                if duplicate.any():
                    chunk.filter(duplicate).write_parquet(removed / f"{c:06d}.parquet")
                yield chunk.filter(~duplicate).drop(list(DUPLICATE_FLAGS))
                del chunk, duplicate

        def duplicates() -> Iterator[pl.DataFrame]:  # read once kept() has spilled them all
            yield from read_spilled(sorted(removed.iterdir()))

        write_output_chunks(out, {TABLE: (schema, kept()),
                                  "removed.parquet": ({**schema, **DUPLICATE_FLAGS}, duplicates())},
                            meta={SETTINGS: dataclasses.asdict(cfg)})
    metrics["peak_rss_mib"] = peak_rss_mib()
    return Outputs(metrics, f"dedup: {metrics['removed']} of {metrics['items']} items are near-duplicates "
                            f"({metrics['removed_exact']} exact); per round {metrics['removed_per_round']}; "
                            f"peak RSS {metrics['peak_rss_mib']} MiB")
