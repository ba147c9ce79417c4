"""What the /v1 and /v2 routes share on the way from a request to its answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

ReadImages = Callable[[], Awaitable[tuple[int, np.ndarray | Callable[[], np.ndarray]]]]
"""Parses a request into its image count and the images, or a function that decodes them
(run off the event loop; the binary tensor path hands the array over directly)."""

Answer = Callable[[Request, str, ReadImages], Awaitable[list[dict]]]
"""(request, client id, read) -> one prediction dict per image, in the configured granularity."""


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None):
    """A JSON response encoded by orjson (faster than the standard encoder; see the README)."""
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )
