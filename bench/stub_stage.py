"""Run the respond or score stage script with a stand-in model, for bench/growth.py: the stage's own reading,
checks, chunking, writing and metrics, without a model's time (which grows with the items whatever the
stage holds, and is measured by bench/score.py and bench/generation.py).

    PYTHONPATH=src python bench/stub_stage.py respond <respond.py's flags>
    PYTHONPATH=src python bench/stub_stage.py score <score.py's flags>

respond: the responder answers every prompt with the same 60 words (no call cache, no record of what was
sent). score: the scorer is replaced by losses computed from the texts' word counts (the stage then stores,
rounds and recomputes them as it does real ones).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import polars as pl

STAGES = Path(__file__).resolve().parents[1] / "stages"
ANSWER = " ".join(f"word{k}" for k in range(60))


class StandInResponder:
    """A backend that answers every request with :data:`ANSWER`, keeping nothing."""

    name, model = "stand-in", "stand-in"

    def identity(self) -> dict:
        return {"name": self.model}

    @property
    def capabilities(self):  # generate only
        from evolforge.llm.types import Capabilities

        return Capabilities()

    def generate(self, requests):
        from evolforge.llm.types import Completion

        return [Completion(ANSWER, "stop", prompt_tokens=1, completion_tokens=60) for _ in requests]


def stand_in_responder(params, name, cache=None):
    from evolforge.config.roles import Role
    from evolforge.llm.cached import LLM

    return LLM(StandInResponder(), None, role=Role.from_params(name, {"backend": "hf", "model": "stand-in"}))


def stand_in_scores(model, tokenizer, instructions, inputs, responses, **_) -> pl.DataFrame:
    """Losses from word counts: the scorer's columns and types, a few nats each."""
    from evolforge.io.columns import SCORE_VALUES

    words = pl.DataFrame({"q": instructions, "a": responses}).select(q=pl.col("q").str.count_matches(" ") + 1,
                                                                     a=pl.col("a").str.count_matches(" ") + 1)
    q, a = words["q"].cast(pl.Float64), words["a"].cast(pl.Float64)
    losses = pl.DataFrame({"loss_instruction": 2 + 1 / q, "loss_response": 3 + 1 / a, "loss_response_given_instruction": 2.5 + 1 / (q + a)})
    return losses.with_columns(ifd=pl.col("loss_response_given_instruction") / pl.col("loss_response"),
                               ic_ifd=pl.col("loss_response_given_instruction") / (pl.col("loss_response") * pl.col("loss_instruction")),
                               n_tokens_instruction=words["q"].cast(pl.Int64), n_tokens_response=words["a"].cast(pl.Int64),
                               n_tokens_response_given_instruction=words["a"].cast(pl.Int64),
                               null_reason=pl.lit(None, pl.String)).select(list(SCORE_VALUES))


def main() -> None:
    stage, args = (sys.argv[1:2] or ["--help"])[0], sys.argv[2:]
    if stage in ("-h", "--help"):
        print(f"usage: stub_stage.py respond|score <the stage script's flags>\n{__doc__}")
    elif stage == "respond":
        import evolforge.steps.respond.step as respond

        respond.open_role = stand_in_responder
    elif stage == "score":
        import evolforge.score.ifd as ifd

        ifd.load_scorer = lambda *a, **k: (None, None)
        ifd.ifd_scores = stand_in_scores
    else:
        raise SystemExit(f"stub_stage.py: no stand-in for stage {stage!r} (respond, score)")
    if stage in ("respond", "score"):
        sys.argv = [f"{stage}.py", *args]
        runpy.run_path(str(STAGES / f"{stage}.py"), run_name="__main__")


if __name__ == "__main__":
    main()
