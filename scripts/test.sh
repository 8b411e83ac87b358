#!/usr/bin/env bash
# THE test command: scripts/test.sh [pytest args]   (default: the whole suite)
# Sets the machine up (scripts/setup.sh, fast when already done), starts one real
# Kafka broker for the whole run unless $PADIMD_KAFKA_BOOTSTRAP already names one,
# runs pytest, stops the broker, and exits with pytest's code.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

phase_start=$SECONDS
phase() {  # print how long the previous phase took, so slow steps are visible
    echo "test.sh: $1 took $((SECONDS - phase_start)) s"
    phase_start=$SECONDS
}

bash scripts/setup.sh
phase "setup"

broker_dir=""
cleanup() {
    if [[ -n $broker_dir ]]; then
        bash scripts/kafka-broker.sh stop --dir "$broker_dir" || true
        rm -rf "$broker_dir"
    fi
}
trap cleanup EXIT
# Without these, Ctrl+C or a CI cancel would kill bash before the EXIT trap and leave
# the broker running.
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z ${PADIMD_KAFKA_BOOTSTRAP:-} ]]; then
    # One broker for the run (rather than one per pytest session in the fixture) so
    # that a failing start is reported once, before any test runs.
    broker_dir=$(mktemp -d "${TMPDIR:-/tmp}/padimd-kafka.XXXXXX")
    PADIMD_KAFKA_BOOTSTRAP=$(bash scripts/kafka-broker.sh start --dir "$broker_dir")
    export PADIMD_KAFKA_BOOTSTRAP
    phase "broker start"
else
    echo "test.sh: using the Kafka broker at $PADIMD_KAFKA_BOOTSTRAP"
fi

rc=0
"$repo_root/.venv/bin/python" -m pytest "$@" || rc=$?
phase "pytest"

if ((rc == 5)); then
    echo "test.sh: error: pytest collected no tests (args: ${*:-none}); that is a failure" >&2
    exit 5
fi
if ((rc != 0)) && [[ -n $broker_dir && ${CI:-} == true ]]; then
    # In CI the temp dir is gone afterwards: keep the broker's view of the failure.
    echo "test.sh: tests failed; last lines of the broker log:" >&2
    tail -n 40 "$broker_dir/broker.log" >&2 || true
fi
exit "$rc"
