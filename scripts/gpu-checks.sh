#!/usr/bin/env bash
# The GPU checks of issues 11 and 13, run on a lent device machine (python3 there holds torch and
# most of our dependencies; no registry). Not part of `make test`.
#
#   scripts/gpu-checks.sh pack     # here, first: .gpu/data/ from ../shared/data (needs no GPU)
#   scripts/gpu-checks.sh serve    # smoke test (the offline demo on CUDA), then the serve benchmark
#   scripts/gpu-checks.sh papers   # granularity and budget at the papers' scale (--scale papers),
#                                  # and budget at the default scale beside them
#
# What it needs beside the checkout, in ignored folders: .whl/ (the wheels of our dependencies
# that the machine lacks) and .gpu/data/ (cifar10-jpeg.tar.gz from ../shared/data, and the
# attacker's part of Tiny-ImageNet cut in two archives, tiny-a.tar.gz with the first $SPLIT images
# of each class and tiny-bc.tar.gz with the rest). One call carries at most 64 MiB and the whole
# pool alone is about 80 MB, so it cannot travel in one call; and two calls do not add up: a
# machine goes back 30 s after a call returns, and on 2026-12-04 the second call got a fresh one
# (it reinstalled the wheels and found 22,000 images, tiny-a alone). So plan for one call: with
# the checkout (3.7 MB), the wheels (8.4 MB) and CIFAR-10 (19.6 MB), `SPLIT=115
# scripts/gpu-checks.sh pack` makes a tiny-a of 23,000 images (31 MB) that fits (60 MiB in all);
# `LANES=budget-papers` then runs only the papers' budget, on the budgets that pool allows (up to
# 20,000); the steps log and the note must say the pool was partial. Every result lands under
# $OUT; lanes still running at $DEADLINE seconds are stopped, and what they finished is kept
# (each knockoff's scores are cached as JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?usage: gpu-checks.sh serve|papers}
DEADLINE=${DEADLINE:-420}
G=${GPU_DIR:-$PWD/.gpu}
OUT=${OUT:-$G/out}
# extra overrides (a dry run on a CPU: smaller nets, fewer epochs), empty on the GPU
GRANULARITY_SET=${GRANULARITY_SET:-}
BUDGET_SET=${BUDGET_SET:-}
mkdir -p "$OUT" "$G/cache/extracted" "$G/results" "$G/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export PYTHONPATH=$G/site:$PWD
export TESTBED_CACHE_DIR=$G/cache TESTBED_EXPERIMENTS_CACHE_DIR=$G/runs TESTBED_DATA_DIR=$G/data

say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/steps.log"; }

WHEELS="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types
  typing-inspection annotated-doc uvicorn sqlalchemy python-multipart orjson httptools sniffio
  opentelemetry-api"
if [ "$STEP" = pack ]; then
  mkdir -p "$G/data" && cp ../shared/data/cifar10-jpeg.tar.gz "$G/data/" || exit 1
  tmp=$(mktemp -d) && tar xzf ../shared/data/tiny-imagenet-subset.tar.gz -C "$tmp" || exit 1
  # tiny-a: words, ids and the first $SPLIT images of each class; tiny-bc: the rest
  (cd "$tmp" && find tiny-imagenet/attacker -type f | LC_ALL=C sort |
    awk -F/ -v cut="${SPLIT:-110}" '{n[$3]++; print (n[$3] <= cut ? "a" : "bc"), $0}' >list)
  (cd "$tmp" && { echo tiny-imagenet/words.txt; echo tiny-imagenet/wnids.txt; awk '$1 == "a" {print $2}' list; } |
    tar czf "$G/data/tiny-a.tar.gz" -T -)
  (cd "$tmp" && awk '$1 == "bc" {print $2}' list | tar czf "$G/data/tiny-bc.tar.gz" -T -)
  rm -rf "$tmp"
  ls -l "$G/data"
  # the wheels the device lacks (its python3 is 3.12 with torch), at uv.lock's versions
  WHEELS=$WHEELS python3 -c "import os, tomllib
v = {p['name']: p['version'] for p in tomllib.load(open('uv.lock', 'rb'))['package']}
print(' '.join(f'{n}=={v[n]}' for n in os.environ['WHEELS'].split()))" |
    xargs python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl || exit 1
  du -sh .whl "$G/data"
  exit 0
fi
if [ ! -f "$G/site/.done" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$G/site" .whl/*.whl || { say "wheels did not install"; exit 1; }
  touch "$G/site/.done"
fi
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())" 2>&1 | tee -a "$OUT/steps.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv >>"$OUT/steps.log" 2>&1

# The attacker's Tiny-ImageNet, unpacked where shared.datasets.archives looks for it.
TINY=$G/cache/extracted/tiny-imagenet-subset
for part in tiny-bc tiny-a; do
  if [ -f "$G/data/$part.tar.gz" ] && [ ! -f "$TINY/.$part" ]; then
    mkdir -p "$TINY" && tar xzf "$G/data/$part.tar.gz" -C "$TINY" && touch "$TINY/.$part"
    say "unpacked $part"
  fi
done

case "$STEP" in
serve)
  say "smoke: the offline demo on CUDA"
  timeout 90 python3 -m scenarios demo --budget 600 --out "$G/demo" >"$OUT/demo.log" 2>&1
  say "demo exit $?: $(tail -n 3 "$OUT/demo.log" | tr '\n' ' ')"
  say "serve benchmark, cnn9 at 32 px"
  timeout 120 python3 -m benchmarks.serve --json "$OUT/serve-gpu-cnn9.json" --repeats 3 \
    --seconds 2 >"$OUT/serve-cnn9.log" 2>&1
  say "serve cnn9 exit $?"
  say "serve benchmark, resnet34 at 64 px (the papers' victim)"
  timeout "${RESNET_S:-100}" python3 -m benchmarks.serve --json "$OUT/serve-gpu-resnet34.json" \
    --repeats 3 --seconds 2 --arch resnet34 --side 64 >"$OUT/serve-resnet34.log" 2>&1
  say "serve resnet34 exit $?"
  ;;
papers)
  count=$(find "$TINY/tiny-imagenet/attacker" -type f 2>/dev/null | wc -l)
  say "attacker pool: $count images (60000 when both parts came)"
  echo "$count" >"$TINY/pool-count" && touch "$TINY/.complete"
  if [ "$count" -lt 60000 ]; then # a part did not come (2026-12-04): the budgets the pool allows
    BUDGET_SET="--set budgets=$(python3 -c "print(','.join(str(b) for b in (1000, 2000, 5000, 10000, 20000, 60000) if b <= $count))") $BUDGET_SET"
    say "a partial pool: budget runs with $BUDGET_SET"
  fi
  # three lanes share the GPU: granularity; budget random; budget adaptive (seeds one by one).
  # The victim is trained once: the first lane to ask for it holds its lock, the others wait.
  lane() { # LANES (name prefixes, space-separated; default every lane) picks the lanes to run
    local name=$1 want picked=${LANES:+no}
    shift
    for want in ${LANES:-}; do [[ $name == "$want"* ]] && picked=; done
    [ -n "$picked" ] && return
    setsid bash -c "$*" >"$G/logs/$name.log" 2>&1 &
    echo $! >"$G/logs/$name.pid"
  }
  run="python3 -m scenarios run"
  lane granularity "$run granularity --scale papers $GRANULARITY_SET --out $G/results/granularity-papers"
  # budget at both scales, each (scale, strategy) a lane that runs the seeds one by one
  for scale in papers default; do
    for strategy in random adaptive; do
      cmds=""
      for seed in 0 1 2; do
        cmds+="$run budget --scale $scale --set seeds=$seed --set strategies=$strategy"
        cmds+=" $BUDGET_SET --out $G/results/budget-$scale/$strategy-$seed && "
      done
      lane "budget-$scale-$strategy" "${cmds}true"
    done
  done
  while [ $SECONDS -lt "$DEADLINE" ]; do
    running=0
    for pid in "$G"/logs/*.pid; do kill -0 "$(cat "$pid")" 2>/dev/null && running=1; done
    [ $running = 0 ] && break
    sleep 5
  done
  for pid in "$G"/logs/*.pid; do
    kill -0 "$(cat "$pid")" 2>/dev/null && say "stopping $(basename "$pid" .pid)" &&
      kill -- -"$(cat "$pid")" 2>/dev/null
  done
  sleep 3
  nvidia-smi >>"$OUT/steps.log" 2>&1
  # results, logs, and the cached scores of every knockoff finished (with its configuration)
  tar czf "$OUT/papers.tar.gz" -C "$G" results logs \
    $(cd "$G" && ls runs/knockoffs/*.json runs/transfer/*.json runs/victims/*.json 2>/dev/null)
  say "papers: $(find "$G/results" -name results.json | wc -l) results"
  ;;
esac
say "done"
