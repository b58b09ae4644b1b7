"""Each LLM stage of a run against the engine's limit on this machine: where the minutes go.

    flock /work/heavy.lock python bench/stage_account.py [--metrics metrics] [--params params.yaml]
        [--model models/Qwen2.5-Coder-1.5B-Instruct-GGUF] [--threads 2] [--json out.json]
        [--engine engine.json]   # figures of an earlier measurement instead of measuring now

What a stage asked of its llamacpp roles comes from its metrics file (``llm.<role>``: calls, prompt tokens and
those the KV store already held, generated tokens, a ranking's choice-trie tokens, and, where the run recorded
them, the backend's load and work seconds, ``load_s`` / ``generate_s``); the stage's wall seconds are its
``wall_s`` (the whole process: imports, model load, sandbox, writing). The engine's own rates are measured here,
on the roles' model through the backend's llama.cpp context
(:class:`~evolforge.llm.backends.llamacpp.context.LlamaCppContext`, no Python per token):

- **prefill**: prompt tokens/s of one prompt evaluated in one batch, at several lengths (the backend evaluates
  a call's prompt less the prefix another sequence holds);
- **step n**: tokens/s of one step that appends one token to each of n sequences, every token's logits read --
  decoding n sequences together, and a ranking's trie level of n nodes.

A stage's **limit** is the time the engine would need for its work at those rates: the prompt tokens it
evaluated at the best prefill rate, the generated tokens at the rate of ``batch_size`` sequences (the role's
setting; every slot full), the ranked tokens at the rate of a 64-node level. The table prints limit / LLM seconds
(the backend's work, where recorded) and limit / wall: 1.0 is the engine's pace, less is time lost around it.
Roles on other backends (the hf student in compare) are listed without a limit. The figures are throughputs:
run it on an idle machine (under the lock on a shared one).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from evolforge.report.summary import stage_metric_files

PREFILL_SIZES = (64, 128, 512)
STEP_SIZES = (1, 2, 4, 6, 8, 16, 32, 64)
STEP_PROMPT = 128  # tokens every sequence holds before the steps (a stage's prompts: 100-600)
RANK_LEVEL = 64  # sequences of a ranking's trie level at most (context.RANK_SEQUENCES)


@dataclass
class RoleWork:
    """What one stage asked of one role, from its metrics file."""

    stage: str
    role: str
    backend: str
    batch_size: int
    calls: int
    prompt: int  # prompt tokens of the calls made
    evaluated: int  # of them, those the KV store did not hold (prompt - prompt_tokens_cached)
    generated: int
    ranked: int  # a ranking's choice-trie tokens (0 where the run did not record them)
    load_s: float | None
    generate_s: float | None
    wall_s: float  # the stage's


def stage_work(metrics: Path, roles: dict) -> list[RoleWork]:
    """Every (stage, role) with calls made, in pipeline order; a role that params does not name is hf (the
    compare stage's student models)."""
    rows = []
    for name, path in stage_metric_files(metrics):
        data = json.loads(path.read_text())
        for role, stats in (data.get("llm") or {}).items():
            if not isinstance(stats, dict) or not stats.get("calls"):
                continue
            spec = roles.get(role) or {}
            prompt = int(stats.get("prompt_tokens") or 0)
            rows.append(RoleWork(
                stage=name, role=role, backend=spec.get("backend", "hf"), batch_size=int(spec.get("batch_size", 8)),
                calls=int(stats["calls"]), prompt=prompt,
                evaluated=prompt - int(stats.get("prompt_tokens_cached") or 0),
                generated=int(stats.get("completion_tokens") or 0), ranked=int(stats.get("ranked_tokens") or 0),
                load_s=stats.get("load_s"), generate_s=stats.get("generate_s"), wall_s=float(data.get("wall_s") or 0)))
    return rows


def measure_engine(model: str, threads: int, repeats: int = 1) -> dict:
    """{"prefill": {tokens: tokens/s}, "step": {sequences: tokens/s}, ...} of the model on ``threads`` threads,
    loaded as the backend loads it (the kernel probe's choice of llama.cpp's extra buffer types); the best of
    ``repeats`` measurements of each size."""
    from evolforge.llm.backends.llamacpp.backend import gguf_file
    from evolforge.llm.backends.llamacpp.context import LlamaCppContext
    from evolforge.llm.backends.llamacpp.probe import cpu_name, verdict

    path = gguf_file(model)
    extra = verdict(path, 0, threads=threads).extra_bufts
    started = time.perf_counter()
    cache = LlamaCppContext(path, tokens=4096, threads=threads, extra_bufts=extra)
    load_s = time.perf_counter() - started
    vocab = cache.n_vocab  # any tokens of the vocabulary: the cost does not depend on them
    base = [(1000 + 7 * i) % vocab for i in range(max(PREFILL_SIZES))]
    prefill = {}
    for n in PREFILL_SIZES:
        best = float("inf")
        for _ in range(repeats):
            cache.keep_only(-1)
            start = time.perf_counter()
            cache.prefill(0, base[:n], reuse=False)
            best = min(best, time.perf_counter() - start)
        prefill[n] = n / best
    prompt = base[:STEP_PROMPT]
    cache.keep_only(-1)
    cache.prefill(0, prompt, reuse=False)
    step = {}
    for n in STEP_SIZES:
        steps = max(2, 16 // n)
        best = float("inf")
        for _ in range(repeats):
            for seq in range(1, n):
                cache.copy(0, seq)
            start = time.perf_counter()
            for k in range(steps):
                cache.step([((2000 + k) % vocab, seq) for seq in range(n)])
            best = min(best, (time.perf_counter() - start) / steps)
            cache.keep_only(0)
            cache.trim(0, len(prompt))
        step[n] = n / best
    return {"model": path.name, "cpu": cpu_name(), "threads": threads, "extra_bufts": extra, "load_s": load_s,
            "prefill": prefill, "step": step}


def _rate(table: dict, n: int) -> float:
    """The rate at ``n`` (the nearest measured size at or below it; json keys are strings)."""
    rates = {int(k): float(v) for k, v in table.items()}
    return rates[max([k for k in rates if k <= n] or [min(rates)])]


def limit_s(row: RoleWork, engine: dict) -> float | None:
    """Seconds the engine needs for ``row``'s work at its measured rates (None: not a llamacpp role)."""
    if row.backend != "llamacpp":
        return None
    best_prefill = max(float(v) for v in engine["prefill"].values())
    return (row.evaluated / best_prefill + row.generated / _rate(engine["step"], row.batch_size)
            + row.ranked / _rate(engine["step"], RANK_LEVEL))


def report(rows: list[RoleWork], engine: dict) -> list[dict]:
    """One line per stage with llamacpp work: its tokens, seconds and the ratios to the limit."""
    stages: dict[str, list[RoleWork]] = {}
    for row in rows:
        stages.setdefault(row.stage, []).append(row)
    out = []
    for stage, parts in stages.items():
        ours = [p for p in parts if p.backend == "llamacpp"]
        if not ours:
            continue
        limit = sum(limit_s(p, engine) or 0.0 for p in ours)
        timed = [p.generate_s for p in ours if p.generate_s is not None]
        llm_s = sum(timed) if len(timed) == len(ours) else None
        out.append({"stage": stage, "roles": [p.role for p in ours], "calls": sum(p.calls for p in ours),
                    "prompt": sum(p.prompt for p in ours), "evaluated": sum(p.evaluated for p in ours),
                    "generated": sum(p.generated for p in ours), "ranked": sum(p.ranked for p in ours),
                    "wall_s": parts[0].wall_s, "llm_s": llm_s,
                    "load_s": sum(p.load_s or 0.0 for p in ours) if any(p.load_s is not None for p in ours) else None,
                    "limit_s": limit, "limit_vs_llm": limit / llm_s if llm_s else None,
                    "limit_vs_wall": limit / parts[0].wall_s if parts[0].wall_s else None})
    return out


def _print(engine: dict, lines: list[dict]) -> None:
    print(f"engine: {engine['model']} on {engine['cpu']}, {engine['threads']} threads, extra buffer types "
          f"{'on' if engine['extra_bufts'] else 'off'}; load {float(engine['load_s']):.1f} s")
    print("prefill tokens/s by prompt length: "
          + ", ".join(f"{k}: {float(v):.0f}" for k, v in engine["prefill"].items()))
    print("step tokens/s by sequences (one token each, logits read): "
          + ", ".join(f"{k}: {float(v):.1f}" for k, v in engine["step"].items()))
    head = (f"{'stage':<18}{'calls':>6}{'prompt':>8}{'eval':>7}{'gen':>7}{'ranked':>7}{'wall s':>8}{'LLM s':>8}"
            f"{'limit s':>8}{'lim/LLM':>8}{'lim/wall':>9}")
    print(head)
    total = {"wall_s": 0.0, "limit_s": 0.0, "llm_s": 0.0}
    for r in lines:
        llm = f"{r['llm_s']:.1f}" if r["llm_s"] is not None else "-"
        ratio = f"{r['limit_vs_llm']:.2f}" if r["limit_vs_llm"] is not None else "-"
        print(f"{r['stage']:<18}{r['calls']:>6}{r['prompt']:>8}{r['evaluated']:>7}{r['generated']:>7}{r['ranked']:>7}"
              f"{r['wall_s']:>8.1f}{llm:>8}{r['limit_s']:>8.1f}{ratio:>8}{r['limit_vs_wall'] or 0:>9.2f}")
        for key in total:
            total[key] += r[key] or 0.0
    if lines and total["wall_s"]:
        print(f"{'LLM stages':<18}{'':>41}{total['wall_s']:>8.1f}{total['llm_s']:>8.1f}{total['limit_s']:>8.1f}"
              f"{'':>8}{total['limit_s'] / total['wall_s']:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", default="metrics", help="a run's metrics folder")
    ap.add_argument("--params", default="params.yaml", help="the run's params (the roles' backends and batch sizes)")
    ap.add_argument("--model", default=None, help="the GGUF folder to measure (default: roles.judge.model)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--engine", default=None, help="read the engine's figures from this json (the bench's --json)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many measurements per size")
    ap.add_argument("--json", default=None, help="write the engine's figures and the table here")
    args = ap.parse_args()

    roles = (yaml.safe_load(Path(args.params).read_text()) or {}).get("roles") or {}
    rows = stage_work(Path(args.metrics), roles)
    if args.engine:
        engine = json.loads(Path(args.engine).read_text())["engine"]
    else:
        model = args.model or next((r["model"] for r in roles.values() if r.get("backend") == "llamacpp"), None)
        if model is None:
            raise SystemExit(f"{args.params}: no llamacpp role to measure; pass --model")
        engine = measure_engine(model, args.threads, args.repeats)
    lines = report(rows, engine)
    _print(engine, lines)
    if args.json:
        Path(args.json).write_text(json.dumps({"metrics": args.metrics, "engine": engine, "stages": lines,
                                               "roles": [asdict(r) for r in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
