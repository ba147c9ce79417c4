"""Medians of a serve A/B folder (`ab.sh`): python results/bench/serve-runs/ab_summary.py FOLDER"""

import json
import statistics as st
import sys
from pathlib import Path


def summary(folder: Path, side: str) -> str:
    v1, v2, v1_over_v2, c64, svc1, svc2, gap = [], [], [], [], [], [], []
    for f in sorted(folder.glob(f"ab-{side}-*.json")):
        d = json.loads(f.read_text())
        s = d["samples"]
        v1 += s["ratio_v1"]
        v2 += s["ratio_v2_binary"]
        v1_over_v2 += [a / b for a, b in zip(s["ratio_v1"], s["ratio_v2_binary"], strict=True)]
        c64.append(d["single_points"]["single_c64_microbatch"]["images_per_s"])
        cpu = d["cpu_us_per_request"]
        svc1.append(cpu["v1"]["service"])
        svc2.append(cpu["v2_binary"]["service"])
        gap.append(cpu["v1"]["service"] - cpu["v2_binary"]["service"])
    return (
        f"{side}: runs {len(c64)}, repeats {len(v1)}; per-repeat medians (range): "
        f"/v1 {st.median(v1):.3f} ({min(v1):.3f}-{max(v1):.3f}), "
        f"v2 binary {st.median(v2):.3f} ({min(v2):.3f}-{max(v2):.3f}), "
        f"/v1 over v2 {st.median(v1_over_v2):.3f}; per-run medians: "
        f"1-image c64 {st.median(c64):.0f} images/s ({min(c64):.0f}-{max(c64):.0f}), "
        f"service CPU per 32-image request /v1 {st.median(svc1):.0f} us, "
        f"v2 binary {st.median(svc2):.0f} us, /v1 minus v2 {st.median(gap):.0f} us "
        f"({min(gap):.0f}-{max(gap):.0f})"
    )


if __name__ == "__main__":
    for side in ("base", "new"):
        print(summary(Path(sys.argv[1]), side))
