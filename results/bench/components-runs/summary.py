"""Medians and ranges of the component runs in this folder (or the one named):
python summary.py [FOLDER] > FOLDER/summary.md"""

import glob
import json
import statistics
import sys
from pathlib import Path

here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
runs = [json.loads(Path(f).read_text()) for f in sorted(glob.glob(str(here / "2026-*.json")))]
print(f"# `python -m benchmarks.components`, {len(runs)} runs one after another\n")
print("| section | step | median | range |\n|---|---|---|---|")
for section in ("cpu_us_per_32_image_request", "attacker_cpu_us_per_32_image_request",
                "png_bytes_per_photograph"):  # fmt: skip
    for key in runs[0][section]:
        values = [run[section][key] for run in runs]
        print(f"| {section} | {key} | {statistics.median(values):,.0f} | "
              f"{min(values):,.0f}-{max(values):,.0f} |")  # fmt: skip
print(
    f"\ntimestamps {runs[0]['timestamp']} .. {runs[-1]['timestamp']}; load average at the "
    f"end {min(r['load_average_at_end'][0] for r in runs):.2f}-"
    f"{max(r['load_average_at_end'][0] for r in runs):.2f}; cores {runs[0]['cpu_count']}"
)
