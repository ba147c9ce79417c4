#!/usr/bin/env bash
# The serve benchmark, A/B (`../ab.sh`): `python -m benchmarks.serve --repeats 3 --seconds 3`
# alternated between a worktree of the base revision and the working tree; `ab_summary.py OUT`
# gives the medians. Run it from the project root with nothing else running.
#   git worktree add /work/ab-base <revision>
#   results/bench/serve-runs/ab.sh /work/ab-base OUT LAST_ROUND [FIRST_ROUND]
exec "$(dirname "$0")/../ab.sh" serve "$1" "$2" "${4:-1}" "$3" --repeats 3 --seconds 3
