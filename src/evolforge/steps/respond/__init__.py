"""The respond step: an answer for every seed and surviving evolved instruction (``step.run``)."""
