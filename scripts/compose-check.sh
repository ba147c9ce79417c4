#!/usr/bin/env bash
# make compose-check: build the image, run docker-compose.yml end to end on the host network
# (loopback only), check that the attacker's report landed in the `runs` volume, and print
#   recovery=<x> seconds=<attacker job seconds>
# then the wall time. Exits non-zero when anything fails or the report is missing.
#
# Needs docker (a daemon: started here when none answers and we are root) and Compose v2
# (`docker compose`) or v1 (`docker-compose`). Where python:3.11-slim is not available locally,
# the base image is built once from Debian's packages with debootstrap (needs root) and cached
# as testbed-base:bookworm; no registry is contacted unless COMPOSE_CHECK_PULL=1.
#
# Knobs (environment):
#   ATTACKER_BUDGET=3000                 queries of the attack (the compose file's default: 10000)
#   TESTBED_PORT=<free loopback port>    where the victim listens, 127.0.0.1 only
#   BASE_IMAGE=<image>                   skip the base-image logic and build FROM this image
#   COMPOSE_CHECK_PULL=1                 try `docker pull python:3.11-slim` before debootstrap
#   COMPOSE_PROJECT_NAME=testbed-check   compose project (volumes <name>_models, <name>_runs)
#   TESTBED_IMAGE=extraction-testbed:compose-check
#   KEEP_VOLUMES=1                       leave the volumes behind (default: removed after the check)
#   DEBIAN_MIRROR=<url>                  debootstrap's mirror (default: the one apt uses here)
set -euo pipefail
{ # read to the closing brace before running: editing this file mid-run cannot derail a run

cd "$(dirname "$0")/.."
START=$(date +%s)
say() { echo "compose-check: $*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

export ATTACKER_BUDGET=${ATTACKER_BUDGET:-3000}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-testbed-check}
export TESTBED_IMAGE=${TESTBED_IMAGE:-extraction-testbed:compose-check}
DEFAULT_BASE=python:3.11-slim
LOCAL_BASE=testbed-base:bookworm
INSTALL_HINT="on Debian/Ubuntu: apt-get install -y docker.io docker-compose debootstrap"

# --- docker and its daemon ---------------------------------------------------------------------
command -v docker >/dev/null || die "no docker client; install docker ($INSTALL_HINT)"
if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
        log=${TMPDIR:-/tmp}/compose-check-dockerd.log
        say "no docker daemon answers; starting dockerd in the background (log: $log)"
        nohup dockerd >"$log" 2>&1 &
        for _ in $(seq 60); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
        docker info >/dev/null 2>&1 || die "dockerd did not come up; see $log"
    elif command -v dockerd >/dev/null; then
        die "no docker daemon answers: start dockerd (as root), or join the docker group"
    else
        die "no docker daemon and no dockerd; install it ($INSTALL_HINT)"
    fi
fi
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
    compose_version=$(docker compose version --short)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
    compose_version=$(docker-compose version --short)
else
    die "neither 'docker compose' nor 'docker-compose'; install one ($INSTALL_HINT)"
fi
say "docker $(docker version -f '{{.Server.Version}}'), ${COMPOSE[*]} $compose_version"

COMPOSE+=(-f docker-compose.yml -f docker-compose.hostnet.yml)

# --- the base image ----------------------------------------------------------------------------
apt_mirror() {
    # the Debian mirror apt uses on this machine (deb822 .sources or one-line sources.list)
    local files url
    files=$(ls /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
    # shellcheck disable=SC2086
    url=$(awk '
        /^URIs:/ && !/security/ { print $2; exit }
        /^deb / && !/security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }
    ' $files 2>/dev/null | head -n1)
    echo "${url:-http://deb.debian.org/debian}"
}

build_local_base() {
    [ "$(id -u)" = 0 ] || die "building $LOCAL_BASE with debootstrap needs root"
    command -v debootstrap >/dev/null || die "no debootstrap to build $LOCAL_BASE ($INSTALL_HINT)"
    local mirror root
    mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
    root=$(mktemp -d "${TMPDIR:-/tmp}/testbed-base.XXXXXX")
    say "building $LOCAL_BASE: debootstrap bookworm minbase + Debian's Python 3.11 from $mirror"
    local t0=$SECONDS
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
        { tail -n 20 "$root.log" >&2; rm -rf --one-file-system "$root"; die "debootstrap failed (log: $root.log)"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # this machine's own CAs too (a TLS-inspecting proxy in front of PyPI, say), and the
    # variables that make pip and uv read the system bundle rather than their built-in roots
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        say "adding this machine's local CAs: $(cd /usr/local/share/ca-certificates && echo *.crt)"
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
    local bundle=/etc/ssl/certs/ca-certificates.crt
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "ENV SSL_CERT_FILE=$bundle PIP_CERT=$bundle REQUESTS_CA_BUNDLE=$bundle" \
        --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf --one-file-system "$root" "$root.log"
    say "built $LOCAL_BASE in $((SECONDS - t0)) s"
}

if [ -z "${BASE_IMAGE:-}" ]; then
    if docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1; then
        BASE_IMAGE=$DEFAULT_BASE
    elif [ "${COMPOSE_CHECK_PULL:-0}" = 1 ] && docker pull "$DEFAULT_BASE"; then
        BASE_IMAGE=$DEFAULT_BASE
    else
        docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 || build_local_base
        BASE_IMAGE=$LOCAL_BASE
    fi
fi

# --- the image ---------------------------------------------------------------------------------
say "building $TESTBED_IMAGE FROM $BASE_IMAGE (host network for the downloads)"
t0=$SECONDS
docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$TESTBED_IMAGE" . >&2 ||
    die "docker build failed"
BUILD_SECONDS=$((SECONDS - t0))

# --- compose, end to end -----------------------------------------------------------------------
if [ -z "${TESTBED_PORT:-}" ]; then
    TESTBED_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
export TESTBED_PORT
REPORT_DIR=runs/compose-check
mkdir -p "$REPORT_DIR"
rm -f "$REPORT_DIR/report.json"

cleanup() {
    local volumes=(-v)
    [ "${KEEP_VOLUMES:-0}" = 1 ] && volumes=()
    "${COMPOSE[@]}" down --remove-orphans "${volumes[@]}" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup # a clean start: no report or victim left from an earlier run

say "compose up: project $COMPOSE_PROJECT_NAME, victim on 127.0.0.1:$TESTBED_PORT," \
    "budget $ATTACKER_BUDGET"
t0=$SECONDS
if ! "${COMPOSE[@]}" up --no-build -d >&2; then
    "${COMPOSE[@]}" logs --tail 40 >&2 || true
    die "compose up failed"
fi
attacker=$("${COMPOSE[@]}" ps -a -q attacker)
[ -n "$attacker" ] || die "no attacker container"
status=$(docker wait "$attacker")
UP_SECONDS=$((SECONDS - t0))
"${COMPOSE[@]}" logs --no-color --tail 25 attacker >&2 || true
[ "$status" = 0 ] || {
    "${COMPOSE[@]}" logs --no-color --tail 40 victim >&2 || true
    die "the attacker exited with status $status"
}

# --- the report, read from the volume ----------------------------------------------------------
volume=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/runs"}}{{.Name}}{{end}}{{end}}' \
    "$attacker")
[ -n "$volume" ] || die "the attacker has no /runs volume"
docker run --rm --network none -v "$volume:/runs:ro" --entrypoint cat "$TESTBED_IMAGE" \
    /runs/report.json >"$REPORT_DIR/report.json" 2>/dev/null ||
    die "no report.json in volume $volume"
times=$(docker inspect -f '{{.State.StartedAt}} {{.State.FinishedAt}}' "$attacker")

python3 - "$REPORT_DIR/report.json" "$times" <<'EOF' || die "unreadable report"
import json, sys
from datetime import datetime

report = json.load(open(sys.argv[1]))
def when(stamp):  # docker's RFC 3339 with nanoseconds
    day, _, rest = stamp.partition("T")
    clock = rest.rstrip("Z").split("+")[0]
    whole, _, frac = clock.partition(".")
    return datetime.fromisoformat(f"{day}T{whole}").timestamp() + float(f"0.{frac or 0}")
started, finished = sys.argv[2].split()
seconds = report.get("seconds", when(finished) - when(started))
print(f"recovery={report['recovery']:.3f} seconds={seconds:.0f}")
print(f"  victim accuracy {report['victim_accuracy']:.3f}, knockoff accuracy "
      f"{report['knockoff_accuracy']:.3f}, agreement {report['agreement']:.3f} "
      f"(attacker job: query, train, evaluate through the API)")
EOF
say "OK: report from volume $volume copied to $REPORT_DIR/report.json"
say "wall $(($(date +%s) - START)) s (image build ${BUILD_SECONDS} s, compose up to report ${UP_SECONDS} s)"
exit 0
}
