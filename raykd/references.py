"""User code named in the YAML: ``"package.module:name"`` references to a dataset, model or method.

A reference is imported from the working folder (the folder the command runs in, like ``python -m``)
or from the installed environment. Anything that goes wrong is one ConfigError line naming the field.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from raykd.errors import ConfigError


def is_reference(name: str) -> bool:
    """Whether ``name`` is a ``package.module:attribute`` reference rather than a built-in name."""
    module, sep, attribute = name.partition(":")
    return bool(sep and module and attribute)


def resolve(reference: str, field: str) -> Any:
    """The object ``reference`` names; ``field`` is the config key it came from (for the error line)."""
    module_name, sep, attribute = reference.partition(":")
    if not (sep and module_name and attribute):
        raise ConfigError(f"{field}: {reference!r} is not a reference; expected 'package.module:name'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user modules beside the config, as `python -m` would find them
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - user code may fail to import in any way; report it in one line
        raise ConfigError(
            f"{field}: cannot import module {module_name!r} of {reference!r} ({type(err).__name__}: {err})"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field}: module {module_name!r} has no {attribute!r} (from {reference!r})")
        target = getattr(target, part)
    return target
