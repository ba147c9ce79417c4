#!/usr/bin/env bash
# How these files were made (2026-12-07, 2-core AMD EPYC without bf16, nothing else running):
# the attack benchmark alternated between "base" (a worktree of a40e32d at /work/ab-base:
# Pillow's PNG encoder) and "new" (the working tree at e3c1421: shared.imaging.encode_png),
# 3 repeats of 3 s per run. Usage: ab.sh OUT FIRST_ROUND LAST_ROUND BENCHMARK-ARGUMENTS...
#   natural-split: ab.sh natural-split 1 4 --pools natural --cores split --protocols v1,v2
#   noise-split:   ab.sh noise-split 1 3 --pools noise --cores split --protocols v1,v2
#   noise-shared:  ab.sh noise-shared 1 3 --pools noise --cores shared --protocols v1
set -u
out=$1 first=$2 last=$3; shift 3
for round in $(seq "$first" "$last"); do
  for side in base new; do
    dir=/work/main; [ "$side" = base ] && dir=/work/ab-base
    (cd $dir && /work/main/.venv/bin/python -m benchmarks.attack "$@" --repeats 3 \
        --json "$out/ab-$side-$round.json" > "$out/ab-$side-$round.log" 2>&1)
    echo "$side $round done $(date +%T)"
  done
done
