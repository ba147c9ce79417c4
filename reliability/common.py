"""What the checks share: their result, the summary line, resident memory, a sample image."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class CheckResult:
    """One check: its figures (data first) and every failure found, in words."""

    name: str
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    def line(self) -> str:
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in self.figures.items())
        verdict = "ok  " if self.ok else "FAIL"
        text = f"{verdict} {self.name:<16} {figures} ({self.seconds:.0f} s)"
        return text + "".join(f"\n     - {f}" for f in self.failures[:5])

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "figures": self.figures, "seconds": self.seconds,
                "failures": self.failures, "details": self.details}  # fmt: skip


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def service_process(env: dict[str, str], **options):
    """The service as a child process, given time to start on a busy machine."""
    from victim_service.launch import service_process as launch

    return launch(env, ready_timeout=300, **options)


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def sample_png(seed: int = 0, side: int = 32) -> tuple[np.ndarray, bytes]:
    from shared.imaging import encode_image

    image = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return image, encode_image(image)


def write_report(path: Path, results: list[CheckResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
