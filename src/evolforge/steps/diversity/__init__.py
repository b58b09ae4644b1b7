"""The diversity step: embeddings and neighbour statistics of the items (``step.run``)."""
