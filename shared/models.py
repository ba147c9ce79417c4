"""One registry of architectures by name; every model takes [0, 1] images and normalizes itself.

`create_model(arch, num_classes)` returns a `Classifier`: normalization buffers, a `body` that
gives penultimate features, and a linear `head`. Small from-scratch nets follow the victims of
Atli et al. (a 5-layer and a 9-layer CNN for 32x32 inputs); torchvision models are adapted to the
number of classes and can start from ImageNet weights or a local file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from shared.errors import TestbedError, UnknownNameError
from shared.safeload import load_weights_only

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """normalize -> body (features) -> head (logits)."""

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
    ) -> None:
        super().__init__()
        self.body, self.head = body, head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_bn(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _cnn5_body(width: int = 32) -> tuple[nn.Module, int]:
    """Three conv blocks and one hidden dense layer: the '5L' victim of Atli et al."""
    body = nn.Sequential(
        _conv_bn(3, width, pool=True),
        _conv_bn(width, 2 * width, pool=True),
        _conv_bn(2 * width, 4 * width, pool=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * width, 256),
        nn.ReLU(inplace=True),
    )
    return body, 256


def _cnn9_body(width: int = 32) -> tuple[nn.Module, int]:
    """A ResNet-9-style net (8 conv layers + the linear head): the '9L' victim, and fast on CPU."""
    body = nn.Sequential(
        _conv_bn(3, width),
        _conv_bn(width, 2 * width, pool=True),
        _Residual(2 * width),
        _conv_bn(2 * width, 4 * width, pool=True),
        _conv_bn(4 * width, 8 * width, pool=True),
        _Residual(8 * width),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )
    return body, 8 * width


def _split_torchvision(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Take the last linear layer off a torchvision classifier: (body, old head)."""
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        head, model.fc = model.fc, nn.Identity()
        return model, head
    classifier = model.classifier
    head = classifier[-1]
    classifier[-1] = nn.Identity()
    return model, head


class ArchSpec:
    def __init__(self, name: str, build: Callable[[], tuple[nn.Module, int]] | None, tv: bool):
        self.name, self.build, self.torchvision = name, build, tv


_ARCHS: dict[str, ArchSpec] = {
    "cnn5": ArchSpec("cnn5", _cnn5_body, tv=False),
    "cnn9": ArchSpec("cnn9", lambda: _cnn9_body(16), tv=False),
    "cnn9-wide": ArchSpec("cnn9-wide", lambda: _cnn9_body(32), tv=False),
}
for _tv in (
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg16_bn",
    "mobilenet_v3_small",
    "efficientnet_b0",
):
    _ARCHS[_tv] = ArchSpec(_tv, None, tv=True)


def arch_names() -> list[str]:
    return sorted(_ARCHS)


def check_arch(arch: str) -> None:
    """Refuse an unknown architecture by name, before any data is read or any model is built."""
    if arch not in _ARCHS:
        raise UnknownNameError("architecture", arch, arch_names())


def create_model(
    arch: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Build `arch` with a `num_classes` head.

    `weights`: None (random init), "imagenet" (torchvision's weights API; needs them cached or
    the internet), or a path to a torchvision state dict or to one of our checkpoints of the
    same architecture (all but the head is loaded, with the checkpoint's normalization).
    Weights that do not fit the architecture are refused, never silently skipped.
    """
    check_arch(arch)
    spec = _ARCHS[arch]
    ours = None
    if weights not in (None, "imagenet"):
        state = _load_state(weights)
        ours = _our_checkpoint(state, arch, weights)
        if ours is None and not spec.torchvision:
            raise TestbedError(
                f"{weights} is not one of this project's checkpoints, and {arch} can start "
                f"only from one of those (a torchvision state dict fits torchvision archs)"
            )
    if spec.torchvision:
        import torchvision

        tv_weights = None
        if weights == "imagenet":
            tv_weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            net = torchvision.models.get_model(arch, weights=tv_weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise TestbedError(
                f"could not load ImageNet weights for {arch} ({exc}). Offline, place the file "
                f"in torch's hub cache ($TORCH_HOME/hub/checkpoints) or pass a local file."
            ) from None
        if weights not in (None, "imagenet") and ours is None:
            _load_fitting(net, state, f"{weights} does not fit {arch}")
        body, old_head = _split_torchvision(net)
        head = nn.Linear(old_head.in_features, num_classes)
    else:
        if weights == "imagenet":
            raise TestbedError(f"{arch} has no ImageNet weights; use a torchvision architecture")
        body, dim = spec.build()
        head = nn.Linear(dim, num_classes)
    if ours is not None:  # the body learned under the checkpoint's normalization: keep it
        mean, std = mean or ours["card"]["mean"], std or ours["card"]["std"]
    elif weights is not None:
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    model = Classifier(body, head, mean or (0.5, 0.5, 0.5), std or (0.25, 0.25, 0.25))
    if ours is not None:
        body_state = {
            k.removeprefix("body."): v
            for k, v in ours["state_dict"].items()
            if k.startswith("body.")
        }
        _load_fitting(
            model.body, body_state, f"{weights} (a {arch} checkpoint) does not fit {arch}"
        )
    return model


def _our_checkpoint(state: object, arch: str, path: str | Path) -> dict | None:
    """The payload when `state` is one of our checkpoints of `arch`; None for other files."""
    if not (isinstance(state, dict) and "state_dict" in state and "card" in state):
        return None
    card = state["card"] if isinstance(state["card"], dict) else {}
    if card.get("arch") != arch:
        raise TestbedError(
            f"{path} is a {card.get('arch', 'unknown')} checkpoint; a {arch} cannot start "
            f"from it (pass --arch {card.get('arch')} or another file)"
        )
    return state


def _load_fitting(module: nn.Module, state: object, message: str) -> None:
    """Load `state` strictly: every tensor present with its shape, nothing extra."""
    if not isinstance(state, dict):
        raise TestbedError(f"{message}: not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise TestbedError(f"{message}: {detail[:300]}") from None


def _load_state(path: str | Path) -> dict:
    return load_weights_only(path, "weights file")
