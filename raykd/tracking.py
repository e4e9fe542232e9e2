"""MLflow: an embedded sqlite store by default, a real tracking server when a URI is given."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from raykd.errors import ConfigError

DEFAULT_STORE = "mlflow.db"


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the given one, else a sqlite file in the working folder."""
    return uri or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def check_reachable(uri: str) -> None:
    """Fail before any training when the store cannot take runs, saying how to get one that can."""
    hint = (
        "start one with `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, "
        "or leave tracking.uri unset to use the embedded sqlite store"
    )
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
                if response.status != 200:
                    raise ConfigError(f"tracking.uri: {uri} answered {response.status} to /health; {hint}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"tracking.uri: cannot reach MLflow at {uri} ({reason}); {hint}") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"tracking.uri: folder {folder} of {uri} does not exist or is not writable")
    else:
        raise ConfigError(f"tracking.uri: {uri!r} is not supported; allowed: sqlite:///PATH or http(s)://HOST:PORT")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"section.key": value}`` for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
