"""Growth benchmark: CPU, wall and peak memory of the data stages as the number of items grows.

    PYTHONPATH=src python bench/growth.py --items 150000 1200000 --json growth.json [--chunk-rows 50000]
        [--baseline-commit f1fd5ed [--baseline-only]] [--stages all | dedup decontaminate respond ...]
        [--diversity-max-items 300000] [--work DIR] [--peers]
        [--engines local ray [--ray-address 127.0.0.1:6379]]

For each size N it writes N synthetic items (``bench/dedup.py``'s generator: N/3 seeds x 3 rounds, a quarter
of each later round a one-word edit of an earlier item) as a responses table, in chunks, then runs each stage
of ``--stages`` (default: dedup decontaminate; ``all``: respond pick_scenario dedup decontaminate judge score
diversity select, dvc.yaml's order) as its own process, with dvc.yaml's command line and a params.yaml
written for the run (``data.chunk_rows`` from ``--chunk-rows``; the shipped ``judge``, ``diversity`` and
``select`` sections), and reads the process's CPU time and peak RSS from the kernel (``wait4``): the figure
is the stage's whole run, imports and Parquet I/O included (read by a small launcher process: Linux carries a
process's peak RSS across exec, so a child of growth.py would report growth.py's own). Where each stage reads and writes:
``bench/growth_stages.py``. ``respond`` (the items split into their three rounds' folders), ``judge``,
``score`` and ``diversity`` run with a stand-in model (``bench/stub_stage.py``): the responder answers 60
words, the judge answers the shipped settings' requests (constrained, ranked by probabilities: a JSON list
of log-probabilities per request) from a hash of the prompt, the scorer's losses come from word counts, the
embedder's vectors are 16-d from a hash of the text; so the figures are the stages' reading, requests,
parsing, neighbour search, checks and writing, not a model's time. ``pick_scenario`` takes the items (with
lineage columns) as the evol branch beside an empty AutoIF table (``autoif.scenario: evol``). judge, score
and diversity read decontaminate's output when decontaminate runs too (else the items), and ``select``
needs every stage before it in ``--stages`` (dedup decontaminate judge score diversity; an error says so).
The diversity stage's exact MND compares all pairs (time ~ N^2): above ``--diversity-max-items`` it is not
run, its row says so with the estimated CPU time, and select then reads a stand-in diversity table.

With ``--baseline-commit`` the stage scripts of that commit (the
in-memory versions, against today's library) run on the same items too, as stage ``<name>@<commit>``, and
the streamed outputs are compared byte for byte with theirs. With ``--peers`` the same items also go through
datatrove's MinHash dedup (``bench/peer_datatrove.py``, stage ``datatrove-minhash``, its own process in its
own virtual environment ``.evolforge/peers-venv``, created once from PyPI: never a project dependency), given the
text evolforge's dedup compares (``item_text``, precomputed here) and the same shingles and LSH bands; both
dedup rows then carry ``removed`` and the ratio of their CPU seconds is printed per size.

With ``--engines local ray`` dedup and decontaminate also run with ``data.engine: ray`` (stage ``<name>-ray``,
on a local Ray cluster each stage starts, or on the one at ``--ray-address``; docs/how-to/scale-ray.md), and their
outputs are compared byte for byte with the local engine's. A stage's Ray workers are not its children, so their CPU is missing from ``cpu_s``;
``machine_cpu_s`` is the CPU time the whole machine spent during the run (``/proc/stat``: other processes
included), the figure to compare the engines by.

Prints one line per run and, per stage, the fitted slope (least squares over the sizes) of CPU seconds and
peak MiB per 100k items and the ratio of the peak at the largest size to the peak at the smallest (the
target: at most 1.3x, and 1 GiB); ``--json`` gets a list of ``{"stage", "items", "cpu_s", "machine_cpu_s",
"wall_s", "peak_rss_mib", "input_rows"}`` (``input_rows``: the rows of the table the stage read; a skipped
stage's row has null figures, ``skipped`` (why) and ``estimate_cpu_s``).
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
from growth_stages import (PIPELINE, stage_commands, stage_order_problem, table_rows, write_branches,  # noqa: E402
                           write_items, write_params, write_rounds, write_stand_in_diversity)
from peer_datatrove import peer_python  # noqa: E402  (bench/peer_datatrove.py: the peer's venv)

from evolforge.config.data import DataSettings  # noqa: E402
from evolforge.core.text import item_text  # noqa: E402
from evolforge.io.records import TABLE  # noqa: E402
from evolforge.io.stream import iter_chunks, sink_chunks  # noqa: E402
from evolforge.steps.dedup.minhash import lsh_bands  # noqa: E402
from evolforge.steps.dedup.settings import DedupSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# CPU nanoseconds per pair of the diversity stage's exact MND, 16-d stand-in vectors: its whole run at 150k items
# (129,326 rows after dedup and decontaminate) took 91.4 s of CPU on the shared two-core machine (peak 6.5 GiB)
PAIR_NS = 5.5
METRICS = {"pick_scenario": "pool"}  # metrics/<name>.json as dvc.yaml names it, where not the stage's name
# above it, diversity is skipped with its estimated time: 300k items (~259k rows) is about 6 min of CPU, 1.2M
# (~1.03M rows) about 98 min
DIVERSITY_MAX_ITEMS = 300_000


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

    write_peer_items(root / "data" / "responses" / TABLE, root / "peer", chunk)
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
    ours["removed"] = json.loads((root / "metrics" / "dedup.json").read_text())["removed"]
    results.append(row)
    print(f"{'':>28} removed: dedup {ours['removed']:,}, datatrove-minhash {row['removed']:,}; "
          f"CPU datatrove-minhash / dedup: {row['cpu_s'] / ours['cpu_s']:.1f}x", flush=True)


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, every process)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    idle = int(fields[3]) + int(fields[4])  # idle + iowait
    return (sum(int(f) for f in fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# Linux keeps a process's peak RSS across exec: a child of this process would report at least this process's own
# peak (the items it wrote). So the stage runs under a small launcher, which reports the stage's CPU and peak.
LAUNCHER = ("import json, os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(json.dumps([u.ru_utime + u.ru_stime, u.ru_maxrss])); "
            "sys.exit(os.waitstatus_to_exitcode(s))")


def measure(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float, float, float]:
    """(CPU seconds, wall seconds, peak RSS MiB) of one child process run in ``cwd``, from the kernel's accounting
    (``wait4`` in :data:`LAUNCHER`), and the machine's CPU seconds meanwhile."""
    with tempfile.TemporaryDirectory(prefix="growth-measure-") as tmp:
        report = Path(tmp) / "usage.json"
        start, machine = time.perf_counter(), machine_cpu_s()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *cmd], env=env, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = proc.stdout.read()
        code = proc.wait()
        wall, machine = time.perf_counter() - start, machine_cpu_s() - machine
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{output}")
        cpu, peak_kib = json.loads(report.read_text())
    return cpu, wall, peak_kib / 1024, machine


def stage_scripts(commit: str | None, work: Path) -> dict[str, Path]:
    """Stage name -> script of dedup and decontaminate: today's, or the versions of ``commit`` (written under
    ``work``)."""
    if commit is None:
        return {name: REPO / "stages" / f"{name}.py" for name in ("dedup", "decontaminate")}
    out = {}
    for name in ("dedup", "decontaminate"):
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:stages/{name}.py"], check=True,
                              capture_output=True, text=True).stdout
        out[name] = work / f"{name}@{commit}.py"
        out[name].write_text(text)
    return out


def write_inputs(total: int, root: Path, args: argparse.Namespace) -> None:
    """The synthetic items (``data/responses``), what the stages asked for read besides (the evolve rounds for
    respond, the two branches for pick_scenario), and the run's params.yaml (params-ray.yaml for the Ray runs)."""
    chunk, data = args.chunk_rows, root / "data"
    write_items(total, data / "responses", chunk)
    if "respond" in args.stages:
        write_rounds(data / "responses" / TABLE, data / "evolved", chunk)
    if "pick_scenario" in args.stages:
        write_branches(data / "responses" / TABLE, data, chunk)
    params = write_params(root, chunk).read_text()
    address = "null" if args.ray_address is None else json.dumps(args.ray_address)
    (root / "params-ray.yaml").write_text(params.replace("engine: local", f"engine: ray, ray_address: {address}", 1))


def versions(root: Path, args: argparse.Namespace) -> list[tuple[str, dict[str, Path]]]:
    """(suffix, scripts of dedup and decontaminate) of each version run: today's (""), on Ray ("-ray"), the
    baseline commit's ("@<commit>")."""
    out = [] if args.baseline_only else [("", stage_scripts(None, root))]
    if "ray" in args.engines and not args.baseline_only:
        out.append(("-ray", stage_scripts(None, root)))
    if args.baseline_commit:
        out.append((f"@{args.baseline_commit}", stage_scripts(args.baseline_commit, root)))
    return out


def print_row(row: dict) -> None:
    if row.get("skipped"):
        print(f"{row['stage']:>28} {row['items']:>9,} items: SKIPPED: {row['skipped']}", flush=True)
        return
    print(f"{row['stage']:>28} {row['items']:>9,} items: CPU {row['cpu_s']:7.1f} s (machine {row['machine_cpu_s']:7.1f} s), "
          f"wall {row['wall_s']:7.1f} s, peak RSS {row['peak_rss_mib']:7.0f} MiB ({row['input_rows']:,} rows in)", flush=True)


def diversity_skip(total: int, rows_in: int, args: argparse.Namespace, results: list[dict]) -> dict | None:
    """The skipped row of the diversity stage when ``total`` is above ``--diversity-max-items`` (its exact MND
    compares every pair), with the CPU time estimated from the pairs; None when it runs."""
    if total <= args.diversity_max_items:
        return None
    done = [r for r in results if r["stage"] == "diversity" and r.get("cpu_s")]
    ns, basis = (((done[-1]["cpu_s"] * 1e9 / done[-1]["input_rows"] ** 2), f"this run's {done[-1]['items']:,} items")
                 if done else (PAIR_NS, "growth.py's PAIR_NS, measured at 150k items"))
    estimate = ns * rows_in ** 2 / 1e9
    return {"stage": "diversity", "items": total, "cpu_s": None, "machine_cpu_s": None, "wall_s": None, "peak_rss_mib": None,
            "input_rows": rows_in, "estimate_cpu_s": round(estimate),
            "skipped": f"above --diversity-max-items {args.diversity_max_items:,}: exact MND compares all "
                       f"{rows_in:,}^2 pairs, about {estimate / 60:,.0f} min of CPU ({ns:.1f} ns per pair, from {basis})"}


def run_stage(name: str, suffix: str, command: tuple[list, Path], total: int, root: Path, env: dict[str, str]) -> dict:
    """One stage script as its own process, measured: its row."""
    params = root / ("params-ray.yaml" if suffix == "-ray" else "params.yaml")
    argv, reads = command
    cmd = [sys.executable, *map(str, argv), "--params", str(params), "--metrics", str(root / "metrics" / f"{METRICS.get(name, name)}{suffix}.json")]
    rows_in = table_rows(reads)
    cpu, wall, peak, machine = measure(cmd, env, root)
    return {"stage": name + suffix, "items": total, "cpu_s": round(cpu, 2), "machine_cpu_s": round(machine, 2),
            "wall_s": round(wall, 2), "peak_rss_mib": round(peak, 1), "input_rows": rows_in}


def compare_outputs(root: Path, suffixes: list[str]) -> None:
    """Whether the other versions wrote today's bytes (dedup's and decontaminate's tables)."""
    for suffix in suffixes:
        for folder in ("dedup", "clean"):
            for name in (TABLE, "removed.parquet"):
                a, b = root / "data" / folder / name, root / "data" / f"{folder}{suffix}" / name
                if a.exists() and b.exists():
                    same = a.read_bytes() == b.read_bytes()
                    print(f"{'':>28} {folder}/{name}: {'byte-identical' if same else 'DIFFERENT'} to {folder}{suffix}'s")


def run_size(total: int, args: argparse.Namespace, env: dict[str, str], peer: Path | None, results: list[dict]) -> None:
    """Every stage on ``total`` synthetic items (and datatrove's MinHash on them when ``peer``, its Python), in the
    order of ``--stages``; their rows appended to ``results``."""
    with tempfile.TemporaryDirectory(prefix="growth-", dir=args.work) as tmp:
        root = Path(tmp).absolute()  # the stages run in it (no models/identity.json there: the stand-in models)
        write_inputs(total, root, args)
        runs = versions(root, args)
        for suffix, scripts in runs:
            commands = stage_commands(root, args.stages, scripts, suffix)
            for name in (n for n in args.stages if n in commands):
                skipped = diversity_skip(total, table_rows(commands[name][1]), args, results) if name == "diversity" else None
                if skipped and "select" in args.stages:
                    write_stand_in_diversity(commands[name][1] / TABLE, root / "data" / "diversity", args.chunk_rows)
                    skipped["skipped"] += "; select reads a stand-in diversity table (growth_stages.write_stand_in_diversity)"
                row = skipped or run_stage(name, suffix, commands[name], total, root, env)
                print_row(row)
                results.append(row)
        compare_outputs(root, [suffix for suffix, _ in runs if suffix])
        if peer:
            run_peer(total, root, peer, args.chunk_rows, results)


def slopes(results: list[dict]) -> None:
    """Per stage with two sizes or more: least-squares slope of CPU and peak RSS per 100k items, and the ratio of
    the peak at the largest size to the peak at the smallest (the target: at most 1.3x, and 1 GiB)."""
    measured = [r for r in results if r.get("cpu_s") is not None]
    for stage in dict.fromkeys(r["stage"] for r in measured):
        rows = sorted((r for r in measured if r["stage"] == stage), key=lambda r: r["items"])
        if len({r["items"] for r in rows}) < 2:
            continue
        x = np.array([r["items"] for r in rows], dtype=float) / 1e5
        cpu = np.polyfit(x, [r["cpu_s"] for r in rows], 1)[0]
        rss = np.polyfit(x, [r["peak_rss_mib"] for r in rows], 1)[0]
        print(f"{stage:>28} slope: {cpu:.2f} CPU s and {rss:.1f} MiB of peak RSS per 100k items")
        small, large = rows[0], rows[-1]
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        ok = "within" if ratio <= 1.3 and large["peak_rss_mib"] <= 1024 else "NOT within"
        print(f"{stage:>28} peak at {large['items']:,} / at {small['items']:,} items: {ratio:.2f}x "
              f"({large['peak_rss_mib']:.0f} / {small['peak_rss_mib']:.0f} MiB; {ok} the target of 1.3x and 1 GiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", required=True, help="total items per run (a third per round)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--chunk-rows", type=int, default=DataSettings().chunk_rows, help="data.chunk_rows for the stages")
    ap.add_argument("--stages", nargs="+", default=["dedup", "decontaminate"], choices=[*PIPELINE, "all"],
                    help="stages to run, in this order (all: every one, in dvc.yaml's order: " + " ".join(PIPELINE) + ")")
    ap.add_argument("--diversity-max-items", type=int, default=DIVERSITY_MAX_ITEMS,
                    help="skip the diversity stage (all-pairs MND) above this many items, printing its estimated time")
    ap.add_argument("--baseline-commit", default=None, help="also run this commit's stage scripts (in-memory)")
    ap.add_argument("--baseline-only", action="store_true", help="run only --baseline-commit's scripts")
    ap.add_argument("--work", default=None, help="scratch folder (default: the system's)")
    ap.add_argument("--peers", action="store_true",
                    help="also run datatrove's MinHash dedup on the same items (installs it in .evolforge/peers-venv once)")
    ap.add_argument("--engines", nargs="+", default=["local"], choices=["local", "ray"],
                    help="data.engine values to run dedup and decontaminate with (ray: a local Ray cluster)")
    ap.add_argument("--ray-address", default=None, help="data.ray_address for the Ray runs (default: each starts its own)")
    args = ap.parse_args()
    args.stages = list(PIPELINE) if "all" in args.stages else list(dict.fromkeys(args.stages))
    if stage_order_problem(args.stages):
        ap.error(f"--stages: {stage_order_problem(args.stages)}")
    if args.baseline_only and not args.baseline_commit:
        ap.error("--baseline-only needs --baseline-commit")
    if args.peers and (args.baseline_only or "dedup" not in args.stages):
        ap.error("--peers compares with today's dedup: keep dedup in --stages, without --baseline-only")
    peer = peer_python() if args.peers else None  # the peer's interpreter, installed before any timing
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"{os.cpu_count()} cores visible; chunk_rows {args.chunk_rows}")
    results = []
    for total in args.items:
        run_size(total, args, env, peer, results)
    slopes(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
