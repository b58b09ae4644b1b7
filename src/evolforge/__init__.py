"""evolforge: declarative data builds for instruction tuning.

Seed data -> Auto Evol-Instruct method optimization -> multi-round evolution -> responses ->
difficulty, IFD and IC-IFD scoring -> selection -> fine-tuning -> evaluation, as a DVC pipeline.
The package holds the logic; the scripts under ``stages/`` are thin DVC wrappers around it.
"""

from evolforge.core.memory import set_jemalloc_conf

set_jemalloc_conf()  # before any evolforge module imports polars (core/memory.py says why)

__version__ = "0.1.0"
