"""raykd: knowledge distillation between distributed and federated nodes.

The core (``raykd.data``, ``raykd.models``, ``raykd.methods``, ``raykd.engine``, ``raykd.nodes``,
``raykd.experiment``) is plain PyTorch; ``raykd.sweep`` (Ray Tune) and ``federated`` (Flower) are the
shells around it; ``raykd.api`` is the Python API both command lines wrap.
"""

from raykd.api import (
    Simulation,
    Study,
    export_student,
    generate,
    load_config,
    load_student,
    plan,
    predict,
    run,
    simulate,
)
from raykd.errors import ConfigError

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "Simulation",
    "Study",
    "export_student",
    "generate",
    "load_config",
    "load_student",
    "plan",
    "predict",
    "run",
    "simulate",
]
