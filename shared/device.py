"""Device choice and mixed precision, in one place."""

from __future__ import annotations

import contextlib
import os

import torch


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a container's cpuset),
    which `os.cpu_count()` ignores, so a service pinned to one core does not start two
    single-threaded forward passes that fight over it."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA when present; `cuda` without one, or a name torch does not know, is
    a clear error."""
    from shared.errors import TestbedError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TestbedError("device 'cuda' was asked for, but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TestbedError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has it (about 2x on AVX512-BF16 CPUs), else a no-op."""
    if enabled and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
