"""Medians of the A/B runs beside this file: python summary.py"""

import glob
import json
import os
import statistics as st
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
for side in ("base", "new"):
    v1, v2, v1_over_v2, c64, svc = [], [], [], [], []
    for f in sorted(glob.glob(os.path.join(HERE, f"ab-{side}-*.json"))):
        d = json.loads(Path(f).read_text())
        s = d["samples"]
        v1 += s["ratio_v1"]
        v2 += s["ratio_v2_binary"]
        v1_over_v2 += [a / b for a, b in zip(s["ratio_v1"], s["ratio_v2_binary"], strict=True)]
        c64.append(d["single_points"]["single_c64_microbatch"]["images_per_s"])
        svc.append(d["cpu_us_per_request"]["v1"]["service"])
    print(
        f"{side}: runs {len(c64)}, repeats {len(v1)}; per-repeat medians (range): "
        f"/v1 {st.median(v1):.3f} ({min(v1):.3f}-{max(v1):.3f}), "
        f"v2 binary {st.median(v2):.3f} ({min(v2):.3f}-{max(v2):.3f}), "
        f"/v1 over v2 {st.median(v1_over_v2):.3f}; per-run medians: "
        f"1-image c64 {st.median(c64):.0f} images/s ({min(c64):.0f}-{max(c64):.0f}), "
        f"service CPU per /v1 request {st.median(svc):.0f} us"
    )
