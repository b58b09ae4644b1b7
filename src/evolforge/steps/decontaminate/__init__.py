"""Benchmark decontamination: the benchmarks' n-gram index (``index``), the matching (``match``) and the step
(``step.run``)."""
