"""The judge step: difficulty scores and levels from the judge role, with their expected values (``step.run``)."""
