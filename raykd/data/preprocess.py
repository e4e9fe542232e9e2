"""How a model's inputs are made from raw data: one plain dict that every student file carries.

A model is only usable with the transform its training inputs went through, so the transform is data, not
code: ``{"inputs": "image" | "array", "scale": s, "mean": [...], "std": [...]}`` turns a raw value ``r``
into ``(r * s - mean) / std`` per channel (dimension 1); an image record adds ``channels`` and ``size``
(how a file is decoded) and ``classes`` (the folder names, in label order). Training and
``raykd.predict`` both go through ``standardise``, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from raykd.config.data import Normalize
from raykd.errors import ConfigError

#: Raw inputs used as they are (an .npz, a user's callable, MNIST-1D): the model sees what the user gave.
IDENTITY: dict[str, Any] = {"inputs": "array", "scale": 1.0, "mean": [0.0], "std": [1.0]}
#: A language model's inputs are token ids: its tokenizer (in the student file) makes them, not a transform.
TOKENS: dict[str, Any] = {"inputs": "tokens"}
#: PIL modes that hold one channel: a folder of only these is grayscale (``data.channels: keep``).
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
PIXEL_SCALE = 1 / 255


def array_record(scale: float, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The record of a dataset whose raw inputs are arrays (``mean``/``std`` per channel, or one for all)."""
    return {"inputs": "array", "scale": float(scale), "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def image_record(
    channels: int, size: int, mean: Sequence[float], std: Sequence[float], classes: list[str]
) -> dict[str, Any]:
    """The record of an image folder: decode to ``channels`` x ``size`` x ``size`` pixels 0..255, then standardise."""
    record = array_record(PIXEL_SCALE, mean, std)
    return {**record, "inputs": "image", "channels": channels, "size": size, "classes": classes}


def _open(item: Path | Image.Image, field: str) -> Image.Image:
    """An image to read (a file is opened lazily: only its header so far); an unreadable file is one line."""
    try:
        return item if isinstance(item, Image.Image) else Image.open(item)
    except (OSError, UnidentifiedImageError) as err:
        raise _unreadable(item, err, field) from None


def _unreadable(item: Path | Image.Image, err: Exception, field: str) -> ConfigError:
    return ConfigError(f"{field}: cannot read image {item} ({type(err).__name__}: {err})")


def folder_channels(paths: Sequence[Path]) -> int:
    """``data.channels: keep``: 1 when every image is grayscale, else 3 (colour, palette or alpha images)."""
    for path in paths:
        with _open(path, "data.root") as image:
            if image.mode not in GRAY_MODES:
                return 3
    return 1


def decode_images(
    images: Sequence[Path | Image.Image], channels: int, size: int, field: str = "data.root"
) -> np.ndarray:
    """Images as raw pixels 0..255, uint8 (N, channels, size, size): grayscale (``L``) or RGB, resized bilinearly."""
    mode = "L" if channels == 1 else "RGB"
    pixels = []
    for item in images:
        image = _open(item, field)
        try:
            pixels.append(np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)))
        except OSError as err:  # a truncated file fails only when its pixels are read
            raise _unreadable(item, err, field) from None
        finally:
            if image is not item:  # a file opened here; a caller's PIL image stays open
                image.close()
    stacked = np.stack(pixels).astype(np.uint8, copy=False)
    return stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2)


def statistics(raw: np.ndarray, normalize: str | Normalize) -> tuple[list[float], list[float]]:
    """Per-channel mean and std for ``data.normalize``, given the training images' raw pixels (N, C, H, W)."""
    channels = raw.shape[1]
    if normalize == "none":
        return [0.0] * channels, [1.0] * channels
    if normalize == "train-stats":
        scaled = raw.astype(np.float32) * PIXEL_SCALE  # float32 arithmetic, as the statistics always were
        return scaled.mean(axis=(0, 2, 3)).tolist(), (scaled.std(axis=(0, 2, 3)) + 1e-6).tolist()
    assert isinstance(normalize, Normalize)
    for name, values in (("mean", normalize.mean), ("std", normalize.std)):
        if len(values) not in (1, channels):
            raise ConfigError(
                f"data.normalize: {name} has {len(values)} values but the images have {channels} channel(s); "
                f"allowed: 1 or {channels} values (see data.channels)"
            )
    return list(normalize.mean), list(normalize.std)


class Standardise:
    """``(raw * scale - mean) / std`` per channel (dimension 1), as float32: what the model was trained on.

    Also a model's forward pre-hook (``raykd.models.build_model``'s ``pixels``): a dataset stored as uint8 pixels
    (4x smaller in memory, on a GPU and on the way to a teacher server) reaches the model raw and is standardised
    there, on the model's device, by the same arithmetic as a float input was; float inputs pass through as they are.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.scale = float(record["scale"])
        self.moments: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, raw: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(np.asarray(raw) if not isinstance(raw, Tensor) else raw, dtype=torch.float32)
        mean, std = self._moments(x.device)
        shape = (1, -1) + (1,) * (x.dim() - 2)  # inputs are (N, C, ...): every source's arrays, every batch
        return (x * self.scale - mean.reshape(shape)) / std.reshape(shape)

    def _moments(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Mean and std on ``device``, made there once (not a host-to-device copy per forward)."""
        if device not in self.moments:
            values = (torch.tensor(self.record[k], dtype=torch.float32, device=device) for k in ("mean", "std"))
            self.moments[device] = tuple(values)  # type: ignore[assignment]
        return self.moments[device]

    def __getstate__(self) -> dict[str, Any]:
        return {"record": self.record}  # device tensors stay where they were made

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["record"])  # type: ignore[misc]

    def hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """uint8 inputs standardised before ``module``'s forward; anything else untouched."""
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.dtype == torch.uint8:
            return (self(x), *args[1:])
        return None


def standardise(raw: np.ndarray | Tensor, record: dict[str, Any]) -> Tensor:
    """``raw`` as the model sees it under ``record`` (``Standardise``)."""
    return Standardise(record)(raw)


def describe(record: dict[str, Any]) -> str:
    """One line saying what an image-folder model's inputs are, printed as a sweep starts: a user's checkpoint
    trained on other inputs shows here, not as a silently low accuracy."""
    size = record["size"]
    unit = all(m == 0 for m in record["mean"]) and all(s == 1 for s in record["std"])
    numbers = {k: ", ".join(f"{v:.3g}" for v in record[k]) for k in ("mean", "std")}
    how = "pixels in [0, 1]" if unit else f"(pixels in [0, 1] - mean [{numbers['mean']}]) / std [{numbers['std']}]"
    return (
        f"data: images in as {record['channels']} x {size} x {size}, {how} (data.channels, data.normalize: a "
        "checkpoint must have been trained on the same)"
    )


def model_inputs(record: dict[str, Any], inputs: Any, input_shape: Sequence[int]) -> Tensor:
    """A batch the model takes, from raw ``inputs``: image files or PIL images (image records), or raw values
    (one sample of ``input_shape`` or a batch of them; 0..255 pixels for images)."""
    if record["inputs"] == "tokens":
        raise ConfigError("raykd.predict: student: a language model; continue text with raykd.generate(path, prompt)")
    if isinstance(inputs, (str, Path, Image.Image)):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], (str, Path, Image.Image)):
        if record["inputs"] != "image":
            raise ConfigError("raykd.predict: inputs are image files, but this student takes arrays; pass an array")
        images = [item if isinstance(item, Image.Image) else Path(item) for item in inputs]
        inputs = decode_images(images, record["channels"], record["size"], "raykd.predict: inputs")
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs)
    if tuple(x.shape) == tuple(input_shape):
        x = x[None]
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ConfigError(
            f"raykd.predict: inputs of shape {tuple(x.shape)}; allowed: {tuple(input_shape)} or (N, "
            f"{', '.join(map(str, input_shape))}), or image files for an image-folder student"
        )
    return standardise(x, record)
