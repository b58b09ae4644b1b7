"""The same-problem walk of selection: against a brute-force greedy, the ancestor case (two items of one seed) and
the embedding case (any two items), each able to fail, and the distinct-problem counts of the summary."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from evolforge.steps.select.checked import ANSWER, checked_answers, checked_value
from evolforge.steps.select.embeddings import Embeddings
from evolforge.steps.select.same_problem import (AS_SELECTED, IN_LINEAGE, SAME_ANSWER, Limits, Traits, count_problems,
                                                 walk_same_problems)
from evolforge.steps.select.selection import select_items
from evolforge.steps.select.settings import SelectSettings

TANK = "A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?"
TANK_REWORDED = ("Calculate the total time required to drain a tank that holds 500 litres and drains at a rate of 25 "
                 "litres per minute.")
TANK_METHOD = (TANK_REWORDED[:-1] + " using the formula Time = Volume / Rate and round the result to the nearest "
               "minute.")
WORDS = "Write a Python function that reverses the order of the words in a sentence."
DIGITS = "Write a function digit_sum(n) that returns the sum of the decimal digits of a non-negative integer n."


def brute_force(vectors: np.ndarray, roots: np.ndarray, limits: Limits, budget: int) -> tuple[list[int], list]:
    kept, dropped = [], []
    for i, v in enumerate(vectors):
        if len(kept) == budget:
            break
        hits = [(k, limits.reason(float(np.sum((v - vectors[k]) ** 2)), bool(roots[i] == roots[k]))) for k in kept]
        hit = next(((k, why) for k, why in hits if why is not None), None)
        if hit is None:
            kept.append(i)
        else:
            dropped.append((i, hit[1], hit[0]))
    return kept, dropped


def clustered(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), rng.integers(0, n // 4, n).astype(np.uint64)


@pytest.mark.parametrize("threshold,lineage,budget,block", [(0.05, 0.3, 500, 64), (0.1, None, 80, 7),
                                                             (None, 0.4, 500, 1000), (0.08, 0.25, 200, 33)])
def test_walk_is_the_brute_force_greedy(threshold, lineage, budget, block):
    vectors, roots = clustered(500, 12, seed=int(100 * (threshold or 0) + 10 * (lineage or 0)))
    limits = Limits(threshold=threshold, lineage=lineage)
    kept, dropped = brute_force(vectors, roots, limits, budget)
    assert 10 < len(dropped) and len(kept) > 10  # the limits both keep and drop
    walk = walk_same_problems(vectors, roots, limits, budget, block_size=block)
    assert walk.kept == kept
    assert [tuple(d) for d in walk.dropped] == dropped
    reasons = {why for _, why, _ in dropped}
    assert reasons == ({IN_LINEAGE} if threshold is None else {AS_SELECTED} if lineage is None
                       else {IN_LINEAGE, AS_SELECTED})


def test_count_problems_is_the_number_of_linked_groups():
    vectors, roots = clustered(300, 8, seed=4)
    limits = Limits(threshold=0.05, lineage=0.3)
    group = list(range(300))

    def find(i):
        while group[i] != i:
            i = group[i]
        return i
    for a in range(300):
        for b in range(a + 1, 300):
            if limits.reason(float(np.sum((vectors[a] - vectors[b]) ** 2)), bool(roots[a] == roots[b])):
                group[find(a)] = find(b)
    expected = len({find(i) for i in range(300)})
    assert 10 < expected < 290
    assert count_problems(vectors, roots, limits, block_size=37) == expected


def items(rows: list[tuple[str, str, str, float]]) -> pl.DataFrame:
    """(id, root_id, instruction, ic_ifd) rows of complete, verified items; answers of their own."""
    return pl.DataFrame({"id": [r[0] for r in rows], "root_id": [r[1] for r in rows],
                         "round": [0 if r[0] == r[1] else 1 for r in rows], "status": ["evolved"] * len(rows),
                         "instruction": [r[2] for r in rows], "input": [""] * len(rows),
                         "output": [f"answer of {r[0]}: " + " ".join(f"w{r[0]}{k}" for k in range(12)) for r in rows],
                         "response_status": ["complete"] * len(rows), "verify_verdict": ["right"] * len(rows),
                         "ic_ifd": [r[3] for r in rows]})


def at_distance(d2: list[float]) -> np.ndarray:
    """Unit vectors in 8-d: the first one, then each at the given squared distance from it and far from the rest."""
    out = np.zeros((len(d2) + 1, 8), dtype=np.float32)
    out[0, 0] = 1.0
    for k, dist in enumerate(d2, start=1):
        cos = 1 - dist / 2
        out[k, 0], out[k, k] = cos, np.sqrt(1 - cos ** 2)
    return out


def test_ancestor_case_drops_a_rewrite_that_asks_what_its_seed_asked():
    """The tank seed and its reworded round-1 rewrite share a seed; at the same embedding distance an item of another
    seed stays, and the rewrite goes with the reason and the seed it repeats. Without the lineage it stays."""
    table = items([("tank", "tank", TANK, 0.4), ("tank-r1", "tank", TANK_REWORDED, 0.9),
                   ("other", "other", DIGITS, 0.5)])
    vectors = at_distance([0.12, 0.12])  # both 0.12 from the seed; 0.24 apart
    emb = Embeddings(["tank", "tank-r1", "other"], vectors)
    settings = SelectSettings("ic_ifd", top_fraction=1.0, near_duplicates=0.7, same_problem=0.05,
                              same_problem_lineage=0.2)
    chosen, summary, excluded = select_items(table, settings, embeddings=emb)
    assert chosen["id"].to_list() == ["tank-r1", "other"]  # the better ranked rewrite stays, the seed goes
    row = excluded.filter(pl.col("id") == "tank").row(0, named=True)
    assert (row["skip_reason"], row["same_problem_as"]) == (IN_LINEAGE, "tank-r1")
    assert summary["removed_by_filter"] == {IN_LINEAGE: 1}
    assert summary["distinct_problems_selected"] == 2 and summary["distinct_problems_candidates"] == 2
    # the same vectors without lineage (every item its own seed): nothing is the same problem at 0.12
    alone = select_items(table.drop("root_id"), settings, embeddings=emb)
    assert alone.chosen.height == 3 and alone.summary["distinct_problems_candidates"] == 3


def test_embedding_case_drops_a_paraphrase_the_word_walk_keeps():
    """Two items of different seeds whose questions mean the same (a paraphrase: few shared word 3-grams, close
    embeddings) are one problem: the better ranked stays. The word 3-gram walk alone keeps both."""
    table = items([("tank", "tank", TANK, 0.4), ("paraphrase", "p", TANK_REWORDED, 0.9), ("words", "words", WORDS, 0.3),
                   ("digits", "digits", DIGITS, 0.2)])
    vectors = at_distance([0.03, 0.6, 0.6])
    emb = Embeddings(["tank", "paraphrase", "words", "digits"], vectors)
    words_only = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, near_duplicates=0.7), embeddings=emb)
    assert words_only.chosen.height == 4  # the reworded question shares few 3-grams with its seed
    chosen, summary, excluded = select_items(
        table, SelectSettings("ic_ifd", top_fraction=1.0, near_duplicates=0.7, same_problem=0.05), embeddings=emb)
    assert chosen["id"].to_list() == ["paraphrase", "words", "digits"]
    assert excluded.filter(pl.col("skip_reason") == AS_SELECTED)["same_problem_as"].to_list() == ["paraphrase"]
    assert summary["distinct_problems_selected"] == 3 and summary["distinct_problems_candidates"] == 3
    assert words_only.summary["distinct_problems_selected"] is None  # no limits: nothing to count by


def test_a_dropped_repeat_gives_its_place_to_the_next_item():
    """With a budget the walk goes on past a dropped item: the selection stays the budget's size."""
    table = items([("a", "a", TANK, 0.9), ("b", "a", TANK_METHOD, 0.8), ("c", "c", WORDS, 0.7), ("d", "d", DIGITS, 0.6)])
    emb = Embeddings(["a", "b", "c", "d"], at_distance([0.1, 0.9, 0.9]))
    chosen, summary, _ = select_items(table, SelectSettings("ic_ifd", top_fraction=0.5, same_problem_lineage=0.2),
                                      embeddings=emb)
    assert chosen["id"].to_list() == ["a", "c"]
    steps = [(s["filter"], s["removed"], s["left"]) for s in summary["filters"]]
    assert steps[-4:] == [(IN_LINEAGE, 1, 3), (AS_SELECTED, 0, 3), (SAME_ANSWER, 0, 3),
                          ("outside_top_fraction", 1, 2)]  # d: never walked


def test_same_problem_needs_embeddings():
    table = items([("a", "a", TANK, 0.9)])
    with pytest.raises(ValueError, match="select.same_problem needs embeddings"):
        select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, same_problem=0.1))


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "same_problem_calibration.py"
    spec = importlib.util.spec_from_file_location("same_problem_calibration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_measures_pairs_and_pairs_of_different_parents():
    """Each labelled pair's distance, and the distances between texts of different parents that a threshold could
    call the same (two rewrites of one parent are not such a pair)."""
    bench = _bench()
    rows = [{"parent": "p1", "rewrite": "r1", "label": "same_problem"}, {"parent": "p1", "rewrite": "r1b",
            "label": "adds_something"}, {"parent": "p2", "rewrite": "r2", "label": "easier", "split": "held_out"},
            {"parent": "p3", "rewrite": "r3", "label": "adds_something", "split": "held_out"}]
    vectors = np.zeros((8, 8), dtype=np.float32)
    vectors[:, 0] = 1.0
    vectors[1], vectors[3] = at_distance([0.12345])[1], at_distance([0.6])[1]  # r1, r1b: 0.12345, 0.6 from p1
    measured = bench.measure(rows, vectors)
    assert [round(p["d2"], 5) for p in measured["pairs"]] == [0.12345, 0.6, 0.0, 0.0]
    assert measured["cross"]["tune"]["pairs"] == 0  # one lineage in the tune split
    held = measured["cross"]["held_out"]
    assert held["pairs"] == 4 and held["within"] == [0.0] * 4  # p2, r2 against p3, r3: all four at distance 0
    figures = bench.calibrate(measured, precision=0.5, min_called=1)
    assert figures["lineage"]["param"] == 0.1235
    assert figures["lineage"]["at_param"]["held_out"] == {"called": 2, "precision": 0.5, "recall": 1.0}
    assert figures["any"]["at_param"]["held_out"] == {"called": 6, "precision": 1 / 6, "recall": 1.0}


def test_the_shipped_thresholds_are_the_calibrated_ones():
    """The kept calibration (docs/experiments/same-problem-calibration.json, written by the bench) holds one distance
    per labelled pair of bench/data; its tables are recomputed from those distances, and params.yaml's thresholds are
    the ones it recommends."""
    import json
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    bench = _bench()
    kept = json.loads((root / "docs" / "experiments" / "same-problem-calibration.json").read_text(encoding="utf-8"))
    rows = bench.labelled()
    assert [(p["id"], p["label"], p["split"]) for p in kept["distances"]["pairs"]] == [
        (r["id"], r["label"], r["split"]) for r in rows]
    figures = bench.calibrate(kept["distances"], kept["precision_asked"], kept["min_called"])
    assert {k: figures[k] for k in ("lineage", "any", "by_label")} == {k: kept[k] for k in ("lineage", "any", "by_label")}
    select = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))["select"]
    assert select["same_problem_lineage"] == figures["lineage"]["param"]
    assert select["same_problem"] == figures["any"]["param"]


def verified(rows: list[tuple[str, str, str, float]], values: dict[str, tuple[str, list[float]]],
             rounds: dict[str, int]) -> pl.DataFrame:
    """:func:`items` with the verify stage's columns: ``values`` id -> (verdict, the values its recomputations
    gave), each answer stating 20; ``rounds`` id -> round."""
    table = items(rows).with_columns(pl.Series("round", [rounds[r[0]] for r in rows]))
    verdicts = [values[r[0]][0] for r in rows]
    evidence = [json.dumps({"answer_value": 20.0, "answer_values": [20.0], "sample_values": values[r[0]][1],
                            "program_value": None}) for r in rows]
    return table.with_columns(verify_verdict=pl.Series(verdicts), verify_method=pl.lit("numeric"),
                              verify_evidence=pl.Series(evidence))


TANK_MORE = TANK[:-1] + ", and how much is left after 8 minutes? Give the time last."


def test_ancestor_backstop_drops_a_rewrite_whose_checked_answer_repeats_its_seed():
    """The demo's tank paraphrase: 0.288 from its seed, past the lineage threshold, so the embedding keeps it; its
    checked answer is the seed's (20) and it asks for nothing more: the same problem (the better ranked stays, the
    reason and the repeated item recorded). A rewrite of the same seed with the same final number that asks for more
    stays, and so do an item of another seed with that answer and a rewrite whose answer verify did not vouch for."""
    rows = [("tank", "tank", TANK, 0.5), ("tank-r1", "tank", TANK_REWORDED, 0.9), ("tank-r2", "tank", TANK_MORE, 0.8),
            ("tank-r3", "tank", TANK_METHOD, 0.7), ("other", "other", DIGITS, 0.6)]
    values = {"tank": ("right", [20.0, 20.0]), "tank-r1": ("right", [20.0, 20.0, 19.0]),
              "tank-r2": ("right", [20.0, 20.0]), "tank-r3": ("unsure", [20.0, 7.0]), "other": ("right", [20.0, 20.0])}
    table = verified(rows, values, {"tank": 0, "tank-r1": 1, "tank-r2": 2, "tank-r3": 3, "other": 0})
    emb = Embeddings([r[0] for r in rows], at_distance([0.288, 0.3, 0.3, 0.9]))
    shipped = SelectSettings("ic_ifd", top_fraction=1.0, same_problem=0.1206, same_problem_lineage=0.1206,
                             require_vouched=False)
    assert select_items(table, shipped, embeddings=emb).chosen.height == 5  # the embedding alone keeps all
    chosen, summary, excluded = select_items(table, dataclasses.replace(shipped, same_answer_lineage=True),
                                             embeddings=emb)
    assert chosen["id"].to_list() == ["tank-r1", "tank-r2", "other", "tank-r3"]  # the unsure one ranks last
    row = excluded.filter(pl.col("id") == "tank").row(0, named=True)
    assert (row["skip_reason"], row["same_problem_as"]) == (SAME_ANSWER, "tank-r1")
    assert summary["removed_by_filter"] == {SAME_ANSWER: 1}
    assert summary["distinct_problems_selected"] == 4 and summary["distinct_problems_candidates"] == 4
    # the backstop needs no embeddings, and an unchecked answer is never compared
    alone = select_items(table, SelectSettings("ic_ifd", top_fraction=1.0, same_answer_lineage=True,
                                               require_vouched=False))
    assert alone.chosen["id"].to_list() == ["tank-r1", "tank-r2", "other", "tank-r3"]
    unchecked = table.with_columns(verify_verdict=pl.lit("unsure"))
    assert select_items(unchecked, SelectSettings("ic_ifd", top_fraction=1.0, same_answer_lineage=True,
                                                  require_vouched=False)).chosen.height == 5


def test_answers_link_a_lineage_in_the_walk_and_the_count():
    """Against a brute-force greedy: rows of one seed with equal values, the later asking no more, are one problem;
    equal rounds (two rewrites of one round are no lineage) and NaN values never are."""
    rng = np.random.default_rng(3)
    n = 200
    roots = rng.integers(0, 30, n).astype(np.uint64)
    answers = Traits(values=np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 3, n).astype(float)),
                     rounds=rng.integers(0, 4, n), asks=rng.integers(1, 3, n), marks=np.zeros(n, dtype=np.int64))
    kept, dropped = [], []
    for i in range(n):
        hit = next((k for k in kept if roots[k] == roots[i] and answers.same(i, k)), None)
        (kept.append(i) if hit is None else dropped.append((i, SAME_ANSWER, hit)))
    walk = walk_same_problems(None, roots, Limits(same_answer=True), block_size=17, traits=answers)
    assert walk.kept == kept and [tuple(d) for d in walk.dropped] == dropped and len(dropped) > 20
    assert not answers.same(0, 0) and np.isnan(answers.values).any()
    group = list(range(n))

    def find(i):
        while group[i] != i:
            i = group[i]
        return i
    for a in range(n):
        for b in range(a + 1, n):
            if roots[a] == roots[b] and answers.same(a, b):
                group[find(a)] = find(b)
    expected = len({find(i) for i in range(n)})
    assert count_problems(None, roots, Limits(same_answer=True), traits=answers) == expected < n
    assert count_problems(None, roots, Limits(same_answer=False), traits=answers) == n


@pytest.mark.parametrize("method,verdict,evidence,value", [
    ("numeric", "right", {"answer_values": [0.0, 16.67, 500.0], "sample_values": [16.67, 16.7], "program_value": 16.666},
     16.67),
    ("numeric", "right", {"answer_value": 35.0, "sample_values": [35.0, 35.0, None]}, 35.0),
    ("numeric", "unsure", {"answer_values": [20.0], "sample_values": [20.0]}, None),
    ("numeric", "wrong", {"answer_values": [12.0], "sample_values": [19.0, 19.0]}, None),
    ("numeric", "right", {"answer_values": [20.0], "sample_values": [7.0]}, None),  # nothing agrees: no value
    ("answer_check", "right", {"check": json.dumps({"kind": "number", "value": 42, "tolerance": 1e-6})}, 42.0),
    ("answer_check", "right", {"check": json.dumps({"kind": "python_tests", "tests": "assert f(1) == 2"})}, None),
    ("code_tests", "right", {"kept_tests": 3, "answer_passed": 3}, None),
    ("judge", "right", {"p_right": 0.97}, None),
    ("numeric", "right", "not json", None),
])
def test_the_checked_value_is_the_number_verify_vouched_for(method, verdict, evidence, value):
    text = evidence if isinstance(evidence, str) else json.dumps(evidence)
    assert checked_value(method, verdict, text) == value


def test_checked_answers_are_read_a_chunk_at_a_time(tmp_path):
    from evolforge.io.records import write_table

    rows = pl.DataFrame({"id": ["a", "b", "c"], "verify_method": ["numeric", "judge", "numeric"],
                         "verify_verdict": ["right", "right", "unsure"],
                         "verify_evidence": [json.dumps({"answer_values": [20.0], "sample_values": [20.0, 20.0]}),
                                             "{}", "{}"]})
    write_table(rows, tmp_path / "verified.parquet")
    found = checked_answers(tmp_path / "verified.parquet", chunk_rows=1)
    assert found["id"].to_list() == ["a", "b", "c"] and found[ANSWER].to_list() == [20.0, None, None]


def test_a_restriction_tells_two_close_items_apart_in_the_walk_and_the_count():
    """Against a brute-force greedy: two items the embeddings call the same are not when, of one seed, the later
    states a restriction the earlier does not, or, of two seeds, their restrictions differ."""
    vectors, roots = clustered(400, 10, seed=9)
    rng = np.random.default_rng(9)
    traits = Traits(values=np.full(400, np.nan), rounds=rng.integers(0, 4, 400), asks=np.ones(400, dtype=np.int64),
                    marks=rng.choice([0, 1, 2, 3], 400, p=[0.7, 0.1, 0.1, 0.1]))
    limits = Limits(threshold=0.05, lineage=0.3)
    kept, dropped = [], []
    for i, v in enumerate(vectors):
        hits = [(k, limits.reason(float(np.sum((v - vectors[k]) ** 2)), bool(roots[i] == roots[k]))) for k in kept
                if not traits.restricted(i, k, bool(roots[i] == roots[k]))]
        hit = next(((k, why) for k, why in hits if why is not None), None)
        (kept.append(i) if hit is None else dropped.append((i, hit[1], hit[0])))
    walk = walk_same_problems(vectors, roots, limits, block_size=29, traits=traits)
    assert walk.kept == kept and [tuple(d) for d in walk.dropped] == dropped
    unguarded = walk_same_problems(vectors, roots, limits, block_size=29)
    assert len(unguarded.dropped) > len(walk.dropped) > 10
    assert count_problems(vectors, roots, limits, traits=traits) > count_problems(vectors, roots, limits)


def test_a_rewrite_that_adds_a_restriction_is_another_problem_however_close():
    """A long code task and its rewrite that only adds "without any additional data structure" lie as close as a
    paraphrase does; the paraphrase goes, the restricted rewrite stays."""
    task = ("Write a Python function `compress(s)` that encodes each run of a repeated character as the character "
            "followed by the length of the run.")
    rows = [("c", "c", task, 0.5), ("c-r1", "c", task + " Do it without any additional data structure.", 0.9),
            ("c-r2", "c", "Write `compress(s)` in Python: encode each run of a repeated character as the character "
                          "followed by the run's length.", 0.8)]
    table = items(rows).with_columns(pl.Series("round", [0, 2, 1]))  # c -> c-r2 (round 1) -> c-r1 (round 2)
    emb = Embeddings(["c", "c-r1", "c-r2"], at_distance([0.04, 0.05]))
    settings = SelectSettings("ic_ifd", top_fraction=1.0, same_problem_lineage=0.1206)
    chosen, summary, excluded = select_items(table, settings, embeddings=emb)
    assert chosen["id"].to_list() == ["c-r1", "c-r2"]  # the seed goes as the same problem as c-r2, not as c-r1
    assert excluded.filter(pl.col("id") == "c").row(0, named=True)["same_problem_as"] == "c-r2"
    assert summary["distinct_problems_candidates"] == 2
    # without the texts' helpers (no instruction column) the embeddings alone decide: one problem
    assert select_items(table.drop("instruction"), settings, embeddings=emb).chosen["id"].to_list() == ["c-r1"]
