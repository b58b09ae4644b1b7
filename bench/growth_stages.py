"""The stages bench/growth.py runs, their inputs and their params.yaml: a module of growth.py, not a benchmark.

Every stage reads and writes where dvc.yaml has it, under the run's folder (``data/<output>``,
``metrics/<stage>.json``), so that what a stage reads besides its flags (the select stage's dataset card
reads ``data/pool``, ``data/evolved``, ``data/clean``, ``data/judged``, ``metrics/pool.json``) is there as
in a pipeline run. Two inputs differ from the pipeline's, so that the earlier figures stay comparable:
dedup reads the synthetic table (``data/responses``), not pick_scenario's pool, and respond writes
``data/answered``. judge, score and diversity read decontaminate's output (``data/clean``) when
decontaminate is among the stages run, the synthetic table otherwise.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from dedup import synthetic_chunks  # bench/dedup.py: the synthetic items

from evolforge.io.records import TABLE, write_json, write_table
from evolforge.io.stream import iter_chunks, sink_chunks, table_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA_EXTRA = {"status": "evolved", "response_status": "complete"}  # what the selection guards read
# dvc.yaml's order (judge, score and diversity all read data/clean)
PIPELINE = ("respond", "pick_scenario", "dedup", "decontaminate", "judge", "score", "diversity", "select")
NEEDS = {"decontaminate": ("dedup",), "select": ("dedup", "decontaminate", "judge", "score", "diversity")}
STAND_IN = REPO / "bench" / "stub_stage.py"


def stage_order_problem(stages: list[str]) -> str | None:
    """Why the stages cannot run in the order given (a stage before the one whose output it reads), or None."""
    for k, name in enumerate(stages):
        needs = NEEDS.get(name, ()) + (("decontaminate",) if name in ("judge", "score", "diversity") and "decontaminate" in stages else ())
        missing = [n for n in needs if n not in stages[:k]]
        if missing:
            return f"{name} reads the output of {' and '.join(missing)}: list it before {name} (or use --stages all)"
    return None


def write_items(total: int, folder: Path, chunk: int) -> None:
    """``total`` synthetic items (total/3 per round, 3 rounds) as ``folder/items.parquet``, streamed."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    parts = (part.with_columns(**{k: pl.lit(v) for k, v in SCHEMA_EXTRA.items()})
             for part in synthetic_chunks(total // 3, 3, chunk=chunk))
    schema = {"id": pl.String, "round": pl.Int64, "instruction": pl.String, "output": pl.String, "input": pl.String,
              **{k: pl.String for k in SCHEMA_EXTRA}}
    sink_chunks(folder / TABLE, schema, parts)
    write_json(folder / "meta.json", {})


def _lineage():
    import polars as pl

    return {"root_id": pl.col("id"), "parent_id": pl.col("id"), "method": pl.lit("deepen"), "failure_reason": pl.lit(None, pl.String)}


def write_rounds(source: Path, evolved: Path, chunk: int) -> None:
    """``source``'s items as the evolve stage's round folders ``evolved/round_<r>`` (lineage columns added),
    streamed."""
    import polars as pl

    lineage = {**_lineage(), "evolve_template_hash": pl.lit("t"), "evolver_model": pl.lit("m"),
               "instruction_finish_reason": pl.lit("stop")}
    schema = {**table_schema(source), **{k: pl.String for k in lineage}}
    for r in (1, 2, 3):
        (evolved / f"round_{r}").mkdir(parents=True)
        sink_chunks(evolved / f"round_{r}" / TABLE, schema,
                    (part.filter(pl.col("round") == r).with_columns(**lineage) for part in iter_chunks(source, chunk)))
        write_json(evolved / f"round_{r}" / "meta.json", {})


def write_branches(source: Path, data: Path, chunk: int) -> None:
    """pick_scenario's two branches: ``data/evol`` (``source``'s items with the lineage columns the pool checks),
    streamed, and an empty AutoIF table ``data/autoif/responses`` (autoif_respond's columns)."""
    import polars as pl

    from evolforge.io.columns import AUTOIF_RESPONSES

    (data / "evol").mkdir(parents=True)
    schema = {**table_schema(source), **{k: pl.String for k in _lineage()}}
    sink_chunks(data / "evol" / TABLE, schema, (part.with_columns(**_lineage()) for part in iter_chunks(source, chunk)))
    write_json(data / "evol" / "meta.json", {})
    (data / "autoif" / "responses").mkdir(parents=True)
    write_table(pl.DataFrame(schema=AUTOIF_RESPONSES), data / "autoif" / "responses" / TABLE)
    write_json(data / "autoif" / "responses" / "meta.json", {})


def write_stand_in_diversity(items: Path, out: Path, chunk: int) -> None:
    """What the diversity stage writes (items.parquet with id, round, mnd, repeat_count; embeddings.npy), made
    here without its neighbour search, for the select stage where the diversity stage itself was skipped:
    the stand-in embedder's vectors (``stub_stage.hash_vectors``) and an MND from each id's hash."""
    import polars as pl

    sys.path.insert(0, str(STAND_IN.parent))
    from stub_stage import hash_vectors

    from evolforge.core.text import question_text

    out.mkdir(parents=True)
    parts, vectors = [], []
    for part in iter_chunks(items, chunk, ["id", "round", "instruction", "input"]):
        vectors.append(hash_vectors([question_text(q, x) for q, x in zip(part["instruction"], part["input"])]))
        mnd = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest(), "little") / 2**32 for i in part["id"]]
        parts.append(part.select("id", "round").with_columns(mnd=pl.Series(mnd, dtype=pl.Float64), repeat_count=pl.lit(0, pl.Int64)))
    write_table(pl.concat(parts), out / TABLE)
    np.save(out / "embeddings.npy", np.concatenate(vectors) if vectors else np.zeros((0, 16), np.float32))
    write_json(out / "meta.json", {"embedder": "stand-in (growth.py: diversity stage skipped)"})


def write_params(root: Path, chunk_rows: int) -> Path:
    """The run's params.yaml: the data stages' sections, the shipped ``judge``, ``diversity`` and ``select``
    sections (params.yaml's), the stand-in roles, and pick_scenario on the evol branch."""
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    judge_role = {"backend": "hf", "model": "stand-in", "batch_size": shipped["roles"]["judge"].get("batch_size", 8)}
    roles = {"scorer": {"backend": "hf", "model": "stand-in"}, "judge": judge_role, "embedder": {"backend": "hf", "model": "stand-in"},
             "responder": {"backend": "hf", "model": "stand-in"}}
    sections = {"autoif": {"scenario": "evol", "on_empty": "evol"}, "judge": shipped["judge"],
                "diversity": shipped["diversity"], "select": shipped["select"]}
    (root / "params.yaml").write_text(f"data: {{chunk_rows: {chunk_rows}, engine: local}}\n"
                                      "evaluate: {suite: offline, tasks: [ifeval, gsm8k, math, humaneval, mbpp]}\n"
                                      "evolve: {rounds: {round_1: {src: data/seed, index: 1}, round_2: {src: data/evolved/round_1, index: 2},"
                                      " round_3: {src: data/evolved/round_2, index: 3}}}\n"
                                      "respond: {rounds: [1, 2, 3], include_seed: false}\n"
                                      f"roles: {json.dumps(roles)}\n"
                                      + "".join(f"{k}: {json.dumps(v)}\n" for k, v in sections.items()))
    return root / "params.yaml"


def stage_commands(root: Path, stages: list[str], scripts: dict[str, Path], suffix: str) -> dict[str, tuple[list, Path]]:
    """Stage name -> (its command line after the interpreter, without --params and --metrics; the folder it
    reads), as dvc.yaml has them, under ``root``. The stand-in stages (respond, judge, score, diversity) and
    the pool and select stages run today's scripts only (``suffix`` empty)."""
    data, plots = root / "data", root / "metrics" / "plots"
    dedup_out, clean_out = data / f"dedup{suffix}", data / f"clean{suffix}"
    # the items flag was --responses before the stage scripts took every path from dvc.yaml
    items_flag = "--items" if '"--items"' in Path(scripts["dedup"]).read_text() else "--responses"
    steps = {"dedup": ([scripts["dedup"], items_flag, data / "responses", "--out", dedup_out], data / "responses"),
             "decontaminate": ([scripts["decontaminate"], "--dedup", dedup_out, "--out", clean_out], dedup_out)}
    if suffix:
        return steps
    src = data / ("clean" if "decontaminate" in stages else "responses")
    steps.update({
        "respond": ([STAND_IN, "respond", "--evolved", data / "evolved", "--seed", data / "seed", "--prompts", REPO / "prompts",
                     "--out", data / "answered"], data / "responses"),
        "pick_scenario": ([REPO / "stages" / "pick_scenario.py", "--evol", data / "evol", "--autoif", data / "autoif" / "responses",
                           "--out", data / "pool"], data / "evol"),
        "judge": ([STAND_IN, "judge", "--items", src, "--out", data / "judged", "--prompts", REPO / "prompts",
                   "--plot", plots / "difficulty_levels.json"], src),
        "score": ([STAND_IN, "score", "--items", src, "--out", data / "scores", "--plots", plots], src),
        "diversity": ([STAND_IN, "diversity", "--items", src, "--out", data / "diversity", "--plots", plots], src),
        "select": ([REPO / "stages" / "select_data.py", "--items", clean_out, "--judged", data / "judged", "--scores", data / "scores",
                    "--diversity", data / "diversity", "--out", data / "selected"], clean_out)})
    return steps


def table_rows(folder: Path) -> int:
    """Rows of ``folder``'s items.parquet (from its footer)."""
    import polars as pl

    return pl.scan_parquet(folder / TABLE).select(pl.len()).collect().item()


if __name__ == "__main__":
    print(f"usage: a module of bench/growth.py (run that one)\n{__doc__}")
