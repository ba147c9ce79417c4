"""Frozen backbones for the OOD filter, and their features computed once and cached on disk.

A backbone is always a `Classifier` (normalization + body + head) whose penultimate features
feed the filter's logistic regression. Spec strings say where it comes from:

- `victim:<checkpoint>`: the victim's own penultimate features (the owner has the victim);
- `torchvision:<arch>`: ImageNet weights through torchvision's weights API (the paper's choice;
  needs the weights file in torch's hub cache when offline);
- `torchvision:<arch>:<file>`: the same with weights from a local file (the user's own copy);
- `scratch:<arch>`: a small net trained from scratch on the in/out binary task (the paper's
  RN18/RN34-from-scratch rows); it learns whatever separates the two sources, artefacts
  included;
- `defender:<arch>`: a net the defender pretrains from scratch on data it owns, supervised on
  the in-distribution's classes together with the out-distribution's own classes (for CIFAR-10:
  its 10 classes + tiny-imagenet-defender's 200), every image randomly re-encoded
  (`shared.transforms.random_encoding`), optionally at a smaller side than the victim's (a
  low-pass: `train_ood(backbone_size=...)`). It stands in for the paper's ImageNet backbone,
  which cannot be downloaded here, and never sees the attacker's pool.

A backbone travels as a plain dict (`arch`, `num_classes`, `mean`, `std`, `state_dict`, ...) so
the filter artefact is self-contained and loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from defense import cache
from shared.checkpoint import load_checkpoint
from shared.device import autocast
from shared.errors import TestbedError
from shared.models import IMAGENET_MEAN, IMAGENET_STD, Classifier, create_model
from shared.tracing import traced_features
from shared.training import LossFn, TrainConfig, fit, to_tensor

BACKBONE_KINDS = ("victim", "torchvision", "scratch", "defender")


def parse_spec(spec: str) -> tuple[str, str]:
    """'kind:value' -> (kind, value), with a clear error for anything else."""
    kind, sep, value = spec.partition(":")
    if not sep or kind not in BACKBONE_KINDS or not value:
        raise TestbedError(
            f"backbone {spec!r} is not understood; use victim:<checkpoint>, "
            "torchvision:<arch>[:<weights file>] (e.g. torchvision:resnet18), scratch:<arch> "
            "(e.g. scratch:cnn9) or defender:<arch> (e.g. defender:cnn9)"
        )
    return kind, value


def fingerprint(model: torch.nn.Module) -> str:
    """A content hash of a model's weights: names the feature cache and matches the victim."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


@dataclass
class Backbone:
    """A frozen feature extractor: images in [0, 1] at any size -> (B, D) features."""

    model: Classifier
    spec: str
    input_size: int
    """The side the backbone sees; inputs of another size are resized (bilinear) first."""
    arch: str = ""

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.fingerprint = fingerprint(self.model)
        self._features: Callable[[torch.Tensor], torch.Tensor] = self.model.features

    def trace(self) -> bool:
        """Serve `features` as a verified TorchScript trace on a CPU (`shared.tracing`: no GIL
        hand-offs between operators while the service's threads share it); False where it does
        not apply and the eager model stays."""
        traced = traced_features(self.model, self.input_size, self.device, amp=False)
        self._features = traced or self.model.features
        return traced is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
        """Features (float32, CPU) of a float [0, 1] batch (B, 3, H, W)."""
        x = x.to(self.device, dtype=torch.float32)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self._features is not self.model.features and not amp:  # the trace's layout
            return self._features(x.contiguous(memory_format=torch.channels_last)).float().cpu()
        with autocast(self.device, amp):
            return self.model.features(x.contiguous()).float().cpu()

    def to_dict(self) -> dict:
        model = self.model
        return {
            "spec": self.spec,
            "arch": self.arch,
            "num_classes": model.num_classes,
            "mean": [float(v) for v in model.mean.flatten()],
            "std": [float(v) for v in model.std.flatten()],
            "input_size": self.input_size,
            "fingerprint": self.fingerprint,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }

    @classmethod
    def from_dict(cls, data: dict, device: torch.device | str = "cpu") -> Backbone:
        model = create_model(
            data["arch"], int(data["num_classes"]), mean=data["mean"], std=data["std"]
        )
        model.load_state_dict(data["state_dict"])
        return cls(model.to(device), data["spec"], int(data["input_size"]), arch=data["arch"])


def victim_backbone(path: str | Path, device: torch.device | str = "cpu") -> Backbone:
    model, card = load_checkpoint(path, device)
    return Backbone(model, f"victim:{path}", card.input_size, arch=card.arch)


def torchvision_backbone(
    arch: str, input_size: int = 224, device: torch.device | str = "cpu"
) -> Backbone:
    """ImageNet-pretrained torchvision net, `arch` or `arch:<weights file>`.

    Without a file the weights come through torchvision's weights API (TestbedError from
    create_model when offline and not in the hub cache); with one, from that local state dict.
    """
    name, _, weights_file = arch.partition(":")
    weights = weights_file or "imagenet"
    model = create_model(name, 1000, weights=weights, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(model.to(device), f"torchvision:{arch}", input_size, arch=name)


def _trained_backbone(
    kind: str,
    arch: str,
    x_in: np.ndarray,
    x_out: np.ndarray,
    y: torch.Tensor,
    loss_fn: LossFn,
    settings: dict,
    device: torch.device,
    description: str,
    side: int | None = None,
) -> Backbone:
    """Train `arch` from scratch on in-then-out images and labels `y`; its body is the backbone.

    With `side` below the images' own, the net is trained and served at that side: every
    input is first scaled down the way `Backbone.embed` does it, a low-pass that leaves the
    fine pixel structure (JPEG blocks, resampling traces) mostly out of what the net can see.
    """
    x = to_tensor(np.concatenate([x_in, x_out]))
    side = side or x_in.shape[1]
    if side != x_in.shape[1]:
        x = torch.cat([_scaled(x[s : s + 4096], side) for s in range(0, len(x), 4096)])
    torch.manual_seed(settings["seed"])  # the initial weights too, as the victim's
    model = create_model(arch, int(y.max()) + 1)
    config = TrainConfig(**settings, pad=max(1, side // 8), flip=True, description=description)
    fit(model, x, y, loss_fn, config, device)
    return Backbone(model.eval(), f"{kind}:{arch}", side, arch=arch)


def _scaled(x: torch.Tensor, side: int) -> torch.Tensor:
    """A uint8 batch scaled to `side` with `Backbone.embed`'s own interpolation."""
    size = (side, side)
    out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def scratch_backbone(
    arch: str,
    x_in: np.ndarray,
    x_out: np.ndarray,
    *,
    epochs: int = 6,
    batch_size: int = 256,
    lr: float = 0.1,
    seed: int = 0,
    side: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Backbone:
    """Train `arch` from scratch to tell in (0) from out (1); its body becomes the backbone.

    The classes are weighted by inverse frequency so the net does not learn the prior.
    """
    device = torch.device(device)
    y = torch.cat([torch.zeros(len(x_in)), torch.ones(len(x_out))]).long()
    weight = torch.tensor([len(y) / (2 * len(x_in)), len(y) / (2 * len(x_out))], device=device)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=weight)

    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                "progress": progress}  # fmt: skip
    return _trained_backbone(
        "scratch", arch, x_in, x_out, y, loss_fn, settings, device, f"scratch {arch} in/out",
        side,
    )  # fmt: skip


def defender_backbone(
    arch: str,
    x_in: np.ndarray,
    y_in: np.ndarray,
    x_out: np.ndarray,
    y_out: np.ndarray,
    *,
    in_classes: int | None = None,
    epochs: int = 4,
    batch_size: int = 256,
    lr: float = 0.2,
    seed: int = 0,
    side: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Backbone:
    """Supervised pretraining on the defender's own data: in-classes, then out-classes.

    `x_in`/`x_out` are already at the filter's side (and randomly encoded by the caller, one
    or more copies per image); labels are the two datasets' own classes, the out-dataset's
    shifted after the in-dataset's `in_classes`. The net learns what the images show, not
    where they come from: both sources are re-encoded the same random ways.
    """
    n_in = in_classes or int(y_in.max()) + 1
    y = torch.from_numpy(np.concatenate([y_in, y_out + n_in]).astype(np.int64))
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                "progress": progress}  # fmt: skip
    return _trained_backbone(
        "defender", arch, x_in, x_out, y, F.cross_entropy, settings, torch.device(device),
        f"defender {arch} pretraining", side,
    )  # fmt: skip


def embed_arrays(
    backbone: Backbone,
    images: np.ndarray,
    batch_size: int = 512,
    amp: bool = False,
    progress: bool = True,
    description: str = "features",
) -> np.ndarray:
    """Features of a uint8 (N, H, W, 3) array, in batches: (N, D) float32."""
    out = []
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc=description, disable=not progress, leave=False):
        xb = to_tensor(images[s : s + batch_size]).float().div_(255)
        out.append(backbone.embed(xb, amp=amp).numpy())
    if not out:
        return np.empty((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def cached_features(
    backbone: Backbone,
    key: str,
    images: np.ndarray,
    batch_size: int = 512,
    progress: bool = True,
) -> np.ndarray:
    """`embed_arrays`, cached under the cache dir by (images, backbone weights, code).

    `key` labels the file for a reader (dataset, split, size, selection); the images' own digest
    and the backbone's fingerprint name what it holds, so neither other images under the same
    label nor a retrained backbone ever reuses stale features.
    """
    return cache.cached_array(
        "features", key, images, f"{backbone.fingerprint}-{backbone.input_size}",
        lambda: embed_arrays(backbone, images, batch_size, progress=progress, description=key),
    )  # fmt: skip
