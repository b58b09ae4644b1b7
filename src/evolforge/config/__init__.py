"""The configuration: ``params.yaml`` read, checked and typed, one dataclass per section.

The package is the bottom layer (``config`` <- ``core``, ``llm`` <- ``steps`` ...): it imports nothing else of
evolforge but the steps' settings modules (``steps/<step>/settings.py``, which import only this package), so
checking params loads no model, data or training code. Inside it, imports point one way:

- :mod:`~evolforge.config.bounds`: the leaf -- :class:`ParamsError`, ``DEFAULT_FILE``, the bounds fields are
  typed with (``PositiveInt``, ``Fraction`` ...) and the readers of a settings class's annotations;
  :mod:`~evolforge.config.secrets` (secret-shaped values, recognised by value) is a leaf too;
- :mod:`~evolforge.config.messages`: problems in words (a type described, a value shown, the closest key);
- :mod:`~evolforge.config.parse`: one section checked (:func:`check_section`) and typed (:func:`parse`);
- the settings of the sections that belong to no step: :mod:`~evolforge.config.runtime` (cache, llm and its
  budget, data, fetch_model), :mod:`~evolforge.config.training` (finetune, evaluate), and
  :mod:`~evolforge.config.roles` (``roles.<name>``, the generation controls and the chat requests a role makes);
  :mod:`~evolforge.config.controls`: the control and repetition types several steps' settings share;
- :mod:`~evolforge.config.schema`: which section is which class (a step's section is typed by the class in its
  ``steps/<step>/settings.py``, which imports nothing but this package), and the checks of a whole file;
- :mod:`~evolforge.config.loader`: the file read (:func:`load_params`) and a section or role typed
  (:func:`load_section`, :func:`load_role`).

Import each name from the module that defines it; this ``__init__`` is documentation only.
"""
