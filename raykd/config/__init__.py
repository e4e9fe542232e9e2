"""One typed experiment schema: YAML in, ``--set key=value`` overrides, one-line errors out.

``schema`` holds the sections (``base``: what every section shares; ``data``: the data section; ``federated``: the
Flower section); ``rules`` every cross-field rule that needs no data and no cluster; ``loading`` reads YAML, applies
overrides, expands study axes into cells and turns validation errors into one line. Importing this package imports
no torch.
"""

from raykd.config.base import Section, TrainConfig
from raykd.config.data import DATASET_ROOTS, AugmentSpec, DataConfig, DatasetName
from raykd.config.faults import FaultsConfig, TrialFault
from raykd.config.federated import MOVED_FEDERATED_KEYS, SERVER_TEMPERATURE, FederatedConfig
from raykd.config.loading import (
    Cell,
    cell_key,
    deep_merge,
    describe_error,
    describe_schema,
    load_config,
    load_raw,
    parse_override,
    set_dotted,
    study_cells,
    validate_config,
)
from raykd.config.paths import check_paths, written_folders
from raykd.config.rules import check_config, check_faults, check_federated, check_requests
from raykd.config.schema import (
    CELL_SECTIONS,
    ExperimentConfig,
    LearnersConfig,
    ModelSpec,
    NodesConfig,
    PartitionConfig,
    RayConfig,
    TeacherConfig,
    TrackingConfig,
    TransferConfig,
    TuneConfig,
)

__all__ = [
    "CELL_SECTIONS",
    "DATASET_ROOTS",
    "MOVED_FEDERATED_KEYS",
    "SERVER_TEMPERATURE",
    "AugmentSpec",
    "Cell",
    "DataConfig",
    "DatasetName",
    "ExperimentConfig",
    "FaultsConfig",
    "TrialFault",
    "FederatedConfig",
    "LearnersConfig",
    "ModelSpec",
    "NodesConfig",
    "PartitionConfig",
    "RayConfig",
    "Section",
    "TeacherConfig",
    "TrackingConfig",
    "TrainConfig",
    "TransferConfig",
    "TuneConfig",
    "cell_key",
    "check_config",
    "check_faults",
    "check_federated",
    "check_paths",
    "check_requests",
    "deep_merge",
    "describe_error",
    "describe_schema",
    "load_config",
    "load_raw",
    "parse_override",
    "set_dotted",
    "study_cells",
    "validate_config",
    "written_folders",
]
