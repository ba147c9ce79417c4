"""The project's own log lines in uvicorn's format, beside uvicorn's ("WARNING:  ...").

Uvicorn configures its own loggers only. A warning from the project (an OOD detector trained on
other data than the victim's) then reached stderr bare, through Python's last-resort handler,
where an operator's grep for WARNING, or a check that the log holds only the server's lines,
would miss it or take it for a library talking.
"""

from __future__ import annotations

import logging

from uvicorn.logging import DefaultFormatter

PACKAGES = ("defense", "shared", "victim_service")


class _ServiceHandler(logging.StreamHandler):
    """stderr in uvicorn's default format (colours only on a terminal)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=None))


def log_like_uvicorn() -> None:
    """Give the project's loggers a uvicorn-style stderr handler at WARNING, once, unless the
    process configured logging itself (a root handler: then its records go there as before)."""
    if logging.getLogger().handlers:
        return
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ServiceHandler) for h in logger.handlers):
            logger.addHandler(_ServiceHandler())
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
