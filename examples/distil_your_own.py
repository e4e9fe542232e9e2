"""Distil your own model with raykd: your data, your model class, your pre-trained teacher in; a student file out.

    cd examples && python distil_your_own.py            # about a minute on 2 cores
    cd examples && python distil_your_own.py --tiny     # a few seconds of training (what the tests run)

1. ``my_project.pretrain`` makes a teacher checkpoint: a stand-in for a model someone trained elsewhere.
2. ``raykd.run`` distils it into node 0's own smaller model on node 0's share of ``my_project:make_data``,
   tuning the temperature on validation data, with no-KD as the baseline row.
3. ``raykd.load_student`` loads the distilled student of the chosen setting, and its test accuracy is
   checked against the one raykd recorded.
``distil_your_own.yaml`` is the same experiment for the command line (after step 1 has written the file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from my_project import SmallNet, make_data, pretrain

import raykd
from raykd.students import read_student


def experiment(out: Path, teacher: Path, tiny: bool) -> dict:
    """The experiment as a mapping (the same keys as the YAML)."""
    epochs = 2 if tiny else 20
    return {
        "name": "my-distillation",
        "seeds": [0] if tiny else [0, 1, 2],
        "data": {"dataset": "my_project:make_data", "kwargs": {"samples": 1200 if tiny else 3000}},
        "partition": {"scheme": "dirichlet", "alpha": 0.5, "num_nodes": 3},
        "nodes": {
            "model": {"name": "my_project:SmallNet", "kwargs": {"hidden": 16}},
            "models": {1: {"name": "my_project:SmallNet", "kwargs": {"hidden": 128}, "checkpoint": str(teacher)}},
            "train": {"epochs": epochs},
            "cache_dir": str(out / "cache"),
        },
        "transfer": {"student": 0, "teachers": [1], "set": "pool", "train": {"epochs": epochs}},
        "methods": [
            {"name": "ce", "label": "no-kd"},
            {"name": "kd", "label": "kd-tuned", "temperature": [2, 4] if tiny else [1, 2, 4, 8], "alpha": 0.5},
        ],
        "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "distil-your-own"},
        "output_dir": str(out / "runs"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="one seed, two epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("example-output"), help="cache, runs and MLflow store")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    data = make_data(samples=1200 if args.tiny else 3000)
    teacher = out / "teacher.pt"
    model = pretrain(SmallNet(4, (20,), hidden=128), data["x"], data["y"], epochs=5 if args.tiny else 30)
    torch.save(model.state_dict(), teacher)  # a plain state_dict, as most projects save them

    study = raykd.run(experiment(out, teacher, args.tiny))
    print(study.summary[["label", "test_acc", "gain"]].to_string(index=False))
    print(f"chosen on validation: {study.chosen}")

    path = study.students["kd-tuned"][0]
    student = raykd.load_student(path)
    with torch.no_grad():
        correct = int((student(torch.from_numpy(data["x_test"])).argmax(1).numpy() == data["y_test"]).sum())
    recorded = read_student(path)["info"]["metrics"]["test_acc"]  # what the trial measured, also in trials.csv
    print(f"distilled student {path}: {correct} of {len(data['y_test'])} test samples right")
    assert correct == round(recorded * len(data["y_test"])), "the student file should reproduce its trial"
    print(f"the loaded student reproduces the test accuracy raykd recorded ({100 * recorded:.1f}%)")


if __name__ == "__main__":
    main()
