"""Artifacts on disk: records and their crash-safe writing (``records``), the column sets each artifact holds
(``columns``), tables read and written in chunks (``stream``), JSON files (``jsonfiles``) and the checks a
table must pass before a stage trusts it (``validation``)."""
