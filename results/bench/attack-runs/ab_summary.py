"""Medians of the attack benchmark's A/B runs in a folder (made by ab.sh), per CPU layout and
protocol: python results/bench/attack-runs/ab_summary.py FOLDER POOL"""

import json
import statistics
import sys
from pathlib import Path


def by_layout(run: dict) -> dict[str, dict]:
    """layout -> protocol -> pool -> measurement."""
    return {layout: r["by_protocol"] for layout, r in run["by_cores"].items()}


def main(folder: Path, pool: str) -> None:
    for side in ("base", "new"):
        out: dict[tuple[str, str], dict[str, list[float]]] = {}
        for path in sorted(folder.glob(f"ab-{side}-*.json")):
            for layout, protocols in by_layout(json.loads(path.read_text())).items():
                for protocol, pools in protocols.items():
                    m, o = pools[pool], out.setdefault((layout, protocol), {})
                    cpu = m["cpu_us_per_request"]
                    o.setdefault("ratio", []).append(m["attacker_vs_service_capacity"])
                    o.setdefault("repeats", []).extend(m["samples"]["ratios"])
                    o.setdefault("attacker", []).append(cpu["attacker"] / 1000)
                    o.setdefault("service", []).append(cpu["service_under_attacker"] / 1000)
        for (layout, protocol), o in out.items():
            med = {key: statistics.median(values) for key, values in o.items()}
            runs = ", ".join(f"{r:.2f}" for r in o["ratio"])
            print(
                f"{side} {layout} {protocol}: {len(o['ratio'])} runs, ratio median of runs "
                f"{med['ratio']:.3f} (runs {runs}), of repeats {med['repeats']:.3f}; CPU ms per "
                f"32-image request: attacker {med['attacker']:.1f}, service {med['service']:.1f}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
