"""Selection: the policy (``selection``), the training files and the dataset card (``card``), written by
``step.run``."""
