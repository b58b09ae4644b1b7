"""The evolver analysis: which methods the evolver's evolutions use and how sure it is (``step.run``)."""
