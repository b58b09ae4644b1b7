"""A CPU class's `make run` time for code it has not run, from a proxy machine calibrated on code it has.

    python bench/class_estimate.py --reference FILE[:KEY] --proxy-then FILE[:KEY] --proxy-now FILE[:KEY]
                                   [--side-by-side evaluate,evaluate_base] [--run-ratio STAGE,...]
                                   [--proxy-run-s S] [--json OUT]

Each input is a run's ``metrics/summary.json`` (or the object at the dotted ``KEY`` inside a JSON record):
``--reference`` the class's own run of some commit (an AVX2 EPYC's), ``--proxy-then`` the proxy's run of the
same commit (the Xeon running AVX2 code alone), ``--proxy-now`` the proxy's run of the code to estimate. Where
the first two did the same work -- their survival, selection and evaluation figures equal, which the bench
checks and prints -- each stage's ratio of reference to proxy seconds is the class's host against the proxy's,
for that stage's mix of work. Each stage of the current run is scaled by its own ratio (a stage the calibration
lacks, one under 5 s in it, or one named by ``--run-ratio`` because its work differed between the two runs, by the
whole run's); stages `make run` runs side by side count once, as the
longest. ``--proxy-run-s``: the current proxy run's whole `make run` seconds; the time outside the stages
(setup, the compile beside the fetches, `models`, DVC) is then added as measured and as scaled by the whole
run's ratio, a range, since the fetches are the network's. This is an estimate, not a measurement: the class's
own run of the code settles it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SAME_WORK = ("surv", "sel", "ev")  # summary.json's figures that two runs of one commit share when they did one work
SMALL_S = 5.0  # a stage shorter than this in the calibration is scaled by the whole run's ratio


def load(spec: str) -> dict:
    """A run's summary from ``FILE`` or ``FILE:KEY`` (a dotted path into the JSON)."""
    path, _, key = spec.partition(":")
    data = json.loads(Path(path).read_text())
    for part in filter(None, key.split(".")):
        data = data[part]
    if "wall" not in data:
        raise SystemExit(f"{spec}: no 'wall' (a metrics/summary.json, or the object holding one's figures)")
    return data


def estimate(reference: dict, then: dict, now: dict, side_by_side: list[str], run_ratio: list[str] = ()) -> dict:
    """Per stage: the calibration's seconds and ratio, the current proxy's seconds and the estimate."""
    ref, cal, cur = reference["wall"], then["wall"], now["wall"]
    whole = ref["total"] / cal["total"]
    rows = {}
    for stage, seconds in cur.items():
        if stage == "total":
            continue
        own = stage in ref and cal.get(stage, 0) >= SMALL_S and stage not in run_ratio
        ratio = ref[stage] / cal[stage] if own else whole
        rows[stage] = {"proxy_then": cal.get(stage), "reference": ref.get(stage), "ratio": round(ratio, 3),
                       "ratio_of": "stage" if own else "run", "proxy_now": seconds,
                       "estimate": round(seconds * ratio, 1)}
    together = [s for s in side_by_side if s in rows]
    stages = sum(r["estimate"] for s, r in rows.items() if s not in together)
    stages += max((rows[s]["estimate"] for s in together), default=0.0)
    span = sum(s for k, s in cur.items() if k != "total" and k not in together) + max(
        (cur[s] for s in together), default=0.0)
    return {"same_work": {k: reference.get(k) == then.get(k) for k in SAME_WORK}, "whole_ratio": round(whole, 3),
            "stages": rows, "side_by_side": together, "proxy_now_span_s": round(span, 1),
            "estimate_stages_s": round(stages, 1)}


def cell(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="the class's run of the calibration commit")
    parser.add_argument("--proxy-then", required=True, help="the proxy's run of the same commit")
    parser.add_argument("--proxy-now", required=True, help="the proxy's run of the code to estimate")
    parser.add_argument("--side-by-side", default="evaluate,evaluate_base",
                        help="stages make run runs side by side (comma-separated)")
    parser.add_argument("--run-ratio", default="",
                        help="stages whose work differed between the two calibration runs (comma-separated)")
    parser.add_argument("--proxy-run-s", type=float, help="the current proxy run's whole make run seconds")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    out = estimate(load(args.reference), load(args.proxy_then), load(args.proxy_now),
                   [s for s in args.side_by_side.split(",") if s], [s for s in args.run_ratio.split(",") if s])
    same = out["same_work"]
    print("same work in the calibration (" + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in same.items())
          + ")" + ("" if all(same.values()) else ": the ratios mix host and work, the estimate is not sound"))
    print(f"{'stage':24s} {'proxy then':>10s} {'reference':>9s} {'ratio':>6s} {'proxy now':>9s} {'estimate':>8s}")
    for stage, row in out["stages"].items():
        mark = "" if row["ratio_of"] == "stage" else " (run's)"
        print(f"{stage:24s} {cell(row['proxy_then']):>10s} {cell(row['reference']):>9s} {row['ratio']:6.2f} "
              f"{row['proxy_now']:9.1f} {row['estimate']:8.1f}{mark}")
    print(f"the whole run's ratio: {out['whole_ratio']:.2f}; side by side, the longest counted: "
          f"{', '.join(out['side_by_side']) or 'none'}")
    print(f"stages: {out['proxy_now_span_s']:.1f} s on the proxy, estimate {out['estimate_stages_s']:.1f} s "
          f"({out['estimate_stages_s'] / 60:.1f} min)")
    if args.proxy_run_s is not None:
        outside = args.proxy_run_s - out["proxy_now_span_s"]
        low, high = out["estimate_stages_s"] + outside, out["estimate_stages_s"] + outside * out["whole_ratio"]
        out.update(outside_proxy_s=round(outside, 1), estimate_run_s=[round(low, 1), round(high, 1)])
        print(f"outside the stages on the proxy: {outside:.1f} s; make run estimate {low / 60:.1f}-{high / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
