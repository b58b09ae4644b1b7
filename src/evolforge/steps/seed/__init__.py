"""The seed step: a source (file or hub dataset) read, mapped to instruction/input/output, deduplicated and sampled
(``step.run``)."""
