#!/usr/bin/env bash
# A benchmark, A/B: `python -m benchmarks.MODULE ARGS...` alternated between a worktree of the
# base revision ("base") and the working tree ("new"), each run's JSON and log written to OUT
# as ab-<side>-<round>.json/.log. Run it from the project root with nothing else running.
#   git worktree add /work/ab-base <revision>
#   results/bench/ab.sh MODULE /work/ab-base OUT FIRST_ROUND LAST_ROUND ARGS...
# serve-runs/ab.sh and attack-runs/ab.sh call it with their benchmark's arguments.
set -u
module=$1
base=$2
out=$(realpath -m "$3")
first=$4 last=$5
shift 5
python=$PWD/.venv/bin/python
here=$PWD
mkdir -p "$out"
for round in $(seq "$first" "$last"); do
  for side in base new; do
    dir=$here
    [ "$side" = base ] && dir=$base
    (cd "$dir" && "$python" -m "benchmarks.$module" "$@" \
        --json "$out/ab-$side-$round.json" > "$out/ab-$side-$round.log" 2>&1)
    echo "$side $round done $(date +%T)"
  done
done
