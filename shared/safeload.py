"""The one way this project reads `.pt` files: `torch.load(weights_only=True)`, clear refusals.

A file that holds pickled code (any global outside tensors and plain containers) is refused
before anything in it runs; a truncated or otherwise corrupted file is refused as unreadable.
Either way the message is one line meant for a person, never torch's page of advice.

Files this project writes are sealed (`seal`): a sha256 of their whole content (every tensor's
dtype, shape and bytes, every plain value) is stored beside it and checked at load (`unseal`),
so altered weights that still unpickle are refused. The digest lives in the file, so it catches
bit rot, botched copies and naive edits, not an attacker who recomputes it: that needs a digest
kept elsewhere. Files written before sealing (no digest) still load.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from shared.errors import TestbedError

TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")
"""torch.save's zip archive, or the legacy format's pickle (protocol 2 and above)."""


def load_weights_only(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; `what` names the file in the error."""
    path = Path(path)
    if not path.exists():
        raise TestbedError(f"{what} {path} does not exist")
    with open(path, "rb") as file:
        head = file.read(16)
    if not head.startswith(TORCH_FILE_STARTS):  # e.g. the transfer set's SQLite file
        raise TestbedError(
            f"{path} is not a {what}: torch.save writes a zip archive, and this file begins "
            f"{head!r}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = str(exc).splitlines() if isinstance(exc, pickle.UnpicklingError) else []
        if blocked := next((line.strip() for line in lines if "GLOBAL" in line), None):
            raise TestbedError(
                f"refused to load {what} {path}: it holds pickled code or objects, not just "
                f"tensors and plain data ({blocked}); only weights_only files are accepted"
            ) from None
        reason = one_line(exc)
        if reason.startswith("Weights only load failed"):  # then torch's advice, not a reason
            reason = "torch.load(weights_only=True) cannot read its pickle"
        raise TestbedError(
            f"{path} is not a readable {what} (corrupt or truncated): {reason}"
        ) from None


DIGEST_KEY = "sha256"


def content_sha256(value: Any) -> str:
    """sha256 of a payload of tensors and plain containers, independent of dict order."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{type(value).__name__}:{value!r};".encode())


def seal(payload: dict) -> dict:
    """The payload with the sha256 of its content added (see the module docstring)."""
    return {**payload, DIGEST_KEY: content_sha256(payload)}


def unseal(payload: dict, path: str | Path, what: str) -> dict:
    """The payload without its digest; refused in one line if the content does not match it."""
    content = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    recorded = payload.get(DIGEST_KEY)
    if recorded is not None and recorded != content_sha256(content):
        raise TestbedError(
            f"refused to load {what} {path}: its content does not match the sha256 recorded "
            "when it was saved (altered or corrupted)"
        )
    return content


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
