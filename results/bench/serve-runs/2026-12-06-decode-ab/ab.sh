#!/usr/bin/env bash
# How these files were made (2026-12-06, 2-core AMD EPYC without bf16, nothing else running):
# the serve benchmark alternated between "base" (a worktree of e374b3e at /work/ab-base:
# decoding in asyncio.to_thread) and "new" (the working tree: decoding on the model threads),
# 3 repeats of 3 s per run. Rounds 1-3 and 4-7 were two invocations of this loop.
set -u
for round in 1 2 3 4 5 6 7; do
  for side in base new; do
    dir=/work/main; [ $side = base ] && dir=/work/ab-base
    (cd $dir && /work/main/.venv/bin/python -m benchmarks.serve --repeats 3 --seconds 3 \
        --json /tmp/b/ab-$side-$round.json > /tmp/b/ab-$side-$round.log 2>&1)
    echo "$side $round done $(date +%T)"
  done
done
