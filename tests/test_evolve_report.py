"""The rounds' report: each round's counts gathered, and how hard the judge finds the seeds and each round (the SLM
paper's measure: the share at the top two difficulty levels and the mean expected score) from the judged items."""

from __future__ import annotations

import json

import polars as pl
import pytest

from evolforge.io.records import write_output
from evolforge.io.validation import DataError
from evolforge.steps.evolve.report import difficulty_per_round, run

ROUND = {"in": 4, "evolved": 3, "failed": 1, "calls": 7, "cache_hits": 0, "failed_by_reason": {"unchanged": 1},
         "mean_length_growth": 1.5}
ROUNDS = {"round_1": {"src": "data/seed", "index": 1}, "round_2": {"src": "data/evolved/round_1", "index": 2}}


def judged(folder, rows: list[tuple[int, str | None, float | None]], with_expected: bool = True) -> None:
    """(round, level, expected score) rows, as the judge stage writes them (the most likely score: a round 10)."""
    table = pl.DataFrame({"id": [f"i{k}" for k in range(len(rows))], "round": [r[0] for r in rows],
                          "difficulty_level": [r[1] for r in rows],
                          "difficulty_score": [None if r[2] is None else float(round(r[2], -1)) for r in rows],
                          "difficulty_expected": [r[2] for r in rows]},
                         schema_overrides={"difficulty_level": pl.String, "difficulty_score": pl.Float64,
                                           "difficulty_expected": pl.Float64})
    write_output(folder, table if with_expected else table.drop("difficulty_expected"))


def test_difficulty_per_round_is_the_papers_measure(tmp_path):
    """Per round: the share of parsed levels at hard or very hard (an unparsed level counts in neither part) and the
    mean of the expected scores there are; the seeds are round 0."""
    judged(tmp_path / "judged", [(0, "easy", 40.0), (0, "hard", 62.0), (0, None, None), (0, "medium", 50.0),
                                 (1, "very hard", 80.0), (1, "hard", 70.0), (1, "easy", None),
                                 (2, "very hard", 90.0), (2, "very hard", 85.0)])
    out = difficulty_per_round(tmp_path / "judged", {1: "round_1", 2: "round_2"})
    seeds, first, second = (out["rounds"][name] for name in ("seeds", "round_1", "round_2"))
    assert (seeds["judged"], seeds["levels"], seeds["top_two"]) == (4, 3, 1)
    assert seeds["top_two_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert seeds["mean_expected"] == pytest.approx((40 + 62 + 50) / 3, abs=1e-4)
    assert (first["top_two"], first["top_two_share"], first["mean_expected"]) == (2, pytest.approx(2 / 3, abs=1e-4), 75.0)
    assert (second["top_two_share"], second["mean_expected"], second["round"]) == (1.0, 87.5, 2)
    assert out["levels"] == ["hard", "very hard"] and "data/clean" in out["population"]
    judged(tmp_path / "plain", [(0, "hard", 60.0), (1, "easy", 20.0)], with_expected=False)
    plain = difficulty_per_round(tmp_path / "plain", {1: "round_1"})["rounds"]
    assert plain["seeds"]["mean_expected"] is None and plain["seeds"]["mean_score"] == 60.0


def test_report_holds_the_rounds_and_their_difficulty(tmp_path):
    (tmp_path / "evolve").mkdir()
    for name in ROUNDS:
        (tmp_path / "evolve" / f"{name}.json").write_text(json.dumps(ROUND))
    judged(tmp_path / "judged", [(0, "easy", 30.0), (1, "hard", 65.0), (2, "very hard", 88.0)])
    report, plots = run(tmp_path / "evolve", ROUNDS, tmp_path / "judged")
    assert report["total"]["evolved"] == 6 and len(plots["evolve_length.json"]) == 2
    assert [r["mean_expected"] for r in report["difficulty"]["rounds"].values()] == [30.0, 65.0, 88.0]
    assert "difficulty" not in run(tmp_path / "evolve", ROUNDS)[0]  # no judged items given: no such part


def test_a_judged_table_without_levels_is_refused(tmp_path):
    write_output(tmp_path / "judged", pl.DataFrame({"id": ["a"], "round": [0], "difficulty_score": [50.0]}))
    with pytest.raises(DataError, match="round and difficulty_level"):
        difficulty_per_round(tmp_path / "judged", {})

