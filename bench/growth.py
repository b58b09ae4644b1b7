"""Growth benchmark: CPU, wall and peak memory of the data stages as the number of items grows.

    PYTHONPATH=src python bench/growth.py --items 150000 1200000 --json growth.json [--chunk-rows 100000]
        [--baseline-commit f1fd5ed [--baseline-only]] [--stages dedup decontaminate respond score] [--work DIR]
        [--peers]
        [--engines local ray [--ray-address 127.0.0.1:6379]]

For each size N it writes N synthetic items (``bench/dedup.py``'s generator: N/3 seeds x 3 rounds, a quarter
of each later round a one-word edit of an earlier item) as a responses table, in chunks, then runs each stage
script (``stages/dedup.py``, then ``stages/decontaminate.py`` on its output, offline benchmarks) as its own
process, and reads the process's CPU time and peak RSS from the kernel (``wait4``): the figure is the stage's
whole run, imports and Parquet I/O included. ``respond`` (the items split into their three rounds' folders)
and ``score`` (on the responses table) run with a stand-in model (``bench/stub_stage.py``): their reading,
checks, chunking, writing and metrics, not a model's time. With ``--baseline-commit`` the stage scripts of that commit (the
in-memory versions, against today's library) run on the same items too, as stage ``<name>@<commit>``, and
the streamed outputs are compared byte for byte with theirs. With ``--peers`` the same items also go through
datatrove's MinHash dedup (``bench/peer_datatrove.py``, stage ``datatrove-minhash``, its own process in its
own virtual environment ``.evolforge/peers-venv``, created once from PyPI: never a project dependency), given the
text evolforge's dedup compares (``item_text``, precomputed here) and the same shingles and LSH bands; both
dedup rows then carry ``removed`` and the ratio of their CPU seconds is printed per size.

With ``--engines local ray`` dedup and decontaminate also run with ``data.engine: ray`` (stage ``<name>-ray``,
on a local Ray cluster each stage starts, or on the one at ``--ray-address``; docs/scale_ray.md), and their
outputs are compared byte for byte with the local engine's. A stage's Ray workers are not its children, so their CPU is missing from ``cpu_s``;
``machine_cpu_s`` is the CPU time the whole machine spent during the run (``/proc/stat``: other processes
included), the figure to compare the engines by.

Prints one line per run and, per stage, the fitted slope (least squares over the sizes) of CPU seconds and
peak MiB per 100k items; ``--json`` gets a list of ``{"stage", "items", "cpu_s", "machine_cpu_s", "wall_s",
"peak_rss_mib"}``.
Run it under ``flock /tmp/evolforge-heavy.lock`` on a shared machine: 1.2M items is minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup import synthetic_chunks  # noqa: E402  (bench/dedup.py: the synthetic items)
from peer_datatrove import peer_python  # noqa: E402  (bench/peer_datatrove.py: the peer's venv)

from evolforge.core.text import item_text  # noqa: E402
from evolforge.io.records import TABLE, write_json  # noqa: E402
from evolforge.io.stream import iter_chunks, sink_chunks  # noqa: E402
from evolforge.steps.dedup.minhash import lsh_bands  # noqa: E402
from evolforge.steps.dedup.settings import DedupSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEMA_EXTRA = {"status": "evolved", "response_status": "complete"}  # what the selection guards read


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


def write_rounds(source: Path, evolved: Path, chunk: int) -> None:
    """``source``'s items as the evolve stage's round folders ``evolved/round_<r>`` (lineage columns added),
    streamed."""
    import polars as pl

    from evolforge.io.stream import table_schema

    lineage = {"root_id": pl.col("id"), "parent_id": pl.col("id"), "method": pl.lit("deepen"), "failure_reason": pl.lit(None, pl.String),
               "evolve_template_hash": pl.lit("t"), "evolver_model": pl.lit("m"), "instruction_finish_reason": pl.lit("stop")}
    schema = {**table_schema(source), **{k: pl.String for k in lineage}}
    for r in (1, 2, 3):
        (evolved / f"round_{r}").mkdir(parents=True)
        sink_chunks(evolved / f"round_{r}" / TABLE, schema,
                    (part.filter(pl.col("round") == r).with_columns(**lineage) for part in iter_chunks(source, chunk)))
        write_json(evolved / f"round_{r}" / "meta.json", {})


def write_peer_items(source: Path, folder: Path, chunk: int) -> None:
    """``source``'s ids and the text evolforge's dedup compares for each (``item_text``) as
    ``folder/items.parquet``, streamed: what the peer dedups."""
    import polars as pl

    folder.mkdir(parents=True)
    sink_chunks(folder / TABLE, {"id": pl.String, "text": pl.String},
                (pl.DataFrame({"id": part["id"], "text": [item_text(i, x) for i, x in zip(part["instruction"], part["input"])]},
                              schema={"id": pl.String, "text": pl.String})
                 for part in iter_chunks(source, chunk, ["id", "instruction", "input"])))


def run_peer(total: int, root: Path, python: Path, chunk: int, results: list[dict]) -> None:
    """datatrove's MinHash dedup on the items of ``root``: its row, ``removed`` on it and on this size's dedup
    row, and the ratio of their CPU seconds."""
    import polars as pl

    write_peer_items(root / "responses" / TABLE, root / "peer", chunk)
    settings = DedupSettings()  # the stage's defaults: growth.py's params.yaml has no dedup section
    bands, rows = lsh_bands(settings.threshold, settings.num_perm)
    cmd = [str(python), str(REPO / "bench" / "peer_datatrove.py"), "--items", str(root / "peer"), "--out",
           str(root / "datatrove"), "--n-grams", str(settings.shingle_size), "--buckets", str(bands), "--rows", str(rows),
           "--seed", str(settings.seed)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the peer sees none of evolforge
    cpu, wall, peak, _ = measure(cmd, env, root)
    kept = pl.scan_parquet(root / "datatrove" / "kept" / "*.parquet").select(pl.len()).collect().item()
    row = {"stage": "datatrove-minhash", "items": total, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
           "peak_rss_mib": round(peak, 1), "removed": total - kept}
    print(f"{row['stage']:>28} {total:>9,} items: CPU {cpu:7.1f} s, wall {wall:7.1f} s, peak RSS {peak:7.0f} MiB", flush=True)
    ours = next(r for r in results if r["stage"] == "dedup" and r["items"] == total)
    ours["removed"] = json.loads((root / "dedup.json").read_text())["removed"]
    results.append(row)
    print(f"{'':>28} removed: dedup {ours['removed']:,}, datatrove-minhash {row['removed']:,}; "
          f"CPU datatrove-minhash / dedup: {row['cpu_s'] / ours['cpu_s']:.1f}x", flush=True)


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, every process)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    idle = int(fields[3]) + int(fields[4])  # idle + iowait
    return (sum(int(f) for f in fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measure(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float, float, float]:
    """(CPU seconds, wall seconds, peak RSS MiB) of one child process run in ``cwd``, from the kernel's accounting,
    and the machine's CPU seconds meanwhile."""
    start, machine = time.perf_counter(), machine_cpu_s()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall, machine = time.perf_counter() - start, machine_cpu_s() - machine
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024, machine


def stage_scripts(commit: str | None, work: Path) -> dict[str, Path]:
    """Stage name -> script: today's, or the versions of ``commit`` (written under ``work``)."""
    if commit is None:
        return {**{name: REPO / "stages" / f"{name}.py" for name in ("dedup", "decontaminate")},
                **{name: REPO / "bench" / "stub_stage.py" for name in ("respond", "score")}}
    out = {}
    for name in ("dedup", "decontaminate"):
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:stages/{name}.py"], check=True,
                              capture_output=True, text=True).stdout
        out[name] = work / f"{name}@{commit}.py"
        out[name].write_text(text)
    return out


def run_size(total: int, args: argparse.Namespace, env: dict[str, str], peer: Path | None) -> list[dict]:
    """Every stage on ``total`` synthetic items (and datatrove's MinHash on them when ``peer``, its Python)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="growth-", dir=args.work) as tmp:
        root = Path(tmp).absolute()  # the stages run in it (no models/identity.json there: the stand-in scorer)
        write_items(total, root / "responses", args.chunk_rows)
        if "respond" in args.stages:
            write_rounds(root / "responses" / TABLE, root / "evolved", args.chunk_rows)
        (root / "params.yaml").write_text(f"data: {{chunk_rows: {args.chunk_rows}, engine: local}}\n"
                                          "evaluate: {suite: offline, tasks: [ifeval, gsm8k, math, humaneval, mbpp]}\n"
                                          "evolve: {rounds: {round_1: {src: data/seed, index: 1}, round_2: {src: data/evolved/round_1, index: 2},"
                                          " round_3: {src: data/evolved/round_2, index: 3}}}\n"
                                          "respond: {rounds: [1, 2, 3], include_seed: false}\n"
                                          "roles: {scorer: {backend: hf, model: stand-in}}\n")
        versions = [] if args.baseline_only else [("", stage_scripts(None, root))]
        if "ray" in args.engines and not args.baseline_only:
            params = (root / "params.yaml").read_text()
            address = "null" if args.ray_address is None else json.dumps(args.ray_address)
            (root / "params-ray.yaml").write_text(params.replace("engine: local", f"engine: ray, ray_address: {address}", 1))
            versions.append(("-ray", {k: v for k, v in stage_scripts(None, root).items() if k in ("dedup", "decontaminate")}))
        if args.baseline_commit:
            versions.append((f"@{args.baseline_commit}", stage_scripts(args.baseline_commit, root)))
        for suffix, scripts in versions:
            dedup_out, clean_out = root / f"dedup{suffix}", root / f"clean{suffix}"
            # the items flag was --responses before the stage scripts took every path from dvc.yaml
            items_flag = "--items" if '"--items"' in Path(scripts["dedup"]).read_text() else "--responses"
            steps = {"dedup": [scripts["dedup"], items_flag, root / "responses", "--out", dedup_out],
                     "decontaminate": [scripts["decontaminate"], "--dedup", dedup_out, "--out", clean_out]}
            if not suffix:  # the stand-in stages have no in-memory or Ray version to compare with
                steps["respond"] = [scripts["respond"], "respond", "--evolved", root / "evolved", "--seed", root / "seed",
                                    "--prompts", REPO / "prompts", "--out", root / "answered"]
                steps["score"] = [scripts["score"], "score", "--items", root / "responses", "--out", root / "scores",
                                  "--plots", root / "plots"]
            for name in (n for n in args.stages if n in steps):
                params = root / ("params-ray.yaml" if suffix == "-ray" else "params.yaml")
                cmd = [sys.executable, *map(str, steps[name]), "--params", str(params),
                       "--metrics", str(root / f"{name}{suffix}.json")]
                cpu, wall, peak, machine = measure(cmd, env, root)
                row = {"stage": name + suffix, "items": total, "cpu_s": round(cpu, 2), "machine_cpu_s": round(machine, 2),
                       "wall_s": round(wall, 2), "peak_rss_mib": round(peak, 1)}
                print(f"{row['stage']:>28} {total:>9,} items: CPU {cpu:7.1f} s (machine {machine:7.1f} s), wall {wall:7.1f} s, "
                      f"peak RSS {peak:7.0f} MiB", flush=True)
                results.append(row)
        for suffix in [f"@{args.baseline_commit}"] * bool(args.baseline_commit) + ["-ray"] * ("-ray" in dict(versions)):
            for folder, files in (("dedup", [TABLE, "removed.parquet"]), ("clean", [TABLE, "removed.parquet"])):
                for name in files:
                    a, b = root / folder / name, root / f"{folder}{suffix}" / name
                    if a.exists() and b.exists():
                        same = a.read_bytes() == b.read_bytes()
                        print(f"{'':>28} {folder}/{name}: {'byte-identical' if same else 'DIFFERENT'} to {folder}{suffix}'s")
        if peer:
            run_peer(total, root, peer, args.chunk_rows, results)
    return results


def slopes(results: list[dict]) -> None:
    """Per stage with two sizes or more: least-squares slope of CPU and peak RSS per 100k items."""
    for stage in dict.fromkeys(r["stage"] for r in results):
        rows = [r for r in results if r["stage"] == stage]
        if len({r["items"] for r in rows}) < 2:
            continue
        x = np.array([r["items"] for r in rows], dtype=float) / 1e5
        cpu = np.polyfit(x, [r["cpu_s"] for r in rows], 1)[0]
        rss = np.polyfit(x, [r["peak_rss_mib"] for r in rows], 1)[0]
        print(f"{stage:>28} slope: {cpu:.2f} CPU s and {rss:.1f} MiB of peak RSS per 100k items")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", required=True, help="total items per run (a third per round)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--chunk-rows", type=int, default=100_000, help="data.chunk_rows for the stages")
    ap.add_argument("--stages", nargs="+", default=["dedup", "decontaminate"], choices=["dedup", "decontaminate", "respond", "score"])
    ap.add_argument("--baseline-commit", default=None, help="also run this commit's stage scripts (in-memory)")
    ap.add_argument("--baseline-only", action="store_true", help="run only --baseline-commit's scripts")
    ap.add_argument("--work", default=None, help="scratch folder (default: the system's)")
    ap.add_argument("--peers", action="store_true",
                    help="also run datatrove's MinHash dedup on the same items (installs it in .evolforge/peers-venv once)")
    ap.add_argument("--engines", nargs="+", default=["local"], choices=["local", "ray"],
                    help="data.engine values to run dedup and decontaminate with (ray: a local Ray cluster)")
    ap.add_argument("--ray-address", default=None, help="data.ray_address for the Ray runs (default: each starts its own)")
    args = ap.parse_args()
    if args.baseline_only and not args.baseline_commit:
        ap.error("--baseline-only needs --baseline-commit")
    if args.peers and (args.baseline_only or "dedup" not in args.stages):
        ap.error("--peers compares with today's dedup: keep dedup in --stages, without --baseline-only")
    peer = peer_python() if args.peers else None  # the peer's interpreter, installed before any timing
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"{os.cpu_count()} cores visible; chunk_rows {args.chunk_rows}")
    results = []
    for total in args.items:
        results += run_size(total, args, env, peer)
    slopes(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
