"""Bad input: one line naming the field and what it allows, exit status 2, no traceback, no MLflow writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raykd.tune import main
from tests.conftest import tiny_raw

# (overrides, text the one-line message must contain)
BAD_OVERRIDES = [
    (["data.dataset=imagenet"], "data.dataset = 'imagenet': Input should be 'digits', 'mnist1d'"),
    (["nodes.model=vgg99"], "nodes.model.name = 'vgg99': unknown model 'vgg99'; allowed: mlp, cnn1d"),
    (["nodes.models={1: cnn2d}"], "nodes.models.1: model 'cnn2d' needs images"),
    (["methods.1.name=fitnet"], "methods[1].name = 'fitnet': unknown method; allowed: ce, kd, dml, dpkd"),
    (["methods.1.temperature=0"], "methods[1].temperature = 0: Input should be greater than 0"),
    (["methods.1.temperature=[2, -1]"], "methods[1].temperature = -1: Input should be greater than 0"),
    (["methods.1.alpha=1.5"], "methods[1].alpha = 1.5: Input should be less than or equal to 1"),
    (["methods.1.alpha=-0.1"], "methods[1].alpha = -0.1: Input should be greater than or equal to 0"),
    (["partition.num_nodes=1"], "partition.num_nodes = 1: Input should be greater than or equal to 2"),
    (["partition.alpha=0"], "partition.alpha = 0: Input should be greater than 0"),
    (["partition.scheme=pathological", "partition.classes_per_node=12"], "partition.classes_per_node: 12 is more"),
    (["partition.scheme=random"], "partition.scheme = 'random': Input should be 'iid', 'dirichlet' or 'pathological'"),
    (["data.colour=red"], "data.colour: unknown key in data; allowed: dataset, root,"),
    (["epochs=3"], "epochs: unknown key in the top level; allowed: name, seeds,"),
    (["methods.1.beta=3"], "methods[1].beta: unknown key in methods.1; allowed: label, name, temperature, alpha"),
    (["data.dataset=cifar10"], "data.root: cifar10 needs a local folder"),
    (["data.dataset=cifar100", "data.root=/no/such/folder"], "data.root: /no/such/folder has no cifar-100-python/"),
    (["transfer.teachers=[5]"], "transfer.teachers: node 5 does not exist; allowed: 0..2"),
    (["transfer.teachers=[0]"], "transfer.teachers: must not include the student node"),
    (["transfer.train.epochs=none"], "transfer.train.epochs = 'none': Input should be a valid integer"),
    (["seeds=[]"], "seeds = []: List should have at least 1 item"),
    (["methods.7.alpha=1"], "--set methods.7.alpha: methods has 2 entries; allowed index 0..1"),
    (["nodes=3"], "nodes = 3: Input should be a valid dictionary"),
    (["transfer.set=public"], "transfer.set = 'public': Input should be 'local', 'pool' or 'both'"),
    (["tracking.uri=http://127.0.0.1:9"], "tracking.uri: cannot reach MLflow at http://127.0.0.1:9"),
    (["tracking.uri=ftp://x"], "tracking.uri: 'ftp://x' is not supported"),
    (["justtext"], "--set 'justtext': expected KEY=VALUE"),
]


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assert_one_clean_line(capsys: pytest.CaptureFixture, rc: int, expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("raykd: error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err, err


@pytest.mark.parametrize(("overrides", "expected"), BAD_OVERRIDES, ids=[o[0] for o, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line_exit_2_and_nothing_tracked(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str], expected: str
) -> None:
    config = _write(tmp_path, tiny_raw(tmp_path, tmp_path / "cache"))
    rc = main(["--config", str(config), *[a for o in overrides for a in ("--set", o)]])
    _assert_one_clean_line(capsys, rc, expected)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("methods: [\n", "not valid YAML at line 2"),
        ("- just\n- a list\n", "expected a mapping of sections"),
        (b"\xff\xfe\x00binary", "cannot be read"),
    ],
    ids=["missing", "broken-yaml", "not-a-mapping", "unreadable"],
)
def test_bad_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str | bytes | None, expected: str
) -> None:
    path = tmp_path / "experiment.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    rc = main(["--config", str(path)])
    _assert_one_clean_line(capsys, rc, f"config {path}: {expected}")


def test_more_cpus_per_trial_than_the_cluster_has(
    tmp_path: Path, capsys: pytest.CaptureFixture, ray_session: object
) -> None:
    config = _write(tmp_path, tiny_raw(tmp_path, tmp_path / "cache"))
    rc = main(["--config", str(config), "--set", "tune.cpus_per_trial=64"])
    _assert_one_clean_line(capsys, rc, "tune.cpus_per_trial: 64 CPUs per trial but the Ray cluster has 2")
    assert not (tmp_path / "mlflow.db").exists()


def test_real_process_exits_2_without_traceback(tmp_path: Path) -> None:
    config = _write(tmp_path, tiny_raw(tmp_path, tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "raykd.tune", "--config", str(config), "--set", "partition.alpha=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "raykd: error: partition.alpha = -1: Input should be greater than 0"


def test_help_documents_every_section_and_method() -> None:
    done = subprocess.run([sys.executable, "-m", "raykd.tune", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for text in ("--set KEY=VALUE", "partition.alpha", "transfer.set", "tracking.uri", "kd: temperature=4.0", "dpkd"):
        assert text in done.stdout
