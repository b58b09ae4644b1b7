"""The pipeline's steps, one folder each (seed, optimize, evolve, respond, autoif, pool, dedup, decontaminate,
judge, score, diversity, select, compare, evolver_analysis): a stage script maps its paths to the step's
``run()`` and hands it the typed sections and the roles it uses (:class:`evolforge.steps.common.llms.RoleLLMs`),
so a ``run()`` signature is the step's dependency list and no step reads params.yaml itself. What several steps
need lives in :mod:`evolforge.steps.common`; a step never imports another step.

A step's ``settings.py`` types its params.yaml section: a dataclass whose fields hold the defaults (the one
place they live) and the types, bounds from :mod:`evolforge.config.bounds`, allowed values as ``Literal``.
The stage script types the section with it (``load_section(params, "seed", SeedSettings)``) and
:mod:`evolforge.schema` maps the section to it; a settings module imports nothing but :mod:`evolforge.config`
(and leaves of types, ``score/choices.py``), so checking params loads no step."""
