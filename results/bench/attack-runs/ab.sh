#!/usr/bin/env bash
# The attack benchmark, A/B (`../ab.sh`): `python -m benchmarks.attack --repeats 3 ARGS...`
# alternated between a worktree of the base revision and the working tree; `ab_summary.py OUT
# POOL` gives the medians. Run it from the project root with nothing else running.
#   git worktree add /work/ab-base <revision>
#   results/bench/attack-runs/ab.sh /work/ab-base OUT FIRST_ROUND LAST_ROUND ARGS...
#   e.g. ... 1 4 --pools noise --cores shared --protocols v1,v2
base=$1 out=$2 first=$3 last=$4
shift 4
exec "$(dirname "$0")/../ab.sh" attack "$base" "$out" "$first" "$last" "$@" --repeats 3
