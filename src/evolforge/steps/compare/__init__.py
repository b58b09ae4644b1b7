"""The compare step: the base and fine-tuned models' answers judged pairwise (``step.run``)."""
