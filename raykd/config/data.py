"""The ``data`` section: which dataset (and task), where it is read from, and how it is split.

Rules that need no data live here; those that need the loaded data run in ``raykd.data.check_dataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from raykd.config.base import Section
from raykd.references import is_reference

#: Datasets read from ``data.root``, and what the path must be.
DATASET_ROOTS = {
    "cifar10": "a local folder",
    "cifar100": "a local folder",
    "npz": "a .npz file",
    "imagefolder": "a folder",
    "text": "a .txt file or a folder of them",
}
#: Datasets of each ``data.task`` (a ``package.module:function`` may serve either).
TASK_DATASETS = {
    "classify": ("digits", "mnist1d", "mnist", "fake", "cifar10", "cifar100", "npz", "imagefolder"),
    "lm": ("pydoc", "text"),
}
#: Samples per class a 'fake' dataset needs on average: its labels are random, and splits are stratified.
FAKE_SAMPLES_PER_CLASS = 20
DatasetName = Literal[
    "digits", "mnist1d", "mnist", "fake", "cifar10", "cifar100", "npz", "imagefolder", "pydoc", "text"
]


class AugmentSpec(Section):
    """One train-time image transform of ``data.augment`` (a bare name means its defaults)."""

    name: Literal["random_crop", "horizontal_flip"] = Field(
        description="random_crop: zero-pad then crop back to size at a random offset; horizontal_flip: p=0.5"
    )
    padding: int = Field(4, ge=1, description="random_crop: pixels of zero padding on each side")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class Normalize(Section):
    """Explicit per-channel statistics: an input becomes (pixel / 255 - mean) / std."""

    mean: list[float] = Field(min_length=1, description="one value per channel (or one for all)")
    std: list[float] = Field(min_length=1, description="one positive value per channel (or one for all)")

    @field_validator("std")
    @classmethod
    def _positive(cls, std: list[float]) -> list[float]:
        if min(std) <= 0:
            raise ValueError(f"std holds {min(std):g}; allowed: positive numbers")
        return std


class DataConfig(Section):
    task: Literal["classify", "lm"] = Field(
        "classify", description="classify: one label per sample; lm: next-token prediction on text (a token is a row)"
    )
    dataset: str = Field(
        "mnist1d",
        description="classify: digits, mnist1d, mnist, fake; from data.root: cifar10, cifar100, npz, imagefolder; "
        "lm: pydoc (embedded, the default for lm), text (data.root); or 'package.module:function' (arrays x, y, "
        "x_test, y_test; lm: a list of documents or {topic: documents})",
    )
    root: Path | None = Field(
        None, description="CIFAR folder, .npz file (x, y, x_test, y_test), image folder, or (text) .txt file/folder"
    )
    seq_len: int = Field(64, ge=2, le=8192, description="lm: tokens per training sequence (the model's context)")
    tokenizer: str = Field(
        "byte",
        description="lm: byte (UTF-8 bytes, vocab 257), bpe (trained on the training text), a pre-trained model's "
        "own (hf:FOLDER, gguf:FILE, gguf:smollm2), or a tokenizer.json file/folder",
    )
    vocab_size: int = Field(1024, ge=260, le=65536, description="lm, tokenizer bpe: vocabulary size to train")
    doc_chars: int = Field(2000, ge=100, description="lm: long texts are cut at paragraphs into documents this long")
    max_documents: int | None = Field(
        None,
        ge=10,
        description="lm: keep a fixed (seed 0) sample of this many documents (a smaller corpus); unset: all",
    )
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of a 'package.module:function' dataset")
    image_size: int = Field(32, ge=1, description="imagefolder: images are resized to image_size x image_size")
    channels: Literal[1, 3, "keep"] = Field(
        "keep",
        description="imagefolder: 1 (grayscale), 3 (RGB) or keep (1 when every image is grayscale, else 3)",
    )
    normalize: Normalize | Literal["train-stats", "none"] = Field(
        "train-stats",
        description="imagefolder: train-stats (each channel's mean/std over the training images), none (pixels in "
        "[0,1], as torchvision's ToTensor gives), or {mean: [...], std: [...]}; student files carry it",
    )
    augment: list[AugmentSpec] = Field(
        [], description="train-time image transforms: random_crop (padding, default 4), horizontal_flip"
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="global validation split held out of train")
    pool_fraction: float = Field(0.25, ge=0, lt=0.9, description="unlabelled shared pool set aside before partitioning")
    fake_samples: int = Field(1000, ge=100, description="training samples of the 'fake' dataset")
    fake_classes: int = Field(10, ge=2, description="classes of the 'fake' dataset")

    @model_validator(mode="before")
    @classmethod
    def _lm_default_dataset(cls, value: Any) -> Any:
        """Text tasks read the embedded pydoc corpus unless a dataset is named."""
        if isinstance(value, dict) and value.get("task") == "lm" and "dataset" not in value:
            return {**value, "dataset": "pydoc"}
        return value

    def __hash__(self) -> int:  # kwargs and augment are mutable containers; the loaded dataset is cached by config
        return hash(self.model_dump_json())

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize_choice(cls, value: Any) -> Any:
        """A misspelt choice is named with every allowed one (a mapping is checked as ``Normalize``)."""
        if isinstance(value, str) and value not in ("train-stats", "none"):
            raise ValueError(f"{value!r} is not a choice; allowed: train-stats, none, or {{mean: [...], std: [...]}}")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in get_args(DatasetName) and not is_reference(name):
            allowed = ", ".join(repr(n) for n in get_args(DatasetName))
            raise ValueError(f"Input should be {allowed} or a reference 'package.module:function'")
        return name

    @model_validator(mode="after")
    def _room_to_split(self) -> DataConfig:
        if not is_reference(self.dataset) and self.dataset not in TASK_DATASETS[self.task]:
            allowed = ", ".join(TASK_DATASETS[self.task])
            raise ValueError(
                f"data.dataset: {self.dataset} is not a data.task={self.task} dataset; allowed: {allowed}, "
                "or package.module:function"
            )
        if self.val_fraction + self.pool_fraction >= 1:
            raise ValueError(
                f"data.pool_fraction: {self.pool_fraction:g} with data.val_fraction {self.val_fraction:g} leaves "
                "nothing to partition; allowed: val_fraction + pool_fraction < 1"
            )
        fits = self.fake_samples // FAKE_SAMPLES_PER_CLASS
        if self.dataset == "fake" and self.fake_classes > fits:
            raise ValueError(
                f"data.fake_classes: {self.fake_classes} classes are too many to stratify {self.fake_samples} random "
                f"samples; allowed: at most {fits} ({FAKE_SAMPLES_PER_CLASS} per class) or more data.fake_samples"
            )
        return self
