"""The pipeline steps: seed, optimize, evolve, respond, judge, dedup, decontaminate, select, autoif, compare."""
