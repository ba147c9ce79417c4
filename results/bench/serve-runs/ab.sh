#!/usr/bin/env bash
# The serve benchmark, A/B: `python -m benchmarks.serve --repeats 3 --seconds 3` alternated
# between a worktree of the base revision ("base") and the working tree ("new"), each run's JSON
# and log written to OUT as ab-<side>-<round>.json/.log. Run it from the project root with
# nothing else running; `ab_summary.py OUT` gives the medians.
#   git worktree add /work/ab-base <revision>
#   results/bench/serve-runs/ab.sh /work/ab-base OUT LAST_ROUND [FIRST_ROUND]
set -u
base=$1
out=$(realpath -m "$2")
last=$3
first=${4:-1}
python=$PWD/.venv/bin/python
here=$PWD
mkdir -p "$out"
for round in $(seq "$first" "$last"); do
  for side in base new; do
    dir=$here
    [ "$side" = base ] && dir=$base
    (cd "$dir" && "$python" -m benchmarks.serve --repeats 3 --seconds 3 \
        --json "$out/ab-$side-$round.json" > "$out/ab-$side-$round.log" 2>&1)
    echo "$side $round done $(date +%T)"
  done
done
