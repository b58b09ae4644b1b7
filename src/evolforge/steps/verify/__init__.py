"""The verify step: each answer checked before selection -- code by tests it did not write, numbers recomputed,
the rest judged -- with its method, verdict, evidence and confidence (``step.run``)."""
