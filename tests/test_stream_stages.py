"""Streaming the respond and score stages: at any ``data.chunk_rows`` each writes the bytes (and
metrics, plots) it writes when the whole table fits in one chunk, and those are the in-memory path's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest

from stage_runs import run_stage
from tiny import build_random_llama

REPO = Path(__file__).resolve().parents[1]
CHUNKS = (7, 100, 100_000)


def outputs(folder: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def without_peak(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    assert metrics.pop("peak_rss_mib") > 0  # every data stage records its peak memory
    assert metrics.pop("wall_s") >= 0  # the stage process's wall seconds differ run to run
    return metrics


@pytest.fixture(scope="module")
def scorer_model(tmp_path_factory) -> Path:
    return build_random_llama(tmp_path_factory.mktemp("scorer") / "model", vocab_size=400, hidden_size=64, num_layers=2,
                              num_heads=4, intermediate_size=128)


def scored_items(n: int = 45) -> pl.DataFrame:
    """Texts of many lengths (the scorer sorts by length inside a chunk), some inputs, one empty response."""
    words = "the rain falls on quiet hills while a small river sings of stone and light".split()
    rows = [{"id": f"item-{k:03d}", "round": 1 + k % 3, "instruction": " ".join(words[: 3 + k % 11]) + f" {k}?",
             "input": "" if k % 4 else " ".join(words[k % 5: k % 5 + 4]), "output": "" if k == 13 else " ".join(words[k % 7:]) * (1 + k % 3)}
            for k in range(n)]
    return pl.DataFrame(rows, schema={"id": pl.String, "round": pl.Int64, "instruction": pl.String, "input": pl.String, "output": pl.String})


def run_score(folder: Path, model: Path, chunk_rows: int, monkeypatch) -> Path:
    from evolforge.io.records import write_output

    folder.mkdir()
    monkeypatch.chdir(folder)  # no models/identity.json here: the stage resolves the scorer itself
    write_output(folder / "clean", scored_items())
    (folder / "params.yaml").write_text(f"data: {{chunk_rows: {chunk_rows}}}\nscore: {{max_batch_tokens: 200}}\n"
                                        f"roles: {{scorer: {{backend: hf, model: {model}, batch_size: 3, device: cpu}}}}\n")
    run_stage("score.py", "--items", "clean", "--out", "scores", "--metrics", "m/score.json", "--plots", "m/plots")
    return folder


def test_score_stage_streams_with_the_whole_table_bytes(tmp_path, scorer_model, monkeypatch):
    """With encode chunks of 8 items, the stage at chunk_rows 7, 100 and 100k (read 8, 96 and all rows at a
    time) writes the same table, metrics and histograms; batches (3 rows, 200 padded tokens) never cross an
    encode chunk, so the floats are equal, not only close."""
    import evolforge.score.ifd as ifd

    monkeypatch.setattr(ifd, "ENCODE_CHUNK", 8)
    runs = {rows: run_score(tmp_path / f"rows-{rows}", scorer_model, rows, monkeypatch) for rows in CHUNKS}
    files = ["scores/items.parquet", "m/plots/ifd_hist.json", "m/plots/ic_ifd_hist.json"]
    whole = runs[100_000]
    for rows, folder in runs.items():
        assert outputs(folder, files) == outputs(whole, files), rows
        assert without_peak(folder / "m" / "score.json") == without_peak(whole / "m" / "score.json")
    table = pl.read_parquet(whole / "scores" / "items.parquet")
    assert table["id"].to_list() == scored_items()["id"].to_list() and table["ifd"].null_count() < 3
    assert json.loads((whole / "scores" / "meta.json").read_text())["versions"]  # recorded as write_output does


def test_score_stage_writes_what_the_in_memory_scorer_wrote(tmp_path, scorer_model, monkeypatch):
    """Chunks of whole encode chunks (the default 4096 here covers the table) give the bytes of the table
    scored at once and written with write_parquet, as the stage did before it streamed."""
    from evolforge.steps.score.settings import ScoreSettings
    from evolforge.core.models import load_scorer
    from evolforge.score.ifd import ifd_scores
    from evolforge.score.precision import stored_scores

    folder = run_score(tmp_path / "run", scorer_model, 7, monkeypatch)
    items = scored_items()
    model, tokenizer = load_scorer(str(scorer_model), device="cpu")
    scores = ifd_scores(model, tokenizer, items["instruction"].to_list(), items["input"].to_list(), items["output"].to_list(),
                        **dataclasses.asdict(ScoreSettings(max_batch_tokens=200)), batch_size=3)
    pl.concat([items.select("id", "round"), stored_scores(scores)], how="horizontal").write_parquet(tmp_path / "expected.parquet")
    assert (folder / "scores" / "items.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()


def respond_inputs(folder: Path) -> None:
    """Seeds, a round with failed items between evolved ones, and a round written before finish reasons
    were kept (the concat types its column)."""
    from evolforge.io.records import write_output

    def table(n: int, rnd: int) -> pl.DataFrame:
        return pl.DataFrame([{"id": f"r{rnd}-{k}", "root_id": f"s{k}", "parent_id": f"s{k}", "round": rnd, "method": "deepen",
                              "status": "failed" if rnd and k % 5 == 2 else ("evolved" if rnd else "seed"), "failure_reason": None,
                              "instruction": f"Say {k * 7 % 13} things about {'rain' if k % 3 else 'stone'} ({rnd}).",
                              "input": "" if k % 4 else "in a list", "output": "", "evolve_template_hash": "t", "evolver_model": "m",
                              "instruction_finish_reason": "stop"} for k in range(n)])

    write_output(folder / "seed", table(20, 0).drop("evolve_template_hash", "evolver_model", "instruction_finish_reason"))
    write_output(folder / "evolved" / "round_1", table(31, 1))
    write_output(folder / "evolved" / "round_2", table(26, 2).drop("instruction_finish_reason"))


def fake_responder(name, cache=None):
    """A responder whose answer depends on the prompt alone: complete, truncated, empty or looping."""
    from evolforge.config.roles import Role
    from evolforge.llm.cached import LLM
    from evolforge.llm.backends.fake import FakeBackend
    from evolforge.llm.types import Completion

    def reply(request):
        prompt = request.messages[-1][1]
        kind = sum(map(ord, prompt)) % 4
        text = ["It is so, because the rain falls on the hills in spring.", "Half an ans", "", "loop " * 40][kind]
        return Completion(text, "length" if kind == 1 else "stop")

    return LLM(FakeBackend(reply), cache, role=Role.from_params(name, {"backend": "hf", "model": "fake"}))  # the stage's call cache


def test_respond_stage_streams_with_the_in_memory_bytes(tmp_path, monkeypatch, repo):
    """respond at chunk_rows 7, 100 and 100k, through the call cache (SQLite, which works on its own thread
    only): the table and meta.json of the in-memory gather (one vertical_relaxed concat) answered at once and
    written by write_output; the same counts."""
    from evolforge.core.prompts import PromptLibrary
    from evolforge.io.records import read_table, write_output
    from evolforge.config.loader import load_section
    from evolforge.steps.respond.settings import RespondSettings
    from evolforge.steps.common.responses import RESPONSE_TEMPLATE
    from evolforge.steps.respond.step import _kept, answer

    respond_inputs(tmp_path)
    monkeypatch.setattr("evolforge.steps.common.llms.open_role",  # through the stage's call cache
                        lambda role, cache, settings: fake_responder(role.name, cache))
    monkeypatch.setenv("EVOLFORGE_CACHE", str(tmp_path / "cache.sqlite"))
    params = {"evolve": {"rounds": {"round_1": {"src": "data/seed", "index": 1}, "round_2": {"src": "x", "index": 2}}},
              "respond": {"rounds": [1, 2], "include_seed": True}, "roles": {"responder": {"backend": "hf", "model": "fake"}}}
    runs = {}
    for rows in CHUNKS:
        (tmp_path / "params.yaml").write_text(json.dumps({**params, "data": {"chunk_rows": rows}}))
        run_stage("respond.py", "--params", str(tmp_path / "params.yaml"), "--evolved", str(tmp_path / "evolved"),
                  "--seed", str(tmp_path / "seed"), "--prompts", str(repo / "prompts"), "--out", str(tmp_path / f"out-{rows}"),
                  "--metrics", str(tmp_path / f"m-{rows}.json"))
        metrics = without_peak(tmp_path / f"m-{rows}.json")
        for key in ("calls", "cache_hits", "llm"):  # a prompt in two chunks is sent twice or found in the cache
            metrics.pop(key)
        runs[rows] = (outputs(tmp_path / f"out-{rows}", ["items.parquet", "meta.json"]), metrics)
    seeds = _kept(read_table(tmp_path / "seed"), is_round=False)
    evolved = [_kept(read_table(tmp_path / "evolved" / r), is_round=True) for r in ("round_1", "round_2")]
    whole = pl.concat([seeds, *evolved], how="vertical_relaxed")
    llm = fake_responder("responder")
    prompts = PromptLibrary(repo / "prompts")
    expected = answer(whole, llm, prompts)
    write_output(tmp_path / "expected", expected, meta={"model": llm.label, "model_identity": llm.identity, "template_hash": prompts.hash(RESPONSE_TEMPLATE),
                                                        "settings": dataclasses.asdict(load_section(params, "respond", RespondSettings))})
    assert expected.height == 20 + 25 + 21 and set(expected["response_status"]) == {"complete", "truncated", "empty", "repetitive"}
    for rows, (files, metrics) in runs.items():
        assert files == outputs(tmp_path / "expected", ["items.parquet", "meta.json"]), rows
        assert metrics == runs[100_000][1]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the scratch folders are gone
    assert runs[7][1]["items"] == 66 and runs[7][1]["per_round"] == {"0": 20, "1": 25, "2": 21}
    assert sum(runs[7][1]["response_status"].values()) == 66
