"""raykd: knowledge distillation between distributed and federated nodes.

The core (``raykd.data``, ``raykd.models``, ``raykd.methods``, ``raykd.engine``) is plain PyTorch;
``raykd.tune`` is the Ray Tune shell around it.
"""

__version__ = "0.1.0"
