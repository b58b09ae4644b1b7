"""The pipeline's steps, one folder each (seed, optimize, evolve, respond, autoif, pool, dedup, decontaminate,
judge, score, diversity, select, compare, evolver_analysis): a stage script maps its paths to the step's
``run()``. What several steps need lives in :mod:`evolforge.steps.common`; a step never imports another step."""
