"""Federated knowledge distillation with Flower: raykd's data, models, methods and engine inside a Flower app.

Importing the package switches off Flower's run-time dependency installation (it would run ``uv sync``)
and its telemetry, for every entry point: ``python -m federated.simulate`` and ``flwr run .``.
"""

import os

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
