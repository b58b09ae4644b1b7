"""Responses: each one marked complete, truncated, repetitive or empty, and counted."""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest

from evolforge.steps.common.repetition import repetition_test

from evolforge.config.loader import load_section
from evolforge.steps.respond.settings import RespondSettings

from evolforge.steps.common.repetition import RepetitionTest
from evolforge.io.columns import RESPONSES
from evolforge.steps.common.responses import response_requests
from evolforge.steps.respond.step import answer, gather, status_counts
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import write_output
from evolforge.config.roles import Role
from evolforge.llm.cached import LLM
from evolforge.llm.types import Completion
from evolforge.llm.backends.fake import FakeBackend

ROLE = Role.from_params("responder", {"backend": "hf", "model": "fake", "max_tokens": 32})
# instruction -> what the fake responder returns
REPLIES = {
    "Add 2 and 3.": Completion("2 + 3 = 5.", "stop"),
    "Explain leap years.": Completion("A leap year has 366 days because the Earth's orbit takes", "length"),
    "Write a haiku about leaves.": Completion("A tale of leaves, " * 20, "length"),
    "Name a color.": Completion("", "stop"),
}


def round_table(finish: dict[str, str]) -> pl.DataFrame:
    rows = [{"id": f"i{k}", "root_id": f"r{k}", "parent_id": f"r{k}", "round": 1, "method": "deepening",
             "status": "evolved", "failure_reason": None, "instruction": q, "input": "", "output": "",
             "evolve_template_hash": "t", "evolver_model": "fake@x", "instruction_finish_reason": finish.get(q, "stop")}
            for k, q in enumerate(REPLIES)]
    rows.append({**rows[0], "id": "failed", "status": "failed", "failure_reason": "truncated_at_max_tokens",
                 "instruction_finish_reason": "length"})
    return pl.DataFrame(rows)


def gathered(round_dirs: list) -> pl.DataFrame:
    """The items respond answers, all chunks together."""
    return pl.concat(list(gather(round_dirs).chunks()))


def responder() -> tuple[LLM, FakeBackend]:
    fake = FakeBackend(lambda request: REPLIES[request.messages[-1][1].split("Instruction: ")[1].split("\n")[0]])
    return LLM(fake, None, role=ROLE), fake


def test_response_status_per_item_and_counts(tmp_path):
    write_output(tmp_path / "round_1", round_table({}))
    items = gathered([tmp_path / "round_1"])
    assert items.height == 4 and "failed" not in items["id"].to_list()  # only evolved items are answered
    llm, fake = responder()
    table = answer(items, llm, PromptLibrary())
    status = dict(zip(table["instruction"], table["response_status"]))
    assert status == {"Add 2 and 3.": "complete", "Explain leap years.": "truncated",
                      "Write a haiku about leaves.": "repetitive", "Name a color.": "empty"}
    finish = dict(zip(table["instruction"], table["response_finish_reason"]))
    assert finish["Explain leap years."] == "length" and finish["Add 2 and 3."] == "stop"
    assert status_counts(table) == {"complete": 1, "truncated": 1, "repetitive": 1, "empty": 1, "failed": 0}
    assert all(r.max_tokens == 32 for r in fake.sent)


def test_repetition_thresholds_reach_the_status(tmp_path):
    write_output(tmp_path / "round_1", round_table({}))
    items = gathered([tmp_path / "round_1"])
    llm, _ = responder()
    lax = RepetitionTest(max_repeated_ngram_fraction=1.0, max_compression_ratio=1000)
    table = answer(items, llm, PromptLibrary(), repetition=lax)
    assert dict(zip(table["instruction"], table["response_status"]))["Write a haiku about leaves."] == "truncated"


def test_the_evolvers_finish_reason_travels_with_the_item(tmp_path):
    write_output(tmp_path / "round_1", round_table({"Add 2 and 3.": "length"}))
    legacy = round_table({}).drop("instruction_finish_reason")  # a round written before finish reasons were kept
    write_output(tmp_path / "round_2", legacy.with_columns(round=pl.lit(2)))
    items = gathered([tmp_path / "round_1", tmp_path / "round_2"])
    llm, _ = responder()
    table = answer(items, llm, PromptLibrary())
    first = table.filter(pl.col("round") == 1)
    assert dict(zip(first["instruction"], first["instruction_finish_reason"]))["Add 2 and 3."] == "length"
    assert table.filter(pl.col("round") == 2)["instruction_finish_reason"].null_count() == 4


def test_a_rounds_check_answer_is_taken_when_respond_asks_the_same_request(tmp_path):
    llm, fake = responder()
    prompts = PromptLibrary()
    table = round_table({})
    requests = response_requests(llm, prompts, table["instruction"].to_list(), table["input"].to_list())
    keys = [llm.key(r) for r in requests]
    keys[1] = "0" * 64  # asked with other settings: respond asks again
    stored = table.with_columns(check_response=pl.Series(["From the check."] * table.height),
                                check_finish_reason=pl.lit("length"), check_request_key=pl.Series(keys))
    write_output(tmp_path / "round_1", stored)
    tally = Counter()
    answered = answer(gathered([tmp_path / "round_1"]), llm, prompts, tally=tally)
    outputs = dict(zip(answered["instruction"], answered["output"]))
    assert tally["reused"] == 3 and [r.messages[-1][1] for r in fake.sent] == [requests[1].messages[-1][1]]
    assert outputs["Explain leap years."] == REPLIES["Explain leap years."].text
    assert outputs["Add 2 and 3."] == "From the check."
    assert dict(zip(answered["instruction"], answered["response_finish_reason"]))["Add 2 and 3."] == "length"
    assert answered.columns == list(RESPONSES)


def test_stage_counts_statuses(repo, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("respond_stage", repo / "stages/respond.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    llm, _ = responder()
    monkeypatch.setattr("evolforge.steps.common.llms.open_role", lambda role, cache, settings: llm)
    monkeypatch.setenv("EVOLFORGE_CACHE", str(tmp_path / "cache.sqlite"))
    write_output(tmp_path / "evolved" / "round_1", round_table({}))
    params = {"evolve": {"rounds": {"round_1": {"src": "data/seed", "index": 1}}},
              "respond": {"rounds": [1], "repetition": {"ngram": 3}}, "roles": {"responder": {"backend": "hf", "model": "fake"}}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    monkeypatch.setattr("sys.argv", ["respond", "--params", str(tmp_path / "params.yaml"), "--evolved", str(tmp_path / "evolved"), "--seed", str(tmp_path / "seed"),
                                     "--prompts", str(repo / "prompts"), "--out", str(tmp_path / "responses"),
                                     "--metrics", str(tmp_path / "respond.json")])
    stage.main()
    metrics = json.loads((tmp_path / "respond.json").read_text())
    assert metrics["response_status"] == {"complete": 1, "truncated": 1, "repetitive": 1, "empty": 1, "failed": 0}
    assert metrics["empty_responses"] == 1 and metrics["items"] == 4
    assert "response_status" in pl.read_parquet(tmp_path / "responses" / "items.parquet").columns


def test_respond_settings_are_typed():
    with pytest.raises(ValueError, match=r"respond.max_token: unknown key"):
        load_section({"respond": {"max_token": 3}}, "respond", RespondSettings)
    with pytest.raises(ValueError, match=r"respond\.repetition"):
        load_section({"respond": {"repetition": {"min_word": 3}}}, "respond", RespondSettings)
    assert repetition_test(load_section({"respond": {"rounds": [1, 2]}}, "respond", RespondSettings).repetition) == RepetitionTest()
