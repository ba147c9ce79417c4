"""A TorchScript trace of a classifier's feature extractor, for serving on a CPU.

Eager PyTorch takes the GIL back between operators, and under bf16 autocast each operator also
pays for its casts in Python; a service whose event loop and model threads share one process
spends its cores waiting for the GIL. A trace runs the whole forward pass in C++ without it
(benchmarks/serve.py measures the difference: `VICTIM_TRACE=false` turns it off). The trace is
taken under the same autocast as serving and is used only when it gives the eager model's
features on a batch of another size; otherwise (or on a GPU) the eager model runs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

from shared.device import autocast
from shared.models import Classifier


class _Features(nn.Module):
    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def traced_features(
    model: Classifier, input_size: int, device: torch.device, amp: bool
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`model.features` traced for `device` and `amp`, or None where tracing does not apply."""
    if device.type != "cpu":
        return None
    # a copy whose parameters need no grad: autocast's cast weights must be constants in a trace
    frozen = copy.deepcopy(model).eval().requires_grad_(False)

    def batch(n: int) -> torch.Tensor:
        x = torch.rand(n, 3, input_size, input_size, generator=torch.Generator().manual_seed(n))
        return x.to(device).contiguous(memory_format=torch.channels_last)

    try:
        with torch.no_grad(), autocast(device, amp), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and torch.jit's deprecation notice
            traced = torch.jit.trace(_Features(frozen).eval(), batch(4), check_trace=False)
            check = batch(3)
            expected = frozen.features(check).float()

            def same(candidate: Callable[[torch.Tensor], torch.Tensor]) -> bool:
                return torch.allclose(candidate(check).float(), expected, rtol=1e-3, atol=1e-4)

            # in float32, freezing folds each batch norm into its convolution: the defender's
            # cnn5 at 16 px runs in 0.6 of the time (benchmarks/serve.py, the filter's cost);
            # under bf16 autocast the folded weights would round differently, so not there
            if not amp:
                folded = torch.jit.freeze(traced)
                if same(folded):
                    return folded
            return traced if same(traced) else None
    except Exception:  # an architecture the tracer cannot follow is served eagerly
        return None
