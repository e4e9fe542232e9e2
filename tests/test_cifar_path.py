"""The CIFAR path end to end with no download: a tiny folder in CIFAR-10's own pickled layout, through the CLI."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from raykd.config import load_config
from raykd.engine import accuracy
from raykd.nodes import prepare
from raykd.students import load_student, read_student
from raykd.tune import main

STUDY = Path(__file__).resolve().parents[1] / "tune_configs" / "paper_study_cifar10.yaml"


def write_cifar10(root: Path, per_batch: int = 100, test: int = 100) -> Path:
    """``cifar-10-batches-py/`` as torchvision reads it: five training batches, a test batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, rows in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        labels = list(np.arange(rows) % 10)
        data = rng.integers(0, 256, size=(rows, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": []}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}, f)
    return root


SHRINK = [
    "seeds=[0]",
    "axes={}",
    "partition.scheme=iid",
    "partition.min_samples=5",
    "nodes.model={name: resnet, depth: 8, width: 4}",
    "nodes.train={epochs: 1, batch_size: 64, lr: 0.001}",
    "transfer.train={epochs: 1, batch_size: 64, lr: 0.001}",
    "methods=[{name: ce, label: no-kd}, {name: kd, label: kd-tuned, temperature: [2, 4], alpha: 0.5}]",
    "teacher.mode=inline",
    "teacher.num_gpus=0",  # the GPU the config gives its teacher server; an inline teacher takes none
    "tune.cpus_per_trial=1",
    "tune.max_concurrent_trials=1",
    "tune.gpus_per_trial=0",
    "federated.after_sweep=false",
]


@pytest.mark.slow
def test_shrunk_cifar10_study_runs_through_the_cli_with_augmentation(
    ray_session: object, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_cifar10(tmp_path / "data")
    sets = [
        *SHRINK,
        f"data.root={root}",
        f"nodes.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    argv = ["--config", str(STUDY), *(a for s in sets for a in ("--set", s))]
    assert main(argv) == 0, capsys.readouterr().err
    cfg = load_config(STUDY, sets)
    assert [a.name for a in cfg.data.augment] == ["random_crop", "horizontal_flip"]
    (out,) = (tmp_path / "runs").iterdir()
    student = out / "students" / "kd-tuned" / "seed0.pt"
    data = prepare(cfg, 0).dataset
    assert data.input_shape == (3, 32, 32) and len(data.train_y) == 500
    assert (
        accuracy(load_student(student), data.model_view(data.test_x), data.test_y)  # saved students take floats
        == read_student(student)["info"]["metrics"]["test_acc"]
    )
