"""Near-duplicate removal: MinHash LSH with an exact Jaccard check (``minhash``), streamed through a table in chunks
(``step.run``)."""
