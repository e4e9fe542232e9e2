"""Model registry: small models for embedded data, CIFAR ResNets, any torchvision classifier, a small GPT for
text, user callables.

Every builder takes the dataset's per-sample input shape and class count, so teacher and student
may be different architectures on the same data. ``build_model`` is the one place a model is made:
it checks the name, the input rank and the output shape, so every caller gets the same one-line errors.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import nn

from raykd.config import ModelSpec
from raykd.data.preprocess import Standardise
from raykd.errors import ConfigError
from raykd.files import last_line
from raykd.lm.hf import is_pretrained, load_causal_lm
from raykd.references import is_reference, resolve

InputShape = tuple[int, ...]
Builder = Callable[..., nn.Module]  # (input shape, classes, width, depth, **kwargs) -> model


def _flat_size(features: nn.Module, shape: InputShape) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *shape)).numel()


def mlp(shape: InputShape, classes: int, width: int | None, depth: int | None) -> nn.Module:
    """Fully connected ReLU network; the MNIST-1D reference MLP is width 100, depth 2."""
    width, depth = width or 100, depth or 2
    layers: list[nn.Module] = [nn.Flatten()]
    size = int(torch.tensor(shape).prod())
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, classes))


def cnn1d(shape: InputShape, classes: int, width: int | None, depth: int | None) -> nn.Module:
    """The MNIST-1D reference CNN: three strided 1-D convolutions (25 channels, about 5k weights)."""
    width = width or 25
    features = nn.Sequential(
        nn.Conv1d(shape[0], width, 5, stride=2, padding=1),
        nn.ReLU(),
        *[m for _ in range((depth or 3) - 1) for m in (nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU())],
        nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(_flat_size(features, shape), classes))


def cnn2d(shape: InputShape, classes: int, width: int | None, depth: int | None) -> nn.Module:
    """A small image CNN: conv-BN-ReLU-pool blocks doubling the width, then global average pooling."""
    width, blocks = width or 32, depth or 2
    layers: list[nn.Module] = []
    channels = shape[0]
    for block in range(blocks):
        out = width * 2**block
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if min(shape[1:]) // 2 ** (block + 1) >= 2 else []
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def resnet(shape: InputShape, classes: int, width: int | None, depth: int | None) -> nn.Module:
    """CIFAR ResNet (He et al. 2016): depth 6n+2, three stages of torchvision BasicBlocks."""
    from torchvision.models.resnet import BasicBlock  # torchvision takes 2-3 s to import: only for the models it makes

    width, depth = width or 16, depth or 20
    if (depth - 2) % 6:
        raise ConfigError(f"model depth: ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110); got {depth}")
    per_stage = (depth - 2) // 6
    layers: list[nn.Module] = [
        nn.Conv2d(shape[0], width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    channels = width
    for stage in range(3):
        out, stride = width * 2**stage, 1 if stage == 0 else 2
        for i in range(per_stage):
            s = stride if i == 0 else 1
            down = None
            if s != 1 or channels != out:
                down = nn.Sequential(nn.Conv2d(channels, out, 1, stride=s, bias=False), nn.BatchNorm2d(out))
            layers.append(BasicBlock(channels, out, stride=s, downsample=down))
            channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def gpt(shape: InputShape, vocab: int, width: int | None, depth: int | None, **kwargs: Any) -> nn.Module:
    """A small decoder-only transformer (``raykd.lm.gpt``); ``kwargs`` may set ``heads`` (default 4)."""
    from raykd.lm.gpt import gpt as build

    return build(shape, vocab, width, depth, **kwargs)


#: Registry: name -> (builder, input rank it needs: 2 for (C, L) signals, 3 for (C, H, W) images, None any;
#: TOKENS for token ids (seq_len,), a language model's input)
TOKENS = "tokens"
REGISTRY: dict[str, tuple[Builder, int | str | None]] = {
    "mlp": (mlp, None),
    "cnn1d": (cnn1d, 2),
    "cnn2d": (cnn2d, 3),
    "resnet": (resnet, 3),
    "gpt": (gpt, TOKENS),
}
#: Registry models that take keyword arguments (``kwargs`` in the YAML), and which.
KWARGS = {"gpt": ("heads",)}


@cache
def model_names() -> list[str]:
    """Registry names first, then torchvision's classification models (built without weights)."""
    import torchvision

    return list(REGISTRY) + sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(
    spec: ModelSpec,
    shape: InputShape,
    classes: int,
    field: str = "nodes.model",
    tokens: bool = False,
    pixels: dict[str, Any] | None = None,
) -> nn.Module:
    """Build ``spec`` for inputs of ``shape`` and check it on a dummy batch; any problem is a ConfigError on ``field``.

    ``tokens``: the inputs are token ids of shape (seq_len,) and the model a language model whose logits are
    (batch, seq_len, classes). ``pixels`` (``Dataset.pixels``): the data is uint8 pixels and the model standardises
    them itself by this record, on its own device (float inputs pass as they are). Only the architecture: weights
    named by ``checkpoint``/``init`` are loaded by raykd.nodes.
    """
    if is_pretrained(spec.name):
        model = _pretrained_model(spec, field, tokens)
    elif is_reference(spec.name):
        model = _user_model(spec, shape, classes, field)
    elif spec.name in REGISTRY:
        model = _registry_model(spec, shape, classes, field, tokens)
    elif tokens:
        raise ConfigError(
            f"{field}.name = {spec.name!r}: not a language model; allowed for data.task lm: "
            f"{', '.join(n for n, (_, r) in REGISTRY.items() if r == TOKENS)}, or package.module:callable"
        )
    elif spec.name in model_names():
        _check_rank(spec.name, 3, shape, field)
        import torchvision

        model = torchvision.models.get_model(spec.name, weights=None, num_classes=classes, **spec.kwargs)
    else:
        raise ConfigError(
            f"{field}.name = {spec.name!r}: unknown model {spec.name!r}; allowed: {', '.join(REGISTRY)}, "
            "a torchvision model name, package.module:callable, or (text) hf:FOLDER / gguf:FILE"
        )
    _check_output(model, spec.name, shape, classes, field, tokens)
    if pixels is not None:
        model.register_forward_pre_hook(Standardise(pixels).hook)
    return model


def _check_rank(name: str, rank: int | str | None, shape: InputShape, field: str, tokens: bool = False) -> None:
    fits = [n for n, (_, r) in REGISTRY.items() if (r == TOKENS) == tokens and r in (None, TOKENS, len(shape))]
    if (rank == TOKENS) != tokens or (rank not in (None, TOKENS) and len(shape) != rank):
        kind = {2: "1-D signals (C, L)", 3: "images (C, H, W)", None: "features", TOKENS: "text (data.task lm)"}[rank]
        has = "text tokens (data.task lm)" if tokens else f"shape {shape}"
        raise ConfigError(f"{field}: model {name!r} needs {kind} but the data has {has}; allowed: {', '.join(fits)}")


def _registry_model(spec: ModelSpec, shape: InputShape, classes: int, field: str, tokens: bool) -> nn.Module:
    builder, rank = REGISTRY[spec.name]
    _check_rank(spec.name, rank, shape, field, tokens)
    takes = KWARGS.get(spec.name, ())
    extra = next((k for k in spec.kwargs if k not in takes), None)
    if extra is not None and not takes:
        raise ConfigError(f"{field}.kwargs: registry model {spec.name!r} takes width and depth, not kwargs")
    if extra is not None:
        allowed = ", ".join(takes)
        raise ConfigError(f"{field}.kwargs.{extra}: model {spec.name!r} takes no {extra!r}; allowed: {allowed}")
    try:
        return builder(shape, classes, spec.width, spec.depth, **spec.kwargs)
    except ValueError as err:
        raise ConfigError(f"{field}: {spec.name!r}: {err}") from None


def _pretrained_model(spec: ModelSpec, field: str, tokens: bool) -> nn.Module:
    """A pre-trained causal LM from local files (``raykd.lm.hf``): text only, and its architecture is its own."""
    if not tokens:
        raise ConfigError(f"{field}.name = {spec.name!r}: a language model; allowed with data.task lm only")
    if spec.width is not None or spec.depth is not None or spec.kwargs:
        raise ConfigError(f"{field}: {spec.name!r} is pre-trained; its architecture is its own (no width/depth/kwargs)")
    return load_causal_lm(spec.name, f"{field}.name")


def _user_model(spec: ModelSpec, shape: InputShape, classes: int, field: str) -> nn.Module:
    """Call the user's ``package.module:callable`` with the data's shape, the class count and ``kwargs``."""
    if spec.width is not None or spec.depth is not None:
        raise ConfigError(f"{field}: width/depth are for registry models; pass {spec.name!r} its arguments in kwargs")
    build = resolve(spec.name, f"{field}.name")
    try:
        model = build(num_classes=classes, input_shape=tuple(shape), **spec.kwargs)
    except Exception as err:  # noqa: BLE001 - user code may fail in any way; report it in one line
        raise ConfigError(f"{field}: {spec.name!r} raised {_one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{field}: {spec.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _one_line(err: Exception) -> str:
    return last_line(f"{type(err).__name__}: {err}")


def _check_output(model: nn.Module, name: str, shape: InputShape, classes: int, field: str, tokens: bool) -> None:
    """One forward pass on a batch of 2 (eval mode, no grad): logits must be (2, classes), or for token inputs
    (2, seq_len, classes)."""
    training = model.training
    model.eval()
    expected = (2, *shape, classes) if tokens else (2, classes)
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape, dtype=torch.int64 if tokens else torch.float32))
    except Exception as err:  # noqa: BLE001 - any failure on the data's shape is the model's, in one line
        raise ConfigError(
            f"{field}: model {name!r} fails on a batch of shape {(2, *shape)}: {_one_line(err)}"
        ) from None
    finally:
        model.train(training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        raise ConfigError(f"{field}: model {name!r} gave output {got} for a batch of 2; expected {expected} logits")
