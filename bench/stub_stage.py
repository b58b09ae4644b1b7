"""Run the respond, judge, score or diversity stage script with a stand-in model, for bench/growth.py: the
stage's own reading, checks, chunking, requests, parsing, writing and metrics, without a model's time (which
grows with the items whatever the stage holds, and is measured by bench/score.py and bench/generation.py).

    PYTHONPATH=src python bench/stub_stage.py respond|judge|score|diversity <the stage script's flags>

respond: the responder answers every prompt with the same 60 words (no call cache, no record of what was
sent). judge: the judge answers from a hash of the prompt (no call cache either): to a ranking request
(``judge.probabilities: true``, the shipped setting) the JSON list of one log-probability per allowed
answer, peaked on the hashed one; to a constrained one (``constrain: true``, ``probabilities: false``) the
hashed allowed answer; to a free one a number 0-100 (which the level parser rejects). score: the scorer is
replaced by losses computed from the texts' word counts (the stage then stores, rounds and recomputes them
as it does real ones). diversity: the embedder is replaced by 16-d unit vectors from a hash of each text
(:func:`hash_vectors`); the neighbour search is the stage's own.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import sys
import zlib
from pathlib import Path

import numpy as np
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


def stand_in_responder(role, cache, settings):
    """The stage's role (roles.responder) opened as the stand-in responder."""
    from evolforge.config.roles import Role
    from evolforge.llm.cached import LLM

    return LLM(StandInResponder(), None, role=Role.from_params(role.name, {"backend": "hf", "model": "stand-in"}))


def judge_answer(request) -> str:
    """The stand-in judge's answer to ``request``, from a hash of its prompt (see the module docstring)."""
    h = zlib.crc32(request.messages[-1][1].encode())
    if request.choices and request.rank:
        peak = h % len(request.choices)
        return json.dumps([round(-0.7 * abs(k - peak) - (h >> (k % 24) & 7) / 16 - 0.05, 6) for k in range(len(request.choices))])
    if request.choices:
        return request.choices[h % len(request.choices)]
    return str(h % 101)


class StandInJudge(StandInResponder):
    """A backend that answers the judge's requests from their prompts' hashes, keeping nothing."""

    def generate(self, requests):
        from evolforge.llm.types import Completion

        return [Completion(judge_answer(r), "stop", prompt_tokens=1, completion_tokens=1) for r in requests]


def stand_in_judge(role, cache, settings):
    """The stage's role (roles.judge) opened as the stand-in judge, with its generation settings (its batch size)."""
    import dataclasses

    from evolforge.config.backend_settings import HfSettings
    from evolforge.llm.cached import LLM

    return LLM(StandInJudge(), None, role=dataclasses.replace(  # hf: ranks choices
        role, backend="hf", model="stand-in", settings=HfSettings(batch_size=role.settings.batch_size)))


def hash_vectors(texts, dimensions: int = 16) -> np.ndarray:
    """Unit float32 vectors, one per text, from its blake2b digest: (N, ``dimensions``), deterministic."""
    digests = b"".join(hashlib.blake2b(t.encode(), digest_size=dimensions).digest() for t in texts)
    x = np.frombuffer(digests, dtype=np.uint8).reshape(len(texts), dimensions).astype(np.float32) - 127.5
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stand_in_embeddings(model, tokenizer, texts, *args, **kwargs) -> np.ndarray:
    """``mean_pooled_embeddings`` without a model: :func:`hash_vectors` of the texts."""
    return hash_vectors(list(texts))


def use_stand_in_embedder() -> None:
    """The causal-lm-mean embedder loads no model and embeds by :func:`hash_vectors`, wherever the diversity
    stage looks these functions up (the scoring module, or its own step module)."""
    import evolforge.score.diversity as diversity
    import evolforge.steps.diversity.step as step

    for module in (diversity, step):
        if hasattr(module, "load_scorer"):
            module.load_scorer = lambda *a, **k: (None, None)
        if hasattr(module, "mean_pooled_embeddings"):
            module.mean_pooled_embeddings = stand_in_embeddings
        if hasattr(module, "text_embedder"):  # roles.embedder's `texts -> unit vectors`, loaded by name
            module.text_embedder = lambda *a, **k: (lambda texts: hash_vectors(list(texts)))


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
        print(f"usage: stub_stage.py respond|judge|score|diversity <the stage script's flags>\n{__doc__}")
    elif stage == "respond":
        import evolforge.steps.common.llms as llms  # where a step's roles are opened

        llms.open_role = stand_in_responder
    elif stage == "judge":
        import evolforge.steps.common.llms as llms

        llms.open_role = stand_in_judge
    elif stage == "score":
        import evolforge.score.ifd as ifd
        import evolforge.steps.score.step as step

        step.load_scorer = lambda *a, **k: (None, None)
        ifd.ifd_scores = stand_in_scores
    elif stage == "diversity":
        use_stand_in_embedder()
    else:
        raise SystemExit(f"stub_stage.py: no stand-in for stage {stage!r} (respond, judge, score, diversity)")
    if stage in ("respond", "judge", "score", "diversity"):
        sys.argv = [f"{stage}.py", *args]
        runpy.run_path(str(STAGES / f"{stage}.py"), run_name="__main__")


if __name__ == "__main__":
    main()
