"""The columns of each artifact's ``items.parquet``, declared once, in order, with their types.

Writers build their tables from these (``select`` / ``schema=``), and ``tests/test_pipeline.py`` compares
every artifact of a real build with its entry here.
Names are unique across the pipeline: a column means one thing wherever it appears (the evolver's
``instruction_finish_reason`` is never a response's ``response_finish_reason``), so no stage renames one.

The filtering stages (``pool``, ``dedup``, ``decontaminate``) keep their input's columns: their kept items
are the input's rows, and each writes what it drops, with the reason columns below, to ``removed.parquet``.
"""

from __future__ import annotations

import polars as pl

Columns = dict[str, pl.DataType]

# records.LINEAGE, typed (tests/test_layout.py keeps the two equal)
LINEAGE_TYPES: Columns = {"id": pl.String, "root_id": pl.String, "parent_id": pl.String, "round": pl.Int32,
                     "method": pl.String, "status": pl.String, "failure_reason": pl.String}
_TEXTS: Columns = {"instruction": pl.String, "input": pl.String, "output": pl.String}

# data/seed; answer_check: the seed's answer check as canonical JSON (steps/common/answer_check.py), null where none
SEED: Columns = {**LINEAGE_TYPES, **_TEXTS, "answer_check": pl.String}

# data/evolved/<round>: every item of the round's pool, evolved or failed. check_* is the answer the response
# rules read, its finish reason and its request's cache key (null where none was asked): the respond stage
# takes the answer when its own request for the item has that key.
ROUND: Columns = {
    **LINEAGE_TYPES, "failure_detail": pl.String, **_TEXTS, "parent_instruction": pl.String, "raw_output": pl.String,
    "instruction_finish_reason": pl.String, "check_response": pl.String, "check_finish_reason": pl.String,
    "check_request_key": pl.String, "evolve_template_hash": pl.String, "evolver_model": pl.String,
    # a reasoning model's thinking before raw_output / check_response (evolforge.llm.thinking); null: none
    "instruction_thinking": pl.String, "check_thinking": pl.String,
}

# data/responses: the evolved items (and seeds) with the responder's answer in ``output``
RESPONSES: Columns = {
    **LINEAGE_TYPES, "instruction": pl.String, "input": pl.String, "evolve_template_hash": pl.String,
    "evolver_model": pl.String, "instruction_finish_reason": pl.String, "output": pl.String,
    "response_finish_reason": pl.String, "response_status": pl.String, "response_failure_reason": pl.String,
    "response_failure_detail": pl.String, "response_template_hash": pl.String,
    # the seed's answer check (round 0 only: a rewrite changes the question) and the answer judged by it:
    # passed true/false, null where the item has no check; the detail says what was compared or why it failed
    "answer_check": pl.String, "answer_check_passed": pl.Boolean, "answer_check_detail": pl.String,
    "response_thinking": pl.String,  # a reasoning model's thinking before ``output`` (evolforge.llm.thinking)
}

# data/autoif/responses: AutoIF's (constraint, query) items whose answer its verification functions accept
AUTOIF_RESPONSES: Columns = {
    **LINEAGE_TYPES, "instruction": pl.String, "input": pl.String, "evolve_template_hash": pl.String,
    "evolver_model": pl.String, "output": pl.String, "response_template_hash": pl.String,
    "constraint_id": pl.String, "query_id": pl.String, "pass_rate": pl.Float64, "response_verified": pl.Boolean,
    # response_verified again, as the item's answer check (verify and select read it; null: not verified)
    "answer_check_passed": pl.Boolean, "answer_check_detail": pl.String,
}

# what dedup adds to the items it drops (data/dedup/removed.parquet)
DUPLICATE_FLAGS: Columns = {"duplicate_of": pl.String, "duplicate_similarity": pl.Float64, "dedup_reason": pl.String}

# what decontaminate adds to the items it drops (data/clean/removed.parquet)
CONTAMINATION_FLAGS: Columns = {
    "contamination_reason": pl.String, "contamination_benchmark": pl.String, "contamination_problem_id": pl.String,
    "contamination_source": pl.String, "contamination_field": pl.String, "contamination_ngram": pl.String,
    "contamination_similarity": pl.Float64,
}

# data/judged
JUDGED: Columns = {
    "id": pl.String, "round": pl.Int32, "difficulty_level": pl.String, "difficulty_level_reason": pl.String,
    "difficulty_level_raw": pl.String, "difficulty_score": pl.Float64, "difficulty_score_reason": pl.String,
    "difficulty_score_raw": pl.String, "score_prompt": pl.String, "judge_constrained": pl.Boolean,
    "difficulty_expected": pl.Float64, "level_expected": pl.Float64,
    # a reasoning judge's thinking before each answer (evolforge.llm.thinking); null: none
    "difficulty_level_thinking": pl.String, "difficulty_score_thinking": pl.String,
}

# data/verified (steps/verify): how each answer was checked, the verdict, what it rests on, P(right)
VERIFIED: Columns = {
    "id": pl.String, "round": pl.Int32, "verify_method": pl.String, "verify_verdict": pl.String,
    "verify_evidence": pl.String, "verify_confidence": pl.Float64,
}

# data/scores: id and round, then the scores (score.ifd builds its rows with SCORE_VALUES)
SCORE_VALUES: Columns = {
    "loss_instruction": pl.Float64,  # mean token cross-entropy, nats
    "loss_response": pl.Float64,
    "loss_response_given_instruction": pl.Float64,
    "ifd": pl.Float64,
    "ic_ifd": pl.Float64,
    "n_tokens_instruction": pl.Int64,  # tokens averaged in each loss
    "n_tokens_response": pl.Int64,
    "n_tokens_response_given_instruction": pl.Int64,
    "null_reason": pl.String,  # why a value above is null; null when none is
}
SCORES: Columns = {"id": pl.String, "round": pl.Int32, **SCORE_VALUES}

# data/diversity
DIVERSITY: Columns = {"id": pl.String, "round": pl.Int32, "mnd": pl.Float64, "repeat_count": pl.Int64}
