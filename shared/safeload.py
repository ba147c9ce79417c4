"""The one way this project reads `.pt` files: `torch.load(weights_only=True)`, clear refusals.

A file that holds pickled code (any global outside tensors and plain containers) is refused
before anything in it runs; a truncated or otherwise corrupted file is refused as unreadable.
Either way the message is one line meant for a person, never torch's page of advice.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from shared.errors import TestbedError


def load_weights_only(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; `what` names the file in the error."""
    path = Path(path)
    if not path.exists():
        raise TestbedError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = str(exc).splitlines() if isinstance(exc, pickle.UnpicklingError) else []
        if blocked := next((line.strip() for line in lines if "GLOBAL" in line), None):
            raise TestbedError(
                f"refused to load {what} {path}: it holds pickled code or objects, not just "
                f"tensors and plain data ({blocked}); only weights_only files are accepted"
            ) from None
        raise TestbedError(
            f"{path} is not a readable {what} (corrupt or truncated): {one_line(exc)}"
        ) from None


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
