"""Image preprocessing is config (``data.channels``, ``data.normalize``), travels in every student file, and
``raykd.predict`` applies it: a user's teacher is measured on the inputs it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import raykd
from raykd.config import DataConfig, ModelSpec, validate_config
from raykd.data import load_dataset
from raykd.engine import accuracy
from raykd.errors import ConfigError
from raykd.models import build_model
from raykd.nodes import load_node, node_path, prepare, read_node
from raykd.preflight import preflight
from raykd.students import read_student, save_student
from tests.conftest import tiny_raw

SIZE, CLASSES = 8, ("bars", "cross", "dots")


def _pattern(cls: int, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 grayscale picture of class ``cls`` in [0, 255] with noise: learnable, not trivially so."""
    image = rng.normal(60, 40, (SIZE, SIZE))
    if cls == 0:
        image[::2] += 120
    elif cls == 1:
        image[SIZE // 2] += 120
        image[:, SIZE // 2] += 120
    else:
        image[1::3, 1::3] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


def gray_folder(root: Path, train: int = 40, test: int = 15) -> Path:
    """``root/{train,test}/<class>/*.png``: grayscale (mode L) images written with PIL."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for cls, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_pattern(cls, rng), mode="L").save(root / split / name / f"{i}.png")
    return root


def own_inputs(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What a user's plain-PyTorch script feeds its model: [0, 1] grayscale pixels (ToTensor), sorted classes."""
    files = sorted((root / split).glob("*/*.png"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32)[None] / 255) for f in files])
    return x, torch.tensor([CLASSES.index(f.parent.name) for f in files])


def user_teacher(root: Path, path: Path) -> tuple[nn.Module, float]:
    """A teacher trained by the user in plain PyTorch on [0, 1] grayscale inputs; its own test accuracy."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="mlp", width=32), (1, SIZE, SIZE), len(CLASSES))
    x, y = own_inputs(root, "train")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    torch.save({"model_state_dict": model.state_dict(), "epoch": 60}, path)  # a trainer-style checkpoint
    return model.eval(), accuracy(model, *own_inputs(root, "test"))


def image_config(tmp_path: Path, cache_dir: Path, root: Path, **data: Any) -> Any:
    raw = tiny_raw(tmp_path, cache_dir, partition={"scheme": "iid", "num_nodes": 2})
    raw["data"] = {"dataset": "imagefolder", "root": str(root), "image_size": SIZE, **data}
    raw["nodes"]["model"] = {"name": "mlp", "width": 32}
    return raw


def test_a_grayscale_teacher_trained_on_unit_pixels_is_reported_at_its_own_accuracy(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = gray_folder(tmp_path / "shapes")
    _, own = user_teacher(root, tmp_path / "teacher.pt")
    assert own > 0.8  # a real teacher, so a wrong preprocessing shows as a drop
    raw = image_config(tmp_path, cache_dir, root, normalize="none")  # channels: keep (the default) -> 1
    raw["nodes"]["models"] = {1: {"name": "mlp", "width": 32, "checkpoint": str(tmp_path / "teacher.pt")}}
    cfg = validate_config(raw)
    setup = prepare(cfg, 0)
    assert setup.dataset.input_shape == (1, SIZE, SIZE)
    load_node(cfg, setup, 1, 0)
    assert read_node(node_path(cfg, 1, 0))["meta"]["test_acc"] == own
    standardised = validate_config({**raw, "data": {**raw["data"], "normalize": "train-stats"}})
    assert load_dataset(standardised.data, cache_dir).preprocess["mean"] != [0.0]  # the other choice is explicit


def test_channels_and_normalize_shape_the_inputs_and_the_record(tmp_path: Path) -> None:
    root = gray_folder(tmp_path / "shapes", train=4, test=2)
    rgb = load_dataset(DataConfig(dataset="imagefolder", root=root, image_size=SIZE, channels=3), tmp_path / "c")
    assert rgb.input_shape == (3, SIZE, SIZE) and rgb.preprocess["channels"] == 3
    assert rgb.train_x.dtype == torch.uint8  # pixels are kept raw, 4x smaller; models standardise them
    assert torch.allclose(rgb.model_view(rgb.train_x).mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)  # train-stats
    fixed = DataConfig(dataset="imagefolder", root=root, image_size=SIZE, normalize={"mean": [0.5], "std": [0.25]})
    gray = load_dataset(fixed, tmp_path / "c")
    pixels, _ = own_inputs(root, "train")
    assert torch.allclose(gray.model_view(gray.train_x), (pixels - 0.5) / 0.25, atol=1e-5)
    assert gray.preprocess == {
        "inputs": "image",
        "scale": 1 / 255,
        "mean": [0.5],
        "std": [0.25],
        "channels": 1,
        "size": SIZE,
        "classes": list(CLASSES),
    }
    wrong = DataConfig(dataset="imagefolder", root=root, channels=1, normalize={"mean": [0.1, 0.2, 0.3], "std": [1]})
    with pytest.raises(ConfigError, match=r"^data.normalize: mean has 3 values but the images have 1 channel"):
        load_dataset(wrong, tmp_path / "c")


def test_a_sweep_says_what_its_image_inputs_are(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = gray_folder(tmp_path / "shapes")
    preflight(validate_config(image_config(tmp_path, cache_dir, root, normalize="none")))
    assert capsys.readouterr().out == (
        "data: images in as 1 x 8 x 8, pixels in [0, 1] (data.channels, data.normalize: a checkpoint must have "
        "been trained on the same)\n"
    )
    preflight(validate_config(image_config(tmp_path, cache_dir, root, channels=3)))
    assert "data: images in as 3 x 8 x 8, (pixels in [0, 1] - mean [" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channels": 2}, "data.channels"),
        ({"normalize": "imagenet"}, "data.normalize"),
        ({"normalize": {"mean": [0.5], "std": [0.0]}}, "std holds 0; allowed: positive numbers"),
    ],
)
def test_bad_preprocessing_is_one_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        validate_config({"data": {"dataset": "imagefolder", "root": ".", **data}, "methods": [{"name": "ce"}]})
    assert "\n" not in str(caught.value)


def test_predict_applies_the_students_preprocessing_to_image_files(tmp_path: Path) -> None:
    root = gray_folder(tmp_path / "shapes", train=4, test=2)
    data = load_dataset(DataConfig(dataset="imagefolder", root=root, image_size=4, channels=3), tmp_path / "c")
    torch.manual_seed(0)
    spec = ModelSpec(name="cnn2d", width=4)
    model = build_model(spec, data.input_shape, data.num_classes).eval()
    path = save_student(tmp_path / "student.pt", model, spec, data)
    assert read_student(path)["preprocess"] == data.preprocess
    files = sorted((root / "test").glob("*/*.png"))
    expected = model(data.model_view(data.test_x)).detach()
    assert torch.equal(raykd.predict(path, files), expected)  # files: decoded, resized, standardised as in training
    student = raykd.load_student(path)
    assert torch.equal(raykd.predict(student, [Image.open(f) for f in files]), expected)
    raw = np.stack([np.asarray(Image.open(f).convert("RGB").resize((4, 4), Image.Resampling.BILINEAR)) for f in files])
    assert torch.allclose(raykd.predict(student, raw.transpose(0, 3, 1, 2)), expected)  # raw 0..255 pixels
    with pytest.raises(ConfigError, match=r"raykd.predict: inputs of shape \(2, 4, 4\); allowed: \(3, 4, 4\)"):
        raykd.predict(student, np.zeros((2, 4, 4)))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=r"^raykd.predict: inputs: cannot read image .*broken.png"):
        raykd.predict(student, [tmp_path / "broken.png"])


def test_predict_on_array_datasets_uses_the_raw_values(tmp_path: Path, cache_dir: Path) -> None:
    data = load_dataset(DataConfig(dataset="digits"), cache_dir)
    from sklearn.datasets import load_digits

    spec = ModelSpec(name="mlp", width=8)
    model = build_model(spec, data.input_shape, data.num_classes).eval()
    path = save_student(tmp_path / "digits.pt", model, spec, data)
    images = load_digits().images[:5]  # raw 0..16 values, as scikit-learn ships them
    expected = model(torch.as_tensor(images / 16.0, dtype=torch.float32)[:, None]).detach()
    assert torch.allclose(raykd.predict(path, images[:, None]), expected)
    assert torch.allclose(raykd.predict(path, images[0][None]), expected[:1])  # one sample
    with pytest.raises(ConfigError, match="this student takes arrays"):
        raykd.predict(path, [tmp_path / "x.png"])
