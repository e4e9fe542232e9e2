"""The one path check: every folder a run will write, checked before anything is read, built or written.

A folder that cannot be made or written (``/proc/...``, a regular file in the way, a read-only disk)
would otherwise fail as a traceback after minutes of work; here it is one line naming its field.
"""

from __future__ import annotations

from pathlib import Path

from raykd.config.schema import ExperimentConfig
from raykd.files import check_folder

#: The scheme of a sqlite MLflow store; with tracking.uri unset raykd.tracking puts one in the working folder.
SQLITE = "sqlite:///"


def written_folders(cfg: ExperimentConfig) -> dict[str, Path]:
    """Each folder the run writes, by the config key that names it (students, tables and Tune state live
    under ``output_dir``; node models, logits and dataset caches under ``nodes.cache_dir``)."""
    folders = {"output_dir": cfg.output_dir, "nodes.cache_dir": cfg.nodes.cache_dir}
    uri = cfg.tracking.uri
    if uri is None or uri.startswith(SQLITE):
        folders["tracking.uri"] = Path(uri.removeprefix(SQLITE)).parent if uri else Path.cwd()
    return folders


def check_paths(cfg: ExperimentConfig) -> dict[str, Path]:
    """Refuse, in one line naming the field, a folder the run could not create or write in; the folders checked."""
    folders = written_folders(cfg)
    for field, folder in folders.items():
        check_folder(folder, field)
    return folders
