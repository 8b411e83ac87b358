#!/usr/bin/env bash
# The padimd demo, end to end on this machine, in a few minutes on 2 CPU cores:
#   1. scripts/setup.sh (idempotent), a local Kafka broker (scripts/kafka-broker.sh)
#   2. the topics of config.example.toml, then `padimd --config config.example.toml`
#      with the broker address and a few demo settings given through PADIMD_* variables
#   3. three cameras (brick, grass, gravel photographs) stream normal frames labelled
#      `normal`, then unlabelled frames, half of them with a pasted scratch or blob
#   4. the events padimd publishes are read back and printed, with a summary
#   5. everything started here is stopped again, also on Ctrl+C or an error
#
# Usage: bash scripts/demo.sh [--train N] [--test N]   (frames per camera)
# Environment: DEMO_SIZE (model input px, 224), DEMO_EMBEDDINGS (channels, 40),
# DEMO_KEEP_BROKER=1 leaves the broker up.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

train=100
test_frames=10
while (($# > 0)); do
    case $1 in
        --train) train=$2; shift 2 ;;
        --test) test_frames=$2; shift 2 ;;
        *) echo "usage: $0 [--train N] [--test N]" >&2; exit 2 ;;
    esac
done
# 70% of the labelled normals fit the model before anything is scored; each of the
# rest is scored before it is learned, and those held-out scores calibrate the camera's
# threshold (daemon/core.py, daemon/thresholds.py).
warmup=$((train * 7 / 10))
if ((warmup < 2 || train - warmup < 1)); then
    echo "demo: --train must be at least 4" >&2
    exit 2
fi

say() { echo "demo: $*" >&2; }

state_dir=$repo_root/.padimd-state/demo
broker_dir=$repo_root/.kafka/demo
config=$repo_root/config.example.toml
py=$repo_root/.venv/bin/python
daemon_pid=

cleanup() {
    local rc=$?
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        say "stopping padimd (pid $daemon_pid)"
        kill -TERM "$daemon_pid" 2>/dev/null || true
        # padimd drains within shutdown.grace_s (25 s); allow a little more.
        for _ in $(seq 1 300); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            say "padimd did not stop in time; killing it"
            kill -KILL "$daemon_pid" 2>/dev/null || true
        fi
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ ${DEMO_KEEP_BROKER:-0} != 1 ]]; then
        bash scripts/kafka-broker.sh stop --dir "$broker_dir" || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "setting up (scripts/setup.sh)"
setup_log=$(mktemp)
if ! bash scripts/setup.sh >"$setup_log" 2>&1; then
    cat "$setup_log" >&2
    rm -f "$setup_log"
    exit 1
fi
rm -f "$setup_log"

say "starting a local Kafka broker"
bootstrap=$(bash scripts/kafka-broker.sh start --dir "$broker_dir")

# A fresh state directory: the broker is fresh too, so old snapshots would describe
# offsets that no longer exist.
rm -rf "$state_dir"
mkdir -p "$state_dir"
http_port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

export PADIMD_KAFKA__BOOTSTRAP_SERVERS=$bootstrap
export PADIMD_HTTP__HOST=127.0.0.1
export PADIMD_HTTP__PORT=$http_port
export PADIMD_SNAPSHOTS__DIR=$state_dir/snapshots
export PADIMD_SNAPSHOTS__INTERVAL_S=10
# The demo wants to see every decision, not only the anomalies.
export PADIMD_SCORING__EMIT_ALL_FRAMES=true
export PADIMD_MODEL__SIZE="[${DEMO_SIZE:-224}, ${DEMO_SIZE:-224}]"
export PADIMD_MODEL__DEVICE=cpu
# Fewer channels than the default 100, so that the warm-up frames outnumber them: a
# covariance estimated from fewer samples than dimensions is singular (only epsilon
# regularises it), and scores then fall steeply with every frame learned.
export PADIMD_MODEL__NUM_EMBEDDINGS=${DEMO_EMBEDDINGS:-40}
export PADIMD_MODEL__MIN_FRAMES_BEFORE_SCORING=$warmup
export PADIMD_THRESHOLD__MIN_NORMAL_SCORES=$((train - warmup))
# Only this run's held-out scores count, and the 95% quantile of so few of them (the
# configured 99.5% needs hundreds): early scores, taken while the model has seen few
# frames, run high, and a long production stream outgrows them; a 3-minute demo does not.
export PADIMD_THRESHOLD__WINDOW=$((train - warmup))
export PADIMD_THRESHOLD__QUANTILE=0.95

"$py" -m daemon.demo topics --config "$config"

say "starting padimd --config config.example.toml (log: $state_dir/padimd.log)"
"$py" -m daemon --config "$config" >"$state_dir/padimd.log" 2>&1 &
daemon_pid=$!
if ! "$py" -m daemon.demo wait-ready --url "http://127.0.0.1:$http_port/readyz" \
        --pid "$daemon_pid" --timeout 300; then
    tail -n 40 "$state_dir/padimd.log" >&2
    exit 1
fi
say "padimd is ready (metrics: http://127.0.0.1:$http_port/metrics)"

rc=0
"$py" -m daemon.demo run --config "$config" --train "$train" --test "$test_frames" || rc=$?
exit "$rc"
