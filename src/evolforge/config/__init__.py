"""The configuration: ``params.yaml`` read and typed, one dataclass per section.

The package is the bottom layer (``config`` <- ``io`` <- ``core`` <- ``llm`` ... <- ``steps``): it imports
nothing else of evolforge. A step's section is typed by the class in its ``steps/<step>/settings.py``, handed to
:func:`~evolforge.config.loader.load_section` by the step itself; the map of every section to its class and the
checks of a whole file are :mod:`evolforge.schema` (``evolforge check``, the models stage). Inside it, imports
point one way:

- :mod:`~evolforge.config.bounds`: the leaf -- :class:`Refusal` (the base of every error written for people),
  :class:`ParamsError`, ``DEFAULT_FILE``, the bounds fields are typed with (``PositiveInt``, ``Fraction`` ...),
  the readers of a settings class's annotations, and secret-shaped values (recognised by value);
- :mod:`~evolforge.config.messages`: problems in words (a type described, a value shown, the closest key);
- the settings of the sections that belong to no step: :mod:`~evolforge.config.runtime` (cache, llm and its
  budget), :mod:`~evolforge.config.data`, :mod:`~evolforge.config.fetch_model`,
  :mod:`~evolforge.config.training` (finetune, evaluate), and
  :mod:`~evolforge.config.roles` (``roles.<name>``, its generation controls, :func:`load_role`; the chat requests
  a role makes are :mod:`evolforge.llm.requests`), over :mod:`~evolforge.config.backend_specs` (what each backend
  does: its controls, rankings, roles) and :mod:`~evolforge.config.backend_settings` (what a role of each backend
  sets beside the common keys);
  :mod:`~evolforge.config.controls`: the control and repetition types several steps' settings share;
- :mod:`~evolforge.config.loader`: the file read (:func:`read_params`: strict YAML, no secrets, no control
  characters) and one section checked (:func:`check_section`) and typed (:func:`parse`; :func:`load_section`,
  with the settings class the caller names).

Import each name from the module that defines it; this ``__init__`` is documentation only.
"""
