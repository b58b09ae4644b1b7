"""tiny_model stage: build and briefly train the tiny offline model into models/tiny/.

Reads:  params.yaml `tiny_model`, prompts/, the demo seeds
Writes: models/tiny/ (weights, tokenizer with chat template, training.json), metrics/tiny_model.json
Its outputs exercise the pipeline offline; they are not training data.
"""

import argparse
import dataclasses

from evolforge.params import load_params, section
from evolforge.records import atomic_dir, write_json
from evolforge.tiny import TinyConfig, build_tiny_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", default="data/seeds/demo.jsonl")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", default="models/tiny")
    ap.add_argument("--metrics", default="metrics/tiny_model.json")
    args = ap.parse_args()

    cfg = section(load_params(args.params), "tiny_model")
    known = {f.name for f in dataclasses.fields(TinyConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise SystemExit(f"params.yaml tiny_model: unknown key(s) {unknown}; expected some of {sorted(known)}")
    with atomic_dir(args.out) as tmp:
        summary = build_tiny_model(tmp, args.seeds, args.prompts, TinyConfig(**cfg))
    write_json(args.metrics, {k: v for k, v in summary.items() if k != "loss_curve"})
    print(f"tiny model: {summary['parameters']} parameters, final loss {summary['final_loss']:.3f}")


if __name__ == "__main__":
    main()
