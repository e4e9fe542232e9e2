"""Bad input: one line naming the field and what it allows, exit status 2, no traceback, no MLflow writes."""

from __future__ import annotations

import json
import os
import pickle
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
    (["methods=[{name:dml}]"], "methods[0].name: missing; a method row needs one of ce, kd, dml"),
    (["methods.1.temperature=0"], "methods[1].temperature = 0: Input should be greater than 0"),
    (["methods.1.temperature=[2, -1]"], "methods[1].temperature = -1: Input should be greater than 0"),
    (["methods.1.alpha=1.5"], "methods[1].alpha = 1.5: Input should be less than or equal to 1"),
    (["methods.1.alpha=-0.1"], "methods[1].alpha = -0.1: Input should be greater than or equal to 0"),
    (["partition.num_nodes=1"], "partition.num_nodes = 1: Input should be greater than or equal to 2"),
    (["partition.alpha=0"], "partition.alpha = 0: Input should be greater than 0"),
    (["partition.scheme=pathological", "partition.classes_per_node=12"], "partition.classes_per_node: 12 is more"),
    (["partition.scheme=random"], "partition.scheme = 'random': Input should be 'iid', 'dirichlet' or 'pathological'"),
    (["data.colour=red"], "data.colour: unknown key in data; allowed: task, dataset, root,"),
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
    (["tune.max_failures=-1"], "tune.max_failures = -1: Input should be greater than or equal to 0"),
    (["faults.trial={label: fitnet, seed: 0}"], "faults.trial.label: 'fitnet' is not a method row; allowed: no-kd, kd"),
    (["faults.trial={label: kd, seed: 7}"], "faults.trial.seed: 7 is not one of the sweep's seeds [0]"),
    (["faults.trial={label: kd, seed: 0, times: 0}"], "faults.trial.times = 0: Input should be greater than or equal"),
    (["faults.trial={seed: 0}"], "faults.trial.label: Field required"),
    (["faults.trial={label: kd, seed: 0, epoch: 2}"], "faults.trial.epoch: unknown key in faults.trial; allowed:"),
    (["faults.client=3"], "faults.client: client 3 does not exist; allowed: 0..2"),
    (["tune.fail={label: kd, seed: 0}"], "tune.fail: moved; set faults.trial (e.g. faults: {trial: {label: kd,"),
    (["federated.fail_client=1"], "federated.fail_client: moved; set faults.client (e.g. faults: {client: 1})"),
    (["axes={c: {a: {federated.fail_client: 1}}}"], "axes (cell c=a): federated.fail_client: moved; set faults.client"),
    (["axes={d: {a: {seeds: [1]}}}"], "axes.d.a.seeds: cannot vary between cells; allowed sections: data, partition"),
    (["axes={d: {a: {partition.alhpa: 1}}}"], "axes (cell d=a): partition.alhpa: unknown key in partition; allowed:"),
    (["axes={d: {a: {partition.alpha: 0}}}"], "axes (cell d=a): partition.alpha = 0: Input should be greater than 0"),
    (["axes={d: {}}"], "axes.d: has no variants; give it at least one"),
    (["axes={d: {a: {transfer.teachers: [0]}}}"], "axes (cell d=a): transfer.teachers: must not include the student"),
    # distil your own: references, checkpoints, augmentation
    (["data.dataset=no_such_mod:load"], "data.dataset: cannot import module 'no_such_mod' of 'no_such_mod:load'"),
    (["nodes.model={name: no_such_mod:Net}"], "nodes.model.name: cannot import module 'no_such_mod'"),
    (["nodes.models={1: {name: cnn1d, checkpoint: /no/f.pt}}"], "nodes.models[1].checkpoint = '/no/f.pt': no such"),
    (["data.augment=[random_crop]"], "data.augment: random_crop needs images (C, H, W) but mnist1d has inputs"),
    (["data.augment=[horizontal_flip]", "teacher.mode=cache"], "data.augment: teacher.mode=cache holds logits"),
    (["data.dataset=npz", "data.root=/no/such.npz"], "data.root"),
    (["federated.kd_alpha=0.3"], "federated.kd_alpha: moved to the method row; set methods.0.alpha"),
    (["teacher.prefetch=-1"], "teacher.prefetch = -1: Input should be greater than or equal to 0"),
    (["teacher.prefetch=65"], "teacher.prefetch = 65: Input should be less than or equal to 64"),
    (["data.task=lm", "data.dataset=mnist1d"], "data.dataset: mnist1d is not a data.task=lm dataset; allowed: pydoc"),
    (["data.dataset=pydoc"], "data.dataset: pydoc is not a data.task=classify dataset; allowed: digits,"),
    (["data={task: lm}"], "nodes.model: model 'cnn1d' needs 1-D signals (C, L) but the data has text tokens"),
    (["data={task: lm}", "nodes.model=resnet18"], "nodes.model.name = 'resnet18': not a language model; allowed"),
    (
        ["data={task: lm}", "nodes.model=gpt", "methods=[{name: reffakd}]"],
        "methods: reffakd learns per sample in its prepare step",
    ),
    (["data={task: lm}", "methods=[{name: gkd, on_policy: 0.5}]", "teacher.mode=cache"], "needs the teacher to score"),
    (["methods=[{name: gkd, on_policy: 0.5}]"], "methods: on_policy > 0 samples text from the student; allowed: 0"),
    (
        ["data={task: lm, tokenizer: /no/tok.json}", "nodes.model=gpt"],
        "data.tokenizer: /no/tok.json is not a tokenizer",
    ),
    (["data={task: lm, dataset: text, root: /no/text}", "nodes.model=gpt"], "data.root"),
    (["data={task: lm}", "nodes.model=gpt", "teacher.mode=cache", "teacher.top_k=300"], "teacher.top_k: 300 would"),
    (
        ["data={task: lm}", "nodes.model=gpt", "federated.after_sweep=true", "federated.strategy=fml"],
        "federated.strategy: fml takes classification data only",
    ),
    (["tune.select_on=val_ppl"], "tune.select_on: val_ppl is a language-model metric; allowed: val_acc, local_val_acc"),
]


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assert_one_clean_line(capsys: pytest.CaptureFixture, rc: int, *expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("raykd: error: ") and "\n" not in err and "Traceback" not in err
    assert all(text in err for text in expected), err


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


def _sweep_folder(tmp_path: Path, *parts: str) -> Path:
    """A stand-in for an interrupted sweep's output folder holding only ``parts`` (config, records, Tune state)."""
    folder = tmp_path / "runs" / "tiny-20260101-000000"
    folder.mkdir(parents=True)
    raw = tiny_raw(tmp_path, tmp_path / "cache")
    files = {
        "config.yaml": yaml.safe_dump(raw),
        "broken config.yaml": "methods: [\n",
        "sweep.json": json.dumps({"out": str(folder), "uri": raw["tracking"]["uri"], "parent_run_id": "0123abcd"}),
        "broken sweep.json": "{not json",
        "results.md": "# done\n",
    }
    for part in parts:
        name = part.split()[-1] if part != "tune state" else "tune/tuner.pkl"
        (folder / name).parent.mkdir(exist_ok=True)
        if part == "tune state":  # a state file that reads back, so the next check (the MLflow run) is reached
            (folder / name).write_bytes(pickle.dumps({}))
        else:
            (folder / name).write_text(files[part])
    return folder


# (what the folder holds, extra arguments, text the one-line message must contain)
BAD_RESUMES = [
    (None, [], "no such folder; expected a sweep's output folder runs/<name>-<time>/"),
    ((), [], "holds no config.yaml; expected a sweep's output folder"),
    (("broken config.yaml",), [], "config.yaml: not valid YAML at line 2"),
    (("config.yaml",), [], "sweep.json is missing or unreadable (the sweep stopped before it started); run it anew"),
    (("config.yaml", "broken sweep.json"), [], "sweep.json is missing or unreadable"),
    (("config.yaml", "sweep.json"), [], "no Ray Tune state in"),
    (("config.yaml", "sweep.json", "results.md"), [], "this sweep already finished (results.md is there)"),
    (("config.yaml", "sweep.json", "tune state"), [], "MLflow run 0123abcd of this sweep is not in sqlite:///"),
    (("config.yaml",), ["--set", "seeds=[1]"], "cannot be combined with --config, --set or --tracking-uri"),
]


@pytest.mark.parametrize(
    ("holds", "extra", "expected"),
    BAD_RESUMES,
    ids=[
        "missing",
        "empty",
        "broken-config",
        "no-record",
        "broken-record",
        "no-state",
        "finished",
        "store-gone",
        "set",
    ],
)
def test_bad_resume_path(
    tmp_path: Path, capsys: pytest.CaptureFixture, holds: tuple[str, ...] | None, extra: list[str], expected: str
) -> None:
    folder = tmp_path / "nowhere" if holds is None else _sweep_folder(tmp_path, *holds)
    rc = main(["--resume", str(folder), *extra])
    _assert_one_clean_line(capsys, rc, expected, str(folder))
    assert not (tmp_path / "mlflow.db").exists()


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
    for key in ("nodes.train.epochs", "tune.max_concurrent_trials"):  # keys that once had no description
        (line,) = [x for x in done.stdout.splitlines() if x.startswith(f"  {key} ")]
        assert len(line.partition(")  ")[2]) > 10, line


@pytest.mark.parametrize("command", ["raykd.tune", "federated.simulate"])
def test_help_lines_fit_120_columns(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # argparse's own lines: 80 columns
    done = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and len(done.stdout.splitlines()) > 10
    assert [line for line in done.stdout.splitlines() if len(line) > 120] == []


def test_every_config_key_has_a_description() -> None:
    """``--help`` prints each key (a section's field; a model spec is one key) with its description: a field
    without one would be a bare key."""
    from pydantic import BaseModel

    from raykd.config import ExperimentConfig, ModelSpec, Section

    def bare(model: type[BaseModel], prefix: str) -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, Section) and kind is not ModelSpec:
                found += bare(kind, f"{prefix}{name}.")
            elif not field.description:
                found.append(f"{prefix}{name}")
        return found

    assert bare(ExperimentConfig, "") == []


@pytest.mark.slow
def test_corrupted_node_checkpoint_and_logit_cache_are_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture, ray_session: object
) -> None:
    from raykd.config import validate_config
    from raykd.nodes import load_node, node_path, prepare
    from raykd.teacher.cache import node_logits

    raw = tiny_raw(tmp_path, tmp_path / "cache", methods=[{"name": "kd", "temperature": 4}])
    raw["teacher"] = {"mode": "cache"}
    cfg = validate_config(raw)
    setup = prepare(cfg, 0)
    load_node(cfg, setup, 0, 0)  # a first run's files: the student's model, the teacher's model and logits
    node_logits(cfg, setup, 1, 0)
    checkpoint = node_path(cfg, 0, 0)
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated, as by a crash mid-copy
    for logits in (tmp_path / "cache" / "logits").glob("*.npy"):
        logits.write_bytes(logits.read_bytes()[:-64])  # fails its checksum
    assert main(["--config", str(_write(tmp_path, raw))]) == 0
    printed = capsys.readouterr().out
    assert "node models: 1 of 2 cached" in printed and "teacher-logit cache: 1 forward passes" in printed


def test_the_old_federated_search_names_its_replacement_in_one_line(capfd: pytest.CaptureFixture) -> None:
    """``python -m federated.tune`` and ``federated.grid`` are gone: each is one line naming the sweep's way."""
    from federated.tune import main as old_search

    assert old_search(["--grid", "federated.rounds=[1,2]"]) == 2
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "python -m raykd.tune" in err and "tune.trial=simulation" in err
    assert main(["--set", "federated.grid={federated.rounds: [1, 2]}"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("raykd: error: federated.grid: a search over simulations is a sweep; set tune.trial")
    assert "\n" not in err


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("tune.scheduler=asha", "tune.scheduler"),
        ("tune.select_on=local_val_acc", "tune.select_on"),
        ("federated.compare=[fedavg,kd]", "federated.compare"),
        ("federated.after_sweep=true", "federated.after_sweep"),
        ("learners.num_workers=1", "learners.num_workers"),
    ],
)
def test_simulation_trials_refuse_what_they_cannot_honour_in_one_line(
    override: str, field: str, capfd: pytest.CaptureFixture
) -> None:
    assert main(["--set", "tune.trial=simulation", "--set", override]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith(f"raykd: error: {field}: not with tune.trial simulation; allowed:") and "\n" not in err
