"""Every private touch in ``raykd.compat`` against the installed Ray, Flower and MLflow: a test here fails, naming
the touch, when an upgrade moves the internal it relies on (``tests/test_federated_polling.py`` runs the Flower
message hand-out on a real LinkState)."""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import mlflow
import pytest
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import CSVLoggerCallback

from raykd import compat
from raykd.cluster import job_actors


@pytest.mark.parametrize("package", sorted(compat.CHECKED))
def test_installed_versions_are_the_ones_the_touches_were_checked_against(package: str) -> None:
    assert version(package) == compat.CHECKED[package], (
        f"{package} {version(package)} is installed; raykd/compat.py was checked against {compat.CHECKED[package]}: "
        "run tests/test_compat.py, fix what moved, then update CHECKED"
    )


def test_mlflow_active_runs_are_forgotten_without_asking_the_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    # an own experiment: the fluent API's active experiment may name one in an earlier test's store
    run = mlflow.start_run(experiment_id=client.create_experiment("compat"))
    assert mlflow.active_run() is not None
    compat.forget_active_mlflow_runs()
    assert mlflow.active_run() is None
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the store was not asked


def test_mlflow_callback_internals(tmp_path: Path) -> None:
    callback = MLflowLoggerCallback(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="compat")
    callback.setup()
    experiment = mlflow.MlflowClient(callback.tracking_uri).get_experiment_by_name("compat")
    assert compat.callback_experiment_id(callback) == experiment.experiment_id
    assert compat.logged_trial_runs(callback) == {}


def test_a_restored_tuner_brings_its_pickled_callbacks(tmp_path: Path, ray_session: object) -> None:
    def trainable(config: dict) -> None:
        tune.report({"score": 1.0})

    config = tune.RunConfig(name="compat", storage_path=str(tmp_path), verbose=0, callbacks=[CSVLoggerCallback()])
    fresh = tune.Tuner(trainable, run_config=config)
    assert any(isinstance(c, CSVLoggerCallback) for c in compat.tuner_callbacks(fresh))
    fresh.fit()
    restored = tune.Tuner.restore(str(tmp_path / "compat"), trainable)
    assert any(isinstance(c, CSVLoggerCallback) for c in compat.tuner_callbacks(restored))


class CompatProbe:
    """An actor the GCS table should list under this class name and job."""

    def ready(self) -> bool:
        return True


def test_ray_init_binds_loopback_and_the_gcs_actor_table_lists_this_jobs_actors(ray_session: object) -> None:
    import ray

    init = inspect.getsource(ray.init)
    assert all(f'kwargs.pop("{name}"' in init for name in compat.loopback_node()), "ray.init takes no such argument"

    probe = ray.remote(num_cpus=0)(CompatProbe).remote()
    assert ray.get(probe.ready.remote())
    (row,) = job_actors("CompatProbe")
    assert int(row["NumRestarts"]) == 0 and row["Address"]["NodeID"]
    ray.kill(probe)


def test_tune_interruption_messages_are_still_tunes() -> None:
    source = Path(find_spec(compat.QuietTuneInterruption.LOGGER).origin).read_text()
    for message in compat.QuietTuneInterruption.MESSAGES:
        assert message in source, f"ray.tune.tune no longer logs {message!r}"
    quiet = compat.QuietTuneInterruption()
    assert not quiet.filter(logging.makeLogRecord({"msg": "Stop signal received (e.g. via SIGINT/Ctrl+C)"}))
    assert quiet.filter(logging.makeLogRecord({"msg": "anything else"}))


def test_flower_engine_files_and_functions_still_log_client_failures() -> None:
    package = Path(find_spec("flwr").submodule_search_locations[0])
    for file, function in compat.FlowerClientTracebacks.ENGINE:
        (path,) = package.rglob(file)
        source = path.read_text()
        assert f"def {function}(" in source and "ERROR" in source, f"{path}: no {function} logging errors"
    record = logging.makeLogRecord({"pathname": "/x/vce_api.py", "funcName": "worker", "levelno": logging.ERROR})
    assert not compat.FlowerClientTracebacks().filter(record)


def test_flower_extractor_keeps_its_arguments_and_can_be_replaced() -> None:
    original = compat.flower_extractor()
    assert list(inspect.signature(original).parameters) == ["state", "queue", "nodes_mapping", "f_stop"]
    try:
        compat.use_flower_extractor(print)
        assert compat.flower_extractor() is print
    finally:
        compat.use_flower_extractor(original)
