"""Medians of the A/B runs in a folder: python summary.py natural-split natural"""

import glob
import json
import statistics
import sys
from pathlib import Path

folder, pool = sys.argv[1], sys.argv[2]
for side in ("base", "new"):
    out: dict[str, dict[str, list[float]]] = {}
    for path in sorted(glob.glob(f"{folder}/ab-{side}-*.json")):
        for protocol, pools in json.loads(Path(path).read_text())["by_protocol"].items():
            m, o = pools[pool], out.setdefault(protocol, {})
            o.setdefault("ratio", []).append(m["attacker_vs_service_capacity"])
            o.setdefault("repeats", []).extend(m["samples"]["ratios"])
            o.setdefault("attacker", []).append(m["cpu_us_per_request"]["attacker"] / 1000)
            service = m["cpu_us_per_request"]["service_under_attacker"] / 1000
            o.setdefault("service", []).append(service)
    for protocol, o in out.items():
        med = {key: statistics.median(values) for key, values in o.items()}
        runs = ", ".join(f"{r:.2f}" for r in o["ratio"])
        print(
            f"{side} {protocol}: {len(o['ratio'])} runs, ratio median of runs {med['ratio']:.3f}"
            f" (runs {runs}), of repeats {med['repeats']:.3f}; CPU ms per 32-image request:"
            f" attacker {med['attacker']:.1f}, service {med['service']:.1f}"
        )
