"""Items matched against the benchmark index (:mod:`evolforge.steps.decontaminate.index`): the first confirmed
shared n-gram of each item, else the reordered-clause coverage check, and the optional embedding similarity.
The rules are described in :mod:`evolforge.steps.decontaminate.step`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from evolforge.steps.decontaminate.settings import DecontaminateSettings
from evolforge.steps.decontaminate.index import (NAME, Corpus, NgramWindows, Problem, Vocab, build_index, candidates,
                                                 hide_names, not_boilerplate, prefilter, tokens, words_and_names)

CHUNK_ITEMS = 4096  # items tokenised and hashed at a time: their arrays follow the chunk, not the table


@dataclass(frozen=True)
class Match:
    problem: int        # index into the problems list
    field: str          # instruction | output
    ngram: str          # the matched tokens, space-joined (the name placeholder shown as <name>); for
                        # ngram_coverage the covered pieces of the benchmark text, in its order, joined by " ... "
    count: int          # matched windows in the item
    reason: str = "ngram_overlap"   # ngram_overlap (one shared `ngram`) | ngram_coverage (reordered pieces)
    coverage: float | None = None   # ngram_coverage: share of the benchmark text's tokens covered


def match_words(vocab: Vocab, ids: np.ndarray) -> str:
    return " ".join("<name>" if vocab.words[i] == NAME else vocab.words[i] for i in ids)


class References:
    """The benchmark side, built once and shared by every chunk of items: the tokens of every reference text,
    one n-gram index per compared length, and the sorted windows of the coverage check."""

    def __init__(self, problems: Sequence[Problem], config: DecontaminateSettings) -> None:
        self.config = config
        self.vocab = Vocab()  # the references' tokens, shared with the items: equal tokens, equal ids
        self.names = frozenset().union(*(p.names for p in problems))
        self.vocab.alias(self.names, NAME)  # hidden wherever they occur, on both sides
        ref_seqs, seq_problem = [], []
        for k, p in enumerate(problems):
            for text in p.texts:
                ref_seqs.append(tokens(text, self.names))  # one name set on both sides keeps them comparable
                seq_problem.append(k)
        self.corpus = Corpus.build(self.vocab, ref_seqs)
        self.vocab.freeze()  # the items' own words can match nothing: they stay out of the vocabulary
        self.seq_problem = np.array(seq_problem, dtype=np.int64)
        short = sorted({int(L) for L in self.corpus.lengths if config.min_tokens <= L < config.ngram})
        specs = [(config.ngram, False)] + [(L, True) for L in short]
        cover = [] if config.paraphrase_ngram is None else [(int(config.paraphrase_ngram), False)]
        windows = self.corpus.windows(self.vocab.value_array(), specs + cover)
        indexes = [build_index(windows[spec], spec[0], self.seq_problem, config.boilerplate_problems) for spec in specs]
        self.indexes = [index for index in indexes if index.hashes.size]
        self.cover: NgramWindows | None = None  # the coverage check's reference windows, sorted by hash
        self.cover_table = np.zeros(0, dtype=bool)  # prefilter(their hashes)
        if cover:
            rh, rseq, rpos = windows[cover[0]]
            keep = not_boilerplate(rh, self.seq_problem[rseq], config.boilerplate_problems)
            order = np.argsort(rh[keep], kind="stable")
            self.cover = rh[keep][order], rseq[keep][order], rpos[keep][order]
            self.cover_table = prefilter(self.cover[0])

    def _item_tokens(self, instructions: Sequence[str], outputs: Sequence[str]) -> list[list[str]]:
        """Sequence 2k: the tokens of instruction k, 2k+1: of output k."""
        seqs = []
        for q, a in zip(instructions, outputs):
            (q_words, q_names), (a_words, a_names) = words_and_names(q), words_and_names(a)
            # a name defined in the output hides its mentions in the instruction too, and the other way round
            # (the problems' names are hidden by the vocabulary: see __init__)
            own = q_names + a_names
            if own:
                names = frozenset(own)
                q_words, a_words = hide_names(q_words, names), hide_names(a_words, names)
            seqs += [q_words, a_words]
        return seqs

    def matches(self, instructions: Sequence[str], outputs: Sequence[str]) -> list[Match | None]:
        """:func:`ngram_matches` for one chunk of items."""
        vocab, refs, config = self.vocab, self.corpus, self.config
        items = Corpus.build(vocab, self._item_tokens(instructions, outputs))
        # every window of each indexed length (a short reference text matches anywhere inside an item)
        lengths = {(index.n, False) for index in self.indexes}
        cover = None if self.cover is None else (int(config.paraphrase_ngram), False)
        windows = items.windows(vocab.value_array(), lengths | ({cover} if cover else set()))

        hits: dict[int, list[tuple[int, int, int, int]]] = {}  # item seq -> (pos, n, ref seq, ref pos)
        for index in self.indexes:
            h, seq, pos = windows[index.n, False]
            maybe = candidates(index.table, h)
            h, seq, pos = h[maybe], seq[maybe], pos[maybe]
            at = np.searchsorted(index.hashes, h)
            at[at == index.hashes.size] = 0
            for f in np.flatnonzero(index.hashes[at] == h):
                hits.setdefault(int(seq[f]), []).append((int(pos[f]), index.n,
                                                         int(index.seq[at[f]]), int(index.pos[at[f]])))

        out: list[Match | None] = [None] * len(instructions)
        for s in sorted(hits):
            item = s // 2
            if out[item] is not None:
                continue  # the instruction already matched
            confirmed = []
            for pos, n, ref_seq, ref_pos in sorted(hits[s]):
                a = items.ids[items.starts[s] + pos: items.starts[s] + pos + n]
                b = refs.ids[refs.starts[ref_seq] + ref_pos: refs.starts[ref_seq] + ref_pos + n]
                if np.array_equal(a, b):  # a 64-bit hash collision would fail here
                    confirmed.append((ref_seq, a))
            if confirmed:
                ref_seq, a = confirmed[0]
                out[item] = Match(int(self.seq_problem[ref_seq]), "instruction" if s % 2 == 0 else "output",
                                  match_words(vocab, a), len(confirmed))
        if cover:
            todo = np.array([m is None for m in out], dtype=bool)
            if todo.any():
                for item, match in self._coverage_matches(items, windows[cover], todo).items():
                    out[item] = match
        return out

    def _coverage_matches(self, items: Corpus, item_windows: NgramWindows, todo: np.ndarray) -> dict[int, Match]:
        """Reordered-clause check: for each item in ``todo`` (bool per item) and each benchmark text, the share
        of the text's tokens that lie in a ``paraphrase_ngram``-token window also present in the item's
        instruction (or output). Flagged when that share is >= ``paraphrase_coverage`` and the covered tokens
        number at least ``ngram`` (as much shared text as the contiguous rule asks for, only in pieces).
        Returns item index -> Match (instruction first, then output; within a field the highest coverage)."""
        config = self.config
        n = int(config.paraphrase_ngram)
        shared = self._shared_windows(items, item_windows, todo, n)
        if shared is None:
            return {}
        groups = _CoverGroups.of(*shared, n)
        share = groups.covered / self.corpus.lengths[groups.ref_seq]
        flagged = (groups.covered >= config.ngram) & (share >= config.paraphrase_coverage)
        best = _best_groups(groups.item_seq, share, flagged)
        out: dict[int, Match] = {}
        for s in sorted(best):  # instruction (even seq) before output of the same item
            item = s // 2
            if item in out:
                continue
            g = best[s]
            ref_seq = int(groups.ref_seq[g])
            pieces = self._covered_pieces(ref_seq, groups.pos[groups.starts[g]:groups.ends[g]], n)
            out[item] = Match(int(self.seq_problem[ref_seq]), "instruction" if s % 2 == 0 else "output",
                              pieces, int(groups.ends[g] - groups.starts[g]), "ngram_coverage", float(share[g]))
        return out

    def _shared_windows(self, items: Corpus, item_windows: NgramWindows, todo: np.ndarray,
                        n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every (item window, reference window) pair of ``n`` equal tokens, for the items in ``todo``, as
        (item seq, reference seq, position in the reference text) per pair; None when there is none."""
        refs = self.corpus
        rh, rseq, rpos = self.cover
        ih, iseq, ipos = item_windows
        mine = candidates(self.cover_table, ih)  # a window with no equal reference hash adds nothing
        mine = mine[todo[iseq[mine] // 2]]
        ih, iseq, ipos = ih[mine], iseq[mine], ipos[mine]
        if rh.size == 0 or ih.size == 0:
            return None
        lo, hi = np.searchsorted(rh, ih, "left"), np.searchsorted(rh, ih, "right")
        cnt = hi - lo
        if not cnt.any():
            return None
        # one row per (item window, reference window) with equal hashes
        rep = np.repeat(np.arange(ih.size), cnt)
        ref = lo[rep] + np.arange(rep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        a_seq, a_pos, b_seq, b_pos = iseq[rep], ipos[rep], rseq[ref], rpos[ref]
        same = np.ones(rep.size, dtype=bool)
        for k in range(n):  # confirm token by token: a 64-bit hash collision fails here
            same &= items.ids[items.starts[a_seq] + a_pos + k] == refs.ids[refs.starts[b_seq] + b_pos + k]
        if not same.any():
            return None
        return a_seq[same], b_seq[same], b_pos[same]

    def _covered_pieces(self, ref_seq: int, window_pos: np.ndarray, n: int) -> str:
        """The reference text's pieces covered by windows of ``n`` tokens starting at ``window_pos`` (sorted),
        overlapping windows merged into one piece, in the text's order, joined by `` ... ``."""
        refs, base = self.corpus, int(self.corpus.starts[ref_seq])
        pieces, run_start, run_end = [], None, None
        for p in window_pos:
            if run_end is not None and p < run_end:  # overlapping windows: one piece
                run_end = max(run_end, int(p) + n)
                continue
            if run_end is not None:
                pieces.append(match_words(self.vocab, refs.ids[base + run_start: base + run_end]))
            run_start, run_end = int(p), int(p) + n
        pieces.append(match_words(self.vocab, refs.ids[base + run_start: base + run_end]))
        return " ... ".join(pieces)


@dataclass(frozen=True)
class _CoverGroups:
    """The coverage check's confirmed shared windows, one group per (item text, reference text)."""
    item_seq: np.ndarray  # per group: the item text
    ref_seq: np.ndarray   # per group: the reference text
    covered: np.ndarray   # per group: tokens of the reference text covered by the union of its windows
    pos: np.ndarray       # per window, grouped and sorted: its start in the reference text
    starts: np.ndarray    # per group: its first window in ``pos``
    ends: np.ndarray      # per group: one past its last window in ``pos``

    @classmethod
    def of(cls, a_seq: np.ndarray, b_seq: np.ndarray, b_pos: np.ndarray, n: int) -> _CoverGroups:
        """Group the pairs (item seq ``a_seq``, reference seq ``b_seq``, window start ``b_pos``) of
        ``n``-token windows; a reference window matched more than once counts once."""
        hits = np.unique(np.stack([a_seq, b_seq, b_pos], axis=1), axis=0)  # sorted by a, b, pos
        a, b, pos = hits[:, 0], hits[:, 1], hits[:, 2]
        new_group = np.ones(a.size, dtype=bool)
        new_group[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        starts = np.flatnonzero(new_group)
        step = np.full(a.size, n, dtype=np.int64)  # tokens a window adds beyond the previous one of its group
        step[:-1] = np.minimum(np.diff(pos), n)
        step[np.r_[starts[1:] - 1, a.size - 1]] = n  # the last window of a group adds all its n tokens
        return cls(a[starts], b[starts], np.add.reduceat(step, starts), pos, starts, np.r_[starts[1:], a.size])


def _best_groups(item_seq: np.ndarray, share: np.ndarray, flagged: np.ndarray) -> dict[int, int]:
    """Item seq -> its flagged group of highest ``share`` (the first such group on ties)."""
    best: dict[int, int] = {}
    for g in np.flatnonzero(flagged):
        s = int(item_seq[g])
        if s not in best or share[g] > share[best[s]]:
            best[s] = int(g)
    return best


def check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of items, got {chunk_size!r}")


def ngram_matches(instructions: Sequence[str], outputs: Sequence[str], problems: Sequence[Problem],
                  config: DecontaminateSettings = DecontaminateSettings(),
                  chunk_size: int = CHUNK_ITEMS) -> list[Match | None]:
    """The first confirmed benchmark n-gram of each item (instruction first, then output); for the items
    without one, the reordered-clause coverage check (``paraphrase_ngram``); None when neither flags.
    Items are checked ``chunk_size`` at a time against references built once (each item's result is its own,
    so the chunk size changes memory, not results)."""
    check_chunk_size(chunk_size)
    refs = References(problems, config)
    out: list[Match | None] = []
    for start in range(0, len(instructions), chunk_size):
        out += refs.matches(instructions[start:start + chunk_size], outputs[start:start + chunk_size])
    return out


def embedding_matches(item_vectors: np.ndarray, ref_vectors: np.ndarray, threshold: float,
                      block_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(best reference index or -1, its cosine similarity) per item; -1 where no similarity >= threshold.
    Rows are unit-normalised here; memory is block_size x references."""
    x = item_vectors / np.linalg.norm(item_vectors, axis=1, keepdims=True)
    r = ref_vectors / np.linalg.norm(ref_vectors, axis=1, keepdims=True)
    best = np.full(len(x), -1, dtype=np.int64)
    sim = np.full(len(x), np.nan, dtype=np.float64)
    for start in range(0, len(x), block_size):
        s = x[start:start + block_size] @ r.T
        arg = s.argmax(axis=1)
        top = s[np.arange(len(arg)), arg]
        hit = top >= threshold
        best[start:start + len(arg)][hit] = arg[hit]
        sim[start:start + len(arg)][hit] = top[hit]
    return best, sim
